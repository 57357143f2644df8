"""Pix3D (Sun et al., CVPR 2018) as a test domain: ``cdc-aug eval --data pix3d:ROOT``.

Reads Pix3D as distributed: ``ROOT/pix3d.json`` (a list of entries with ``img``,
``mask``, ``model``, ``category``, ``img_size`` [w, h], ``bbox`` [x0, y0, x1, y1],
``rot_mat``, ``trans_mat``, ``focal_length``, ``truncated``, ``occluded``,
``slightly_occluded``, ...) and the ``img/``, ``mask/``, ``model/`` files it names.

Camera (Pix3D's README and its Blender demo): the camera sits at the origin looking down
+z with +x to the left and +y up; the model is placed by ``X = rot_mat @ v + trans_mat``
(v: the model OBJ's own coordinates) and a point projects to
``u = w/2 - f * X_x / X_z``, ``v = h/2 - f * X_y / X_z`` (pixel edges at integers),
``f = focal_length / 32 mm * w`` (sensor width 32 mm, horizontal fit). In the project's
convention (cdc_aug.layout: OpenCV, x right, y down; the unit-cube frame of the
normalised model) that is ``K = [[f, 0, w/2 - 1/2], [0, f, h/2 - 1/2], [0, 0, 1]]`` and
``RT = [F R M^T | s F (R M^T c + t)]`` with ``F = diag(-1, -1, 1)``, ``M`` the model
rotation below, and ``c``, ``s`` the centre and scale of the normalisation (camera
coordinates are scaled by ``s`` too, which leaves the projection unchanged).

Model frame: Pix3D models have +y up and +z pointing away from a viewer in front of the
object (its front faces -z); the project's shapes face +z (render/procedural.py, the
DISN-style cameras). ``MODEL_ROTATION`` (180 degrees about y) turns Pix3D models to face
+z before normalising, so a model trained on renders sees Pix3D in its own frame.

Selection (default; Pix3D's own evaluation list): entries that are ``truncated``,
``occluded`` or ``slightly_occluded`` are excluded (``keep_occluded`` keeps them; with
``split_file``, a Mesh R-CNN split file such as ``pix3d_s1_test.json``, only its images
are taken, and Mesh R-CNN keeps occluded ones: add ``keep_occluded`` to match it); the two
entries whose mask does not match the image (``img/table/1749.jpg``,
``img/table/0045.png``, left out by Mesh R-CNN too) are recorded as skipped. Then the crop
of eval.real. Ground truth: each model through the render stage's own code
(render.meshes.read_obj/normalize, render.groundtruth.compute), cached in
``<cache>/shapes`` and reused while its parameters match. Keys: ``<synset>_<model>_<n>``,
n counting a model's images in the order of their ``img`` paths; meta.json keeps the
entry's ``img`` and its index in pix3d.json.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from cdc_aug.errors import UserError
from cdc_aug.layout import shape_file, shape_key
from cdc_aug.runinfo import derive_seed
from cdc_aug.safeio import read_json
from cdc_aug.samples import make_key, sanitize_id
from cdc_aug.shards import Failure

from . import real

log = logging.getLogger(__name__)

CATEGORIES = ("bed", "bookcase", "chair", "desk", "misc", "sofa", "table", "tool", "wardrobe")
# ShapeNetCore synsets of the Pix3D categories that have one (render/categories.py); the
# others keep their Pix3D name as the synset.
SYNSET_OF = {"bed": "bed", "bookcase": "bookshelf", "chair": "chair", "sofa": "sofa", "table": "table",
             "desk": "table", "wardrobe": "cabinet"}
MODEL_ROTATION = np.diag([-1.0, 1.0, -1.0])
FLIP_XY = np.diag([-1.0, -1.0, 1.0])  # Pix3D camera (x left, y up) -> OpenCV (x right, y down)
SENSOR_MM = 32.0
KNOWN_BAD = {"img/table/1749.jpg": "mask does not match image", "img/table/0045.png": "mask does not match image"}
GT_POINTS = {"surface_points": 100_000, "sdf_points": 32_768, "occ_points": 100_000}
REQUIRED = ("img", "mask", "model", "category", "img_size", "bbox", "rot_mat", "trans_mat", "focal_length")


def synset(category: str) -> str:
    from render.categories import SYNSETS

    name = SYNSET_OF.get(category)
    return SYNSETS[name] if name else sanitize_id(category)


def flag(value) -> bool:
    """Pix3D's booleans: JSON true/false (the README writes them as "true"/"false")."""
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return bool(value)


