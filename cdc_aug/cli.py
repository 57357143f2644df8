"""The ``cdc-aug`` console script: one subcommand per stage.

Each subcommand lives in ``cdc_aug/commands/<name>.py`` and defines ``register(sub)``,
which adds its parser and sets ``func``. Heavy imports (torch, diffusers, pyrender)
happen inside the ``func``s so that ``cdc-aug --help`` answers at once.
``train``, ``train-camera`` and ``pretrain`` hand their arguments to LightningCLI unchanged.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .errors import UserError, describe_os_error

COMMANDS = [
    ("render", "render shapes to images, masks, depth, normals + per-shape ground truth"),
    ("generate", "surround each render with a diffusion-generated scene (masked ILVR)"),
    ("composite", "masked ILVR on one image: object immersion, scribble editing, sweeps"),
    ("pretrain", "train a small pixel-space diffusion model, the bundled default (LightningCLI, as `train`)"),
    ("train", "train the D2IM-Net-style SVR model (LightningCLI; see `cdc-aug train --help`)"),
    ("train-camera", "train the camera estimator for images without a camera (LightningCLI, as `train`)"),
    ("eval", "Chamfer-L1 / F-score / normal consistency / IoU of a trained model"),
    ("report", "markdown + HTML report over eval runs"),
    ("experiment", "run a whole experiment (render -> generate -> train -> eval -> report)"),
    ("verify", "check a stage's shards: presence, sha256, unique keys, required fields"),
]
# LightningCLI entries: their arguments go to LightningCLI unchanged
LIGHTNING_COMMANDS = {"train": "train_svr.cli", "train-camera": "cdc_aug.commands.train_camera",
                      "pretrain": "cdc_aug.commands.pretrain"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdc-aug",
        description="Synthetic SVR training data through masked-ILVR diffusion compositing.",
    )
    parser.add_argument("--version", action="version", version=f"cdc-aug {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS:
        if name in LIGHTNING_COMMANDS:
            sub.add_parser(name, help=help_text, add_help=False)
            continue
        try:
            module = importlib.import_module(f"cdc_aug.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"cdc_aug.commands.{name}":
                raise
            continue
        module.register(sub, help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        train_main = importlib.import_module(LIGHTNING_COMMANDS[argv[0]]).main
        try:
            return train_main(argv[1:]) or 0
        except UserError as e:
            print(f"cdc-aug {argv[0]}: error: {e}", file=sys.stderr)
            return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return args.func(args) or 0
    except UserError as e:
        print(f"cdc-aug {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the machine, not the input: full disk, I/O error, permissions
        print(f"cdc-aug {args.command}: error: {describe_os_error(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cdc-aug {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
