"""A picture of a render directory: one row per shape, a few views each, on white.

    python -m render.grid data/renders docs/renders_grid.png --shapes 8 --views 6
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from diffusers.utils import make_image_grid
from PIL import Image

from cdc_aug.samples import decode_sample
from cdc_aug.shards import iter_tar_samples, shard_paths


def make_grid(render_dir: str | Path, shapes: int = 8, views: int = 6, tile: int = 112,
              per_category: int | None = None) -> Image.Image:
    """The first ``views`` evenly spaced views of up to ``shapes`` shapes (at most
    ``per_category`` of each category, so every category shows)."""
    by_shape: dict[str, list[dict]] = {}
    for path in shard_paths(render_dir):
        for raw in iter_tar_samples(path):
            s = decode_sample(raw, ["rgba.png", "meta.json"])
            by_shape.setdefault(raw["__key__"].rsplit("_", 1)[0], []).append(s)
    chosen, count = [], {}
    for samples in by_shape.values():
        cat = samples[0]["meta.json"]["category"]
        if per_category is not None and count.get(cat, 0) >= per_category:
            continue
        count[cat] = count.get(cat, 0) + 1
        chosen.append(samples)
        if len(chosen) == shapes:
            break
    n_views = min(views, min(len(s) for s in chosen))
    white = Image.new("RGBA", (tile, tile), "white")
    tiles = []
    for samples in chosen:
        for i in np.linspace(0, len(samples) - 1, n_views).round().astype(int):
            im = Image.fromarray(samples[i]["rgba.png"], "RGBA").resize((tile, tile), Image.LANCZOS)
            tiles.append(Image.alpha_composite(white, im).convert("RGB"))
    return make_image_grid(tiles, rows=len(chosen), cols=n_views)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("render_dir")
    p.add_argument("out")
    p.add_argument("--shapes", type=int, default=8)
    p.add_argument("--views", type=int, default=6)
    p.add_argument("--tile", type=int, default=112)
    p.add_argument("--per-category", type=int, default=None)
    a = p.parse_args(argv)
    make_grid(a.render_dir, a.shapes, a.views, a.tile, a.per_category).save(a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
