"""Is the data loader fast enough to keep the SVR training step fed?

Measures samples/s of (a) the DataLoader alone (shard reading, PNG decoding, h5 point
sampling, collation) and (b) the training step alone (forward, three losses, backward,
Adam) on batches already in memory, and prints the ratio. The loader should stay at least
3x ahead of the step.

    .venv/bin/python bench/train_throughput.py                    # tiny scale (64 px), CPU
    .venv/bin/python bench/train_throughput.py --scale paper      # 224 px, batch 16 (GPU: bf16)
    .venv/bin/python bench/train_throughput.py --shards data/renders --workers 4

Without --shards it renders a small procedural set into a temporary directory first.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from train_svr.datamodule import SVRDataModule  # noqa: E402
from train_svr.losses import svr_losses  # noqa: E402
from train_svr.module import SVRModule  # noqa: E402

SCALES = {
    # image size, batch, points, encoder/latent/decoder/detail widths (as configs/train/*.yaml)
    "tiny": dict(size=64, batch=8, points=1024, model=dict(encoder_width=16, latent_dim=64, decoder_width=32,
                                                           detail_channels=16)),
    "paper": dict(size=224, batch=16, points=2048, model=dict(encoder_width=64, latent_dim=128, decoder_width=64,
                                                              detail_channels=64)),
}


def render_set(out: Path, size: int) -> Path:
    from render.api import render_dataset

    render_dataset(out / "renders", source="procedural", categories=("chair", "table", "sofa", "lamp"), max_shapes=3,
                   views=8, size=size, seed=0, progress=False, gt_surface_points=10000, gt_sdf_points=32768,
                   gt_occ_points=1000)
    return out / "renders"


def to_device(batch: dict, device: str) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def loader_rate(dm: SVRDataModule, batches: int) -> float:
    loader = dm.train_dataloader()
    it = iter(itertools.chain.from_iterable(itertools.repeat(loader)))  # epochs back to back
    next(it)  # worker start-up is not throughput
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * dm.batch_size / (time.perf_counter() - t)


def step_rate(model: SVRModule, batches: list[dict], steps: int, device: str, precision: str) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=5e-5)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")

    def one(batch):
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model.net(batch["image"], batch["points"], batch["K"], batch["RT"])
            loss = svr_losses(out, batch)["loss"]
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    one(batches[0])  # warm-up (cuDNN autotuning, allocator)
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(steps):
        one(batches[i % len(batches)])
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batches[0]["image"].shape[0] / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", choices=sorted(SCALES), default="tiny")
    ap.add_argument("--shards", help="render directory or generate run (default: render a small procedural set)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    ap.add_argument("--batches", type=int, default=30, help="batches timed for the loader")
    ap.add_argument("--steps", type=int, default=20, help="training steps timed")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads of the step (on a shared 2-core machine 2 threads ran 30x slower than 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sc = SCALES[args.scale]
    precision = "fp32"
    if args.device == "cuda":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(args.shards) if args.shards else render_set(Path(tmp), sc["size"])
        dm = SVRDataModule(str(shards), image_size=sc["size"], batch_size=sc["batch"], num_workers=args.workers,
                           points=sc["points"], val_shapes=0, epoch_samples=max(sc["batch"] * max(args.workers, 1)
                                                                                * 4, 64))
        load = loader_rate(dm, args.batches)
        model = SVRModule(image_size=sc["size"], **sc["model"]).to(args.device).train()
        held = [to_device(b, args.device) for b in itertools.islice(iter(dm.train_dataloader()), 4)]
        train = step_rate(model, held, args.steps, args.device, precision)
    print(f"scale {args.scale}: {sc['size']}px, batch {sc['batch']}, {sc['points']} points, device {args.device} "
          f"({precision}), {args.workers} loader workers, torch threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}")
    print(f"data loader alone: {load:8.1f} samples/s")
    print(f"training step:     {train:8.1f} samples/s")
    ratio = load / train
    print(f"loader / step = {ratio:.2f}x ({'OK' if ratio >= 3 else 'BELOW'} the 3x target)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