def camera(entry: dict, center: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(K, RT) of an entry in the project's convention for the full image (module docstring)."""
    w, h = (float(v) for v in entry["img_size"])
    f = float(entry["focal_length"]) / SENSOR_MM * w
    K = np.array([[f, 0.0, w / 2 - 0.5], [0.0, f, h / 2 - 0.5], [0.0, 0.0, 1.0]])
    R = np.asarray(entry["rot_mat"], dtype=np.float64).reshape(3, 3)
    t = np.asarray(entry["trans_mat"], dtype=np.float64).reshape(3)
    R_unit = FLIP_XY @ R @ MODEL_ROTATION.T
    t_unit = scale * (FLIP_XY @ (R @ MODEL_ROTATION.T @ np.asarray(center, dtype=np.float64) + t))
    return K, np.concatenate([R_unit, t_unit[:, None]], axis=1)


def read_annotations(root: Path) -> list[dict]:
    path = root / "pix3d.json"
    if not root.is_dir():
        raise UserError(f"--data pix3d:{root}: not a directory")
    if not path.is_file():
        raise UserError(f"{path}: missing (is {root} a Pix3D copy? it holds pix3d.json, img/, mask/, model/)")
    entries = read_json(path)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UserError(f"{path}: expected a list of annotation objects")
    return entries


def check_categories(categories, entries: list[dict], path: Path) -> list[str] | None:
    if categories is None:
        return None
    items = categories.split(",") if isinstance(categories, str) else list(categories)
    wanted = [c.strip().lower() for c in items if c.strip()]
    present = sorted({str(e.get("category")) for e in entries})
    for c in wanted:
        if c not in CATEGORIES and c not in present:
            raise UserError(f"--categories: unknown Pix3D category {c!r} (known: {', '.join(CATEGORIES)})")
    if not wanted:
        raise UserError("--categories: no category given")
    missing = [c for c in wanted if c not in present]
    if len(missing) == len(wanted):
        raise UserError(f"--categories: {path} has no {', '.join(missing)} entries (it has: {', '.join(present)})")
    return wanted


class _Models:
    """The normalisation (centre, scale) of each Pix3D model, and its ground-truth file,
    made once: a model whose file is complete is not loaded again (Pix3D has 10k images
    of 395 models)."""

    def __init__(self, root: Path, shapes: Path, seed: int):
        self.root, self.shapes, self.seed = root, shapes, seed
        self.norm: dict[str, tuple[np.ndarray, float]] = {}
        self.digests: dict[str, str] = {}  # shape key -> provenance digest, for index.json

    def get(self, rel: str, syn: str, category: str, model_id: str) -> tuple[np.ndarray, float]:
        import h5py

        from render import groundtruth
        from render.api import GT_VERSION
        from render.meshes import normalize, read_obj

        if rel in self.norm:
            return self.norm[rel]
        path = shape_file(self.shapes, syn, model_id)
        # the render stage's provenance record (render/api.py shape_provenance), Pix3D's origin
        provenance = json.dumps({"source": "pix3d", "synset": syn, "model_id": model_id, "origin": rel,
                                 "groundtruth": {"version": GT_VERSION, "seed": self.seed, **GT_POINTS}},
                                sort_keys=True)
        if not groundtruth.is_complete(path, provenance):
            parts, notes = read_obj(self.root / rel)
            shape = normalize(parts, rotation=MODEL_ROTATION, notes=notes)
            arrays = groundtruth.compute(shape.merged(), derive_seed(self.seed, "groundtruth", syn, model_id),
                                         **GT_POINTS)
            groundtruth.write(path, arrays, {"center": shape.center, "scale": shape.scale, "provenance": provenance,
                                             "rotation": MODEL_ROTATION, "synset": syn, "category": category,
                                             "model_id": model_id, "source": "pix3d", "path": rel})
        with h5py.File(path, "r") as f:
            self.norm[rel] = (np.asarray(f.attrs["center"], dtype=np.float64), float(f.attrs["scale"]))
        self.digests[shape_key(syn, model_id)] = groundtruth.provenance_digest(provenance)
        return self.norm[rel]


def model_id_of(rel: str, category: str) -> str:
    """``model/<category>/<NAME>/model.obj`` -> NAME (sanitised); a directory holding
    several OBJ files adds the file's stem."""
    p = Path(rel)
    prefix = f"model/{category}/"
    mid = str(p.parent)[len(prefix):] if rel.startswith(prefix) else str(p.with_suffix(""))
    return sanitize_id(mid if p.name == "model.obj" else f"{mid}-{p.stem}")


def read_split(path: str | Path) -> set[str]:
    """The images of a Mesh R-CNN Pix3D split file (``pix3d_s1_test.json``: COCO format,
    ``images[].file_name`` = pix3d.json's ``img``)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
        names = {str(im["file_name"]) for im in data["images"]}
    except OSError as e:
        raise UserError(f"--pix3d-split: cannot read {p} ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise UserError(f"--pix3d-split: {p} is not a Mesh R-CNN split file (COCO JSON with images[].file_name)"
                        ) from None
    if not names:
        raise UserError(f"--pix3d-split: {p} lists no images")
    return names


def prepare(root: str | Path, cache_dir: str | Path | None = None, categories=None, size: int = real.CROP_SIZE,
            keep_occluded: bool = False, seed: int = 0, progress: bool = False, split_file=None) -> Path:
    """Convert a Pix3D copy into a stage directory (eval.real) and return its path; a
    conversion with the same settings is reused. ``split_file``: only the images of a
    Mesh R-CNN split (e.g. its S1 test set), instead of the occlusion filter alone."""
    from tqdm import tqdm

    from render.api import GT_VERSION
    from render.meshes import ShapeError

    root = Path(root)
    entries = read_annotations(root)
    wanted = check_categories(categories, entries, root / "pix3d.json")
    split = read_split(split_file) if split_file else None
    if size < 16:
        raise UserError(f"--crop-size: must be >= 16, got {size}")
    cache = real.cache_root(root, cache_dir)
    config = {"source": f"pix3d:{root.resolve()}", "pix3d_json_sha256": real.file_digest(root / "pix3d.json"),
              "categories": wanted, "crop_size": size, "crop_scale": real.CROP_SCALE, "keep_occluded": keep_occluded,
              "seed": seed, "gt": GT_POINTS, "gt_version": GT_VERSION, "model_rotation": MODEL_ROTATION.tolist(),
              "split": sorted(split) if split else None}
    out = real.variant_dir(cache, "pix3d", config)
    if real.is_prepared(out):
        return out
    models = _Models(root, cache / "shapes", seed)
    failures: list[Failure] = []
    excluded = {"truncated": 0, "occluded": 0, "slightly_occluded": 0, "category": 0, "split": 0}
    views: dict[str, int] = {}

    # a model's images next to each other: one ground-truth file read per model in eval
    order = sorted(range(len(entries)), key=lambda i: (str(entries[i].get("category")), str(entries[i].get("model")),
                                                       str(entries[i].get("img"))))

    def samples():
        for i in tqdm(order, desc="pix3d", unit="image", disable=not progress):
            e = entries[i]
            item = str(e.get("img", f"entry {i}"))
            cat = str(e.get("category", ""))
            if wanted is not None and cat not in wanted:
                excluded["category"] += 1
                continue
            if split is not None and item not in split:
                excluded["split"] += 1
                continue
            if not keep_occluded:
                hit = next((k for k in ("truncated", "occluded", "slightly_occluded") if flag(e.get(k, False))), None)
                if hit:
                    excluded[hit] += 1
                    continue
            if item in KNOWN_BAD:
                failures.append(Failure(item, KNOWN_BAD[item], {"entry": i}))
                continue
            missing = [k for k in REQUIRED if k not in e]
            if missing:
                failures.append(Failure(item, "bad annotation", {"entry": i, "detail": f"no {', '.join(missing)}"}))
                continue
            files = {k: root / str(e[k]) for k in ("img", "mask", "model")}
            absent = [k for k, p in files.items() if not p.is_file()]
            if absent:
                failures.append(Failure(item, "missing file", {"entry": i, "detail": ", ".join(
                    f"{k} {e[k]}" for k in absent)}))
                continue
            try:
                image, mask = real.read_rgb(files["img"]), real.read_mask(files["mask"])
            except OSError as err:
                failures.append(Failure(item, "unreadable image", {"entry": i, "detail": str(err)}))
                continue
            if mask.shape != image.shape[:2]:
                failures.append(Failure(item, "mask size differs", {"entry": i, "detail": (
                    f"mask {mask.shape[1]}x{mask.shape[0]}, image {image.shape[1]}x{image.shape[0]}")}))
                continue
            if not mask.any():
                failures.append(Failure(item, "empty mask", {"entry": i}))
                continue
            rel = str(e["model"])
            syn, model_id = synset(cat), model_id_of(rel, cat)
            try:
                K, RT = camera(e, *models.get(rel, syn, cat, model_id))
            except ShapeError as err:
                failures.append(Failure(item, err.kind, {"entry": i, "detail": err.detail, "model": rel}))
                continue
            except (TypeError, ValueError) as err:
                failures.append(Failure(item, "bad annotation", {"entry": i, "detail": str(err)}))
                continue
            crop, crop_mask, K_crop = real.square_crop(image, mask, e["bbox"], size, K)
            view = views.get(f"{syn}/{model_id}", 0)
            views[f"{syn}/{model_id}"] = view + 1
            yield {
                "__key__": make_key(syn, model_id, view),
                "image.png": crop,
                "mask.png": crop_mask,
                "camera.json": {"K": K_crop.tolist(), "RT": RT.tolist(), "image_size": [size, size],
                                "focal_mm": float(e["focal_length"]), "sensor_mm": SENSOR_MM},
                "meta.json": {"synset": syn, "category": cat, "model_id": model_id, "view": view, "source": "pix3d",
                              "img": item, "model": rel, "entry": i, "bbox": e["bbox"],
                              **{k: flag(e.get(k, False)) for k in ("truncated", "occluded", "slightly_occluded")}},
            }

    real.write_stage(out, "pix3d", samples(), failures, config, {
        "source": config["source"], "shapes_dir": "../shapes", "ground_truth": True, "cameras": True,
        "image_size": [size, size], "excluded": excluded, "shape_provenance": models.digests})
    log.info("pix3d: %s (%d skipped, excluded %s)", out, len(failures), excluded)
    return out
