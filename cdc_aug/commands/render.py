from __future__ import annotations

import argparse

DEFAULTS_NOTE = ("Sources: sweethome3d (default when Debian's sweethome3d-furniture is installed), "
                 "shapenet (--root: ShapeNetCore v1 or v2), procedural (no files needed).")


def register(sub, help_text: str) -> None:
    p = sub.add_parser("render", help=help_text, description=f"{help_text}. {DEFAULTS_NOTE}")
    p.add_argument("--config", default=None,
                   help="YAML file of settings (keys: these flags' names, e.g. max_shapes; "
                        "gt_surface_points/gt_sdf_points/gt_occ_points); flags given on the command line win")
    p.add_argument("--out", default="data/renders", help="render directory (default: data/renders)")
    p.add_argument("--shapes-dir", default=None,
                   help="ground-truth shape store (default: <out>/../shapes, i.e. data/shapes)")
    p.add_argument("--source", choices=["sweethome3d", "shapenet", "procedural"], default=None,
                   help="shape source (default: sweethome3d when installed)")
    p.add_argument("--root", default=None,
                   help="ShapeNetCore directory (shapenet), or a directory of *.sh3f catalogs (sweethome3d)")
    p.add_argument("--categories", default=None,
                   help="comma-separated names or synset ids (default: chair,table,sofa,lamp,bed,cabinet; "
                        "procedural: chair,table,sofa,lamp)")
    p.add_argument("--max-shapes", type=int, default=4, help="shapes per category, seeded choice; 0 = all (default 4)")
    p.add_argument("--views", type=int, default=36, help="views per shape (default 36: azimuth i*10 +- 5 deg)")
    p.add_argument("--size", type=int, default=224, help="image size in pixels (default 224)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="render processes, one renderer each (default 1)")
    p.add_argument("--shapes-per-shard", type=int, default=64, help="shapes per output shard (default 64)")
    p.add_argument("--lighting", choices=["studio", "random"], default="studio",
                   help="studio: fixed three-point rig; random: seeded variation per view")
    p.add_argument("--overwrite", action="store_true", help="discard a previous run in --out with other parameters")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run, _parser=p)


GT_KEYS = ("gt_surface_points", "gt_sdf_points", "gt_occ_points")


def _apply_config(args: argparse.Namespace) -> dict:
    """Fill flags left at their defaults from ``--config``; returns the extra options."""
    from cdc_aug.errors import UserError
    from cdc_aug.runinfo import read_settings_file

    data = read_settings_file(args.config)
    parser, extra = args._parser, {}
    flags = {a.dest for a in parser._actions} - {"help", "config", "func", "_parser"}
    types = {a.dest: a.type for a in parser._actions}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest not in GT_KEYS and dest not in flags:
            raise UserError(f"--config: {args.config}: unknown setting {key!r}")
        convert = int if dest in GT_KEYS else types.get(dest)
        if convert is not None and not isinstance(value, list):
            try:
                value = convert(value)
            except (TypeError, ValueError):
                raise UserError(f"--config: {args.config}: {key}: {value!r} is not a valid "
                                f"{getattr(convert, '__name__', 'value')}") from None
        if dest in GT_KEYS:
            extra[dest] = value
        elif getattr(args, dest) == parser.get_default(dest):
            if dest == "categories" and isinstance(value, list):
                value = ",".join(map(str, value))
            setattr(args, dest, value)
    return extra


def run(args: argparse.Namespace) -> int:
    from render.api import render_dataset

    extra = _apply_config(args) if args.config else {}
    index = render_dataset(
        args.out, source=args.source, categories=args.categories, max_shapes=args.max_shapes, views=args.views,
        size=args.size, workers=args.workers, seed=args.seed, shapes_dir=args.shapes_dir, root=args.root,
        overwrite=args.overwrite, progress=not args.no_progress, shapes_per_shard=args.shapes_per_shard,
        lighting=args.lighting, **extra)
    from cdc_aug.shards import read_failures

    failures = read_failures(args.out)
    print(f"{args.out}: {index['num_samples']} views of {index['num_shapes'] - len(failures)} shapes in "
          f"{len(index['shards'])} shards; {len(failures)} shapes failed"
          + (f" (see {args.out}/failures.jsonl)" if failures else ""))
    return 0
