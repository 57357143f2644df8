"""Shape sources: what shapes there are (cheap, in the main process) and how to load one
(in a worker). Every source lists its shapes sorted, and ``--max-shapes`` picks a seeded
subset, so the same flags always give the same shapes in the same order.

Ids are unique per run. Sanitising maps several names to one id (``dup_1`` and ``dup.1``
both become ``dup-1``); when that happens every shape of the colliding group gets
``-<first 8 hex digits of sha256(path, entry)>`` appended, so each keeps the same id
whatever else is listed with it (a shape that collides with nothing keeps its plain id).
Procedural ids carry the seed unless it is 0 (``proc-chair-0000``, ``proc-chair-s1-0000``):
another ``--seed`` makes other shapes, and so other ids and other shape files.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cdc_aug.errors import UserError
from cdc_aug.layout import shape_key
from cdc_aug.runinfo import derive_seed
from cdc_aug.samples import sanitize_id

from . import categories as cats
from .meshes import Normalized, normalize, read_obj

SOURCES = ("sweethome3d", "shapenet", "procedural")
SH3D_DIR = Path("/usr/share/sweethome3d/furniture")
PROCEDURAL_VERSION = 1  # of render/procedural.py: bump when the same seed gives another shape


@dataclass(frozen=True)
class ShapeRef:
    """One shape to render: enough to find and load it, and what goes into meta.json."""

    source: str
    synset: str
    category: str
    model_id: str
    path: str = ""  # OBJ file (shapenet), catalog archive (sweethome3d)
    entry: str = ""  # model path inside the catalog archive
    seed: int = 0  # procedural parameters
    rotation: tuple | None = None  # 3x3 row-major, applied before normalising (sweethome3d)
    extra: dict = field(default_factory=dict, compare=False, hash=False)  # licence, author, ...

    @property
    def key(self) -> str:
        return shape_key(self.synset, self.model_id)

    def meta(self) -> dict:
        return {"synset": self.synset, "category": self.category, "model_id": self.model_id,
                "source": self.source, **self.extra}


def default_source() -> str:
    if SH3D_DIR.is_dir() and any(SH3D_DIR.glob("*.sh3f")):
        return "sweethome3d"
    raise UserError(
        f"no Sweet Home 3D catalogs in {SH3D_DIR}: install Debian's sweethome3d-furniture "
        "(apt-get install sweethome3d-furniture) or pass --source procedural")


def _subset(refs: list[ShapeRef], max_shapes: int, seed: int, category: str) -> list[ShapeRef]:
    refs = sorted(refs, key=lambda r: r.model_id)
    if max_shapes and len(refs) > max_shapes:
        rng = np.random.default_rng(derive_seed(seed, "subset", category))
        keep = sorted(rng.choice(len(refs), size=max_shapes, replace=False).tolist())
        refs = [refs[i] for i in keep]
    return refs


def origin(ref: ShapeRef) -> dict:
    """Where a shape's mesh comes from, independent of the machine (for its provenance)."""
    if ref.source == "procedural":
        return {"seed": ref.seed, "generator_version": PROCEDURAL_VERSION}
    if ref.source == "sweethome3d":
        return {"catalog": Path(ref.path).name, "entry": ref.entry}
    return {"path": "/".join(Path(ref.path).parts[-4:])}


def _unique(refs: list[ShapeRef]) -> list[ShapeRef]:
    """Disambiguate ids that sanitise to the same key (module docstring)."""
    from dataclasses import replace

    count: dict[str, int] = {}
    for r in refs:
        count[r.key] = count.get(r.key, 0) + 1
    out = []
    for r in refs:
        if count[r.key] > 1:
            tag = hashlib.sha256(f"{r.path}\0{r.entry}".encode()).hexdigest()[:8]
            r = replace(r, model_id=f"{r.model_id}-{tag}")
        out.append(r)
    return out


