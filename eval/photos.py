"""A folder of photographs with object masks as a test domain: ``--data images:DIR``.

Layout (one convention): ``DIR/<name>.jpg`` (or ``.jpeg``, ``.png``) and its mask
``DIR/<name>_mask.png`` (white = object, same size as the photo). Optional
``DIR/categories.csv`` with columns ``image,category`` (``image``: the photo's file name)
gives per-image categories; others are ``unknown``. Photos have no 3D ground truth and
no camera: they are scored by the 2D IoU of the reconstruction's silhouette, seen through
the camera estimator's camera (train_svr.camera), against the mask, as in the paper's
Table 2. The crop is eval.real's, around the mask's bounding box.
"""

from __future__ import annotations

import csv
from pathlib import Path

from cdc_aug.errors import UserError
from cdc_aug.samples import make_key, sanitize_id
from cdc_aug.shards import Failure

from . import real

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MASK_SUFFIX = "_mask.png"
CATEGORIES_CSV = "categories.csv"


def list_photos(root: Path) -> list[Path]:
    if not root.is_dir():
        raise UserError(f"--data images:{root}: not a directory")
    photos = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                    and not p.name.endswith(MASK_SUFFIX))
    if not photos:
        raise UserError(f"--data images:{root}: no photos (*.jpg, *.jpeg, *.png besides *{MASK_SUFFIX})")
    return photos


def read_categories(root: Path, photos: list[Path]) -> dict[str, str]:
    path = root / CATEGORIES_CSV
    if not path.exists():
        return {}
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise UserError(f"{path}: unreadable ({e})") from None
    if rows and not {"image", "category"} <= set(rows[0]):
        raise UserError(f"{path}: needs the columns image,category (has {', '.join(rows[0])})")
    names = {p.name for p in photos}
    out = {}
    for r in rows:
        name, cat = (r.get("image") or "").strip(), (r.get("category") or "").strip().lower()
        if name not in names:
            raise UserError(f"{path}: names {name!r}, which is not a photo in {root}")
        if not cat:
            raise UserError(f"{path}: no category for {name!r}")
        out[name] = cat
    return out


def prepare(root: str | Path, cache_dir: str | Path | None = None, size: int = real.CROP_SIZE,
            progress: bool = False) -> Path:
    """Convert a photo folder into a stage directory (eval.real); reused while the photos,
    masks and settings are unchanged."""
    from tqdm import tqdm

    root = Path(root)
    photos = list_photos(root)
    cats = read_categories(root, photos)
    if size < 16:
        raise UserError(f"--crop-size: must be >= 16, got {size}")
    cache = real.cache_root(root, cache_dir)
    files = []
    for p in photos:
        m = p.with_name(p.stem + MASK_SUFFIX)
        files.append([p.name, p.stat().st_size, p.stat().st_mtime_ns,
                      m.stat().st_size if m.exists() else None, m.stat().st_mtime_ns if m.exists() else None])
    config = {"source": f"images:{root.resolve()}", "files": files, "categories": cats, "crop_size": size,
              "crop_scale": real.CROP_SCALE}
    out = real.variant_dir(cache, "images", config)
    if real.is_prepared(out):
        return out
    failures: list[Failure] = []
    used: set[str] = set()

    def samples():
        for p in tqdm(photos, desc="photos", unit="image", disable=not progress):
            mpath = p.with_name(p.stem + MASK_SUFFIX)
            if not mpath.exists():
                failures.append(Failure(p.name, "missing mask", {"detail": f"no {mpath.name}"}))
                continue
            try:
                image, mask = real.read_rgb(p), real.read_mask(mpath)
            except OSError as e:
                failures.append(Failure(p.name, "unreadable image", {"detail": str(e)}))
                continue
            if mask.shape != image.shape[:2]:
                failures.append(Failure(p.name, "mask size differs", {"detail": (
                    f"mask {mask.shape[1]}x{mask.shape[0]}, image {image.shape[1]}x{image.shape[0]}")}))
                continue
            bbox = real.mask_bbox(mask)
            if bbox is None:
                failures.append(Failure(p.name, "empty mask", {}))
                continue
            cat = cats.get(p.name, "unknown")
            model_id = sanitize_id(p.stem)
            while f"{cat}/{model_id}" in used:  # "a b.jpg" and "a-b.png" sanitise alike
                model_id += "-x"
            used.add(f"{cat}/{model_id}")
            crop, crop_mask, _ = real.square_crop(image, mask, bbox, size)
            yield {"__key__": make_key(cat, model_id, 0), "image.png": crop, "mask.png": crop_mask,
                   "meta.json": {"synset": sanitize_id(cat), "category": cat, "model_id": model_id, "view": 0,
                                 "source": "images", "img": p.name, "bbox": list(bbox)}}

    real.write_stage(out, "images", samples(), failures, config, {
        "source": config["source"], "ground_truth": False, "cameras": False, "image_size": [size, size]})
    return out
