"""Real photographs as a test domain: the ``--data`` forms of `cdc-aug eval`, the crop
every real image goes through, and the stage directory it is turned into.

``--data`` takes a render directory or generate run, ``pix3d:ROOT`` (eval.pix3d) or
``images:DIR`` (eval.photos). A real source is converted once into a stage directory in
the render contract (``shards/``, ``index.json``, ``splits.json`` with every shape in
``test``, ``failures.jsonl``), cached under ``--cache-dir`` (default ``<ROOT>/.cdc-aug``),
so it is evaluated by the same code as renders (eval.evaluate). Its ``index.json`` says
``"real": true`` and whether it has ground-truth shapes (``ground_truth``) and cameras
(``cameras``). An item that cannot be used (missing file, a mask of another size than its
image, an empty mask, a model that does not load) is skipped and recorded in
``failures.jsonl`` with its path and reason; `cdc-aug eval` counts them in summary.json.

Crop protocol (the same for both sources; the usual single-object SVR protocol on real
images, e.g. DISN's and Mesh R-CNN's object crops): a square centred on the object's
bounding box (Pix3D's ``bbox``; the mask's for a photo folder) with side
``CROP_SCALE`` x its longer edge, parts outside the photo filled white (the renders'
background), resized to ``--crop-size`` (bilinear; the mask bilinear then thresholded
at one half). The photo's background is kept: real test images are not matted. The
camera's ``K`` moves with the crop. ``CROP_SCALE`` = 1.5 puts the object's longer edge
at 2/3 of the crop, as in the renders a model is trained on: measured over 192 views of
16 procedural shapes (chair, table, sofa, lamp) at DISN's distances, the longer edge of
the mask's box is a median 0.67 of the image (10-90 %: 0.55-0.85).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from cdc_aug.errors import UserError
from cdc_aug.runinfo import write_config
from cdc_aug.shards import Failure, ShardStore, read_failures, read_index

CROP_SCALE = 1.5
CROP_SIZE = 224
SAMPLES_PER_SHARD = 256
KINDS = ("pix3d", "images")


def parse_data(text: str) -> tuple[str, Path]:
    """``("dir" | "pix3d" | "images", path)`` of one ``--data`` value."""
    head, sep, tail = str(text).partition(":")
    if sep and head in KINDS:
        if not tail:
            raise UserError(f"--data: {text!r} names no directory after '{head}:'")
        return head, Path(tail)
    return "dir", Path(text)


def square_crop(image: np.ndarray, mask: np.ndarray, bbox, size: int, K: np.ndarray | None = None,
                scale: float = CROP_SCALE) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Crop ``image`` (HxWx3 uint8) and ``mask`` (HxW bool) to a square around ``bbox``
    ``(x0, y0, x1, y1)`` (pixel edges) as the module docstring says, resized to ``size``.
    Returns the crop, its mask (uint8 0/255) and ``K`` for the crop (None if not given)."""
    from PIL import Image

    from train_svr.geometry import resize_intrinsics

    x0, y0, x1, y1 = (float(v) for v in bbox)
    side = max(1, int(round(max(x1 - x0, y1 - y0) * scale)))
    left = int(round((x0 + x1) / 2 - side / 2))
    top = int(round((y0 + y1) / 2 - side / 2))
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(Image.fromarray(np.ascontiguousarray(image[..., :3])), (-left, -top))
    mcanvas = Image.new("L", (side, side), 0)
    mcanvas.paste(Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255), (-left, -top))
    crop = np.asarray(canvas.resize((size, size), Image.BILINEAR))
    crop_mask = (np.asarray(mcanvas.resize((size, size), Image.BILINEAR)) > 127).astype(np.uint8) * 255
    K_crop = None
    if K is not None:
        K_crop = np.array(K, dtype=np.float64)
        K_crop[0, 2] -= left
        K_crop[1, 2] -= top
        K_crop = resize_intrinsics(K_crop, (side, side), (size, size))
    return crop, crop_mask, K_crop


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` pixel edges of a mask's object, None when it is empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def read_mask(path: Path) -> np.ndarray:
    """A mask image as booleans (any channel layout; > 127 is the object)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 127


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def variant_dir(cache: Path, kind: str, config: dict) -> Path:
    """The stage directory of one conversion: its name hashes every setting that changes it."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    return cache / f"{kind}-{digest}"


def cache_root(source: Path, cache_dir: str | os.PathLike | None) -> Path:
    cache = Path(cache_dir) if cache_dir else source / ".cdc-aug"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--cache-dir: cannot create {cache} ({e.strerror}); pass a writable --cache-dir") from None
    if not os.access(cache, os.W_OK):
        raise UserError(f"--cache-dir: {cache} is not writable; pass a writable --cache-dir")
    return cache


def is_prepared(out: Path) -> bool:
    try:
        return read_index(out).get("real") is True and (out / "splits.json").exists()
    except UserError:
        return False


def write_stage(out: Path, stage: str, samples: Iterable[dict], failures: list[Failure], config: dict,
                extra: dict) -> dict:
    """Write converted samples as a stage directory (see the module docstring); a
    conversion that yields nothing is a UserError naming the commonest reason."""
    from cdc_aug.runinfo import output_lock

    with output_lock(out, f"{stage} conversion"):  # two evaluations converting the same data: one waits out
        return _write_stage(out, stage, samples, failures, config, extra)


def _write_stage(out: Path, stage: str, samples: Iterable[dict], failures: list[Failure], config: dict,
                 extra: dict) -> dict:
    from cdc_aug.layout import split_of_key

    write_config(out, config)
    store = ShardStore(out, stage, stage=stage)
    store.clean_temporaries()
    shapes: set[str] = set()
    n_shards = 0
    batch: list[dict] = []

    def flush(last: bool) -> None:
        nonlocal n_shards, batch
        if batch or (last and n_shards == 0):
            # the failures of the whole conversion go with the last shard
            store.write(n_shards, batch, failures=failures if last else [])
            n_shards += 1
            batch = []

    for s in samples:
        shapes.add(split_of_key(s["__key__"]))
        batch.append(s)
        if len(batch) >= SAMPLES_PER_SHARD:
            flush(False)
    flush(True)
    index = store.finalize(n_shards, extra={"real": True, **extra})
    (out / "splits.json").write_text(json.dumps({"train": [], "val": [], "test": sorted(shapes)}, indent=1) + "\n")
    if index["num_samples"] == 0:
        (out / "splits.json").unlink()  # not a usable stage directory: converted again next time
        reasons = Counter(f.reason for f in failures)
        why = f"; most common: {reasons.most_common(1)[0][0]}" if reasons else ""
        raise UserError(f"{config.get('source')}: nothing to evaluate, {len(failures)} item(s) skipped{why} "
                        f"(each listed in {out / 'failures.jsonl'})")
    return index


def skipped(stage_dir: Path) -> dict:
    """``{"n_skipped", "skipped_by_reason", "failures_file"}`` of a converted source."""
    fails = read_failures(stage_dir)
    return {"n_skipped": len(fails), "skipped_by_reason": dict(Counter(f["reason"] for f in fails)),
            "failures_file": str(Path(stage_dir) / "failures.jsonl")}
