"""``cdc-aug generate``: render shards in, augmented shards out.

Input shard i becomes output shard i, written by rank ``i % world_size``; shards already
complete are skipped, so a killed run started again finishes without losing or
duplicating a key. Every sample's randomness comes from ``derive_seed(seed, key)``,
so the output does not depend on the number of processes or on which rank ran a shard.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .distributed import DistInfo, barrier, init_distributed, shutdown
from .errors import UserError
from .layout import SPLITS, read_splits, shapes_dir, split_of_key, view_of_key
from .runinfo import check_resume, derive_seed, output_lock, write_config
from .safeio import atomic_write_bytes
from .samples import decode_json, decode_png
from .sampling import DEFAULTS as D
from .sampling import parse_model_size, pipeline_size
from .scenes import DEFAULT_NEGATIVE, DEFAULT_PROMPT, check_template, load_scenes, make_prompt
from .shards import Failure, ShardDamaged, ShardStore, read_index, verified_samples

log = logging.getLogger(__name__)

# Keys of GenerateConfig that may change between a run and its resumption: they decide
# how fast the work is done, not what it produces.
RUNTIME_KEYS = ("batch_size", "device", "overwrite", "threads", "out_dir", "progress")
COPIED_FIELDS = ("mask.png", "camera.json", "meta.json")
# Copied when the render has them: the Laplacian loss of `cdc-aug train` needs the view's
# normal and depth maps, and the paper trains augmented images with the clean view's
# normals, so augmented and clean samples get the same losses (train_svr/README.md).
TRAINING_FIELDS = ("normal.png", "depth.npy")


@dataclass
class GenerateConfig:
    in_dir: str
    out_dir: str
    mode: str = "ilvr"  # "ilvr" | "copy-paste"
    t_in: float = D.t_in
    t_out: float = D.t_out
    n_in: int = D.n_in
    n_out: int = D.n_out
    space: str = D.space
    blur: str = D.blur
    model: str | None = None
    model_size: str = D.model_size  # native | input | N | WxH: the size the model samples at
    steps: int = D.steps
    guidance: float = D.guidance
    prompt: str = DEFAULT_PROMPT
    negative_prompt: str = DEFAULT_NEGATIVE
    scenes: str | None = None
    backgrounds: str | None = None
    resample_start: float = D.resample_start
    jump_length: int = D.jump_length
    jump_n_sample: int = D.jump_n_sample
    seed: int = D.seed
    split: str = "train"
    views: list[int] | None = None  # only these view indices (None: every view)
    label: str | None = None  # the domain name reports use (eval.evaluate.domain_of)
    dtype: str = "auto"  # auto: fp16 on CUDA, fp32 on CPU
    # The grey the object is placed on to form the reference image; only the blur at
    # the mask border sees it (t_out = 0 frees the background).
    reference_grey: int = 127
    batch_size: int | None = None
    device: str = "auto"
    threads: int | None = None
    overwrite: bool = False
    progress: bool = True
    model_identity: dict[str, Any] = field(default_factory=dict)

    def output_config(self) -> dict[str, Any]:
        d = asdict(self)
        d["in_dir"] = str(Path(self.in_dir).resolve())
        return d


def check_config(cfg: GenerateConfig) -> None:
    """Validate flags and inputs before any work starts (one line per problem)."""
    for name in ("t_in", "t_out", "resample_start"):
        v = getattr(cfg, name)
        if not 0.0 <= v <= 1.0:
            raise UserError(f"--{name.replace('_', '-')} {v}: must lie in [0, 1]")
    for name in ("n_in", "n_out", "steps", "jump_length", "jump_n_sample"):
        v = getattr(cfg, name)
        if int(v) != v or v < 1:
            raise UserError(f"--{name.replace('_', '-')} {v}: must be a positive integer")
    if cfg.mode not in ("ilvr", "copy-paste"):
        raise UserError(f"--mode {cfg.mode}: choose ilvr or copy-paste")
    if cfg.space not in ("x0", "xt"):
        raise UserError(f"--space {cfg.space}: choose x0 or xt")
    if cfg.mode == "copy-paste" and not cfg.backgrounds:
        raise UserError("--mode copy-paste needs --backgrounds DIR")
    if cfg.label is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.=-]{0,63}", cfg.label):
        raise UserError(f"--label {cfg.label!r}: use 1-64 letters, digits, - _ . =")
    if cfg.batch_size is not None and cfg.batch_size < 1:
        raise UserError(f"--batch-size {cfg.batch_size}: must be at least 1")
    parse_model_size(cfg.model_size)
    check_template(cfg.prompt)
    load_scenes(cfg.scenes)
    src = Path(cfg.in_dir)
    if not src.is_dir():
        raise UserError(f"--in {cfg.in_dir}: no such directory")
    index = read_index(src)
    if index.get("stage") != "render":
        raise UserError(f"--in {cfg.in_dir}: holds a '{index.get('stage')}' stage, not renders")
    if not index.get("shards") or not index.get("num_samples"):
        raise UserError(f"--in {cfg.in_dir}: holds no samples")
    if cfg.views is not None and index.get("views") is not None:
        missing = sorted(v for v in cfg.views if not 0 <= v < int(index["views"]))
        if missing:
            raise UserError(f"--views: {cfg.in_dir} has {index['views']} views per shape (0-{int(index['views']) - 1}), "
                            f"not {', '.join(map(str, missing))}")
    if cfg.split != "all":
        splits = read_splits(src)
        if cfg.split not in splits:
            raise UserError(f"--split {cfg.split}: {src / SPLITS} has {', '.join(sorted(splits))}")
        if not splits[cfg.split]:
            raise UserError(f"--split {cfg.split}: no shapes in that split of {src / SPLITS}")


def default_batch_size(cfg: GenerateConfig, device) -> int:
    if cfg.batch_size:
        return cfg.batch_size
    if cfg.mode == "copy-paste":
        return 64
    return 8 if device.type == "cuda" else 4


def resolve_dtype(name: str, device):
    import torch

    if name == "auto":
        from .models import default_dtype

        return default_dtype(device)
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name not in table:
        raise UserError(f"--dtype {name}: choose auto, fp32, fp16 or bf16")
    return table[name]


class Augmenter:
    """Turns batches of decoded render samples into composites (ILVR or copy-paste)."""

    def __init__(self, cfg: GenerateConfig, device):
        self.cfg = cfg
        self.device = device
        self.scenes = load_scenes(cfg.scenes)
        self.pipe = None
        self.pool = None
        if cfg.mode == "copy-paste":
            from .copy_paste import BackgroundPool, list_backgrounds

            self.pool = BackgroundPool(list_backgrounds(cfg.backgrounds))
        else:
            from .models import load_pipeline

            self.pipe = load_pipeline(cfg.model, device=device, dtype=resolve_dtype(cfg.dtype, device))
            self.pipe.set_progress_bar_config(disable=True)
        self.text_conditioned = bool(self.pipe is not None and self.pipe.is_text_conditioned)

    def __call__(self, batch: list[dict[str, Any]]) -> list[tuple[np.ndarray, dict[str, Any]]]:
        cfg = self.cfg
        seeds = [derive_seed(cfg.seed, s["__key__"]) for s in batch]
        if self.pool is not None:
            outs = []
            for s, seed in zip(batch, seeds):
                image, info = self.pool.composite(s["rgba"], seed)
                outs.append((image, {"mode": "copy-paste", "seed": seed, **info}))
            return outs
        import torch

        refs, masks, prompts, scenes = [], [], [], []
        for s in batch:
            rgba = s["rgba"].astype(np.float32)
            alpha = rgba[..., 3:4] / 255.0
            ref = rgba[..., :3] * alpha + float(cfg.reference_grey) * (1 - alpha)
            refs.append(np.clip(ref + 0.5, 0, 255).astype(np.uint8))
            masks.append((s["mask"] > 127).astype(np.float32))
        for s, seed in zip(batch, seeds):
            if self.text_conditioned:
                p, scene = make_prompt(cfg.prompt, s["category"], self.scenes, seed)
            else:
                p, scene = None, None
            prompts.append(p)
            scenes.append(scene)
        # One CPU generator per sample: the same key gives the same image on any device,
        # in any batch, on any rank.
        gens = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        kwargs = dict(
            **pipeline_size(parse_model_size(cfg.model_size), refs[0].shape[:2]),
            image=refs,
            mask_image=masks,
            t_in=cfg.t_in,
            t_out=cfg.t_out,
            n_in=cfg.n_in,
            n_out=cfg.n_out,
            space=cfg.space,
            blur=cfg.blur if cfg.blur == "auto" else float(cfg.blur),
            num_inference_steps=cfg.steps,
            generator=gens,
            output_type="np",
        )
        if cfg.resample_start > 0:
            kwargs.update(
                resample_start=cfg.resample_start, jump_length=cfg.jump_length, jump_n_sample=cfg.jump_n_sample
            )
        if self.text_conditioned:
            kwargs.update(prompt=prompts, negative_prompt=[cfg.negative_prompt] * len(batch),
                          guidance_scale=cfg.guidance)
        images = self.pipe(**kwargs).images
        outs = []
        for img, seed, p, scene in zip(images, seeds, prompts, scenes):
            arr = np.clip(np.asarray(img, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
            info = {
                "mode": "ilvr",
                "seed": seed,
                "t_in": cfg.t_in,
                "t_out": cfg.t_out,
                "n_in": cfg.n_in,
                "n_out": cfg.n_out,
                "space": cfg.space,
                "blur": cfg.blur,
                "steps": cfg.steps,
                "model_size": cfg.model_size,
                "reference_grey": cfg.reference_grey,
            }
            if cfg.resample_start > 0:
                info.update(resample_start=cfg.resample_start, jump_length=cfg.jump_length,
                            jump_n_sample=cfg.jump_n_sample)
            if p is not None:
                info.update(prompt=p, scene=scene, negative_prompt=cfg.negative_prompt, guidance=cfg.guidance)
            outs.append((arr, info))
        return outs


def _decode(sample: dict[str, bytes]) -> dict[str, Any]:
    meta = decode_json(sample["meta.json"])
    return {
        "__key__": sample["__key__"],
        "raw": sample,
        "rgba": decode_png(sample["rgba.png"]),
        "mask": decode_png(sample["mask.png"]),
        "category": meta.get("category") or meta.get("synset", "object"),
    }


class _Progress:
    """Rank 0 shows progress over all ranks; each rank publishes its count in a file."""

    def __init__(self, out: Path, info: DistInfo, total: int, enabled: bool):
        self.dir = out / ".progress"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.file = self.dir / f"rank-{info.rank}"
        self.info = info
        self.count = 0
        self.last = 0.0
        self.bar = None
        if info.is_main and enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", desc=f"generate ({info.world_size} proc)", dynamic_ncols=True)

    def add(self, n: int) -> None:
        self.count += n
        now = time.monotonic()
        if now - self.last < 1.0:
            return
        self.last = now
        self.file.write_text(str(self.count))
        if self.bar is not None:
            total = 0
            for p in self.dir.glob("rank-*"):
                try:
                    total += int(p.read_text() or 0)
                except (ValueError, OSError):
                    pass
            self.bar.n = min(total, self.bar.total)
            self.bar.refresh()

    def close(self) -> None:
        self.file.write_text(str(self.count))
        if self.bar is not None:
            self.bar.n = self.bar.total
            self.bar.close()


def _shard_samples(
    in_path: Path, keep, augment: Augmenter, batch_size: int, failures: list[Failure], progress: _Progress
) -> Iterator[dict[str, Any]]:
    """Output samples of one input shard, in input order; bad samples become Failures."""

    def flush(batch):
        try:
            results = augment(batch)
        except Exception as e:  # a whole batch failing is rare; retry one by one to isolate it
            if len(batch) == 1:
                failures.append(Failure(batch[0]["__key__"], f"augmentation failed: {e}"))
                return
            log.warning("batch failed (%s); retrying its %d samples one by one", e, len(batch))
            for s in batch:
                yield from flush([s])
            return
        for s, (image, info) in zip(batch, results):
            raw = s["raw"]
            out = {"__key__": s["__key__"], "image.png": image, "aug.json": {**info, "key": s["__key__"]}}
            for f in COPIED_FIELDS:
                out[f] = raw[f]
            for f in TRAINING_FIELDS:
                if f in raw:
                    out[f] = raw[f]
            yield out
        progress.add(len(batch))

    batch: list[dict[str, Any]] = []
    it = verified_samples(in_path)
    while True:
        try:
            sample = next(it)
        except StopIteration:
            break
        except ShardDamaged as e:  # every key of the shard is listed; the shard is retried next run
            failures.extend(e.failures(keep))
            break
        key = sample["__key__"]
        if not keep(key):
            continue
        missing = [f for f in ("rgba.png", *COPIED_FIELDS) if f not in sample]
        if missing:
            failures.append(Failure(key, f"input sample lacks {', '.join(missing)}"))
            continue
        try:
            decoded = _decode(sample)
        except Exception as e:
            failures.append(Failure(key, f"undecodable input sample: {e}"))
            continue
        if batch and decoded["rgba"].shape != batch[0]["rgba"].shape:
            yield from flush(batch)
            batch = []
        batch.append(decoded)
        if len(batch) >= batch_size:
            yield from flush(batch)
            batch = []
    if batch:
        yield from flush(batch)


def _count_wanted(in_shards: list[Path], keep, fallback: int) -> int:
    """Samples the run will produce, from the input sidecars' key lists when present."""
    total = 0
    for p in in_shards:
        side = p.with_name(p.name + ".json")
        try:
            keys = json.loads(side.read_text())["keys"]
        except (OSError, ValueError, KeyError):
            return fallback
        total += sum(1 for k in keys if keep(k))
    return total


