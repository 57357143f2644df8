from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

from cdc_aug.errors import UserError
from cdc_aug.sampling import DEFAULTS as D


def register(sub, help_text: str) -> None:
    p = sub.add_parser(
        "generate",
        help=help_text,
        description=help_text + ". The object is guided for t_in of the steps, the scene generated freely "
        "(t_out=0); defaults in cdc_aug/sampling.py, shared with composite. The paper's SVR setting: "
        "--config configs/generate/paper_svr.yaml. Multi-GPU: launch with "
        "`torchrun --nproc-per-node G [--nnodes N --rdzv-endpoint HOST:PORT] -m cdc_aug generate ...` "
        "or `srun`; --nproc N spawns N local processes.",
    )
    p.add_argument("--config", default=None,
                   help="YAML file of settings (keys: these flags' names, e.g. t_in, model_size), such as "
                        "configs/generate/paper_svr.yaml or a run's config.yaml; flags given on the command line win")
    p.add_argument("--in", dest="in_dir", default="data/renders", help="render stage directory (default: %(default)s)")
    p.add_argument("--out", required=True, help="output directory; with several --t-in values, one subdirectory tNNN each")
    p.add_argument("--mode", choices=["ilvr", "copy-paste"], default="ilvr")
    p.add_argument("--t-in", default=str(D.t_in),
                   help="object guidance fraction in [0,1]; a comma list runs a sweep (default %(default)s)")
    p.add_argument("--t-out", type=float, default=D.t_out,
                   help="background guidance fraction (default %(default)s: free scene)")
    p.add_argument("--n-in", type=int, default=D.n_in, help="low-pass factor inside the mask (default %(default)s)")
    p.add_argument("--n-out", type=int, default=D.n_out, help="low-pass factor outside the mask (default %(default)s)")
    p.add_argument("--space", choices=["x0", "xt"], default=D.space, help="default %(default)s")
    p.add_argument("--blur", default=D.blur, help="mask blur sigma in pixels, or auto (tied to N; default)")
    p.add_argument("--model", default=None, help="diffusers model dir or hub id (default: the bundled model)")
    p.add_argument("--model-size", default=D.model_size,
                   help="size the model samples at: native (default: the model's own, e.g. 512 for SD 1.5), "
                        "input (the render's size), N or WxH; outputs keep the render's size")
    p.add_argument("--steps", type=int, default=D.steps, help="DDIM steps (default %(default)s)")
    p.add_argument("--guidance", type=float, default=D.guidance,
                   help="classifier-free guidance (text models; default %(default)s)")
    p.add_argument("--prompt", default=None, help="template with {category} and {scene} (text models)")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--scenes", default=None, help="file with one scene per line (default: built-in list)")
    p.add_argument("--backgrounds", default=None,
                   help="photo directory, or a text file listing photos, for --mode copy-paste")
    p.add_argument("--label", default=None,
                   help="the test-domain name evaluation and reports use for this run (default: from the "
                        "mode and t_in, e.g. t_in=0.5 or copy-paste); letters, digits, - _ . = only")
    p.add_argument("--resample-start", type=float, default=D.resample_start,
                   help="RePaint resampling from this fraction (0: off)")
    p.add_argument("--jump-length", type=int, default=D.jump_length, help="default %(default)s")
    p.add_argument("--jump-n-sample", type=int, default=D.jump_n_sample, help="default %(default)s")
    p.add_argument("--batch-size", type=int, default=None, help="per process (default: 4 on CPU, 8 on CUDA)")
    p.add_argument("--seed", type=int, default=D.seed)
    p.add_argument("--split", default="train", help="train | val | test | all (default: %(default)s)")
    p.add_argument("--views", default=None,
                   help="comma-separated view indices to augment, e.g. 0,1,2,33,34,35 (default: every view)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--nproc", type=int, default=1, help="spawn this many local processes (gloo on CPU, nccl on CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process")
    p.add_argument("--overwrite", action="store_true", help="replace a run with other parameters in --out")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run, _parser=p)


# keys a generate run's config.yaml records that are not flags (--out and --in are given anew)
RECORD_ONLY = ("out_dir", "model_identity", "reference_grey", "progress")


def parse_t_values(text: str) -> list[float]:
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError as e:
        raise UserError(f"--t-in {text}: not a number or comma list of numbers") from e
    if not values:
        raise UserError("--t-in: no value given")
    for v in values:
        if not 0.0 <= v <= 1.0:
            raise UserError(f"--t-in {v}: must lie in [0, 1]")
    return values


def make_configs(args: argparse.Namespace):
    from cdc_aug.commands.eval import parse_views
    from cdc_aug.generate import GenerateConfig
    from cdc_aug.scenes import DEFAULT_NEGATIVE, DEFAULT_PROMPT

    t_values = parse_t_values(args.t_in) if args.mode == "ilvr" else [0.0]
    configs = []
    for t in t_values:
        out = Path(args.out)
        if len(t_values) > 1:
            out = out / f"t{round(t * 100):03d}"
        configs.append(
            GenerateConfig(
                in_dir=args.in_dir,
                out_dir=str(out),
                mode=args.mode,
                t_in=t,
                t_out=args.t_out,
                n_in=args.n_in,
                n_out=args.n_out,
                space=args.space,
                blur=args.blur,
                model=args.model,
                model_size=str(args.model_size),
                steps=args.steps,
                guidance=args.guidance,
                prompt=args.prompt or DEFAULT_PROMPT,
                # "" is a valid negative prompt (the paper's: none)
                negative_prompt=DEFAULT_NEGATIVE if args.negative_prompt is None else args.negative_prompt,
                scenes=args.scenes,
                backgrounds=args.backgrounds,
                resample_start=args.resample_start,
                jump_length=args.jump_length,
                jump_n_sample=args.jump_n_sample,
                seed=args.seed,
                split=args.split,
                views=parse_views(args.views),
                label=args.label,
                dtype=args.dtype,
                batch_size=args.batch_size,
                device=args.device,
                threads=args.threads,
                overwrite=args.overwrite,
                progress=not args.no_progress,
            )
        )
    return configs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned(local_rank: int, nproc: int, port: int, cfg) -> None:
    os.environ.update(
        RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(nproc),
        LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )
    from cdc_aug.generate import run_generate

    run_generate(cfg)


def run(args: argparse.Namespace) -> int:
    from cdc_aug.generate import check_config, run_generate

    if args.config:
        from cdc_aug.runinfo import apply_settings_file

        apply_settings_file(args, args._parser, args.config, record_only=RECORD_ONLY)
    if args.nproc < 1:
        raise UserError(f"--nproc {args.nproc}: must be at least 1")
    configs = make_configs(args)
    for cfg in configs:
        check_config(cfg)
    for cfg in configs:
        if args.nproc == 1:
            index = run_generate(cfg)
        else:
            import torch.multiprocessing as mp

            if cfg.threads is None:
                cfg.threads = max(1, (os.cpu_count() or 1) // args.nproc)
            mp.start_processes(_spawned, args=(args.nproc, _free_port(), cfg), nprocs=args.nproc,
                               start_method="spawn", join=True)
            from cdc_aug.shards import read_index

            index = read_index(cfg.out_dir)
        if index is not None:
            from cdc_aug.shards import read_failures

            nfail = len(read_failures(cfg.out_dir))
            print(f"{cfg.out_dir}: {index['num_samples']} samples in {len(index['shards'])} shards, "
                  f"{nfail} failures recorded")
    return 0
