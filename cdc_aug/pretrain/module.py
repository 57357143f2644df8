"""LightningModule for an unconditional pixel-space DDPM (diffusers UNet2DModel), and the
EMA of its weights as a Lightning callback.

Every ``trainer.val_check_interval`` steps the validation loop samples a grid with the EMA
weights (Lightning's weight-averaging callback swaps them in for validation), logs it to the
logger, saves it to ``<run>/samples/step-N.png`` and exports the EMA model to ``<run>/model``;
the end of training exports once more (the callback has then copied the averages in).
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.utils import make_image_grid
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.utilities import rank_zero_only

from cdc_aug.errors import UserError
from cdc_aug.imagelog import log_image


def build_unet(size: int = 64, channels: tuple[int, ...] = (32, 64, 128), layers_per_block: int = 1) -> UNet2DModel:
    # Convolutional down/up blocks (one attention layer in the mid block, which takes any
    # grid size): the model samples at the render's own size (224²) although it is trained
    # on small crops.
    n = len(channels)
    return UNet2DModel(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        layers_per_block=layers_per_block,
        block_out_channels=tuple(channels),
        down_block_types=("DownBlock2D",) * n,
        up_block_types=("UpBlock2D",) * n,
        norm_num_groups=min(32, channels[0]),
        add_attention=True,
    )


def build_scheduler(num_train_timesteps: int = 1000) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="squaredcos_cap_v2",
                         prediction_type="epsilon", clip_sample=True)


@torch.no_grad()
def sample_images(unet: UNet2DModel, scheduler_config, n: int = 16, steps: int = 25, seed: int = 0) -> list:
    """n unconditional samples (PIL, the UNet's sample size) from DDIMPipeline, eta 0."""
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu").manual_seed(seed)
    return pipe(batch_size=n, generator=generator, num_inference_steps=steps, eta=0.0).images


def grid(images: list, cols: int | None = None):
    """Equally sized PIL images in a near-square grid (diffusers' make_image_grid), the last
    row filled with white."""
    from PIL import Image

    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    blank = Image.new("RGB", images[0].size, "white")
    return make_image_grid(list(images) + [blank] * (rows * cols - len(images)), rows, cols)


class EMA(WeightAveraging):
    """Lightning's weight averaging with diffusers' EMA warm-up (``EMAModel(use_ema_warmup=True)``).

    The decay after k averaged steps is ``min(max_decay, 1 - (1 + k) ** -power)``:
    Lightning's ``EMAWeightAveraging`` has one fixed decay, which in a 2,000-step CPU run
    (0.9995**2000 = 0.37) would keep a third of the random initialisation in the exported
    weights.

    Args:
        max_decay: the decay the warm-up approaches.
        power: warm-up speed (diffusers' ``power``; 3/4 suits runs of a few thousand steps).
    """

    def __init__(self, max_decay: float = 0.9995, power: float = 0.75):
        self.max_decay, self.power = max_decay, power
        super().__init__(use_buffers=True, avg_fn=self._average)

    def _average(self, averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        decay = min(self.max_decay, 1 - (1 + float(num_averaged)) ** -self.power)
        return averaged + (current - averaged) * (1 - decay)


class DiffusionPretrainModule(L.LightningModule):
    """An unconditional UNet2DModel trained on ε with diffusers' cosine DDPM schedule.

    Args:
        image_size: training crop size (linked to ``data.image_size``); the exported
            model's ``sample_size``.
        channels: UNet block widths; image_size must be divisible by 2**(len(channels) - 1).
        layers_per_block: ResNet layers per UNet block.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear learning-rate warm-up.
        samples: images in each validation sample grid.
        sample_steps: DDIM steps of the sample grids.
    """

    def __init__(self, image_size: int = 64, channels: tuple[int, ...] = (32, 64, 128), layers_per_block: int = 1,
                 lr: float = 3e-4, weight_decay: float = 1e-2, warmup_steps: int = 200, samples: int = 16,
                 sample_steps: int = 25):
        super().__init__()
        channels = list(channels)
        factor = 2 ** (len(channels) - 1)
        if image_size < 16 or image_size % factor:
            raise UserError(f"--data.image_size {image_size}: must be >= 16 and divisible by {factor} "
                            f"(2 ** (len(model.channels) - 1))")
        if min(channels) < 1 or layers_per_block < 1 or samples < 1 or sample_steps < 1:
            raise UserError("--model.channels, layers_per_block, samples and sample_steps must be positive")
        self.save_hyperparameters()
        self.unet = build_unet(image_size, tuple(channels), layers_per_block)
        self.noise_scheduler = build_scheduler()
        self._t0 = time.monotonic()

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        noise = torch.randn_like(batch)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (batch.shape[0],), device=batch.device)
        pred = self.unet(self.noise_scheduler.add_noise(batch, noise, t), t).sample
        loss = F.mse_loss(pred.float(), noise.float())
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def on_train_epoch_start(self) -> None:
        # The crops depend on the epoch; Lightning tells a sampler its epoch, not a dataset.
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(self.current_epoch)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.unet.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        warm = max(1, self.hparams.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def pipeline(self) -> DDPMPipeline:
        """The current weights as a diffusers pipeline with a DDIM scheduler of the same noise schedule
        (the format ``generate``/``composite`` load)."""
        unet = copy.deepcopy(self.unet).float().cpu().eval()
        return DDPMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(self.noise_scheduler.config))

    def validation_step(self, batch, batch_idx: int) -> None:
        # The weights here are the EMA's: the EMA callback swaps them in for validation.
        # Rank zero alone: the grid is the same on every rank.
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        image = grid(sample_images(self.unet, self.noise_scheduler.config, self.hparams.samples,
                                   self.hparams.sample_steps, seed=0))
        log_image(self.loggers, "samples", image, self.global_step)
        self._save(image)

    def on_train_end(self) -> None:
        # Lightning calls the callbacks' on_train_end first: the EMA weights are in place.
        run = self._save(None)
        if run is not None:
            print(f"cdc-aug pretrain: model written to {run / 'model'} (run folder {run})")

    @rank_zero_only
    def _save(self, samples) -> Path:
        run = Path(self.trainer.default_root_dir)
        if samples is not None:
            (run / "samples").mkdir(parents=True, exist_ok=True)
            samples.save(run / "samples" / f"step-{self.global_step:06d}.png")
        self.pipeline().save_pretrained(run / "model", safe_serialization=True)
        (run / "model" / "training_state.json").write_text(json.dumps(
            {"global_step": self.global_step, "wall_minutes_this_session": round((time.monotonic() - self._t0) / 60, 2)}))
        return run
