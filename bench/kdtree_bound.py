"""Does an upper bound on each query's nearest-neighbour distance speed up eval's KD-tree
queries? Measured on real reconstructions, side by side with the plain queries. (This
measured scipy's cKDTree, which eval used then; eval now uses pykdtree, bench/kdtree_library.py.)

eval.metrics.point_metrics queries the ground truth's tree with the prediction's points
(accuracy) and the prediction's tree with the ground truth's points (completeness). The
smoke experiment's tiny models reconstruct far from the shapes, and those far-off queries
are what eval's KD-tree time is made of. Two bounded variants, each checked to return the
plain query's distances and indices:

- subsample: query a tree of every 16th point first; its distance u is an upper bound of
  the true one, so the full tree is queried with ``distance_upper_bound`` = u (scipy takes
  one bound per call: queries are grouped by u into 16 groups, each with its largest u);
- ideal: the same with the true nearest distance as the bound (the best any bound can do).

    .venv/bin/python bench/kdtree_bound.py --data data/experiments/smoke/renders \\
        --ckpt runs/smoke/svr-t025/checkpoints/last.ckpt

Prints CPU seconds per view for each direction and variant, and their ratio to plain.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GROUPS = 16


def bounded(tree, queries: np.ndarray, bound: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest neighbours with a per-query upper bound, grouped into GROUPS scipy calls."""
    d, i = np.empty(len(queries)), np.empty(len(queries), np.int64)
    for g in np.array_split(np.argsort(bound, kind="stable"), GROUPS):
        g = np.sort(g)  # keep the Z-order within a group
        # the bound is exclusive in scipy: a hair above it keeps the neighbour at distance u
        d[g], i[g] = tree.query(queries[g], distance_upper_bound=float(bound[g].max()) * (1 + 1e-9) + 1e-12)
    return d, i


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data/experiments/smoke/renders")
    ap.add_argument("--ckpt", default="runs/smoke/svr-t025/checkpoints/last.ckpt")
    ap.add_argument("--views", default="0,9,18,27")
    ap.add_argument("--resolution", type=int, default=48)
    ap.add_argument("--points", type=int, default=20000)
    args = ap.parse_args()

    from scipy.spatial import cKDTree

    from cdc_aug.runinfo import derive_seed
    from cdc_aug.samples import decode_sample
    from cdc_aug.shards import iter_tar_samples
    from eval.evaluate import metric_ground_truth, select
    from eval.metrics import sample_mesh, spatial_order
    from train_svr.data import input_image
    from train_svr.inference import load_model, reconstruct

    def surface_tree(points):  # scipy's tree, whose bounded search this measures (leaf size as eval's was)
        return cKDTree(np.asarray(points, dtype=np.float64), leafsize=64)

    model = load_model(args.ckpt)
    sel = select(Path(args.data), "test", [int(v) for v in args.views.split(",")])
    gt = metric_ground_truth(sel.shapes_root)
    cpu: dict[str, float] = {}
    views = 0
    for path, keys in sel.items.items():
        for raw in iter_tar_samples(path):
            key = raw["__key__"]
            if key not in keys:
                continue
            s = decode_sample(raw, ["image.png", "rgba.png", "camera.json"])
            mesh = reconstruct(model, input_image(s), s["camera.json"], args.resolution)
            synset, model_id = key.rsplit("_", 1)[0].split("_", 1)
            g = gt.get(synset, model_id)
            pred = sample_mesh(mesh, args.points, derive_seed(0, key) % (2**31))[0]
            pred = pred[spatial_order(pred)]
            views += 1
            for direction, tree, queries in (("accuracy", surface_tree(g["surface_points"]), pred),
                                             ("completeness", surface_tree(pred), g["surface_points"])):
                t = time.process_time()
                ref = tree.query(queries)
                cpu[f"{direction} plain"] = cpu.get(f"{direction} plain", 0) + time.process_time() - t
                t = time.process_time()
                u = surface_tree(tree.data[::16]).query(queries)[0]
                got = bounded(tree, queries, u)
                cpu[f"{direction} subsample"] = cpu.get(f"{direction} subsample", 0) + time.process_time() - t
                assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1]), "subsample bound: not exact"
                t = time.process_time()
                got = bounded(tree, queries, ref[0])
                cpu[f"{direction} ideal"] = cpu.get(f"{direction} ideal", 0) + time.process_time() - t
                assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1]), "ideal bound: not exact"
    print(f"{views} views, {args.resolution}^3, {args.points} points; CPU s per view (same distances and indices)")
    for direction in ("accuracy", "completeness"):
        plain = cpu[f"{direction} plain"] / views
        for variant in ("plain", "subsample", "ideal"):
            v = cpu[f"{direction} {variant}"] / views
            print(f"{direction:<13} {variant:<10} {v:7.3f}   {plain / v:5.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