def run_generate(cfg: GenerateConfig) -> dict[str, Any] | None:
    """Run (or resume) one generate job; returns the index on rank 0."""
    check_config(cfg)
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    info = init_distributed(cfg.device)
    try:
        if not info.is_main:
            return _run(cfg, info)
        with output_lock(cfg.out_dir, "cdc-aug generate"):
            return _run(cfg, info)
    finally:
        shutdown(info)


def _run(cfg: GenerateConfig, info: DistInfo) -> dict[str, Any] | None:
    src, out = Path(cfg.in_dir), Path(cfg.out_dir)
    src_index = read_index(src)
    in_shards = [src / "shards" / s["name"] for s in src_index["shards"]]
    if cfg.mode == "ilvr":
        from .models import model_identity

        cfg.model_identity = model_identity(cfg.model)
    config = cfg.output_config()
    store = ShardStore(out, "aug", stage="aug")
    if info.is_main:
        if cfg.overwrite and out.exists():
            for name in ("shards", ".progress"):
                shutil.rmtree(out / name, ignore_errors=True)
            for name in ("index.json", "failures.jsonl", "config.yaml", SPLITS):
                (out / name).unlink(missing_ok=True)
        check_resume(out, config, overwrite=False, ignore=RUNTIME_KEYS)
        store.clean_temporaries()
        shutil.rmtree(out / ".progress", ignore_errors=True)
        write_config(out, config)
    barrier(info)  # nobody writes before rank 0 has checked and cleaned

    if cfg.split == "all":
        def keep(key):
            return True
    else:
        wanted = set(read_splits(src)[cfg.split])

        def keep(key):
            return split_of_key(key) in wanted
    if cfg.views is not None:
        views, in_split = set(cfg.views), keep

        def keep(key):
            return in_split(key) and view_of_key(key) in views

    mine = [i for i in range(len(in_shards)) if i % info.world_size == info.rank]
    total = _count_wanted(in_shards, keep, int(src_index["num_samples"]))
    augment = Augmenter(cfg, info.device)
    bs = default_batch_size(cfg, info.device)
    progress = _Progress(out, info, total, cfg.progress)
    done_before = 0
    for i in mine:
        if store.is_done(i, src_index["shards"][i]["sha256"]):  # redone when its input changed
            done_before += 1
            progress.add((store.read_sidecar(i) or {}).get("count", 0))
            continue
        failures: list[Failure] = []
        store.write(i, _shard_samples(in_shards[i], keep, augment, bs, failures, progress), failures=failures,
                    source=src_index["shards"][i]["sha256"])
    progress.close()
    if done_before:
        log.info("rank %d: %d of its %d shards were already complete", info.rank, done_before, len(mine))
    barrier(info)
    if not info.is_main:
        return None
    extra = {
        "renders_dir": os.path.relpath(src.resolve(), out.resolve()),
        "shapes_dir": str(shapes_dir(src)),
        "mode": cfg.mode,
        "t_in": cfg.t_in,
        "t_out": cfg.t_out,
        "space": cfg.space,
        "split": cfg.split,
        "label": cfg.label,
        "cdc_aug": __version__,
    }
    index = store.finalize(len(in_shards), extra=extra, require_samples=True)
    if (src / SPLITS).exists():
        atomic_write_bytes(out / SPLITS, (src / SPLITS).read_bytes())
    shutil.rmtree(out / ".progress", ignore_errors=True)
    return index