def list_shapes(source: str, categories, max_shapes: int, seed: int, root: str | os.PathLike | None = None,
                problems: list | None = None) -> list[ShapeRef]:
    """Every shape to render, grouped by category in the order given, sorted within.
    ``problems``: damaged inputs found while listing (a catalog that cannot be read) are
    appended as ``cdc_aug.shards.Failure``s, for failures.jsonl."""
    if source not in SOURCES:
        raise UserError(f"--source: {source!r} is not one of {', '.join(SOURCES)}")
    if max_shapes < 0:
        raise UserError(f"--max-shapes: must be >= 0 (0 = all), got {max_shapes}")
    if source == "procedural":
        from .procedural import CATEGORIES

        pairs = cats.resolve(categories, allowed=CATEGORIES)
        n = max_shapes or 8  # procedural shapes are endless; "all" means a small fixed set
        tag = f"s{seed}-" if seed else ""
        return [ShapeRef("procedural", syn, name, f"proc-{name}-{tag}{i:04d}",
                         seed=derive_seed(seed, "procedural", name, i))
                for syn, name in pairs for i in range(n)]
    if source == "shapenet":
        if root is None:
            raise UserError("--root: required with --source shapenet (the ShapeNetCore v1 or v2 directory)")
        found = _shapenet(Path(root), cats.resolve(categories))
    else:
        from .sweethome3d import list_catalog_shapes

        catalog_dir = Path(root) if root is not None else SH3D_DIR
        if not catalog_dir.is_dir() or not any(catalog_dir.glob("*.sh3f")):
            if root is None:
                default_source()  # the install hint
            raise UserError(f"--root: no Sweet Home 3D catalogs (*.sh3f) in {catalog_dir}")
        found = list_catalog_shapes(catalog_dir, cats.resolve(categories), problems)
    found = _unique(found)
    out: list[ShapeRef] = []
    for syn, _name in cats.resolve(categories):
        mine = [r for r in found if r.synset == syn]
        out.extend(_subset(mine, max_shapes, seed, syn))
    if not out:
        names = ",".join(name for _, name in cats.resolve(categories))
        unread = "".join(f"; {f.item} could not be read ({f.extra.get('detail', f.reason)})"
                         for f in (problems or [])[:3])
        raise UserError(f"--categories: no shapes of {names} found for --source {source}"
                        + (f" under {root}" if root else "") + unread)
    return out


def _shapenet(root: Path, pairs) -> list[ShapeRef]:
    """ShapeNetCore v1 (``<synset>/<id>/model.obj``) or v2 (``.../models/model_normalized.obj``).

    A model directory whose OBJ is missing is still listed, so it shows up in
    failures.jsonl as "missing file" instead of vanishing."""
    if not root.is_dir():
        raise UserError(f"--root: {root} is not a directory")
    out = []
    for syn, name in pairs:
        d = root / syn
        if not d.is_dir():
            continue
        for model in sorted(p for p in d.iterdir() if p.is_dir()):
            v2 = model / "models" / "model_normalized.obj"
            v1 = model / "model.obj"
            path = v2 if v2.exists() or (model / "models").is_dir() else v1
            out.append(ShapeRef("shapenet", syn, name, sanitize_id(model.name), path=str(path),
                                extra={"version": "v2" if path == v2 else "v1"}))
    return out


def load(ref: ShapeRef, cache_dir: Path) -> Normalized:
    """The shape in the unit cube; raises meshes.ShapeError with the reason otherwise."""
    if ref.source == "procedural":
        from .procedural import make_shape

        return normalize([make_shape(ref.category, ref.seed)])
    if ref.source == "shapenet":
        parts, notes = read_obj(Path(ref.path))
        return normalize(parts, notes=notes)
    from .sweethome3d import extract_model

    obj = extract_model(Path(ref.path), ref.entry, cache_dir)
    rot = np.asarray(ref.rotation, dtype=np.float64).reshape(3, 3) if ref.rotation else None
    parts, notes = read_obj(obj)
    return normalize(parts, rotation=rot, notes=notes)
