"""The ``cdc-aug`` console script: one subcommand per stage.

Each subcommand lives in ``cdc_aug/commands/<name>.py``: ``settings_class()`` returns the
dataclass that declares its settings (flags, ``--config`` keys, Python API; see
``cdc_aug/settings.py``) and ``run(settings)`` runs it. Heavy imports (torch, diffusers,
pyrender) happen inside ``run`` so that ``cdc-aug --help`` answers at once. ``train``,
``train-camera`` and ``pretrain`` hand their arguments to LightningCLI unchanged.
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
HELP = dict(COMMANDS)
# LightningCLI entries: their arguments go to LightningCLI unchanged
LIGHTNING_COMMANDS = {"train": "train_svr.cli", "train-camera": "cdc_aug.commands.train_camera",
                      "pretrain": "cdc_aug.commands.pretrain"}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: --help lists the commands; each parses its own arguments."""
    parser = argparse.ArgumentParser(
        prog="cdc-aug",
        description="Synthetic SVR training data through masked-ILVR diffusion compositing.",
    )
    parser.add_argument("--version", action="version", version=f"cdc-aug {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS:
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def command_module(name: str):
    return importlib.import_module(f"cdc_aug.commands.{name.replace('-', '_')}")


def resolve(name: str, argv: list[str]):
    """The settings ``cdc-aug NAME ARGV`` runs with (None after --print_config)."""
    from .settings import parse

    module = command_module(name)
    description = getattr(module, "HELP", "{help}.").format(help=HELP[name])
    return parse(module.settings_class(), argv, prog=f"cdc-aug {name}", description=description,
                 record_only=getattr(module, "RECORD_ONLY", ()),
                 types=module.cli_types() if hasattr(module, "cli_types") else None)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = False
    while argv and argv[0] in ("-v", "--verbose"):
        verbose, argv = True, argv[1:]
    if not argv or argv[0] not in HELP:
        parser = build_parser()
        parser.parse_args(argv)  # --help, --version, or an unknown command: argparse answers
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        if name in LIGHTNING_COMMANDS:
            return importlib.import_module(LIGHTNING_COMMANDS[name]).main(rest) or 0
        module = command_module(name)
        settings = resolve(name, rest)
        if settings is None:  # --print_config
            return 0
        return module.run(settings) or 0
    except UserError as e:
        print(f"cdc-aug {name}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the machine, not the input: full disk, I/O error, permissions
        print(f"cdc-aug {name}: error: {describe_os_error(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cdc-aug {name}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
