"""CPU seconds of a whole `cdc-aug train` process (the smoke experiment's tiny model), under
process-level variants, side by side in one run, alternating per repeat so that load on a
shared machine falls on every variant alike. Also checks that every variant trains the
same weights (a variant that changes the model is not a speed-up).

Variants:
- as configured: configs/train/tiny.yaml (one DataLoader worker process), glibc malloc defaults;
- ``workers0``: ``--data.num_workers 0``: batches made in the training process; the
  webdataset pipeline gives one worker and no worker the same sample order;
- ``malloc``: MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ raised (what
  ``cdc_aug.experiment.stage_env`` sets): freed activations stay in the heap instead of
  going back to the kernel each step, so they are not page-faulted in again;
- ``both``.

    .venv/bin/python bench/train_stage.py --data data/experiments/smoke/aug/t025 [--epochs 5 --repeats 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cdc_aug.experiment import MALLOC_ENV  # noqa: E402

VARIANTS = {
    "as configured": ([], {}),
    "workers0": (["--data.num_workers", "0"], {}),
    "malloc": ([], MALLOC_ENV),
    "both": (["--data.num_workers", "0"], MALLOC_ENV),
}


def run(data: str, epochs: int, runs: Path, name: str, args: list[str], env_extra: dict) -> tuple[float, float, float]:
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
    env.update({"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **env_extra})
    cmd = [sys.executable, "-m", "cdc_aug", "train", "--config", "configs/train/tiny.yaml", "--runs_dir", str(runs),
           "--name", name, "--data.shards", f"[{data}]", "--trainer.max_epochs", str(epochs),
           "--trainer.enable_progress_bar", "false", *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


def weights(ckpt: Path):
    import torch

    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data/experiments/smoke/aug/t025", help="a shard set to train on")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    import torch

    results: dict[str, list[tuple[float, float, float]]] = {v: [] for v in VARIANTS}
    print(f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, {args.epochs} epochs of {args.data}")
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for i, (label, (flags, env)) in enumerate(VARIANTS.items()):
                results[label].append(run(args.data, args.epochs, Path(tmp), f"v{i}r{r}", flags, env))
        ref = weights(Path(tmp) / "v0r0" / "checkpoints" / "last.ckpt")
        same = {label: all(all(torch.equal(ref[k], w[k]) for k in ref)
                           for w in (weights(Path(tmp) / f"v{i}r{r}" / "checkpoints" / "last.ckpt")
                                     for r in range(args.repeats)))
                for i, label in enumerate(VARIANTS)}
    base = None
    print(f"{'variant':<16} {'wall s':>8} {'user s':>8} {'sys s':>7} {'CPU s':>7} {'CPU ratio':>10}  same weights")
    for label, rs in results.items():
        wall, user, sys_ = (sum(x[i] for x in rs) / len(rs) for i in range(3))
        base = base or user + sys_
        print(f"{label:<16} {wall:8.1f} {user:8.1f} {sys_:7.1f} {user + sys_:7.1f} {(user + sys_) / base:10.3f}  "
              f"{'yes' if same[label] else 'NO'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
