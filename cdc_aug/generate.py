"""``cdc-aug generate``: render shards in, augmented shards out.

Work is split by sample, not by input shard. The kept samples of the input (the
``--split``), taken in the input's order across all its shards, are cut into output
shards of ``--samples-per-shard`` samples: output shard j holds samples
``[j*S, (j+1)*S)`` and is written by rank ``j % world_size``. Any input with at least
world-size output shards keeps every rank busy, however few input shards it has, and a
killed run loses at most the output shard each rank was writing: shards already
complete are skipped when it is started again. Every sample's randomness comes from
``derive_seed(seed, key)`` and batches are formed from the start of each output shard,
so the bytes of every output shard are the same for any number of processes and any
number of restarts. Changing ``--samples-per-shard`` changes the shard layout, so a run
is refused to resume with another value (the images themselves do not depend on it).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import __version__
from .device import resolve_dtype
from .distributed import DistInfo, barrier, init_distributed, shutdown
from .errors import UserError
from .layout import SPLITS, read_splits, shapes_dir, split_of_key, view_of_key
from .runinfo import check_resume, derive_seed, output_lock, write_config
from .safeio import atomic_write_bytes
from .samples import decode_json, decode_png
from .sampling import SamplingSettings, fraction, parse_model_size, pipeline_size
from .scenes import DEFAULT_NEGATIVE, DEFAULT_PROMPT, check_template, load_scenes, make_prompt
from .settings import index_list, setting
from .shards import (
    Failure,
    ShardDamaged,
    ShardStore,
    read_index,
    shard_keys,
    verified_samples,
)

log = logging.getLogger(__name__)

# Keys of GenerateConfig that may change between a run and its resumption: they decide
# how fast the work is done, not what it produces.
RUNTIME_KEYS = ("batch_size", "device", "overwrite", "threads", "out_dir", "progress", "nproc")
# Fields every input sample must have, and fields copied from the render into each output
# sample when present (normal.png and depth.npy let training apply its Laplacian loss to
# augmented views, as the paper trains them with the clean view's normal map).
REQUIRED_FIELDS = ("rgba.png", "mask.png", "camera.json", "meta.json")
COPIED_FIELDS = ("mask.png", "camera.json", "meta.json", "normal.png", "depth.npy")
DEFAULT_SAMPLES_PER_SHARD = 256
# A small set is cut into at least this many output shards, so that every process of a
# launch has work: 324 samples in 256-sample shards left rank 1 of 2 with 68 of them.
MIN_OUTPUT_SHARDS = 8


def output_shard_size(setting: int | None, total: int) -> int:
    """Output shard size: the setting, else 256, or fewer so that ``total`` samples make
    ``MIN_OUTPUT_SHARDS`` shards. It depends on the input only, never on the number of
    processes, so the output stays byte-identical for any launch."""
    if setting:
        return int(setting)
    return max(1, min(DEFAULT_SAMPLES_PER_SHARD, -(-total // MIN_OUTPUT_SHARDS)))


@dataclass(kw_only=True)
class GenerateConfig(SamplingSettings):
    """``cdc-aug generate``'s settings: its flags, its --config keys and ``run_generate``'s config."""

    in_dir: str = setting("data/renders", "render stage directory", flag="--in")
    out_dir: str | None = setting(None, "output directory (required); with several --t-in values, one "
                                        "subdirectory tNNN each", flag="--out")
    mode: Literal["ilvr", "copy-paste"] = setting("ilvr", "ilvr: masked ILVR; copy-paste: the render on a photo")
    prompt: str = setting(DEFAULT_PROMPT, "template with {category} and {scene} (text models)")
    negative_prompt: str = setting(DEFAULT_NEGATIVE, "negative text (text models); \"\" for none")
    scenes: str | None = setting(None, "file with one scene per line (default: built-in list)")
    backgrounds: str | None = setting(None, "photo directory, or a text file listing photos, for --mode copy-paste")
    split: str = setting("train", "train | val | test | all")
    views: list[int] | None = setting(None, "comma-separated view indices to augment, e.g. 0,1,2,33,34,35 "
                                            "(default: every view)", type=index_list)
    # An experiment scores a few views of each test shape; making the others costs time and
    # changes nothing it reports (cdc_aug/experiment.py passes its eval views here).
    test_views: list[int] | None = setting(None, "view indices to augment of the test split's shapes (default: as "
                                                 "--views), e.g. the views eval scores", type=index_list)
    label: str | None = setting(None, "the test-domain name evaluation and reports use for this run (default: "
                                      "from the mode and t_in, e.g. t_in=0.5 or copy-paste); letters, digits, "
                                      "- _ . = only")
    # Decides the output's shard layout, not its samples; fixed for the life of a run.
    samples_per_shard: int | None = setting(None, "samples per output shard, the unit of work of a process and "
                                            "of a resume (default: 256, fewer for a set under 2,048 samples so that "
                                            "it makes 8 shards; fixed for the life of a run)")
    # The grey the object is placed on to form the reference image; only the blur at
    # the mask border sees it (t_out = 0 frees the background).
    reference_grey: int = setting(127, "grey (0-255) under the object in the reference image")
    batch_size: int | None = setting(None, "per process (default: 8; copy-paste 64)")
    nproc: int = setting(1, "spawn this many local processes (gloo on CPU, nccl on CUDA)")
    threads: int | None = setting(None, "torch threads per process")
    overwrite: bool = setting(False, "replace a run with other parameters in --out")
    progress: bool = setting(True, "no progress bar", flag="--no-progress")
    model_identity: dict[str, Any] = setting(cli=False, factory=dict)

    def output_config(self) -> dict[str, Any]:
        d = asdict(self)
        d["in_dir"] = str(Path(self.in_dir).resolve())
        return d


def check_config(cfg: GenerateConfig) -> None:
    """Validate flags and inputs before any work starts (one line per problem)."""
    if not cfg.out_dir:
        raise UserError("--out is required (on the command line or in --config)")
    for name in ("t_in", "t_out", "resample_start"):
        try:
            fraction(getattr(cfg, name))
        except argparse.ArgumentTypeError as e:
            raise UserError(f"--{name.replace('_', '-')} {e}") from None
    for name in ("n_in", "n_out", "steps", "jump_length", "jump_n_sample"):
        v = getattr(cfg, name)
        if int(v) != v or v < 1:
            raise UserError(f"--{name.replace('_', '-')} {v}: must be a positive integer")
    if cfg.mode == "ilvr":  # the pipeline's own check, before any work rather than once per sample
        from .lowpass import guided_steps

        for name in ("t_in", "t_out"):
            v = getattr(cfg, name)
            if v > 0 and guided_steps(v, int(cfg.steps)) == 0:
                raise UserError(f"--{name.replace('_', '-')} {v} guides 0 of --steps {cfg.steps} (a step counts when "
                                f"its midpoint is before t*steps); use 0 or more than {0.5 / cfg.steps:.4g}")
    if cfg.mode not in ("ilvr", "copy-paste"):
        raise UserError(f"--mode {cfg.mode}: choose ilvr or copy-paste")
    if cfg.space not in ("x0", "xt"):
        raise UserError(f"--space {cfg.space}: choose x0 or xt")
    if cfg.mode == "copy-paste" and not cfg.backgrounds:
        raise UserError("--mode copy-paste needs --backgrounds DIR")
    if cfg.label is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.=-]{0,63}", cfg.label):
        raise UserError(f"--label {cfg.label!r}: use 1-64 letters, digits, - _ . =")
    if cfg.samples_per_shard is not None and (int(cfg.samples_per_shard) != cfg.samples_per_shard
                                              or cfg.samples_per_shard < 1):
        raise UserError(f"--samples-per-shard {cfg.samples_per_shard}: must be a positive integer")
    if cfg.nproc < 1:
        raise UserError(f"--nproc {cfg.nproc}: must be at least 1")
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
    for flag, views in (("--views", cfg.views), ("--test-views", cfg.test_views)):
        if views is None or index.get("views") is None:
            continue
        missing = sorted(v for v in views if not 0 <= v < int(index["views"]))
        if missing:
            raise UserError(f"{flag}: {cfg.in_dir} has {index['views']} views per shape (0-{int(index['views']) - 1}), "
                            f"not {', '.join(map(str, missing))}")
    if cfg.test_views is not None and "test" not in read_splits(src):
        raise UserError(f"--test-views: {src / SPLITS} has no test split")
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
    # CPU: batches of 8-16 cost ~10% less per image than 4 on the bundled UNet (64², 1 thread).
    return 8


_PIPELINES: dict[tuple, Any] = {}


def _pipeline(model: str | None, device, dtype):
    """The pipeline for ``model``, loaded once per process (a sweep reuses it)."""
    from .models import load_pipeline

    key = (model, str(device), dtype)
    if key not in _PIPELINES:
        _PIPELINES.clear()
        pipe = load_pipeline(model, device=device, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        # Channels-last: oneDNN (CPU) and cuDNN (fp16) convolutions run without layout
        # reorders; measured 15-20% less CPU time per image-step on the bundled UNet.
        import torch

        for part in (getattr(pipe, "unet", None), getattr(pipe, "vae", None)):
            if part is not None:
                part.to(memory_format=torch.channels_last)
        _PIPELINES[key] = pipe
    return _PIPELINES[key]


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
            self.pipe = _pipeline(cfg.model, device, resolve_dtype(cfg.dtype, device))
            self._check_factors()
        self.text_conditioned = bool(self.pipe is not None and self.pipe.is_text_conditioned)

    def _check_factors(self) -> None:
        """--n-in/--n-out must divide the grid the model samples on: refused here, before any
        sample, rather than as one failure per sample. With --model-size input the grid is the
        render's size, checked by the pipeline on the first batch."""
        size = parse_model_size(self.cfg.model_size)
        if size == "input":
            return
        pipe = self.pipe
        mh, mw = pipe.default_size((1, 1)) if size is None else size
        f = pipe.vae_scale_factor if pipe.is_latent else 1
        gh, gw = mh // f, mw // f
        for flag, n in (("--n-in", self.cfg.n_in), ("--n-out", self.cfg.n_out)):
            if gh % n or gw % n:
                raise UserError(f"{flag} {n}: does not divide the {gw}x{gh} grid the model samples on "
                                f"(--model-size {self.cfg.model_size} = {mw}x{mh}); use a divisor of {gh} and {gw}")

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
        # inference_mode: no autograd bookkeeping on any tensor of the sampling loop.
        with torch.inference_mode():
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


