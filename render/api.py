"""``render_dataset``: shapes in, render shards + ground-truth shape files out.

The main process lists the shapes, assigns them to shards (``shapes_per_shard``
consecutive shapes of the sorted list per shard, so a resumed run finds the same
assignment) and writes the shards in order; workers (one pyrender renderer each) load,
normalise, render and encode one shape at a time and write its ground truth.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cdc_aug.errors import UserError
from cdc_aug.layout import SPLITS, shape_file
from cdc_aug.runinfo import check_resume, derive_seed, output_lock, write_config
from cdc_aug.safeio import atomic_write_text, is_stage_error
from cdc_aug.samples import encode_sample, make_key
from cdc_aug.shards import FAILURES, INDEX, Failure, ShardStore

from .sources import ShapeRef, default_source, list_shapes

log = logging.getLogger(__name__)

DEFAULT_CATEGORIES = ("chair", "table", "sofa", "lamp", "bed", "cabinet")
PROCEDURAL_CATEGORIES = ("chair", "table", "sofa", "lamp")
MAX_REDRAWS = 12


@dataclass
class RenderConfig:
    """Everything that determines the output (written to config.yaml)."""

    source: str = "sweethome3d"
    categories: list[str] = field(default_factory=lambda: list(DEFAULT_CATEGORIES))
    max_shapes: int = 4
    views: int = 36
    size: int = 224
    seed: int = 0
    root: str | None = None
    shapes_dir: str = "../shapes"  # relative to the output directory
    shapes_per_shard: int = 64
    lighting: str = "studio"  # or "random": a seeded variation of the rig per view
    normals: bool = True
    gt_surface_points: int = 100_000
    gt_sdf_points: int = 32_768
    gt_occ_points: int = 100_000
    workers: int = 1  # does not change the output

    def check(self) -> None:
        for name, lo in (("views", 1), ("size", 16), ("shapes_per_shard", 1), ("workers", 1),
                         ("gt_surface_points", 1), ("gt_sdf_points", 4), ("gt_occ_points", 1)):
            if getattr(self, name) < lo:
                raise UserError(f"--{name.replace('_', '-')}: must be >= {lo}, got {getattr(self, name)}")
        if self.lighting not in ("studio", "random"):
            raise UserError(f"--lighting: 'studio' or 'random', got {self.lighting!r}")


def render_dataset(out_dir: str | os.PathLike = "data/renders", source: str | None = None,
                   categories: Iterable[str] | str | None = None, *, shapes_dir: str | os.PathLike | None = None,
                   root: str | os.PathLike | None = None, overwrite: bool = False, progress: bool = True,
                   **options: Any) -> dict:
    """Render shapes into ``out_dir`` (shards, index.json, failures.jsonl, splits.json,
    config.yaml) and their ground truth into ``shapes_dir`` (default ``<out_dir>/../shapes``).

    ``source``: "sweethome3d" (default when the Debian catalogs are installed),
    "shapenet" (with ``root``) or "procedural". ``categories``: names or synset ids.
    ``options``: any other field of ``RenderConfig`` (``max_shapes`` per category, 0 = all;
    ``views``, ``size``, ``seed``, ``workers``, ...), with ``RenderConfig``'s defaults, declared once there.
    Resumes an interrupted run with the same parameters. Returns the index (index.json).
    ``workers`` > 1 spawns processes: call it under ``if __name__ == "__main__":``.
    """
    out = Path(out_dir)
    for flag, path in (("--out", out), ("--shapes-dir", Path(shapes_dir) if shapes_dir else None)):
        if path is not None and path.exists() and not path.is_dir():
            raise UserError(f"{flag}: {path} exists and is not a directory")
    source = source or default_source()
    if categories is None:
        categories = PROCEDURAL_CATEGORIES if source == "procedural" else DEFAULT_CATEGORIES
    if isinstance(categories, str):
        categories = [c.strip() for c in categories.split(",") if c.strip()]
    shapes_rel = os.path.relpath(Path(shapes_dir).resolve(), out.resolve()) if shapes_dir else "../shapes"
    unknown = set(options) - set(RenderConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"render_dataset: unknown options {sorted(unknown)}")
    cfg = RenderConfig(source=source, categories=list(categories), root=str(root) if root is not None else None,
                       shapes_dir=shapes_rel, **options)
    cfg.check()
    problems: list[Failure] = []
    refs = list_shapes(cfg.source, cfg.categories, cfg.max_shapes, cfg.seed, cfg.root, problems)
    return _run(out, cfg, refs, overwrite=overwrite, progress=progress, problems=problems)


def _run(out: Path, cfg: RenderConfig, refs: list[ShapeRef], overwrite: bool, progress: bool,
         problems: list[Failure] | None = None) -> dict:
    with output_lock(out, "cdc-aug render"):
        return _run_locked(out, cfg, refs, overwrite, progress, problems or [])


def _run_locked(out: Path, cfg: RenderConfig, refs: list[ShapeRef], overwrite: bool, progress: bool,
                problems: list[Failure]) -> dict:
    from tqdm import tqdm

    config = asdict(cfg)
    check_resume(out, config, overwrite, ignore=("workers",))
    store = ShardStore(out, "renders", stage="render")
    if overwrite:
        _clear(out, store)
    write_config(out, config)
    store.clean_temporaries()
    shapes_root = (out / cfg.shapes_dir).resolve()
    groups = [refs[i:i + cfg.shapes_per_shard] for i in range(0, len(refs), cfg.shapes_per_shard)]
    # A shard is redone when its shapes changed (a catalog repaired since, shapes added).
    sources = [_group_source(g) for g in groups]
    todo = [i for i in range(len(groups)) if not store.is_done(i, sources[i])]
    tasks = [(ref, config, str(shapes_root), str(out / ".cache")) for i in todo for ref in groups[i]]
    done = len(refs) - len(tasks)
    if done:
        log.info("resuming: %d of %d shards complete", len(groups) - len(todo), len(groups))
    bar = tqdm(total=len(refs), initial=done, unit="shape", desc="render", disable=not progress, dynamic_ncols=True)
    results = _results(tasks, cfg.workers)
    try:
        for i in todo:
            failures: list[Failure] = []
            store.write(i, _shard_samples(groups[i], results, failures, bar), failures=failures, source=sources[i])
    finally:
        bar.close()
        close = getattr(results, "close", None)
        if close:
            close()  # a generator: its finally shuts the pool down
        close_renderers()
    failed = {f["item"] for f in _read_failures_of(store, len(groups))}
    from .groundtruth import provenance_digest

    digests = {r.key: provenance_digest(shape_provenance(r, config)) for r in refs if r.key not in failed}
    index = store.finalize(len(groups), extra={
        "shapes_dir": cfg.shapes_dir, "source": cfg.source, "num_shapes": len(refs), "views": cfg.views,
        "image_size": [cfg.size, cfg.size], "shape_provenance": digests}, failures=problems)
    ok = [r for r in refs if r.key not in failed]
    _write_json(out / SPLITS, make_splits(ok, cfg.seed))
    if index["num_samples"] == 0:
        raise UserError(f"nothing rendered: all {len(refs)} shapes failed (reasons in {out / FAILURES})")
    return index


def _clear(out: Path, store: ShardStore) -> None:
    if store.dir.exists():
        for p in store.dir.glob(f"{store.prefix}-*.tar*"):
            p.unlink()
    for name in (INDEX, FAILURES, SPLITS):
        (out / name).unlink(missing_ok=True)


def _group_source(refs: list[ShapeRef]) -> str:
    import hashlib

    text = json.dumps([[r.key, r.source, Path(r.path).name, r.entry, r.seed] for r in refs])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_failures_of(store: ShardStore, n: int) -> list[dict]:
    return [f for i in range(n) for f in (store.read_sidecar(i) or {}).get("failures", [])]


def _write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def _shard_samples(refs: list[ShapeRef], results: Iterator[dict], failures: list[Failure], bar) -> Iterator[dict]:
    for ref in refs:
        res = next(results)
        assert res["key"] == ref.key, (res["key"], ref.key)  # results come back in task order
        bar.update(1)
        if res["failure"] is not None:
            failures.append(Failure(ref.key, res["failure"]["reason"], res["failure"]))
            bar.write(f"skipped {ref.key}: {res['failure']['reason']}: {res['failure']['detail']}")
            continue
        yield from res["samples"]


def _results(tasks: list[tuple], workers: int) -> Iterator[dict]:
    if workers <= 1 or len(tasks) <= 1:
        return (render_shape(*t) for t in tasks)
    return ordered_pool(_render_task, tasks, min(workers, len(tasks)), _crash_result)


def _crash_result(task: tuple, error: BaseException) -> dict:
    ref = task[0]
    return {"key": ref.key, "samples": [], "faces": 0, "seconds": 0.0,
            "failure": {"reason": "renderer crashed", "detail": f"the worker process died ({error})",
                        "source": ref.source, "path": ref.path, "entry": ref.entry}}


def ordered_pool(fn, tasks: list, workers: int, on_crash) -> Iterator:
    """``fn(task)`` for every task in ``workers`` spawned processes, results in task order.

    A worker that dies (a segfault or out-of-memory kill in the OpenGL driver on some
    mesh) breaks the whole pool; the task first in line is then run again alone in a
    fresh pool, and ``on_crash(task, error)`` stands in for its result if that pool dies
    too, so one poisonous shape is recorded instead of hanging or ending the run.
    Callers must run under ``if __name__ == "__main__":`` (spawn re-imports __main__).
    """
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")  # a fresh interpreter: no OpenGL state inherited through fork

    def executor(n: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker)

    todo = iter(tasks)
    pending: deque = deque()
    pool = executor(workers)
    try:
        def fill() -> None:
            while len(pending) < 2 * workers:
                task = next(todo, None)
                if task is None:
                    return
                try:
                    fut = pool.submit(fn, task)
                except BrokenProcessPool:  # a worker died before its future said so: retried below
                    fut = None
                pending.append((task, fut))

        fill()
        while pending:
            task, fut = pending.popleft()
            try:
                if fut is None:
                    raise BrokenProcessPool("the pool broke before this task was submitted")
                result = fut.result()
            except BrokenProcessPool as e:
                pool.shutdown(wait=True, cancel_futures=True)
                alone = executor(1)
                try:
                    result = alone.submit(fn, task).result()
                except BrokenProcessPool:
                    result = on_crash(task, e)
                finally:
                    alone.shutdown(wait=True, cancel_futures=True)
                pool = executor(workers)
                pending = deque((t, pool.submit(fn, t)) for t, _ in pending)
            yield result
            fill()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _init_worker() -> None:
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # One core per worker: llvmpipe rasterises in the calling thread instead of starting
    # a thread per core in every worker (N workers x N threads on N cores).
    os.environ.setdefault("LP_NUM_THREADS", "0")


def _render_task(task: tuple) -> dict:
    return render_shape(*task)


# -- one shape (runs in a worker) --------------------------------------------------
_RENDERERS: dict[int, Any] = {}


def get_renderer(size: int):
    """This process's renderer for ``size`` (created once, reused for every shape)."""
    from .renderer import Renderer

    if size not in _RENDERERS:
        for r in _RENDERERS.values():
            r.close()
        _RENDERERS.clear()
        _RENDERERS[size] = Renderer(size)
    return _RENDERERS[size]


