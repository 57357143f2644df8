"""``cdc-aug pretrain``: a small unconditional pixel-space diffusion model (diffusers
UNet2DModel, cosine DDPM schedule) on random-scale crops of photographs, through the same
LightningCLI and run layout as ``cdc-aug train``: ``<runs_dir>/<name>`` holds tensorboard/
(with config.yaml), csv/, checkpoints/, samples/step-N.png and model/, the EMA weights as a
diffusers pipeline directory (DDIM scheduler) that ``generate``/``composite`` load.

    cdc-aug pretrain --config configs/pretrain/default.yaml            # the bundled default model
    cdc-aug pretrain --config configs/pretrain/default.yaml --print_config
    cdc-aug pretrain --data.images my_photos/ --name my-model --trainer.max_time 00:01:00:00
    cdc-aug pretrain --config runs/my-model/tensorboard/config.yaml --ckpt_path last   # resume

Besides Lightning's trainer flags: ``--ema.*`` (EMA warm-up and decay), ``--checkpoint.*``
(ModelCheckpoint; ``every_n_train_steps``), ``trainer.val_check_interval`` (steps between
sample grids and model exports).
"""

from __future__ import annotations

import logging

from lightning.pytorch.callbacks import ModelCheckpoint

from cdc_aug.pretrain.data import PhotoDataModule
from cdc_aug.pretrain.module import EMA, DiffusionPretrainModule
from train_svr.cli import SVRCLI
from train_svr.cli import main as lightning_main


class PretrainCLI(SVRCLI):
    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)  # --name, --runs_dir, --ckpt_path, data.image_size -> model
        parser.add_lightning_class_args(EMA, "ema")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "name": "pretrain",
            "checkpoint.every_n_train_steps": 200,
            "trainer.max_steps": 20000,
            # sample grid + export every N steps, counted across epochs
            "trainer.val_check_interval": 500,
            "trainer.check_val_every_n_epoch": None,
            "trainer.num_sanity_val_steps": 0,
            "trainer.log_every_n_steps": 10,
            "trainer.enable_model_summary": False,
        })


def _no_tips(record: logging.LogRecord) -> bool:
    # Lightning advertises its cloud products ("💡 Tip: ... litlogger / litmodels") on every run.
    return "Tip:" not in record.getMessage()


def main(argv: list[str]) -> int:
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_no_tips)
    return lightning_main(argv, DiffusionPretrainModule, "cdc-aug pretrain", PhotoDataModule, PretrainCLI)