@dataclass
class InputPlan:
    """The kept samples of the input, in the input's order: per input shard, its keys.

    Keys come from each input shard's sidecar (written by every stage); a shard without
    one is scanned. Every rank builds the same plan, so output shard j means the same
    samples everywhere.
    """

    shards: list[Path]
    keys: list[list[str]]
    failures: list[tuple[int, Failure]]  # (position in the sample order, failure) found while planning

    @classmethod
    def read(cls, in_shards: list[Path], keep) -> InputPlan:
        keys, failures, pos = [], [], 0
        for p in in_shards:
            try:
                names = shard_keys(p)
            except ShardDamaged as e:  # no sidecar, and the shard cannot be read
                names = []
                failures.append((pos, Failure(p.name, f"corrupt input shard, read stopped: {e.reason}")))
            kept = [k for k in names if keep(k)]
            keys.append(kept)
            pos += len(kept)
        return cls(list(in_shards), keys, failures)

    @property
    def total(self) -> int:
        return sum(len(k) for k in self.keys)

    def num_output_shards(self, per_shard: int) -> int:
        return -(-self.total // per_shard)

    def slots(self, start: int, stop: int) -> list[tuple[int, str]]:
        """(input shard index, key) of samples ``start .. stop-1`` of the order."""
        out, offset = [], 0
        for i, keys in enumerate(self.keys):
            lo, hi = max(start - offset, 0), min(stop - offset, len(keys))
            out.extend((i, k) for k in keys[lo:hi])
            offset += len(keys)
            if offset >= stop:
                break
        return out

    def planning_failures(self, j: int, per_shard: int) -> list[Failure]:
        """Failures found while planning, recorded with the output shard at whose position they occurred."""
        last = max(self.num_output_shards(per_shard) - 1, 0)
        return [f for pos, f in self.failures if min(pos // per_shard, last) == j]


def output_shards_of_rank(num_shards: int, rank: int, world_size: int) -> range:
    """Output shard j goes to rank j % world_size."""
    return range(rank, num_shards, world_size)


def _read_slots(plan: InputPlan, slots: list[tuple[int, str]], failures: list[Failure]) -> Iterator[dict[str, bytes]]:
    """The raw input samples of ``slots``, in order; what cannot be read becomes a Failure.

    An input shard is read from its start up to the last wanted key (reads are sequential
    and cheap next to a diffusion model's cost per sample).
    """
    for shard, group in itertools.groupby(slots, key=lambda s: s[0]):
        wanted = [k for _, k in group]
        want, found = set(wanted), set()
        path = plan.shards[shard]
        # The verified reader: sha256 and size against the input's index.json, no compressed
        # tars, capped members; a stage-level OSError (full disk) passes through.
        it = verified_samples(path)
        try:
            for sample in it:
                key = sample["__key__"]
                if key in want and key not in found:
                    found.add(key)
                    yield sample
                    if len(found) == len(want):
                        break
        except ShardDamaged as e:  # every lost key is listed; the output shard is redone next run
            failures.extend(e.failures(lambda k, want=want, found=found: k in want and k not in found))
            continue
        finally:
            it.close()
        failures.extend(Failure(k, f"listed in {path.name}.json but not in the shard") for k in wanted if k not in found)


def _shard_samples(
    raw_samples: Iterator[dict[str, bytes]], augment: Augmenter, batch_size: int, failures: list[Failure],
    progress: _Progress,
) -> Iterator[dict[str, Any]]:
    """Output samples of one output shard, in input order; bad samples become Failures.

    Batches start at the shard's first sample whatever rank runs it, so the shard's bytes
    do not depend on the number of processes.
    """

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
                if f in raw:
                    out[f] = raw[f]
            yield out
        progress.add(len(batch))

    batch: list[dict[str, Any]] = []
    for sample in raw_samples:
        key = sample["__key__"]
        missing = [f for f in REQUIRED_FIELDS if f not in sample]
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


def run_generate(cfg: GenerateConfig) -> dict[str, Any] | None:
    """Run (or resume) one generate job; returns the index on rank 0."""
    return run_generate_all([cfg])[0]


def run_generate_all(configs: list[GenerateConfig]) -> list[dict[str, Any] | None]:
    """Run (or resume) several generate jobs in this process, one after the other (a t_in
    sweep): the process group is joined and the model loaded once. Indexes on rank 0."""
    for cfg in configs:
        check_config(cfg)
    import torch

    if configs[0].threads:
        torch.set_num_threads(configs[0].threads)
    info = init_distributed(configs[0].device)
    try:
        results = []
        for cfg in configs:
            if not info.is_main:
                results.append(_run(cfg, info))
                continue
            with output_lock(cfg.out_dir, "cdc-aug generate"):
                results.append(_run(cfg, info))
        return results
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

    # Which input samples this run augments: its split's shapes, their --views, and of the
    # test shapes their --test-views.
    splits = read_splits(src) if cfg.split != "all" or cfg.test_views is not None else {}
    wanted = None if cfg.split == "all" else set(splits[cfg.split])
    every = None if cfg.views is None else set(cfg.views)
    test = every if cfg.test_views is None else set(cfg.test_views)
    test_shapes = set(splits.get("test", [])) if cfg.test_views is not None else set()

    def keep(key):
        shape = split_of_key(key)
        views = test if shape in test_shapes else every
        return (wanted is None or shape in wanted) and (views is None or view_of_key(key) in views)

    plan = InputPlan.read(in_shards, keep)
    per = output_shard_size(cfg.samples_per_shard, plan.total)
    n_out = plan.num_output_shards(per)
    if n_out == 0:
        raise UserError(f"--in {cfg.in_dir}: no readable samples in --split {cfg.split}")
    mine = output_shards_of_rank(n_out, info.rank, info.world_size)
    augment = Augmenter(cfg, info.device)
    bs = default_batch_size(cfg, info.device)
    progress = _Progress(out, info, plan.total, cfg.progress)
    done_before = 0
    for j in mine:
        slots = plan.slots(j * per, (j + 1) * per)
        # What output shard j is made from: the input shards it reads (their sha256), so a
        # shard is redone when its input changed or was damaged (ShardStore.is_done).
        source = hashlib.sha256(" ".join(src_index["shards"][i]["sha256"] for i in sorted({i for i, _ in slots})
                                         ).encode()).hexdigest()
        if store.is_done(j, source):
            done_before += 1
            progress.add((store.read_sidecar(j) or {}).get("count", 0))
            continue
        failures = plan.planning_failures(j, per)
        raw = _read_slots(plan, slots, failures)
        store.write(j, _shard_samples(raw, augment, bs, failures, progress), failures=failures, source=source)
    progress.close()
    if done_before:
        log.info("rank %d: %d of its %d output shards were already complete", info.rank, done_before, len(mine))
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
        "samples_per_shard": per,
        "cdc_aug": __version__,
    }
    index = store.finalize(n_out, extra=extra, require_samples=True)
    if (src / SPLITS).exists():
        atomic_write_bytes(out / SPLITS, (src / SPLITS).read_bytes())
    shutil.rmtree(out / ".progress", ignore_errors=True)
    return index