def close_renderers() -> None:
    """Free this process's renderer (OpenGL objects left to interpreter shutdown log noise)."""
    for r in _RENDERERS.values():
        r.close()
    _RENDERERS.clear()


def render_shape(ref: ShapeRef, config: dict, shapes_root: str, cache_dir: str) -> dict:
    """Encoded samples of every view of one shape, or the reason it failed."""
    from .meshes import ShapeError

    t0 = time.perf_counter()
    try:
        samples, faces = _render_shape(ref, config, Path(shapes_root), Path(cache_dir))
        return {"key": ref.key, "samples": samples, "failure": None, "faces": faces,
                "seconds": time.perf_counter() - t0}
    except ShapeError as e:
        failure = {"reason": e.kind, "detail": e.detail}
    except UserError:
        raise  # the run's setup is at fault (a shape file of another shape), not this shape
    except Exception as e:  # noqa: BLE001 - one bad shape must not stop the run; it is recorded
        if is_stage_error(e):
            raise  # full disk, I/O error, permissions: stop; the shard is redone on the next run
        tb = traceback.extract_tb(e.__traceback__)[-1]
        failure = {"reason": "error", "detail": f"{type(e).__name__}: {e} ({Path(tb.filename).name}:{tb.lineno})"}
    failure.update({"source": ref.source, "path": ref.path, "entry": ref.entry})
    return {"key": ref.key, "samples": [], "failure": failure, "faces": 0, "seconds": time.perf_counter() - t0}


