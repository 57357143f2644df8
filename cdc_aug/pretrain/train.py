"""``cdc-aug pretrain``: Trainer setup, periodic sample grids and exports, resume."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from cdc_aug.errors import UserError
from cdc_aug.runinfo import write_config

from .data import PhotoCrops, list_images, load_photos
from .module import DiffusionPretrainModule, sample_grid

log = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    images: str
    out: str
    size: int = 64
    channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    layers_per_block: int = 1
    batch_size: int = 16
    lr: float = 3e-4
    max_steps: int = 20000
    max_minutes: float | None = None
    sample_every: int = 500
    checkpoint_every: int = 200
    seed: int = 0
    threads: int | None = None
    accelerator: str = "auto"
    devices: str = "auto"
    precision: str | None = None
    resume: bool = False
    crops_per_epoch: int = 4096


class SamplesAndExport(Callback):
    """Every N steps: a grid of EMA samples in OUT/samples and the EMA model in OUT/model."""

    def __init__(self, out: Path, every: int, size: int):
        self.out, self.every, self.size = out, every, size
        self.t0 = time.monotonic()

    def _emit(self, pl_module: DiffusionPretrainModule, step: int) -> None:
        pipe = pl_module.pipeline(ema=True)
        (self.out / "samples").mkdir(parents=True, exist_ok=True)
        sample_grid(pipe, n=16, size=self.size, steps=25, seed=0).save(self.out / "samples" / f"step-{step:06d}.png")
        pipe.save_pretrained(self.out / "model", safe_serialization=True)
        (self.out / "model" / "training_state.json").write_text(json.dumps(
            {"global_step": step, "wall_minutes_this_session": round((time.monotonic() - self.t0) / 60, 2)}))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if trainer.is_global_zero and step % self.every == 0 and step > 0:
            self._emit(pl_module, step)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self._emit(pl_module, trainer.global_step)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        ds = trainer.train_dataloader.dataset if trainer.train_dataloader is not None else None
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(trainer.current_epoch)


def pretrain(cfg: PretrainConfig) -> Path:
    out = Path(cfg.out)
    files = list_images(cfg.images)
    photos = load_photos(files, max_side=max(256, cfg.size * 4))
    ckpt_dir = out / "checkpoints"
    if cfg.resume and not (ckpt_dir / "last.ckpt").exists():
        raise UserError(f"--resume: {ckpt_dir / 'last.ckpt'} does not exist")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    record = asdict(cfg)
    record["image_files"] = [str(f) for f in files]
    write_config(out, record)
    module = DiffusionPretrainModule(size=cfg.size, channels=tuple(cfg.channels),
                                     layers_per_block=cfg.layers_per_block, lr=cfg.lr)
    n_params = sum(p.numel() for p in module.unet.parameters())
    log.info("UNet2DModel with %.2f M parameters; %d photos", n_params / 1e6, len(photos))
    data = torch.utils.data.DataLoader(PhotoCrops(photos, cfg.size, cfg.crops_per_epoch, cfg.seed),
                                       batch_size=cfg.batch_size, shuffle=False, drop_last=True, num_workers=0)
    gpu = torch.cuda.is_available() and cfg.accelerator != "cpu"
    precision = cfg.precision or ("bf16-mixed" if gpu else "32-true")
    trainer = L.Trainer(
        max_steps=cfg.max_steps,
        max_time={"minutes": cfg.max_minutes} if cfg.max_minutes else None,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        precision=precision,
        default_root_dir=str(out),
        logger=L.pytorch.loggers.CSVLogger(str(out), name="logs"),
        callbacks=[
            ModelCheckpoint(dirpath=str(ckpt_dir), save_last=True, every_n_train_steps=cfg.checkpoint_every,
                            save_top_k=1, monitor=None),
            SamplesAndExport(out, cfg.sample_every, cfg.size),
        ],
        enable_model_summary=False,
        log_every_n_steps=10,
    )
    # weights_only: resuming never unpickles code, whatever torch's default (issue 13)
    trainer.fit(module, train_dataloaders=data, ckpt_path="last" if cfg.resume else None, weights_only=True)
    return out / "model"
