"""Eval's nearest-neighbour queries, scipy's cKDTree against pykdtree (what eval/metrics.py
uses), side by side on real reconstructions, with an exactness check.

For each of ``--views`` test views it reconstructs the mesh as eval does (``--resolution``,
``--points`` surface samples in Z-order), then times, in CPU seconds per view and one
thread, both directions of the Chamfer queries (prediction -> ground truth, ground truth ->
prediction, trees built inside the timing) with each library and several leaf sizes, and
says whether distances and indices are identical.

    OMP_NUM_THREADS=1 .venv/bin/python bench/kdtree_library.py \\
        --data data/experiments/smoke/aug/t050 --ckpt runs/smoke/svr-t025/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def reconstructions(data: str, ckpt: str, n: int, resolution: int, points: int):
    """(Z-ordered predicted surface points, ground-truth surface points) of ``n`` test views,
    reconstructed as eval does (train_svr.inference.reconstruct)."""
    from cdc_aug.samples import decode_sample
    from cdc_aug.shards import iter_tar_samples
    from eval.evaluate import metric_ground_truth, select
    from eval.metrics import sample_mesh, spatial_order
    from train_svr.data import input_image
    from train_svr.inference import load_model, reconstruct

    model = load_model(ckpt)
    sel = select(data, "test", [0, 9, 18, 27])
    gt = metric_ground_truth(sel.shapes_root)
    out = []
    for path, keys in sel.items.items():
        for raw in iter_tar_samples(path):
            if raw["__key__"] not in keys or len(out) >= n:
                continue
            s = decode_sample(raw, ["image.png", "rgba.png", "camera.json"])
            synset, model_id = raw["__key__"].rsplit("_", 1)[0].split("_", 1)
            mesh = reconstruct(model, input_image(s), s["camera.json"], resolution)
            if len(mesh.faces) == 0:
                continue
            pts, _ = sample_mesh(mesh, points, 0)
            out.append((pts[spatial_order(pts)],
                        np.asarray(gt.get(synset, model_id)["surface_points"], dtype=np.float64)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data/experiments/smoke/aug/t050")
    ap.add_argument("--ckpt", default="runs/smoke/svr-t025/checkpoints/last.ckpt")
    ap.add_argument("--views", type=int, default=6)
    ap.add_argument("--resolution", type=int, default=48)
    ap.add_argument("--points", type=int, default=20000)
    args = ap.parse_args()
    from pykdtree.kdtree import KDTree
    from scipy.spatial import cKDTree

    views = reconstructions(args.data, args.ckpt, args.views, args.resolution, args.points)
    print(f"{len(views)} views, {args.points} predicted x {len(views[0][1])} ground-truth points, "
          f"torch threads {torch.get_num_threads()}")
    variants = {f"scipy cKDTree leaf {k}": (cKDTree, k) for k in (16, 64)}
    variants.update({f"pykdtree leaf {k}": (KDTree, k) for k in (8, 16, 32, 64)})
    ref, base = None, None
    for label, (cls, leaf) in variants.items():
        results = []
        c = time.process_time()
        for pred, g in views:
            d1, i1 = cls(g, leafsize=leaf).query(pred, k=1)
            d2, i2 = cls(pred, leafsize=leaf).query(g, k=1)
            results.append((d1, i1.astype(np.int64), d2, i2.astype(np.int64)))
        cpu = (time.process_time() - c) / len(views)
        ref = ref or results
        base = base or cpu
        same = all(all(np.array_equal(a, b) for a, b in zip(r, q)) for r, q in zip(ref, results))
        print(f"{label:<24} {cpu:7.3f} CPU-s/view  {base / cpu:5.2f}x  identical to the first: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
