"""Seconds per inside/outside call on N points (default 100k, eval's occupancy points):
the signed fast winding number used before (``w > 0.5``, orientation-dependent) against
``cdc_aug.occupancy.inside`` (vertex merge + per-patch orientation, then ``|w| > 0.5``),
on a procedural chair, a marching-cubes reconstruction and an 82k-face sphere. Also prints
how many labels the old test gets wrong on the same mesh with half its faces flipped, and
the orientation-robust test on the same points in Z-order (as eval stores them,
eval.evaluate._for_metrics), checked to give the same labels.

    OMP_NUM_THREADS=1 .venv/bin/python bench/inside_speed.py [--points 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import trimesh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdc_aug.occupancy import Solid, inside  # noqa: E402
from eval.metrics import spatial_order  # noqa: E402


def signed_winding_inside(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """The previous test (render.groundtruth.winding_inside before the change)."""
    import igl

    V = np.ascontiguousarray(mesh.vertices, dtype=np.float64)
    F = np.ascontiguousarray(mesh.faces, dtype=np.int64)
    return igl.fast_winding_number(V, F, points) > 0.5


def meshes() -> dict[str, trimesh.Trimesh]:
    from render.procedural import make_shape
    from train_svr.inference import BOUND, mesh_from_sdf

    chair = make_shape("chair", 0)
    chair.apply_translation(-chair.bounds.mean(axis=0))
    chair.apply_scale(1.0 / chair.extents.max())
    g = np.linspace(-BOUND, BOUND, 128)
    x, y, z = np.meshgrid(g, g, g, indexing="ij")
    torus = (np.sqrt(x ** 2 + z ** 2) - 0.3) ** 2 + y ** 2 - 0.1 ** 2  # a torus, R 0.3, r 0.1
    return {"procedural chair": chair, "marching cubes 128^3": mesh_from_sdf(torus),
            "icosphere": trimesh.creation.icosphere(subdivisions=6, radius=0.4)}


def best_of(repeats: int, fn, *args) -> float:
    """Least CPU seconds of ``repeats`` calls (CPU time: the 2-core machine is shared, wall
    time is not stable; set OMP_NUM_THREADS=1 so that CPU time is single-thread time)."""
    times = []
    for _ in range(repeats):
        t = time.process_time()
        fn(*args)
        times.append(time.process_time() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    q = np.random.default_rng(0).uniform(-0.55, 0.55, size=(args.points, 3))
    for name, mesh in meshes().items():
        old = best_of(args.repeats, signed_winding_inside, mesh, q)
        orient = best_of(args.repeats, Solid, mesh)
        new = best_of(args.repeats, inside, mesh, q)
        order = spatial_order(q)
        zq = q[order]
        z = best_of(args.repeats, inside, mesh, zq)
        assert np.array_equal(inside(mesh, zq), inside(mesh, q)[order]), "Z-order changed a label"
        faces = mesh.faces.copy()
        half = np.random.default_rng(1).permutation(len(faces))[: len(faces) // 2]
        faces[half] = faces[half, ::-1]
        mixed = trimesh.Trimesh(mesh.vertices, faces, process=False)
        ref = inside(mesh, q)
        wrong_old = int((signed_winding_inside(mixed, q) != ref).sum())
        wrong_new = int((inside(mixed, q) != ref).sum())
        print(f"{name}: {len(mesh.faces)} faces, {len(q)} points, CPU s: signed w {old:.3f}, "
              f"orientation-robust {new:.3f} (orientation {orient:.3f}), points in Z-order {z:.3f} "
              f"({new / z:.2f}x, same labels); "
              f"half the faces flipped: {wrong_old} labels wrong before, {wrong_new} after")


if __name__ == "__main__":
    main()
