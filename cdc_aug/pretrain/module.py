"""LightningModule for an unconditional pixel-space DDPM (diffusers UNet2DModel) with EMA."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel


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


class DiffusionPretrainModule(L.LightningModule):
    def __init__(self, size: int = 64, channels: tuple[int, ...] = (32, 64, 128), layers_per_block: int = 1,
                 lr: float = 3e-4, weight_decay: float = 1e-2, ema_max_decay: float = 0.9995,
                 ema_power: float = 0.75, warmup_steps: int = 200):
        super().__init__()
        self.save_hyperparameters()
        self.unet = build_unet(size, tuple(channels), layers_per_block)
        self.ema = copy.deepcopy(self.unet).requires_grad_(False)
        self.noise_scheduler = build_scheduler()
        self.register_buffer("alphas_cumprod", self.noise_scheduler.alphas_cumprod.clone(), persistent=False)

    def ema_decay(self, step: int) -> float:
        # EMA warm-up (as diffusers' EMAModel with use_ema_warmup): short runs must not
        # average in the random initialisation for thousands of steps.
        return min(self.hparams.ema_max_decay, 1 - (1 + step) ** -self.hparams.ema_power)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        x0 = batch
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (x0.shape[0],), device=x0.device)
        ab = self.alphas_cumprod.to(x0.device)[t].view(-1, 1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        pred = self.unet(xt, t).sample
        loss = F.mse_loss(pred.float(), noise.float())
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        decay = self.ema_decay(self.global_step)
        with torch.no_grad():
            for pe, p in zip(self.ema.parameters(), self.unet.parameters()):
                pe.lerp_(p.detach(), 1 - decay)
        self.log("train/ema_decay", decay, on_step=True, on_epoch=False)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.unet.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        warm = max(1, self.hparams.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def pipeline(self, ema: bool = True) -> DDPMPipeline:
        """The model as a diffusers pipeline with a DDIM scheduler of the same noise schedule."""
        unet = copy.deepcopy(self.ema if ema else self.unet).float().cpu().eval()
        return DDPMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(self.noise_scheduler.config))

    def export(self, out_dir: str | Path, ema: bool = True) -> Path:
        out = Path(out_dir)
        self.pipeline(ema).save_pretrained(out, safe_serialization=True)
        return out


@torch.no_grad()
def sample_grid(pipe: DDPMPipeline, n: int = 16, size: int = 64, steps: int = 50, seed: int = 0):
    """n unconditional samples (DDIM, eta 0) as a PIL grid."""
    import numpy as np
    from PIL import Image

    g = torch.Generator("cpu").manual_seed(seed)
    x = torch.randn((n, 3, size, size), generator=g)
    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(steps)
    for t in sched.timesteps:
        eps = pipe.unet(x, t).sample
        x = sched.step(eps, t, x).prev_sample
    imgs = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.full((rows * (size + 2), cols * (size + 2), 3), 255, np.uint8)
    for i, im in enumerate(imgs):
        r, c = divmod(i, cols)
        grid[r * (size + 2):r * (size + 2) + size, c * (size + 2):c * (size + 2) + size] = im
    return Image.fromarray(grid)
