"""Seconds per view of `cdc-aug eval`, this tree against a baseline commit, side by side.

Both trees run the same command (``python -m cdc_aug eval`` with the experiment's flags)
in fresh processes, alternating baseline and new per repeat so that load on a shared
machine falls on both alike. Per configuration (grid resolution : surface points) it
prints the mean per-view seconds from per_view.csv (reconstruction + metrics + silhouette),
the process's wall and CPU seconds, and the start-up overhead (process wall minus the
per-view seconds: imports, model load, sample decoding and saving), the ratio, and
whether every per-view score (each per_view.csv column but seconds) is identical.

    .venv/bin/python bench/eval_speed.py --data data/experiments/smoke/renders \\
        --ckpt runs/smoke/svr-clean/checkpoints/last.ckpt --configs 48:20000,32:10000,128:100000
    .venv/bin/python bench/eval_speed.py ... --baseline none      # this tree only
    .venv/bin/python bench/eval_speed.py ... --check              # dense vs coarse-to-fine meshes

``--baseline`` is any git revision (default: git merge-base HEAD main), exported with ``git archive`` into a
temporary directory; ``--threads`` sets OMP_NUM_THREADS of the eval processes.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def export_tree(rev: str, dest: Path) -> Path:
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def run_eval(tree: Path, data: Path, ckpt: Path, res: int, points: int, views: str, out: Path,
             threads: int | None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "cdc_aug", "eval", "--ckpt", str(ckpt), "--data", str(data), "--out", str(out),
           "--views", views, "--resolution", str(res), "--points", str(points), "--no-progress"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"eval failed in {tree}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    with open(out / "per_view.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    per_view = [float(r["seconds"]) for r in rows]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"views": len(rows), "per_view": sum(per_view) / len(per_view), "wall": wall, "cpu": cpu,
            "overhead": wall - sum(per_view), "cd": sum(float(r["chamfer_l1"]) for r in rows) / len(rows),
            "scores": [{k: v for k, v in r.items() if k != "seconds"} for r in rows]}


def check(data: Path, ckpt: Path, res: int, views: list[int]) -> None:
    """Dense and coarse-to-fine extraction of the same views: identical meshes?"""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch

    from cdc_aug.samples import decode_sample
    from cdc_aug.shards import iter_tar_samples
    from eval.evaluate import select
    from train_svr.data import camera_tensors, image_tensor, input_image
    from train_svr.inference import default_chunk, load_model, mesh_from_sdf, sdf_grid

    model = load_model(ckpt)
    size = int(model.hparams.image_size)
    sel = select(data, "test", views)
    worst = 0.0
    for path, keys in sel.items.items():
        for raw in iter_tar_samples(path):
            if raw["__key__"] not in keys:
                continue
            s = decode_sample(raw, ["image.png", "rgba.png", "camera.json"])
            image = input_image(s)
            K, RT = camera_tensors(s["camera.json"], image.shape[:2], size)
            with torch.inference_mode():
                latent, maps = model.net.encode(image_tensor(image, size)[None])
            t = time.perf_counter()
            dense = mesh_from_sdf(sdf_grid(model, latent, maps, K[None], RT[None], res, default_chunk("cpu", model), False))
            td = time.perf_counter() - t
            t = time.perf_counter()
            c2f = mesh_from_sdf(sdf_grid(model, latent, maps, K[None], RT[None], res, default_chunk("cpu", model), True))
            tc = time.perf_counter() - t
            same = dense.faces.shape == c2f.faces.shape and dense.vertices.shape == c2f.vertices.shape
            err = float(np.abs(dense.vertices - c2f.vertices).max()) if same and len(dense.vertices) else 0.0
            worst = max(worst, err if same else float("inf"))
            print(f"{raw['__key__']:<48} {res}^3 faces dense {len(dense.faces):7d} c2f {len(c2f.faces):7d} "
                  f"max vertex difference {err if same else 'topology differs'}  dense {td:.2f} s  c2f {tc:.2f} s")
    print(f"worst vertex difference {worst:.3g} ({'same meshes' if worst < 1e-5 else 'MESHES DIFFER'})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data/experiments/smoke/renders")
    ap.add_argument("--ckpt", default="runs/smoke/svr-clean/checkpoints/last.ckpt")
    ap.add_argument("--configs", default="48:20000,32:10000", help="resolution:points, comma-separated")
    ap.add_argument("--views", default="0,9,18,27")
    ap.add_argument("--baseline", help="git revision to compare with, or 'none' (default: where this branch left "
                                       "main, git merge-base HEAD main)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the eval processes (default: inherited)")
    ap.add_argument("--check", action="store_true", help="compare dense and coarse-to-fine meshes instead")
    args = ap.parse_args()
    data, ckpt = Path(args.data).resolve(), Path(args.ckpt).resolve()
    if args.baseline is None:
        args.baseline = subprocess.run(["git", "-C", str(ROOT), "merge-base", "HEAD", "main"], capture_output=True,
                                       text=True, check=True).stdout.strip()[:10]
    if args.check:
        for cfg in args.configs.split(","):
            check(data, ckpt, int(cfg.split(":")[0]), [int(v) for v in args.views.split(",")])
        return 0
    print(f"cpus {os.cpu_count()}, OMP_NUM_THREADS {args.threads or os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"load average {os.getloadavg()[0]:.1f}, baseline {args.baseline}")
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"new": ROOT}
        if args.baseline != "none":
            trees = {"baseline": export_tree(args.baseline, Path(tmp) / "baseline"), **trees}
        print(f"{'config':<12} {'tree':<9} {'views':>5} {'s/view':>8} {'wall s':>8} {'cpu s':>8} "
              f"{'start-up+io s':>13} {'chamfer_l1':>10}")
        for cfg in args.configs.split(","):
            res, points = (int(x) for x in cfg.split(":"))
            got: dict[str, list[dict]] = {k: [] for k in trees}
            for rep in range(args.repeats):
                for name, tree in trees.items():
                    got[name].append(run_eval(tree, data, ckpt, res, points, args.views,
                                              Path(tmp) / f"{name}_{cfg.replace(':', '_')}_{rep}", args.threads))
            for name, rs in got.items():
                best = min(rs, key=lambda r: r["per_view"])
                print(f"{res}^3/{points // 1000}k".ljust(12) + f" {name:<9} {best['views']:5d} {best['per_view']:8.3f} "
                      f"{best['wall']:8.1f} {best['cpu']:8.1f} {best['overhead']:13.1f} {best['cd']:10.4f}")
            if len(got) == 2:
                b = min(r["per_view"] for r in got["baseline"])
                n = min(r["per_view"] for r in got["new"])
                bw = min(r["wall"] for r in got["baseline"])
                nw = min(r["wall"] for r in got["new"])
                print(f"{'':<12} speed-up per view {b / n:.2f}x, per process {bw / nw:.2f}x")
                # a speed-up must not move a score: every per_view.csv column but seconds, as written
                differ = sum(x != y for x, y in zip(got["baseline"][0]["scores"], got["new"][0]["scores"]))
                print(f"{'':<12} per-view scores: " + ("identical in all views" if not differ else
                                                      f"DIFFER in {differ} of {len(got['new'][0]['scores'])} views"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