def _render_shape(ref: ShapeRef, config: dict, shapes_root: Path, cache_dir: Path) -> tuple[list[dict], int]:
    from . import groundtruth
    from .cameras import MAX_SCALE_STEP, fits, sample_view
    from .meshes import ShapeError
    from .renderer import Lighting, encode_normals
    from .sources import load

    shape = load(ref, cache_dir)
    merged = shape.merged()
    gt_path = shape_file(shapes_root, ref.synset, ref.model_id)
    provenance = shape_provenance(ref, config)
    if not groundtruth.is_complete(gt_path, provenance):
        # The sampling seed depends on the shape alone, so runs with other --seed values
        # that share a shape store agree on its ground truth.
        arrays = groundtruth.compute(merged, derive_seed(0, "groundtruth", ref.key),
                                     surface_points=config["gt_surface_points"], sdf_points=config["gt_sdf_points"],
                                     occ_points=config["gt_occ_points"])
        attrs = {"center": shape.center, "scale": shape.scale, "provenance": provenance,
                 **{k: str(v) for k, v in ref.meta().items()}}
        if ref.rotation:
            attrs["rotation"] = np.asarray(ref.rotation, dtype=np.float64).reshape(3, 3)
        groundtruth.write(gt_path, arrays, attrs)

    renderer = get_renderer(config["size"])
    renderer.load(shape, normals=config["normals"])
    verts = np.asarray(merged.vertices)
    diagonal = shape.diagonal
    samples = []
    for view in range(config["views"]):
        rng = np.random.default_rng(derive_seed(config["seed"], "view", ref.key, view))
        scale = 1.0
        for attempt in range(MAX_REDRAWS):
            cam, ratio = sample_view(rng, view, config["views"], diagonal, config["size"], scale)
            if fits(verts, cam):
                break
            if attempt >= 2:  # DISN's range keeps touching the border: step back a little
                scale *= MAX_SCALE_STEP
        lighting = Lighting.sample(rng) if config["lighting"] == "random" else Lighting()
        out = renderer.render(cam, lighting)
        mask = out.depth > 0
        if not mask.any():
            raise ShapeError("empty render", f"view {view} shows nothing")
        camera = cam.to_json(distance_ratio=ratio)
        camera["redraws"] = attempt
        sample = {
            "__key__": make_key(ref.synset, ref.model_id, view),
            "rgba.png": out.rgba,
            "mask.png": (mask * 255).astype(np.uint8),
            "depth.npy": out.depth,
            "normal.png": encode_normals(out.normal, mask) if out.normal is not None
            else np.zeros((*mask.shape, 3), np.uint8),
            "camera.json": camera,
            "meta.json": {**ref.meta(), **shape.notes, "view": view},
        }
        samples.append(encode_sample(sample))
    return samples, shape.num_faces


