"""Generate-stage scaling and cost, measured side by side in one run (CPU).

1. samples/s of `cdc-aug generate` with 1 process and with 2 processes (one torch
   thread each) on the same renders, same model, same steps; ratio printed (target >= 1.8
   on >= 200 samples). The work is split in output shards of --samples-per-shard, chosen
   here so that each process gets the same number of samples. The ratio of CPU seconds per
   sample (2 processes / 1) is printed too: on a machine shared with other jobs the wall
   clock ratio moves with their load, the CPU ratio shows what parallelism itself costs.
2. samples/s and peak resident memory of a long run (default 1,000 samples) with the
   bundled model, next to the peak of a run a fifth as long: equal peaks = flat memory.

    .venv/bin/python bench/generate_scaling.py [--scaling-samples 200] [--samples 1000] [--steps 4] [--size 64]
                                               [--long-steps 2] [--long-size 32] [--skip-long]
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


def make_renders(out: Path, samples: int, views: int, size: int) -> Path:
    """About ``samples`` procedural renders (4 categories x shapes x ``views``)."""
    sys.path.insert(0, str(ROOT))
    from render.api import render_dataset

    per_category = max(1, -(-samples // (4 * views)))
    render_dataset(out, source="procedural", categories=("chair", "table", "sofa", "lamp"),
                   max_shapes=per_category, views=views, size=size, workers=2, seed=0,
                   shapes_per_shard=2, progress=False)
    return out


def run_generate(renders: Path, out: Path, nproc: int, steps: int, model: str | None, batch: int,
                 per_shard: int) -> dict:
    cmd = [sys.executable, "-m", "cdc_aug", "generate", "--in", str(renders), "--out", str(out), "--split", "all",
           "--steps", str(steps), "--nproc", str(nproc), "--threads", "1", "--batch-size", str(batch),
           "--samples-per-shard", str(per_shard), "--no-progress"]
    if model:
        cmd += ["--model", model]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    # wait4 gives this child's own CPU time and peak RSS, and those of the processes it waited for.
    _, status, usage = os.wait4(proc.pid, 0)
    dt = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"generate failed: {' '.join(cmd)}")
    n = json.loads((out / "index.json").read_text())["num_samples"]
    cpu = usage.ru_utime + usage.ru_stime
    return {"samples": n, "seconds": dt, "per_s": n / dt, "cpu": cpu, "peak_mb": usage.ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1000, help="samples in the long run")
    ap.add_argument("--scaling-samples", type=int, default=200)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--long-steps", type=int, default=2, help="DDIM steps of the memory runs")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--long-size", type=int, default=32, help="image side of the memory runs")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--model", default=None, help="default: the bundled model")
    ap.add_argument("--skip-long", action="store_true")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs, load average {load:.1f} at start (other jobs share this machine)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small = make_renders(tmp / "small", args.scaling_samples, views=10, size=args.size)
        n = json.loads((small / "index.json").read_text())["num_samples"]
        per_shard = -(-n // 8)  # 8 output shards: 4 per process
        # warm-up (imports, page cache) so neither timed run pays it alone
        run_generate(small, tmp / "warm", 1, 2, args.model, args.batch_size, per_shard)
        one = run_generate(small, tmp / "one", 1, args.steps, args.model, args.batch_size, per_shard)
        two = run_generate(small, tmp / "two", 2, args.steps, args.model, args.batch_size, per_shard)
        print(f"scaling ({one['samples']} samples in 8 output shards, {args.size}px, {args.steps} DDIM steps, "
              f"batch {args.batch_size}, 1 thread/process):")
        for name, r in (("1 process  ", one), ("2 processes", two)):
            print(f"  {name}: {r['per_s']:.2f} samples/s ({r['seconds']:.1f} s wall, {r['cpu']:.1f} CPU s, "
                  f"{1000 * r['cpu'] / r['samples']:.0f} CPU ms/sample)")
        print(f"  ratio 2/1 : {two['per_s'] / one['per_s']:.2f}  (target >= 1.8); "
              f"CPU per sample 2/1: {two['cpu'] / one['cpu']:.2f} (1.0 = no parallel overhead)")
        print(f"  load average now {os.getloadavg()[0]:.1f}")
        if args.skip_long:
            return
        fifth = make_renders(tmp / "fifth", args.samples // 5, views=25, size=args.long_size)
        short = run_generate(fifth, tmp / "short", 1, args.long_steps, args.model, args.batch_size, 256)
        big = make_renders(tmp / "big", args.samples, views=25, size=args.long_size)
        long = run_generate(big, tmp / "long", 1, args.long_steps, args.model, args.batch_size, 256)
        for name, r in (("short run", short), ("long run ", long)):
            print(f"{name}: {r['samples']} samples in {r['seconds']:.1f} s = {r['per_s']:.2f} samples/s "
                  f"(1 process, {args.long_size}px, {args.long_steps} steps), peak RSS {r['peak_mb']:.0f} MB")
        print(f"  peak memory long/short: {long['peak_mb'] / short['peak_mb']:.2f} (flat = 1.0)")


if __name__ == "__main__":
    main()
