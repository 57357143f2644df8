"""Training samples from render shards or generate runs, joined with the per-shape h5
ground truth, and the loaders that split them across nodes, ranks and workers.

A sample for the model: the input image (``input_image``), its camera rescaled to the
training resolution, the mask, and - for render samples - the normal and depth maps the
Laplacian loss needs. Generate runs copy the render's normal and depth maps, so their
samples get the same losses as clean ones; a sample without them (an older generate
run) gets ``has_detail = 0`` and the Laplacian term skips it (the SDF losses still apply).

Splitting: the train samples of a shard set, in shard order, are cut into
``world_size * num_workers`` contiguous blocks, one per (rank, worker), which webdataset's
``split_by_node`` and ``split_by_worker`` hand out, so each worker reads about
1/(world*workers) of the shards. An epoch has a fixed length (the train sample count
unless ``epoch_samples`` says otherwise) divided among ranks and then workers
(``with_epoch``), so steps per epoch do not multiply with either; when the length divides
evenly each sample is seen exactly once per epoch. The stream has a length (the progress
bar shows a total).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset

from cdc_aug.errors import UserError
from cdc_aug.layout import read_splits, shape_file, shape_provenance, shapes_dir, split_of_key
from cdc_aug.samples import decode_field
from cdc_aug.shards import ShardDamaged, check_shard, read_index, shard_keys, verified_samples
from render.groundtruth import GroundTruthCache

from .geometry import resize_intrinsics

log = logging.getLogger(__name__)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def input_image(sample: dict) -> np.ndarray:
    """The SVR input, HxWx3 uint8: ``image.png`` (a generate run's composite) if present,
    else ``rgba.png`` composited over white. Fields may be raw bytes or decoded arrays."""
    for name in ("image.png", "rgba.png"):
        if name in sample:
            arr = sample[name]
            arr = decode_field(name, arr) if isinstance(arr, (bytes, bytearray)) else np.asarray(arr)
            break
    else:
        raise KeyError(f"sample {sample.get('__key__')!r} has neither image.png nor rgba.png")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, -1)
    if arr.shape[-1] == 4:
        a = arr[..., 3:4].astype(np.float32) / 255.0
        rgb = arr[..., :3].astype(np.float32) * a + 255.0 * (1.0 - a)
        return np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr[..., :3]).astype(np.uint8)


def image_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    """HxWx3 uint8 -> (3, size, size) float, ImageNet-normalised."""
    im = Image.fromarray(image)
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    x = (np.asarray(im, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(x.transpose(2, 0, 1).copy())


def camera_tensors(camera: dict, image_hw: tuple[int, int], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, RT) as float32 tensors for the image resampled to ``size`` x ``size``."""
    hw = tuple(camera.get("image_size", image_hw))
    K = resize_intrinsics(np.asarray(camera["K"], dtype=np.float64), hw, (size, size))
    RT = np.asarray(camera["RT"], dtype=np.float64)
    if K.shape != (3, 3) or RT.shape != (3, 4):
        raise ValueError(f"camera.json: K must be 3x3 and RT 3x4, got {K.shape} and {RT.shape}")
    if not (np.isfinite(K).all() and np.isfinite(RT).all()):
        raise ValueError("camera.json: K or RT holds NaN or inf")
    return torch.from_numpy(K).float(), torch.from_numpy(RT).float()


def _resize_nearest(arr: np.ndarray, size: int) -> np.ndarray:
    if arr.shape[0] == size and arr.shape[1] == size:
        return arr
    ys = (np.arange(size) * arr.shape[0] / size).astype(int)
    xs = (np.arange(size) * arr.shape[1] / size).astype(int)
    return arr[ys][:, xs]


def _by_sign(data: dict) -> dict:
    sdf = np.asarray(data.pop("sdf_samples"), dtype=np.float32)
    return {**data, "sdf_samples": sdf, "inside": np.flatnonzero(sdf[:, 3] < 0),
            "outside": np.flatnonzero(sdf[:, 3] >= 0)}


def ground_truth(shapes: str | Path, digests: dict | None = None, surface: bool = False) -> GroundTruthCache:
    """The shape files as training reads them: SDF samples split by sign (and, with
    ``surface``, the surface points validation scores against), cached per process."""
    names = ("sdf_samples", "surface_points") if surface else ("sdf_samples",)
    return GroundTruthCache(shapes, names, _by_sign, digests)


def balanced_points(sdf_samples: np.ndarray, n: int, rng: np.random.Generator,
                    split: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` SDF samples, half inside (sdf < 0) and half outside, drawn with replacement
    only when a side has too few. ``split``: the inside and outside indices, if known."""
    inside, outside = split if split is not None else (np.flatnonzero(sdf_samples[:, 3] < 0),
                                                       np.flatnonzero(sdf_samples[:, 3] >= 0))
    if len(inside) == 0 or len(outside) == 0:
        pick = rng.choice(len(sdf_samples), n, replace=len(sdf_samples) < n)
    else:
        half = n // 2
        pick = np.concatenate([rng.choice(inside, half, replace=len(inside) < half),
                               rng.choice(outside, n - half, replace=len(outside) < n - half)])
    s = sdf_samples[pick]
    return s[:, :3].astype(np.float32), s[:, 3].astype(np.float32)


def make_example(raw: dict, gt: GroundTruthCache, size: int, points: int, rng: np.random.Generator,
                 surface_points: int = 0) -> dict:
    """One model input from one raw (bytes) sample."""
    meta = decode_field("meta.json", raw["meta.json"])
    camera = decode_field("camera.json", raw["camera.json"])
    image = input_image(raw)
    K, RT = camera_tensors(camera, image.shape[:2], size)
    mask = decode_field("mask.png", raw["mask.png"]) if "mask.png" in raw else np.full(image.shape[:2], 255, np.uint8)
    if mask.ndim == 3:
        mask = mask[..., 0]
    out = {
        "key": raw["__key__"],
        "image": image_tensor(image, size),
        "K": K,
        "RT": RT,
        "mask": torch.from_numpy((_resize_nearest(mask, size) > 127).astype(np.float32))[None],
    }
    if "normal.png" in raw and "depth.npy" in raw:
        nrm = decode_field("normal.png", raw["normal.png"])[..., :3].astype(np.float32) / 127.5 - 1.0
        nrm = np.where((mask > 127)[..., None], nrm, 0.0)
        depth = decode_field("depth.npy", raw["depth.npy"]).astype(np.float32)
        out["normal"] = torch.from_numpy(_resize_nearest(nrm, size).transpose(2, 0, 1).copy())
        out["depth"] = torch.from_numpy(_resize_nearest(depth, size).copy())[None]
        out["has_detail"] = torch.tensor(1.0)
    else:
        out["normal"] = torch.zeros(3, size, size)
        out["depth"] = torch.zeros(1, size, size)
        out["has_detail"] = torch.tensor(0.0)
    g = gt.get(meta["synset"], meta["model_id"])
    xyz, sdf = balanced_points(g["sdf_samples"], points, rng, (g["inside"], g["outside"]))
    out["points"], out["sdf"] = torch.from_numpy(xyz), torch.from_numpy(sdf)
    if surface_points:
        surf = g["surface_points"]
        idx = rng.choice(len(surf), min(surface_points, len(surf)), replace=False)
        out["surface"] = torch.from_numpy(surf[np.sort(idx)].astype(np.float32))
    return out


@dataclass
class ShardSet:
    """The samples of one split in one render directory or generate run."""

    root: Path
    shapes: Path
    items: list[tuple[Path, str]]  # (shard path, key), in shard order
    digests: dict = None  # shape key -> ground-truth provenance digest (layout.shape_provenance)

    @property
    def shards(self) -> list[Path]:
        return list(dict.fromkeys(p for p, _ in self.items))


def open_shard_set(root: str | Path, split: str, check_shapes: bool = True) -> ShardSet:
    """Index one shard directory's ``split``; every problem is a one-line UserError.
    Each shard is checked against index.json (size, sha256); a damaged one is a one-line
    error that names it and the keys lost with it."""
    root = Path(root)
    index = read_index(root)
    splits = read_splits(root)
    if split not in splits:
        raise UserError(f"{root / 'splits.json'}: no split named {split!r} (has {', '.join(sorted(splits))})")
    wanted = set(splits[split])
    items = []
    for entry in index["shards"]:
        p = root / "shards" / entry["name"]
        try:
            check_shard(p, entry)
            keys = shard_keys(p, entry)
        except ShardDamaged as e:  # training on what survives would change the data unnoticed
            raise UserError(f"{p.parent}/{e}: {e.lost(lambda k: split_of_key(k) in wanted)} of the {split!r} "
                            "split; repair or regenerate it") from e
        items += [(p, k) for k in keys if split_of_key(k) in wanted]
    if not items:
        raise UserError(f"{root}: the {split!r} split has no samples ({len(wanted)} shapes in splits.json, "
                        f"{index.get('num_samples', '?')} samples in the shards)")
    shapes = shapes_dir(root)
    if check_shapes:
        seen = set()
        for _, k in items:
            shape = split_of_key(k)
            if shape in seen:
                continue
            seen.add(shape)
            synset, model_id = shape.split("_", 1)
            if not shape_file(shapes, synset, model_id).exists():
                raise UserError(f"{shape_file(shapes, synset, model_id)}: shape file missing (ground truth of "
                                f"{shape}, a {split!r} shape of {root})")
    return ShardSet(root, shapes, items, shape_provenance(root))


def _blocks(items: list, n: int) -> list[list]:
    """``items`` cut into ``n`` contiguous blocks of near-equal size (a block's samples
    share few shards). With fewer items than blocks, block i holds item i % len(items):
    some samples repeat, none is left out."""
    if len(items) >= n:
        return [items[i * len(items) // n:(i + 1) * len(items) // n] for i in range(n)]
    return [[items[i % len(items)]] for i in range(n)]


def _read_blocks(blocks: Iterable[list[tuple[Path, str]]], rng: random.Random) -> Iterator[dict]:
    """The raw samples of each block, shard by shard in a random order, every shard checked
    by ``verified_samples`` as it is read; one damaged since ``open_shard_set`` checked it
    is skipped with a warning that names it."""
    for block in blocks:
        by_shard: dict[Path, set[str]] = {}
        for p, k in block:
            by_shard.setdefault(p, set()).add(k)
        shards = list(by_shard)
        rng.shuffle(shards)
        for shard in shards:
            try:
                for raw in verified_samples(shard):
                    if raw["__key__"] in by_shard[shard]:
                        yield raw
            except ShardDamaged as e:
                log.warning("skipped the rest of %s: %s", shard, e.reason)


def _mix(streams: list, weights: np.ndarray, rng: np.random.Generator, roots: list[Path]) -> Iterator[tuple[int, dict]]:
    """``(set, raw sample)`` drawn from the sets' endless streams by weight.

    Not ``webdataset.RandomMix``: it draws from the process-wide ``random`` module, so the
    mix would change with whatever else used it, and an epoch of a persistent worker would
    differ from a fresh loader's; here every draw comes from the epoch's own generator."""
    its = [iter(s) for s in streams]
    while True:
        s = int(rng.choice(len(its), p=weights)) if len(its) > 1 else 0
        try:
            yield s, next(its[s])
        except StopIteration:  # the stream gave nothing in a whole pass: every shard of the block is damaged
            raise UserError(f"{roots[s]}: none of this worker's samples could be read (see the warnings)") from None


class ShardStream(IterableDataset):
    """Training samples for one rank, a fixed number per epoch (see module doc), as a
    webdataset pipeline built for each epoch in each DataLoader worker:

    per set: its samples cut into one contiguous block per (rank, worker) slot ->
    ``split_by_node`` -> ``split_by_worker`` (one block each) -> the block's shards read and
    checked -> ``shuffle``, repeated endlessly; then the sets mixed by weight -> examples
    (a bad sample is skipped and logged with its key) -> ``with_epoch`` (this worker's share).

    The rank comes from webdataset (``RANK``/``WORLD_SIZE``, else torch.distributed), the
    worker from the DataLoader. ``epoch`` is set before each epoch's iterator is created, so
    shuffles differ per epoch and are reproducible. ``batch_size`` and ``num_workers`` (the
    DataLoader's) count ``len``: the samples of whole batches this rank yields per epoch.
    """

    def __init__(self, sets: list[ShardSet], weights: list[float], image_size: int, points: int,
                 epoch_samples: int, seed: int = 0, shuffle_buffer: int = 64, batch_size: int = 1,
                 num_workers: int = 0):
        self.sets, self.image_size, self.points = sets, image_size, points
        w = np.asarray(weights, dtype=np.float64)
        self.weights = w / w.sum()
        self.epoch_samples, self.seed, self.shuffle_buffer = epoch_samples, seed, shuffle_buffer
        self.batch_size, self.num_workers = batch_size, num_workers
        # The epoch lives in shared memory: persistent DataLoader workers (started once per
        # run, keeping their h5 caches, instead of once per epoch) read the value the main
        # process sets before each epoch's iterator starts.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.epoch = 0
        self.gts = [ground_truth(s.shapes, s.digests) for s in sets]
        # (rank, world size) where the stream is made; a worker that saw others would split wrong
        self.node = wds.utils.pytorch_worker_info()[:2]

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch.fill_(int(value))

    def quota(self, worker: int, num_workers: int, world_size: int) -> int:
        """Samples worker ``worker`` of a rank yields per epoch."""
        per_rank = math.ceil(self.epoch_samples / world_size)
        return (worker + 1) * per_rank // num_workers - worker * per_rank // num_workers

    def __len__(self) -> int:
        # What ``with_length`` would set, as a method: with_length swaps the object's class
        # for one made at run time, which pickle cannot find (DataLoader workers started by
        # spawn or forkserver). Each worker batches its own share and drops its last partial
        # batch, so whole batches are counted per worker: len(DataLoader) is the step count.
        _, world, _, _ = wds.utils.pytorch_worker_info()
        nw = max(self.num_workers, 1)
        return sum(q - q % self.batch_size for q in (self.quota(w, nw, world) for w in range(nw)))

    def __iter__(self):
        rank, world, worker, nw = wds.utils.pytorch_worker_info()
        if (rank, world) != self.node:  # e.g. a spawned worker without torch.distributed or RANK/WORLD_SIZE
            raise RuntimeError(f"a DataLoader worker sees rank {rank} of {world}, its stream was made on rank "
                               f"{self.node[0]} of {self.node[1]}; set RANK and WORLD_SIZE")
        quota = self.quota(worker, nw, world)
        if quota == 0:  # with_epoch(0) would mean "no limit"
            return iter(())
        epoch, slot = self.epoch, rank * nw + worker
        streams = []
        for s, shard_set in enumerate(self.sets):
            rng = random.Random(_seed(self.seed, epoch, slot, s))
            blocks = _blocks(shard_set.items, world * nw)
            streams.append(wds.DataPipeline(
                lambda blocks=blocks: iter(blocks),
                wds.split_by_node,  # rank r takes blocks r, r + world, ...
                wds.split_by_worker,  # ... and worker i the i-th of those: one block each
                functools.partial(_read_blocks, rng=rng),
                wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng),
            ).repeat())
        rng = np.random.default_rng([self.seed, epoch, slot])
        roots = [shard_set.root for shard_set in self.sets]
        return iter(wds.DataPipeline(
            lambda: _mix(streams, self.weights, rng, roots),
            functools.partial(self._examples, rng=rng, quota=quota),
        ).with_epoch(quota))

    def _examples(self, mixed: Iterator[tuple[int, dict]], rng: np.random.Generator, quota: int) -> Iterator[dict]:
        skipped = 0
        for s, raw in mixed:
            try:
                example = make_example(raw, self.gts[s], self.image_size, self.points, rng)
            except (ValueError, KeyError, OSError) as e:  # a bad sample is skipped, with its key
                skipped += 1
                log.warning("skipped sample %s: %s", raw.get("__key__"), str(e).splitlines()[0] if str(e) else e)
                if skipped > max(100, 10 * quota):
                    raise UserError(f"{self.sets[s].root}: {skipped} samples could not be used "
                                    f"(last: {raw.get('__key__')}: {e})") from e
                continue
            example["set"] = s
            yield example


def _seed(*parts: int) -> int:
    """One integer seed from several (random.Random takes no tuples)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def load_examples(shard_set: ShardSet, max_shapes: int, image_size: int, points: int, surface_points: int,
                  seed: int = 0) -> list[dict]:
    """The first view of up to ``max_shapes`` shapes of a set (for validation), decoded."""
    first: dict[str, tuple[Path, str]] = {}
    for p, k in sorted(shard_set.items, key=lambda it: it[1]):
        first.setdefault(split_of_key(k), (p, k))
    chosen = [first[s] for s in sorted(first)[:max_shapes]]
    want = {k for _, k in chosen}
    gt = ground_truth(shard_set.shapes, shard_set.digests, surface=True)
    out = []
    for shard in dict.fromkeys(p for p, _ in chosen):
        for raw in verified_samples(shard):
            if raw["__key__"] in want:
                rng = np.random.default_rng([seed, len(out)])
                try:
                    out.append(make_example(raw, gt, image_size, points, rng, surface_points))
                except (ValueError, KeyError, OSError) as e:
                    log.warning("skipped validation sample %s: %s", raw["__key__"], str(e).splitlines()[0])
    return sorted(out, key=lambda e: e["key"])


def parse_shards(shards: str | list[str], weights: list[float] | None) -> tuple[list[str], list[float]]:
    """``shards`` as one directory, a list, or ``dir:weight`` entries; -> (dirs, weights)."""
    items = [shards] if isinstance(shards, (str, os.PathLike)) else list(shards)
    if not items:
        raise UserError("--data.shards: give at least one render or generate directory")
    dirs, inline = [], []
    for it in items:
        text = str(it)
        head, sep, tail = text.rpartition(":")
        if sep and head and not Path(text).exists():
            try:
                inline.append(float(tail))
                dirs.append(head)
                continue
            except ValueError:
                pass
        dirs.append(text)
        inline.append(1.0)
    w = list(weights) if weights is not None else inline
    if len(w) != len(dirs):
        raise UserError(f"--data.weights: {len(w)} weights for {len(dirs)} shard directories")
    if any(x < 0 for x in w) or sum(w) <= 0:
        raise UserError(f"--data.weights: must be >= 0 with a positive sum, got {w}")
    return dirs, [float(x) for x in w]

