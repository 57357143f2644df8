"""Ground truth per shape, in the unit cube (cdc_aug.layout): SDF samples concentrated
near the surface (as DISN), surface points with normals, uniform occupancy points.

Inside/outside (SDF signs, occupancy labels) comes from ``cdc_aug.occupancy``, the test
``eval.metrics`` scores 3D IoU with: the generalised winding number (robust to holes,
overlapping parts and self-intersections, which ShapeNet and furniture meshes are full
of) over faces first oriented outward per connected patch, so that flipped or
mixed-winding meshes get the same labels as well-oriented ones. Surface normals come from
the same oriented faces (outward). Distances are exact point-to-triangle distances
(``igl.point_mesh_squared_distance``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import trimesh

from cdc_aug.occupancy import Solid, inside

PADDING = 0.1  # occupancy and uniform SDF points fill [-0.55, 0.55]^3, as Occupancy Networks
DATASETS = ("sdf_samples", "surface_points", "surface_normals", "occ_points", "occ_labels")


def unsigned_distance(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    import igl

    V = np.ascontiguousarray(mesh.vertices, dtype=np.float64)
    F = np.ascontiguousarray(mesh.faces, dtype=np.int64)
    d2 = igl.point_mesh_squared_distance(np.ascontiguousarray(points, dtype=np.float64), V, F)[0]
    return np.sqrt(np.maximum(d2, 0.0))


def signed_distance(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """Negative inside, positive outside (cdc_aug.layout)."""
    d = unsigned_distance(mesh, points)
    return np.where(inside(mesh, points), -d, d)


def compute(mesh: trimesh.Trimesh, seed: int, surface_points: int = 100_000, sdf_points: int = 32_768,
            occ_points: int = 100_000) -> dict[str, np.ndarray]:
    """The arrays of one shape file. ``mesh`` is already in the unit cube."""
    rng = np.random.default_rng(seed)
    solid = Solid(mesh)  # faces oriented once, for the normals and the inside test below
    pts, face_idx = trimesh.sample.sample_surface(mesh, surface_points, seed=int(rng.integers(2**31)))
    normals = solid.face_normals[face_idx]
    # DISN-style: most samples hug the surface at two scales, the rest fill the box.
    n_near = int(sdf_points * 0.4)
    n_uniform = sdf_points - 2 * n_near
    base = pts[rng.integers(0, len(pts), 2 * n_near)]
    sigma = np.repeat([0.005, 0.025], n_near)[:, None]
    near = base + rng.normal(size=base.shape) * sigma
    half = 0.5 + PADDING / 2
    uniform = rng.uniform(-half, half, size=(n_uniform, 3))
    q = np.concatenate([near, uniform])
    occ = rng.uniform(-half, half, size=(occ_points, 3))
    # one winding-number pass for both point sets: the tree over the mesh is built once
    ins = solid.contains(np.concatenate([q, occ]))
    sdf = np.where(ins[: len(q)], -1.0, 1.0) * unsigned_distance(mesh, q)
    labels = ins[len(q):]
    return {
        "sdf_samples": np.concatenate([q, sdf[:, None]], axis=1).astype(np.float32),
        "surface_points": pts.astype(np.float32),
        "surface_normals": normals.astype(np.float32),
        "occ_points": occ.astype(np.float32),
        "occ_labels": labels.astype(np.uint8),
    }


def write(path: Path, arrays: dict[str, np.ndarray], attrs: dict) -> None:
    """Write a shape file atomically (a crash never leaves a half-written .h5 behind)."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with h5py.File(tmp, "w") as f:
        for name, arr in arrays.items():
            f.create_dataset(name, data=arr, compression="gzip", compression_opts=1, shuffle=True)
        for k, v in attrs.items():
            f.attrs[k] = v
    os.replace(tmp, path)


def is_complete(path: Path, params: str | None = None) -> bool:
    """True when ``path`` holds every dataset and was made with ``params`` (when given):
    a shape file from a run with other settings is made again, not silently reused."""
    import h5py

    if not path.exists():
        return False
    try:
        with h5py.File(path, "r") as f:
            ok = all(name in f for name in DATASETS) and "scale" in f.attrs
            return ok and (params is None or f.attrs.get("params") == params)
    except OSError:
        return False


def read(path: str | Path) -> dict:
    """All datasets and attributes of a shape file (for tests and other stages)."""
    import h5py

    with h5py.File(path, "r") as f:
        out = {name: f[name][()] for name in f}
        out["attrs"] = dict(f.attrs)
    return out
