"""Where each stage's files live and the conventions every stage shares.

Coordinates: every shape is normalised to the unit cube [-0.5, 0.5]^3 (bounding-box
centre at the origin, longest edge 1), as in Occupancy Networks: ``x_unit = (x - center)
* scale`` with ``scale = 1 / longest_edge``. Renders, cameras (``RT`` maps these unit-cube
world coordinates to OpenCV camera coordinates: x right, y down, z forward) and the
ground truth all use that frame.

SDF sign: negative inside, positive outside. ``occ_labels``: 1 inside.

Ground truth per shape (h5py), ``<shapes_dir>/<synset>/<model_id>.h5`` (ids sanitised):
  datasets ``sdf_samples`` (N, 4) float32 xyz+sdf, ``surface_points`` (100k, 3),
  ``surface_normals`` (100k, 3), ``occ_points`` (100k, 3), ``occ_labels`` (100k,) uint8;
  attrs ``center`` (3,), ``scale``, ``synset``, ``model_id``, ``category``, ``source``,
  ``provenance`` (JSON: what made the file, render/groundtruth.py). A render directory's
  index.json lists ``shape_provenance``: shape key -> digest of that JSON, which readers
  check, so ground truth replaced by another run is refused instead of scored against.

A render directory's ``index.json`` names its shape store as ``shapes_dir`` (relative to
the render directory, or absolute); a generate run's ``index.json`` names the render
directory it came from as ``renders_dir``, and carries its ``shapes_dir`` on. Both hold a
``splits.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError
from .samples import sanitize_id
from .shards import read_index

SPLITS = "splits.json"


def _resolve(root: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else (root / p).resolve()


def shapes_dir(stage_root: str | Path) -> Path:
    """The ground-truth shape store that belongs to a render or generate directory."""
    root = Path(stage_root)
    index = read_index(root)
    if "shapes_dir" in index:
        return _resolve(root, index["shapes_dir"])
    if "renders_dir" in index:
        return shapes_dir(_resolve(root, index["renders_dir"]))
    raise UserError(f"{root / 'index.json'}: names no shapes_dir")


def shape_provenance(stage_root: str | Path) -> dict[str, str]:
    """Shape key -> provenance digest recorded by the render directory behind
    ``stage_root`` (empty for directories made before provenance was recorded)."""
    root = Path(stage_root)
    index = read_index(root)
    if "shape_provenance" in index:
        return dict(index["shape_provenance"])
    if "renders_dir" in index:
        return shape_provenance(_resolve(root, index["renders_dir"]))
    return {}


def shape_file(shapes_root: str | Path, synset: str, model_id: str) -> Path:
    return Path(shapes_root) / sanitize_id(synset) / f"{sanitize_id(model_id)}.h5"


def read_splits(stage_root: str | Path) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...], "test": [...]}``; ids are ``<synset>_<model_id>``
    (sanitised), the key of a sample without its ``_<view>`` suffix."""
    path = Path(stage_root) / SPLITS
    if not path.exists():
        raise UserError(f"{path}: missing")
    return json.loads(path.read_text())


def shape_key(synset: str, model_id: str) -> str:
    return f"{sanitize_id(synset)}_{sanitize_id(model_id)}"


# Photo files the tools read (copy-paste backgrounds, pretraining photos).
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def split_of_key(sample_key: str) -> str:
    """The shape key of a sample key ``<synset>_<model_id>_<view>``."""
    return sample_key.rsplit("_", 1)[0]


def view_of_key(sample_key: str) -> int:
    """The view index of a sample key ``<synset>_<model_id>_<view>``."""
    return int(sample_key.rsplit("_", 1)[1])
