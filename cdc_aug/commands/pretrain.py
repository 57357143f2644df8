from __future__ import annotations

import argparse


def register(sub, help_text: str) -> None:
    p = sub.add_parser(
        "pretrain", help=help_text,
        description=help_text + ": an unconditional diffusers UNet2DModel on random-scale crops of photos, "
        "with EMA weights; writes a diffusers DDPMPipeline directory (DDIM scheduler) to OUT/model.",
    )
    p.add_argument("--config", default=None,
                   help="YAML of settings (keys: these flags' names, e.g. max_steps), or a run's config.yaml "
                        "such as cdc_aug/default_model/training_config.yaml; flags given on the command line win")
    p.add_argument("--images", default=None, help="folder of photographs (searched recursively); required")
    p.add_argument("--out", default=None, help="run directory: checkpoints/, samples/, model/, config.yaml; required")
    p.add_argument("--size", type=int, default=64, help="training crop size (default: %(default)s)")
    p.add_argument("--channels", default="32,64,128", help="UNet block widths (default: %(default)s)")
    p.add_argument("--layers-per-block", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--max-steps", type=int, default=20000)
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this much training time")
    p.add_argument("--sample-every", type=int, default=500, help="sample grid + model export every N steps")
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto, cpu, gpu")
    p.add_argument("--devices", default="auto", help="Lightning devices (e.g. 4 for DDP on four GPUs)")
    p.add_argument("--precision", default=None, help="default: bf16-mixed on GPU, 32 on CPU")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.ckpt")
    p.set_defaults(func=run, _parser=p)


# keys a run's config.yaml records that are not flags
RECORD_ONLY = {"image_files", "crops_per_epoch"}


def _apply_config(args: argparse.Namespace) -> None:
    """Fill flags left at their defaults from ``--config``."""
    from cdc_aug.errors import UserError
    from cdc_aug.runinfo import read_settings_file

    data = read_settings_file(args.config)
    parser = args._parser
    flags = {a.dest for a in parser._actions} - {"help", "config", "func", "_parser"}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest in RECORD_ONLY:
            continue
        if dest not in flags:
            raise UserError(f"--config: {args.config}: unknown setting {key!r}")
        if getattr(args, dest) == parser.get_default(dest):
            if dest == "channels" and isinstance(value, list):
                value = ",".join(map(str, value))
            setattr(args, dest, value)


def run(args: argparse.Namespace) -> int:
    from cdc_aug.errors import UserError

    if args.config:
        _apply_config(args)
    for name in ("images", "out"):
        if not getattr(args, name):
            raise UserError(f"--{name} is required (on the command line or in --config)")
    try:
        channels = tuple(int(c) for c in args.channels.split(","))
    except ValueError as e:
        raise UserError(f"--channels {args.channels}: expected comma-separated integers") from e
    if args.size < 16 or args.size % 2 ** (len(channels) - 1):
        raise UserError(f"--size {args.size}: must be >= 16 and divisible by {2 ** (len(channels) - 1)}")
    for name in ("batch_size", "max_steps", "sample_every", "checkpoint_every"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    from cdc_aug.pretrain.train import PretrainConfig, pretrain

    cfg = PretrainConfig(
        images=args.images, out=args.out, size=args.size, channels=list(channels),
        layers_per_block=args.layers_per_block, batch_size=args.batch_size, lr=args.lr, max_steps=args.max_steps,
        max_minutes=args.max_minutes, sample_every=args.sample_every, checkpoint_every=args.checkpoint_every,
        seed=args.seed, threads=args.threads, accelerator=args.accelerator, devices=args.devices,
        precision=args.precision, resume=args.resume,
    )
    model_dir = pretrain(cfg)
    print(f"model written to {model_dir}")
    return 0
