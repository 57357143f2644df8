"""``cdc-aug render``: its settings are ``RenderSettings``, the keywords of ``render.api.render_dataset``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from cdc_aug.settings import comma_list, setting
from render.api import RenderConfig as D  # the defaults, declared there

HELP = ("{help}. Sources: sweethome3d (default when Debian's sweethome3d-furniture is installed), "
        "shapenet (--root: ShapeNetCore v1 or v2), procedural (no files needed). "
        "Example: cdc-aug render --config configs/render_smoke.yaml --size 128")


@dataclass(kw_only=True)
class RenderSettings:
    out: str = setting("data/renders", "render directory")
    shapes_dir: str | None = setting(None, "ground-truth shape store (default: <out>/../shapes, i.e. data/shapes)")
    source: Literal["sweethome3d", "shapenet", "procedural"] | None = setting(
        None, "shape source (default: sweethome3d when installed)")
    root: str | None = setting(None, "ShapeNetCore directory (shapenet), or a directory of *.sh3f catalogs "
                                     "(sweethome3d)")
    categories: str | None = setting(None, "comma-separated names or synset ids (default: chair,table,sofa,lamp,"
                                           "bed,cabinet; procedural: chair,table,sofa,lamp)", type=comma_list)
    max_shapes: int = setting(D.max_shapes, "shapes per category, seeded choice; 0 = all")
    views: int = setting(D.views, "views per shape (36: azimuth i*10 +- 5 deg)")
    size: int = setting(D.size, "image size in pixels")
    seed: int = setting(D.seed, "seed of the shape choice, splits and views")
    workers: int = setting(D.workers, "render processes, one renderer each")
    shapes_per_shard: int = setting(D.shapes_per_shard, "shapes per output shard")
    lighting: Literal["studio", "random"] = setting(D.lighting, "studio: fixed three-point rig; random: seeded "
                                                              "variation per view")
    gt_surface_points: int = setting(D.gt_surface_points, "ground-truth surface points per shape")
    gt_sdf_points: int = setting(D.gt_sdf_points, "ground-truth SDF samples per shape")
    gt_occ_points: int = setting(D.gt_occ_points, "ground-truth occupancy samples per shape")
    overwrite: bool = setting(False, "discard a previous run in --out with other parameters")
    progress: bool = setting(True, "no progress bar", flag="--no-progress")


def settings_class():
    return RenderSettings


def run(s: RenderSettings) -> int:
    from cdc_aug.shards import read_failures
    from render.api import render_dataset

    kwargs = asdict(s)
    index = render_dataset(kwargs.pop("out"), **kwargs)
    failures = read_failures(s.out)
    print(f"{s.out}: {index['num_samples']} views of {index['num_shapes'] - len(failures)} shapes in "
          f"{len(index['shards'])} shards; {len(failures)} shapes failed"
          + (f" (see {s.out}/failures.jsonl)" if failures else ""))
    return 0
