"""``cdc-aug train``: LightningCLI over SVRModule and SVRDataModule.

Besides Lightning's own flags: ``--name`` (runs go to ``<runs_dir>/<name>``: TensorBoard
and CSV logs, config.yaml, checkpoints/), ``--runs_dir`` and ``--ckpt_path`` (a checkpoint
to resume from, or ``last``). Precision, when not given, is bf16-mixed on GPUs that
support it, 16-mixed on other GPUs and 32-true on CPU.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from cdc_aug.errors import UserError
from cdc_aug.runinfo import output_lock

from .datamodule import SVRDataModule
from .module import SVRModule


def default_precision(accelerator) -> str:
    on_gpu = torch.cuda.is_available() and str(accelerator) in ("auto", "gpu", "cuda")
    if not on_gpu:
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


class SVRCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--name", type=str, default="svr", help="run name: logs and checkpoints in runs_dir/name")
        parser.add_argument("--runs_dir", type=str, default="runs", help="directory holding the runs")
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="resume from this checkpoint, or 'last' for the run's last one")
        parser.link_arguments("data.image_size", "model.image_size")

    def instantiate_trainer(self, **kwargs):
        cfg = self.config_init
        run_dir = Path(cfg["runs_dir"]) / cfg["name"]
        trainer_cfg = cfg.get("trainer", {})
        if trainer_cfg.get("logger") is None:
            kwargs["logger"] = [TensorBoardLogger(str(run_dir), name="", version="tensorboard"),
                                # a new version_N per run: a resumed run must not overwrite the CSV
                                CSVLogger(str(run_dir), name="csv")]
        if trainer_cfg.get("precision") is None:
            kwargs["precision"] = default_precision(trainer_cfg.get("accelerator", "auto"))
        if trainer_cfg.get("default_root_dir") is None:
            kwargs["default_root_dir"] = str(run_dir)
        trainer = super().instantiate_trainer(**kwargs)
        for c in trainer.callbacks:
            if isinstance(c, ModelCheckpoint) and c.dirpath is None:
                c.dirpath = str(run_dir / "checkpoints")
                c.save_last = True
        return trainer


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


def quiet_lightning() -> None:
    """Lightning's advertising tips and deprecation warnings are no business of a user of
    cdc-aug (issue 14); its other messages (devices, warnings about the data) stay."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_NoTips())
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"lightning\.")


def build_cli(argv: list[str], module=SVRModule, prog: str = "cdc-aug train", datamodule=SVRDataModule,
              cli_class=SVRCLI) -> SVRCLI:
    return cli_class(module, datamodule, args=argv, run=False, seed_everything_default=0,
                     save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False,
                     parser_kwargs={"prog": prog, "exit_on_error": False})


def main(argv: list[str], module=SVRModule, prog: str = "cdc-aug train", datamodule=SVRDataModule,
         cli_class=SVRCLI) -> int:
    """Parse, check every input, train. Returns the exit code (2 for a bad flag or key).
    ``module``, ``datamodule``, ``cli_class``: the LightningModule (train_svr.camera.CameraModule for
    `train-camera`), its data and the CLI class (cdc_aug.commands.pretrain's for `pretrain`,
    which keeps this run layout)."""
    from jsonargparse import ArgumentError

    quiet_lightning()
    with warnings.catch_warnings():
        # cdc-aug passes the arguments explicitly; the warning about sys.argv is noise here
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        try:
            cli = build_cli(list(argv), module, prog, datamodule, cli_class)
        except ArgumentError as e:  # an unknown key, a bad value: one line, not the whole usage
            raise UserError(" ".join(str(e).split())) from None
        except SystemExit as e:  # --help
            return int(e.code) if isinstance(e.code, int) else (0 if e.code is None else 2)
    ckpt = cli.config_init.get("ckpt_path")
    # One run per run directory: the first process of a (distributed) run holds the lock.
    first = all(os.environ.get(v, "0") == "0" for v in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))
    run_dir = Path(cli.config_init["runs_dir"]) / cli.config_init["name"]
    with output_lock(run_dir, "cdc-aug train") if first else contextlib.nullcontext():
        # weights_only: resuming never unpickles code, whatever torch's default (issue 13)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt, weights_only=True)
    if cli.trainer.is_global_zero:
        print(f"run folder: {run_dir} (checkpoints/last.ckpt, tensorboard/ with config.yaml, csv/)")
    return 0
