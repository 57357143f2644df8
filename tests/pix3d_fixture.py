"""A tiny Pix3D copy in Pix3D's exact file layout and JSON schema, built from procedural
shapes (render/procedural.py).

The photo and mask are drawn here with Pix3D's own projection (its README and Blender
demo: ``X = rot_mat @ v + trans_mat``, camera at the origin looking down +z, x left,
y up, ``u = w/2 - f X_x / X_z``, ``v = h/2 - f X_y / X_z``, ``f = focal_length / 32 * w``)
by a painter's-algorithm triangle fill, independent of eval.pix3d's conversion and of
the pyrender renderer, so the tests check the conversion against the documented
convention rather than against itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import trimesh

# Pix3D models face -z (+x left, +y up, +z inward in the canonical view); procedural
# shapes face +z: turn them 180 degrees about y, then give them their own scale and
# offset, as Pix3D's IKEA models have.
TO_PIX3D = np.diag([-1.0, 1.0, -1.0])


def rotation(azimuth: float, elevation: float, roll: float = 0.0) -> np.ndarray:
    a, e, r = np.radians([azimuth, -elevation, roll])  # positive elevation: seen from above
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(e), -np.sin(e)], [0, np.sin(e), np.cos(e)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


def pix3d_project(vertices: np.ndarray, R: np.ndarray, t: np.ndarray, focal_mm: float, w: int, h: int):
    """Pix3D's projection: (u, v) with pixel edges at integers, and depth."""
    X = vertices @ R.T + t
    f = focal_mm / 32.0 * w
    u = w / 2 - f * X[:, 0] / X[:, 2]
    v = h / 2 - f * X[:, 1] / X[:, 2]
    return u, v, X[:, 2]


def draw(mesh: trimesh.Trimesh, R, t, focal_mm: float, w: int, h: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """A "photo" (textured background, shaded faces) and its mask."""
    from skimage.draw import polygon

    u, v, z = pix3d_project(np.asarray(mesh.vertices), R, t, focal_mm, w, h)
    yy, xx = np.mgrid[:h, :w]
    photo = np.stack([90 + 60 * np.sin(xx / 7.0), 120 + 40 * np.cos(yy / 5.0), 150 + 30 * np.sin((xx + yy) / 9.0)], -1)
    photo = np.clip(photo + rng.normal(0, 8, photo.shape), 0, 255).astype(np.uint8)
    mask = np.zeros((h, w), bool)
    faces = np.asarray(mesh.faces)
    normals = np.asarray(mesh.face_normals) @ R.T
    colors = np.asarray(mesh.visual.face_colors)[:, :3].astype(np.float64)
    for fi in np.argsort(-z[faces].mean(axis=1)):  # far to near
        tri = faces[fi]
        # pixel centres sit at integer coordinates after the half-pixel shift
        rr, cc = polygon(v[tri] - 0.5, u[tri] - 0.5, shape=(h, w))
        shade = 0.35 + 0.65 * abs(normals[fi, 2])
        photo[rr, cc] = np.clip(colors[fi] * shade, 0, 255).astype(np.uint8)
        mask[rr, cc] = True
    return photo, mask


def entry(category: str, name: str, n: int, w: int, h: int, R, t, focal_mm: float, mask: np.ndarray,
          img_ext: str = "png", **flags) -> dict:
    ys, xs = np.nonzero(mask)
    return {
        "img": f"img/{category}/{n:04d}.{img_ext}",
        "category": category,
        "img_size": [w, h],
        "2d_keypoints": [],
        "mask": f"mask/{category}/{n:04d}.png",
        "img_source": "self-taken",
        "model": f"model/{category}/{name}/model.obj",
        "model_raw": f"model/{category}/{name}/3d_keypoints.txt",
        "model_source": "ikea",
        "3d_keypoints": f"model/{category}/{name}/3d_keypoints.txt",
        "voxel": f"model/{category}/{name}/voxel.mat",
        "rot_mat": np.asarray(R).tolist(),
        "trans_mat": np.asarray(t).tolist(),
        "focal_length": focal_mm,
        "cam_position": (-np.asarray(R).T @ np.asarray(t)).tolist(),
        "inplane_rotation": 0.0,
        "truncated": flags.get("truncated", False),
        "occluded": flags.get("occluded", False),
        "slightly_occluded": flags.get("slightly_occluded", False),
        "bbox": [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())],
    }


def make_pix3d(root: Path, w: int = 320, h: int = 240, seed: int = 0) -> tuple[Path, dict]:
    """Write ROOT/pix3d.json, img/, mask/, model/ for two chairs and a sofa (five images)
    plus one occluded image; returns (root, {model path: its Pix3D-frame mesh})."""
    from PIL import Image

    from render.procedural import make_shape

    root = Path(root)
    rng = np.random.default_rng(seed)
    models = {}
    shapes = [("chair", "IKEA_TEST_A", 11, 1.3, [0.1, -0.2, 0.05]), ("chair", "IKEA_TEST_B", 12, 0.8, [0.0, 0.3, 0.0]),
              ("sofa", "IKEA_TEST_C", 13, 0.5, [-0.2, 0.0, 0.1])]
    for cat, name, s, scale, offset in shapes:
        m = make_shape(cat, s)
        m.vertices = (np.asarray(m.vertices) @ TO_PIX3D.T) * scale + offset
        rel = f"model/{cat}/{name}/model.obj"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        m.export(root / rel)
        models[rel] = m
    views = [  # (model index, azimuth, elevation, roll, distance factor, focal mm, flags)
        (0, 20, 15, 2, 2.4, 35.0, {}), (0, -150, 25, -3, 2.8, 50.0, {}), (1, 60, 20, 0, 2.2, 35.0, {}),
        (2, -30, 10, 1, 2.6, 40.0, {}), (2, 100, 30, 0, 2.5, 35.0, {}), (1, 0, 20, 0, 2.3, 35.0, {"occluded": True})]
    entries = []
    counters: dict[str, int] = {}
    for mi, az, el, roll, dist, focal, flags in views:
        cat, name = shapes[mi][0], shapes[mi][1]
        mesh = models[f"model/{cat}/{name}/model.obj"]
        R = rotation(az, el, roll)
        center = (mesh.bounds[0] + mesh.bounds[1]) / 2
        extent = float(np.max(mesh.extents))
        t = -R @ center + np.array([0.05, -0.03, dist]) * extent
        photo, mask = draw(mesh, R, t, focal, w, h, rng)
        n = counters.get(cat, 0) + 1
        counters[cat] = n
        e = entry(cat, name, n, w, h, R, t, focal, mask, **flags)
        (root / e["img"]).parent.mkdir(parents=True, exist_ok=True)
        (root / e["mask"]).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo).save(root / e["img"])
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / e["mask"])
        entries.append(e)
    (root / "pix3d.json").write_text(json.dumps(entries))
    return root, models
