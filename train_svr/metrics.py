"""Chamfer-L1 (Occupancy Networks): mean nearest-neighbour Euclidean distance from the
predicted surface to the true one (accuracy) and back (completeness), averaged."""

from __future__ import annotations

import numpy as np
import trimesh
from scipy.spatial import cKDTree

EMPTY_MESH_CHAMFER = 1.0  # stands in for an empty prediction: beyond any real error in the unit cube


def chamfer_l1(mesh: trimesh.Trimesh, surface: np.ndarray, n: int | None = None, seed: int = 0) -> float:
    surface = np.asarray(surface, dtype=np.float64)
    if len(mesh.faces) == 0 or mesh.area <= 0:
        return EMPTY_MESH_CHAMFER
    pred, _ = trimesh.sample.sample_surface(mesh, n or len(surface), seed=seed)
    accuracy = cKDTree(surface).query(pred)[0].mean()
    completeness = cKDTree(pred).query(surface)[0].mean()
    return float(0.5 * (accuracy + completeness))