def shape_provenance(ref: ShapeRef, config: dict) -> str:
    """What made a shape's ground truth (render/groundtruth.py): stored in its .h5 and,
    as a digest, in the render directory's index.json (``shape_provenance``)."""
    from .sources import origin

    gt = {k: config[k] for k in ("gt_surface_points", "gt_sdf_points", "gt_occ_points")}
    return json.dumps({"source": ref.source, "synset": ref.synset, "model_id": ref.model_id,
                       "origin": origin(ref), "groundtruth": {"version": GT_VERSION, **gt}}, sort_keys=True)


GT_VERSION = 2  # of render.groundtruth.compute; bump when its output changes (2: orientation-robust inside test)


# -- splits ------------------------------------------------------------------------
SPLIT_FRACTIONS = {"val": 0.1, "test": 0.2}


def make_splits(refs: list[ShapeRef], seed: int) -> dict[str, list[str]]:
    """Seeded train/val/test split per category (70/10/20); a category with three shapes
    or more puts at least one in each split, with two: one train, one test."""
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    by_cat: dict[str, list[str]] = {}
    for r in refs:
        by_cat.setdefault(r.synset, []).append(r.key)
    for syn in sorted(by_cat):
        keys = sorted(set(by_cat[syn]))
        rng = np.random.default_rng(derive_seed(seed, "splits", syn))
        keys = [keys[i] for i in rng.permutation(len(keys))]
        n = len(keys)
        if n >= 3:
            n_val = max(1, round(n * SPLIT_FRACTIONS["val"]))
            n_test = max(1, round(n * SPLIT_FRACTIONS["test"]))
        else:
            n_val, n_test = 0, n - 1
        out["val"] += keys[:n_val]
        out["test"] += keys[n_val:n_val + n_test]
        out["train"] += keys[n_val + n_test:]
    return {k: sorted(v) for k, v in out.items()}
