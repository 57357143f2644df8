from __future__ import annotations

import argparse
from pathlib import Path

from cdc_aug.errors import UserError


def register(sub, help_text: str) -> None:
    p = sub.add_parser("eval", help=help_text, description=help_text + (
        ". Writes per_view.csv, summary.json (per category and overall), config.yaml and "
        "samples/ (inputs next to renders of their reconstructions) into --out."))
    p.add_argument("--ckpt", required=True, help="a `cdc-aug train` checkpoint (.ckpt)")
    p.add_argument("--data", required=True, nargs="+",
                   help="a render directory or a generate run (index.json, splits.json); several: the model is "
                        "loaded once and each is evaluated into the matching --out")
    p.add_argument("--split", default="test", help="split of splits.json to evaluate (default: test)")
    p.add_argument("--views", help="comma-separated view indices (default: every view)")
    p.add_argument("--resolution", type=int, default=128, help="marching-cubes grid (default: 128)")
    p.add_argument("--chunk", type=int, help="SDF points per forward pass (default: 8192 on CPU, 65536 on GPU)")
    p.add_argument("--dense", action="store_true",
                   help="evaluate every grid point instead of refining coarse to fine (same mesh, slower)")
    p.add_argument("--points", type=int, default=100_000, help="points sampled on each mesh (default: 100000)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--save-meshes", type=int, default=4,
                   help="views whose input, reconstruction render and mesh are kept (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="surface sampling seed (default: 0)")
    p.add_argument("--out", required=True, nargs="+", help="output directory, one per --data")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def parse_views(text: str | None) -> list[int] | None:
    if text is None or text.strip() in ("", "all"):
        return None
    try:
        views = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--views: expected comma-separated integers, got {text!r}") from None
    if not views or min(views) < 0:
        raise UserError(f"--views: expected non-negative view indices, got {text!r}")
    return views


def run(args: argparse.Namespace) -> int:
    ckpt = Path(args.ckpt)
    if not ckpt.is_file():
        raise UserError(f"--ckpt: {ckpt} does not exist")
    if args.resolution < 8:
        raise UserError(f"--resolution: must be >= 8, got {args.resolution}")
    if args.chunk is not None and args.chunk < 1:
        raise UserError(f"--chunk: must be >= 1, got {args.chunk}")
    if args.save_meshes < 0:
        raise UserError(f"--save-meshes: must be >= 0, got {args.save_meshes}")
    views = parse_views(args.views)

    from eval.evaluate import evaluate, select
    from eval.identity import model_identity

    if len(args.data) != len(args.out):
        raise UserError(f"--out: {len(args.out)} directories for {len(args.data)} --data directories")
    # Every input checked before the model is loaded and the first view is reconstructed.
    for data in args.data:
        select(data, args.split, views)
    import torch

    from train_svr.inference import load_model, reconstruct

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available")
    model = load_model(ckpt, device=device)

    def reconstruct_fn(image, camera):
        return reconstruct(model, image, camera, resolution=args.resolution, chunk=args.chunk,
                           coarse_to_fine=not args.dense)

    config = {"ckpt": str(ckpt.resolve()), "resolution": args.resolution, "chunk": args.chunk, "device": device,
              "dense": args.dense}
    identity = {**model_identity(ckpt), "resolution": args.resolution}
    for data, out in zip(args.data, args.out):
        summary = evaluate(data, reconstruct_fn, out, split=args.split, views=views, n_points=args.points,
                           save_meshes=args.save_meshes, progress=not args.no_progress, seed=args.seed,
                           identity=identity, config=config)
        o = summary["overall"]
        print(f"{summary['model']} on {summary['domain']} ({summary['split']}, {o['n_views']} views of "
              f"{o['n_shapes']} shapes): chamfer_l1 {o['chamfer_l1']:.4f}  fscore@0.01 {o['fscore@0.01']:.3f}  "
              f"normal_consistency {o['normal_consistency']:.3f}  iou_3d {o['iou_3d']:.3f}  iou_2d {o['iou_2d']:.3f}")
        print(f"wrote {Path(out) / 'summary.json'}")
    return 0
