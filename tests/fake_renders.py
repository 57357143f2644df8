"""A small render-stage directory written directly through the shard layer.

The generate stage only needs the render contract (docs/design.md §2), not a renderer, so its
tests build inputs here: each "shape" is a coloured disc or square with its own size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cdc_aug.layout import shape_key
from cdc_aug.samples import make_key
from cdc_aug.shards import ShardStore


def _object(size: int, i: int, view: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    cx = size / 2 + (view - 1) * size * 0.05
    r = size * (0.2 + 0.03 * (i % 4))
    if i % 2:
        inside = (abs(xx - cx) < r) & (abs(yy - size / 2) < r)
    else:
        inside = (xx - cx) ** 2 + (yy - size / 2) ** 2 < r * r
    rgba = np.zeros((size, size, 4), np.uint8)
    color = np.array([60 + 40 * i % 200, 120, 200 - 30 * i % 150], np.uint8)
    rgba[inside, :3] = color
    rgba[inside, 3] = 255
    mask = (inside * 255).astype(np.uint8)
    return rgba, mask


def make_render_dir(root: Path, shapes: int = 6, views: int = 2, size: int = 32, shapes_per_shard: int = 2) -> Path:
    root = Path(root)
    store = ShardStore(root, "renders", stage="render")
    ids = [("03001627", f"chair{i}", "chair") if i % 2 == 0 else ("04379243", f"table{i}", "table")
           for i in range(shapes)]
    n_shards = (shapes + shapes_per_shard - 1) // shapes_per_shard
    f = 35 * size / 32
    for s in range(n_shards):
        samples = []
        for i in range(s * shapes_per_shard, min(shapes, (s + 1) * shapes_per_shard)):
            synset, mid, cat = ids[i]
            for v in range(views):
                rgba, mask = _object(size, i, v)
                samples.append({
                    "__key__": make_key(synset, mid, v),
                    "rgba.png": rgba,
                    "mask.png": mask,
                    "depth.npy": (mask > 0).astype(np.float32) * 1.5,
                    "normal.png": np.full((size, size, 3), 128, np.uint8),
                    "camera.json": {"K": [[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]],
                                    "RT": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2.0]],
                                    "azimuth": 10.0 * v, "elevation": 25.0, "distance": 2.0,
                                    "image_size": [size, size]},
                    "meta.json": {"synset": synset, "category": cat, "model_id": mid, "view": v,
                                  "source": "test"},
                })
        store.write(s, samples)
    store.finalize(n_shards, extra={"shapes_dir": "../shapes"})
    keys = [shape_key(s, m) for s, m, _ in ids]
    splits = {"train": keys[: shapes - 2], "val": keys[shapes - 2: shapes - 1], "test": keys[shapes - 1:]}
    (root / "splits.json").write_text(json.dumps(splits))
    return root


def write_backgrounds(root: Path, n: int = 3) -> Path:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / f"bg{i}.jpg")
    return root
