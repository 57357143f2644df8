"""A reconstruction function over the test views of a render or generate directory.

``evaluate(data_dir, reconstruct_fn, out_dir)`` feeds every selected view's input image
(a generate run's ``image.png``, else ``rgba.png`` over white: train_svr.data.input_image)
and camera to ``reconstruct_fn``, scores the mesh it returns against the shape file
(eval.metrics) and against the view's mask (eval.silhouette), and writes into ``out_dir``:

- ``per_view.csv``: one row per shape and view (PER_VIEW_COLUMNS);
- ``summary.json``: means overall and per category, counts, and what was evaluated
  (data dir, its stage and domain, for generate runs ``mode``/``t_in``; whatever
  ``identity`` the caller adds, e.g. the checkpoint and the model's training data);
- ``config.yaml``: the exact parameters; ``samples/``: a few inputs, renders of their
  reconstructions with the same camera and the meshes (PLY), for the report.

Rows are written as they are scored (``per_view.csv.partial``), so a long run that is
killed shows how far it got; the final files appear only when every view is done.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cdc_aug.errors import UserError
from cdc_aug.layout import read_splits, shape_file, shape_provenance, shapes_dir, split_of_key, view_of_key
from cdc_aug.runinfo import derive_seed, output_lock, write_config
from cdc_aug.safeio import atomic_write_bytes, atomic_write_text, is_stage_error
from cdc_aug.shards import ShardDamaged, check_shard, read_index, shard_keys, verified_samples
from render.groundtruth import GroundTruthCache

from .metrics import is_empty, mesh_metrics, spatial_order, surface_tree
from .silhouette import Silhouettes, silhouette_iou

log = logging.getLogger(__name__)

METRICS = ["chamfer_l1", "accuracy", "completeness", "fscore@0.01", "fscore@0.02", "normal_consistency",
           "iou_3d", "iou_2d"]
PER_VIEW_COLUMNS = ["key", "synset", "category", "model_id", "view", *METRICS, "chamfer_l2", "empty", "seconds"]
SUMMARY = "summary.json"
PER_VIEW = "per_view.csv"
SAMPLES = "samples"

ReconstructFn = Callable[[np.ndarray, dict], "object"]
CameraFn = Callable[[str, np.ndarray, "dict | None"], dict]


@dataclass
class Selection:
    """The views to evaluate: ``items[shard path] = [sample keys]``, in shard order."""

    root: Path
    index: dict
    split: str
    views: list[int] | None
    items: dict[Path, list[str]] = field(default_factory=dict)
    shapes_root: Path | None = None

    @property
    def keys(self) -> list[str]:
        return [k for ks in self.items.values() for k in ks]


def domain_of(index: dict) -> dict:
    """What kind of input a stage directory holds: clean renders, masked-ILVR composites at
    a T_in, or copy-paste composites."""
    stage = index.get("stage")
    if stage == "render":
        return {"stage": "render", "domain": "clean", "mode": None, "t_in": None}
    mode = index.get("mode")
    t_in = index.get("t_in")
    if index.get("label"):  # `cdc-aug generate --label`: the name the experiment gave this domain
        return {"stage": stage, "domain": str(index["label"]), "mode": mode,
                "t_in": None if t_in is None or mode != "ilvr" else float(t_in)}
    if mode == "copy-paste":
        return {"stage": stage, "domain": "copy-paste", "mode": mode, "t_in": None}
    if mode == "ilvr":
        return {"stage": stage, "domain": f"t_in={float(t_in):g}" if t_in is not None else "ilvr",
                "mode": mode, "t_in": None if t_in is None else float(t_in)}
    return {"stage": stage, "domain": str(mode or stage or "unknown"), "mode": mode, "t_in": t_in}


def _tar_keys(path: Path, entry: dict) -> list[str]:
    """The keys of a shard checked against its index entry; a damaged shard is a
    one-line UserError (scoring the views that survive would bias the means)."""
    try:
        check_shard(path, entry)
        return shard_keys(path, entry)
    except ShardDamaged as e:
        raise UserError(f"{path}: {e.reason}; {e.lost()}; repair or regenerate it") from e


def select(data_dir: str | os.PathLike, split: str = "test", views: list[int] | None = None,
           check_ground_truth: bool = True) -> Selection:
    """The views of ``split`` (all views, or those in ``views``), checked before any work:
    a missing directory, index, split or shape file and unknown view indices are
    one-line UserErrors."""
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"--data: {root} is not a directory")
    index = read_index(root)
    splits = read_splits(root)
    if split not in splits:
        raise UserError(f"--split: {root / 'splits.json'} has no split {split!r} (has {', '.join(sorted(splits))})")
    shapes = set(splits[split])
    if not shapes:
        raise UserError(f"--split: split {split!r} of {root} is empty")
    sel = Selection(root, index, split, sorted(set(views)) if views is not None else None)
    available: set[int] = set()
    for entry in index["shards"]:
        path = root / "shards" / entry["name"]
        keys = [k for k in _tar_keys(path, entry) if split_of_key(k) in shapes]
        available.update(view_of_key(k) for k in keys)
        if sel.views is not None:
            keys = [k for k in keys if view_of_key(k) in sel.views]
        if keys:
            sel.items[path] = keys
    if sel.views is not None:
        unknown = sorted(set(sel.views) - available)
        if unknown:
            raise UserError(f"--views: {root} has no view {', '.join(map(str, unknown))} in split {split!r} "
                            f"(views {min(available)}..{max(available)})" if available else
                            f"--views: {root} has no samples in split {split!r}")
    if not sel.items:
        raise UserError(f"{root}: no samples of split {split!r} in its shards")
    if check_ground_truth and index.get("ground_truth", True):  # photo folders have none (eval.photos)
        sel.shapes_root = shapes_dir(root)
        missing = []
        for shape in sorted({split_of_key(k) for k in sel.keys}):
            synset, model_id = shape.split("_", 1)
            if not shape_file(sel.shapes_root, synset, model_id).exists():
                missing.append(shape)
        if missing:
            raise UserError(f"{sel.shapes_root}: no shape file for {len(missing)} test shapes "
                            f"(e.g. {missing[0]}); render them again")
    return sel


def _samples_to_save(keys: list[str], n: int) -> set[str]:
    """Up to ``n`` views spread over categories (synsets) and shapes: one view per shape,
    synsets taken in turn, so a small report still shows every category."""
    by_syn: dict[str, list[str]] = {}
    seen: set[str] = set()
    for k in keys:
        shape = split_of_key(k)
        if shape not in seen:
            seen.add(shape)
            by_syn.setdefault(shape.split("_", 1)[0], []).append(k)
    out: list[str] = []
    queues = [list(v) for _, v in sorted(by_syn.items())]
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return set(out)


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def summarize(rows: list[dict]) -> dict:
    """Means of METRICS overall and per category (NaNs ignored), with view/shape counts."""
    def block(rs: list[dict]) -> dict:
        out: dict = {}
        for m in METRICS:
            vals = np.array([float(r[m]) for r in rs], dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            out[m] = float(vals.mean()) if len(vals) else float("nan")
        out["n_views"] = len(rs)
        out["n_shapes"] = len({(r["synset"], r["model_id"]) for r in rs})
        out["n_empty"] = int(sum(bool(r["empty"]) for r in rs))
        return out

    cats: dict[str, list[dict]] = {}
    for r in rows:
        cats.setdefault(r["category"], []).append(r)
    return {"overall": block(rows), "per_category": {c: block(rs) for c, rs in sorted(cats.items())}}




METRIC_DATASETS = ("surface_points", "surface_normals", "occ_points", "occ_labels")


def _for_metrics(data: dict) -> dict:
    """The surface points (with their normals) in Z-order, for faster KD-tree queries, and
    their KD-tree: built once per shape instead of once per view. The occupancy points (with
    their labels) in Z-order too: the winding-number query walks its tree for each point on
    its own, so the order changes no label, and points in Z-order reuse the nodes just
    visited (the inside test of 3D IoU: 1.15-1.2x on marching-cubes meshes,
    bench/inside_speed.py); IoU counts points, so it does not depend on their order."""
    order = spatial_order(data["surface_points"])
    data["surface_points"], data["surface_normals"] = data["surface_points"][order], data["surface_normals"][order]
    data["tree"] = surface_tree(data["surface_points"])
    order = spatial_order(data["occ_points"])
    data["occ_points"], data["occ_labels"] = data["occ_points"][order], data["occ_labels"][order]
    return data


def metric_ground_truth(shapes: Path, digests: dict | None = None) -> GroundTruthCache:
    """The shape files as the metrics read them (not their SDF samples); one shape is held,
    as the views of a shape are adjacent."""
    return GroundTruthCache(shapes, METRIC_DATASETS, _for_metrics, digests, size=1)


def _save_sample(out: Path, key: str, image: np.ndarray, mesh, camera: dict, silhouettes: Silhouettes) -> None:
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(out / f"{key}_input.png")
    size = image.shape[0]
    canvas = np.full((size, size, 3), 255, np.uint8)
    if not is_empty(mesh):
        from render.meshes import Normalized

        r = silhouettes.renderer(size)
        r.load(Normalized([mesh], np.zeros(3), 1.0), normals=False)
        rgba = r.render_krt(np.asarray(camera["K"]), np.asarray(camera["RT"])).rgba
        a = rgba[..., 3:4].astype(np.float32) / 255.0
        canvas = np.round(rgba[..., :3] * a + 255.0 * (1 - a)).astype(np.uint8)
        mesh.export(out / f"{key}.ply")
    Image.fromarray(canvas).save(out / f"{key}_recon.png")


def evaluate(data_dir: str | os.PathLike, reconstruct_fn: ReconstructFn, out_dir: str | os.PathLike,
             split: str = "test", views: list[int] | None = None, n_points: int = 100_000, save_meshes: int = 4,
             progress: bool = True, identity: dict | None = None, seed: int = 0,
             config: dict | None = None, camera_fn: CameraFn | None = None) -> dict:
    """Score ``reconstruct_fn(image HxWx3 uint8, camera dict) -> trimesh.Trimesh`` on the
    ``split`` views of ``data_dir``; returns the summary (also written to summary.json).

    ``identity``: extra entries for summary.json (checkpoint, model name, training data).
    ``config``: extra entries for config.yaml (the command's own flags).
    ``camera_fn(key, image, stored camera or None) -> camera``: the camera to reconstruct
    and draw the silhouette with instead of the stored one (a camera estimator's).
    A data directory without ground-truth shapes (index.json ``ground_truth: false``)
    gets NaN 3D metrics: only its 2D IoU is scored."""
    if n_points < 1:
        raise UserError(f"--points: must be >= 1, got {n_points}")
    sel = select(data_dir, split, views)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out, "cdc-aug eval"):
        return _evaluate(sel, reconstruct_fn, out, split, n_points, save_meshes, progress, identity, seed, config,
                         camera_fn)


def _evaluate(sel: Selection, reconstruct_fn, out: Path, split: str, n_points: int, save_meshes: int,
              progress: bool, identity: dict | None, seed: int, config: dict | None, camera_fn=None) -> dict:
    from tqdm import tqdm

    from cdc_aug.samples import decode_sample
    from train_svr.data import camera_tensors, input_image

    dom = domain_of(sel.index)
    run_config = {"data_dir": str(sel.root.resolve()), "split": split, "views": sel.views, "n_points": n_points,
                  "save_meshes": save_meshes, "seed": seed, **(config or {})}
    write_config(out, run_config)
    (out / SUMMARY).unlink(missing_ok=True)  # a stale summary would mark the stage done

    keys = sel.keys
    to_save = _samples_to_save(keys, save_meshes)
    gt = metric_ground_truth(sel.shapes_root, shape_provenance(sel.root)) if sel.shapes_root is not None else None
    rows: list[dict] = []
    failures: list[dict] = []  # views that could not be scored (bad camera, bad shape file)
    partial = out / (PER_VIEW + ".partial")
    t_start = time.perf_counter()
    bar = tqdm(total=len(keys), desc=f"eval {sel.root.name}", unit="view", disable=not progress)
    with Silhouettes() as sil, open(partial, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=PER_VIEW_COLUMNS)
        writer.writeheader()
        for path, wanted in sel.items.items():
            want = set(wanted)
            for raw in verified_samples(path):
                key = raw["__key__"]
                if key not in want:
                    continue
                synset, model_id = key.rsplit("_", 1)[0].split("_", 1)
                try:  # the input's own faults: recorded in failures.jsonl, the view skipped
                    s = decode_sample(raw, ["image.png", "rgba.png", "mask.png", "camera.json", "meta.json"])
                    meta, camera = s["meta.json"], s.get("camera.json")
                    image = input_image(s)
                    if camera_fn is not None:
                        camera = camera_fn(key, image, camera)
                    camera_tensors(camera, image.shape[:2], image.shape[0])  # NaN/inf or malformed K, RT
                    g = gt.get(synset, model_id) if gt is not None else None
                except (ValueError, KeyError, TypeError, OSError) as e:
                    if is_stage_error(e):
                        raise
                    failures.append({"item": key, "reason": str(e).splitlines()[0] if str(e) else type(e).__name__})
                    log.warning("skipped %s: %s", key, failures[-1]["reason"])
                    bar.update(1)
                    continue
                t0 = time.perf_counter()
                mesh = reconstruct_fn(image, camera)
                if g is None:  # no ground truth: 2D IoU only
                    m = {c: float("nan") for c in [*METRICS, "chamfer_l2"]}
                    m["empty"] = is_empty(mesh)
                else:
                    m = mesh_metrics(mesh, g["surface_points"], g["surface_normals"], g["occ_points"],
                                     g["occ_labels"], n_points=n_points, seed=derive_seed(seed, key) % (2**31),
                                     gt_tree=g["tree"])
                m["iou_2d"] = silhouette_iou(mesh, camera, s["mask.png"], sil)
                row = {"key": key, "synset": meta.get("synset", synset), "category": meta.get("category", synset),
                       "model_id": meta.get("model_id", model_id), "view": int(meta.get("view", view_of_key(key))),
                       **{c: m[c] for c in METRICS}, "chamfer_l2": m["chamfer_l2"], "empty": int(m["empty"]),
                       "seconds": round(time.perf_counter() - t0, 3)}
                writer.writerow(row)
                f.flush()
                rows.append(row)
                if key in to_save:
                    _save_sample(out / SAMPLES, key, image, mesh, camera, sil)
                bar.update(1)
                bar.set_postfix(cd=f"{np.mean([r['chamfer_l1'] for r in rows]):.4f}")
    bar.close()
    atomic_write_text(out / "failures.jsonl", "".join(json.dumps(f, sort_keys=True) + "\n" for f in failures))
    if len(rows) + len(failures) != len(keys):
        raise UserError(f"{sel.root}: {len(keys) - len(rows) - len(failures)} selected samples missing from their shards")
    if not rows:
        raise UserError(f"{sel.root}: no view could be scored ({len(failures)} failures in {out / 'failures.jsonl'})")
    atomic_write_bytes(out / PER_VIEW, partial.read_bytes())
    partial.unlink()
    summary = {
        "data_dir": str(sel.root.resolve()),
        **dom,
        "split": split,
        "views": sel.views,
        "n_points": n_points,
        **summarize(rows),
        "n_failed": len(failures),
        "samples": sorted(f"{k}" for k in to_save),
        "seconds": round(time.perf_counter() - t_start, 2),
        **(identity or {}),
    }
    summary = _json_safe(summary)
    atomic_write_text(out / SUMMARY, json.dumps(summary, indent=1, sort_keys=True) + "\n")
    o = summary["overall"]
    scores = [f"{k} {o[k]:{'.4f' if k == 'chamfer_l1' else '.3f'}}" for k in ("chamfer_l1", "fscore@0.01", "iou_3d",
                                                                          "iou_2d") if o[k] is not None]
    log.info("%s: %d views, %s", sel.root, o["n_views"], ", ".join(scores))  # no 3D scores without ground truth
    return summary


def read_rows(eval_dir: str | os.PathLike) -> list[dict]:
    """per_view.csv of an evaluation directory, numbers as floats."""
    with open(Path(eval_dir) / PER_VIEW, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for c in [*METRICS, "chamfer_l2", "seconds"]:
            r[c] = float(r[c]) if r.get(c) not in (None, "") else float("nan")
    return rows
