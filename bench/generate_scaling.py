"""Generate-stage scaling and cost, measured side by side in one run (CPU).

1. samples/s of `cdc-aug generate` with 1 process and with 2 processes (one torch
   thread each) on the same renders, same model, same steps; ratio printed (target >= 1.8).
2. samples/s and peak resident memory of a long run (default 1,000 samples) with the
   bundled model, next to the peak of a run a fifth as long: equal peaks = flat memory.

    .venv/bin/python bench/generate_scaling.py [--samples 1000] [--steps 10] [--size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_renders(out: Path, shapes: int, views: int, size: int) -> Path:
    sys.path.insert(0, str(ROOT))
    from render.api import render_dataset

    render_dataset(out, source="procedural", categories=("chair", "table", "sofa", "lamp"),
                   max_shapes=max(1, shapes // 4), views=views, size=size, workers=2, seed=0,
                   shapes_per_shard=2)
    return out


def run_generate(renders: Path, out: Path, nproc: int, steps: int, model: str | None, batch: int) -> dict:
    cmd = [sys.executable, "-m", "cdc_aug", "generate", "--in", str(renders), "--out", str(out), "--split", "all",
           "--steps", str(steps), "--nproc", str(nproc), "--threads", "1", "--batch-size", str(batch),
           "--no-progress"]
    if model:
        cmd += ["--model", model]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    # wait4 gives this child's own peak RSS (and that of the processes it waited for).
    _, status, usage = os.wait4(proc.pid, 0)
    dt = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"generate failed: {' '.join(cmd)}")
    n = json.loads((out / "index.json").read_text())["num_samples"]
    return {"samples": n, "seconds": dt, "per_s": n / dt, "peak_mb": usage.ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1000, help="samples in the long run")
    ap.add_argument("--scaling-samples", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--model", default=None, help="default: the bundled model")
    ap.add_argument("--skip-long", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        views = 8
        small = make_renders(tmp / "small", shapes=max(4, args.scaling_samples // views), views=views, size=args.size)
        # warm-up (imports, page cache) so neither timed run pays it alone
        run_generate(small, tmp / "warm", 1, 2, args.model, args.batch_size)
        one = run_generate(small, tmp / "one", 1, args.steps, args.model, args.batch_size)
        two = run_generate(small, tmp / "two", 2, args.steps, args.model, args.batch_size)
        print(f"scaling ({one['samples']} samples, {args.size}px, {args.steps} DDIM steps, 1 thread/process):")
        print(f"  1 process : {one['per_s']:.2f} samples/s ({one['seconds']:.1f} s)")
        print(f"  2 processes: {two['per_s']:.2f} samples/s ({two['seconds']:.1f} s)")
        print(f"  ratio 2/1 : {two['per_s'] / one['per_s']:.2f}  (target >= 1.8)")
        if args.skip_long:
            return
        views = 20
        fifth = make_renders(tmp / "fifth", shapes=max(4, args.samples // 5 // views), views=views, size=args.size)
        short = run_generate(fifth, tmp / "short", 1, args.steps, args.model, args.batch_size)
        big = make_renders(tmp / "big", shapes=max(4, args.samples // views), views=views, size=args.size)
        long = run_generate(big, tmp / "long", 1, args.steps, args.model, args.batch_size)
        for name, r in (("short run", short), ("long run", long)):
            print(f"{name}: {r['samples']} samples in {r['seconds']:.1f} s = {r['per_s']:.2f} samples/s "
                  f"(1 process), peak RSS {r['peak_mb']:.0f} MB")
        print(f"  peak memory long/short: {long['peak_mb'] / short['peak_mb']:.2f} (flat = 1.0)")


if __name__ == "__main__":
    main()
