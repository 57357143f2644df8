"""Training samples from render shards or generate runs, joined with the per-shape h5
ground truth, and the loaders that split them across nodes, ranks and workers.

A sample for the model: the input image (``input_image``), its camera rescaled to the
training resolution, the mask, and - for render samples - the normal and depth maps the
Laplacian loss needs. Generate runs copy the render's normal and depth maps, so their
samples get the same losses as clean ones; a sample without them (an older generate
run) gets ``has_detail = 0`` and the Laplacian term skips it (the SDF losses still apply).

Splitting: the train samples of a shard set, in shard order, are cut into
``world_size * num_workers`` contiguous blocks, one per (rank, worker), so each worker
reads about 1/(world*workers) of the shards. An epoch has a fixed length (the train
sample count unless ``epoch_samples`` says otherwise) divided among ranks and then workers,
so steps per epoch do not multiply with either; when the length divides evenly each
sample is seen exactly once per epoch.
"""

from __future__ import annotations

import logging
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from cdc_aug.errors import UserError
from cdc_aug.layout import read_splits, shape_file, shape_provenance, shapes_dir, split_of_key
from cdc_aug.samples import decode_field
from cdc_aug.shards import ShardDamaged, check_shard, read_index, sidecar_keys, verified_samples

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


class GroundTruth:
    """Per-process cache of h5 shape files and their decoded SDF samples (a forked worker
    starts its own). Reading and decompressing ``sdf_samples`` was over half of a
    sample's loading time; consecutive samples of a shard mostly share shapes, so a
    small cache of decoded arrays removes most of it."""

    def __init__(self, root: Path, max_open: int = 64, max_cached: int = 64, digests: dict | None = None):
        self.root = Path(root)
        self.max_open, self.max_cached = max_open, max_cached
        self.digests = dict(digests or {})  # shape key -> provenance digest (layout.shape_provenance)
        self._files: OrderedDict[str, object] = OrderedDict()
        self._sdf: OrderedDict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
        self._pid = os.getpid()

    def __getstate__(self):
        return {"root": self.root, "max_open": self.max_open, "max_cached": self.max_cached, "digests": self.digests}

    def __setstate__(self, state):
        self.__init__(state["root"], state["max_open"], state["max_cached"], state.get("digests"))

    def file(self, synset: str, model_id: str):
        import h5py

        if self._pid != os.getpid():
            self._files.clear()
            self._sdf.clear()
            self._pid = os.getpid()
        path = str(shape_file(self.root, synset, model_id))
        f = self._files.pop(path, None)
        if f is None:
            from render.groundtruth import GroundTruthError, check_provenance

            try:
                f = h5py.File(path, "r")
            except OSError as e:  # truncated or not HDF5: the sample is skipped and logged
                raise GroundTruthError(f"{path}: unreadable shape file ({str(e).splitlines()[0]})") from e
            try:
                check_provenance(f.attrs, Path(path), synset, model_id,
                                 self.digests.get(f"{synset}_{model_id}"))
            except GroundTruthError:
                f.close()
                raise
            if len(self._files) >= self.max_open:
                self._files.popitem(last=False)[1].close()
        self._files[path] = f
        return f

    def sdf(self, synset: str, model_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sdf_samples (N, 4), indices inside, indices outside)."""
        key = f"{synset}/{model_id}"
        hit = self._sdf.pop(key, None)
        if hit is None:
            try:
                arr = np.asarray(self.file(synset, model_id)["sdf_samples"][:], dtype=np.float32)
            except (OSError, KeyError) as e:
                from render.groundtruth import GroundTruthError

                raise GroundTruthError(f"{shape_file(self.root, synset, model_id)}: unreadable sdf_samples "
                                       f"({str(e).splitlines()[0]})") from e
            hit = (arr, np.flatnonzero(arr[:, 3] < 0), np.flatnonzero(arr[:, 3] >= 0))
            if len(self._sdf) >= self.max_cached:
                self._sdf.popitem(last=False)
        self._sdf[key] = hit
        return hit


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


def make_example(raw: dict, gt: GroundTruth, size: int, points: int, rng: np.random.Generator,
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
    arr, inside, outside = gt.sdf(meta["synset"], meta["model_id"])
    xyz, sdf = balanced_points(arr, points, rng, (inside, outside))
    out["points"], out["sdf"] = torch.from_numpy(xyz), torch.from_numpy(sdf)
    if surface_points:
        surf = gt.file(meta["synset"], meta["model_id"])["surface_points"][:]
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


def _split_range(n: int, parts: int, i: int) -> tuple[int, int]:
    return i * n // parts, (i + 1) * n // parts


class ShardStream(IterableDataset):
    """Training samples for one (rank, worker), a fixed number per epoch (see module doc).

    ``rank`` and ``world_size`` are set by the data module in the main process; the
    worker index comes from the DataLoader. ``epoch`` is set before each epoch's iterator
    is created, so shuffles differ per epoch and are reproducible.
    """

    def __init__(self, sets: list[ShardSet], weights: list[float], image_size: int, points: int,
                 epoch_samples: int, seed: int = 0, shuffle_buffer: int = 64):
        self.sets, self.image_size, self.points = sets, image_size, points
        w = np.asarray(weights, dtype=np.float64)
        self.weights = w / w.sum()
        self.epoch_samples, self.seed, self.shuffle_buffer = epoch_samples, seed, shuffle_buffer
        # The epoch lives in shared memory: persistent DataLoader workers (started once per
        # run, keeping their h5 caches, instead of once per epoch) read the value the main
        # process sets before each epoch's iterator starts.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.rank, self.world_size, self.epoch = 0, 1, 0
        self.gts = [GroundTruth(s.shapes, digests=s.digests) for s in sets]

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch.fill_(int(value))

    def slot(self) -> tuple[int, int, int, int]:
        info = get_worker_info()
        nw, wid = (info.num_workers, info.id) if info is not None else (1, 0)
        return self.rank * nw + wid, self.world_size * nw, wid, nw

    def quota(self) -> int:
        """Samples this worker yields this epoch."""
        _, _, wid, nw = self.slot()
        per_rank = math.ceil(self.epoch_samples / self.world_size)
        lo, hi = _split_range(per_rank, nw, wid)
        return hi - lo

    def _raw(self, s: int, rng: np.random.Generator):
        """Endless raw samples of set ``s``'s block for this slot, reshuffled each pass."""
        slot, nslots, _, _ = self.slot()
        items = self.sets[s].items
        if len(items) >= nslots:
            lo, hi = _split_range(len(items), nslots, slot)
            block = items[lo:hi]
        else:  # fewer samples than slots: some are repeated, none is left out
            block = [items[slot % len(items)]]
        by_shard: dict[Path, set[str]] = {}
        for p, k in block:
            by_shard.setdefault(p, set()).add(k)
        shards = list(by_shard)
        while True:
            buf: list[dict] = []
            for j in rng.permutation(len(shards)):
                keys = by_shard[shards[j]]
                try:
                    for raw in verified_samples(shards[j]):
                        if raw["__key__"] not in keys:
                            continue
                        buf.append(raw)
                        if len(buf) >= self.shuffle_buffer:
                            yield buf.pop(int(rng.integers(len(buf))))
                except ShardDamaged as e:  # damaged since open_shard_set checked it
                    log.warning("skipped the rest of %s: %s", shards[j], e.reason)
            while buf:
                yield buf.pop(int(rng.integers(len(buf))))

    def __iter__(self):
        slot, _, _, _ = self.slot()
        rng = np.random.default_rng([self.seed, self.epoch, slot])
        streams = [self._raw(s, np.random.default_rng([self.seed, self.epoch, slot, s]))
                   for s in range(len(self.sets))]
        skipped = 0
        for _ in range(self.quota()):
            s = int(rng.choice(len(self.sets), p=self.weights)) if len(self.sets) > 1 else 0
            while True:
                raw = next(streams[s])
                try:
                    example = make_example(raw, self.gts[s], self.image_size, self.points, rng)
                    break
                except (ValueError, KeyError, OSError) as e:  # a bad sample is skipped, with its key
                    skipped += 1
                    log.warning("skipped sample %s: %s", raw.get("__key__"), str(e).splitlines()[0] if str(e) else e)
                    if skipped > max(100, 10 * self.quota()):
                        raise UserError(f"{self.sets[s].root}: {skipped} samples could not be used "
                                        f"(last: {raw.get('__key__')}: {e})") from e
            example["set"] = s
            yield example


def load_examples(shard_set: ShardSet, max_shapes: int, image_size: int, points: int, surface_points: int,
                  seed: int = 0) -> list[dict]:
    """The first view of up to ``max_shapes`` shapes of a set (for validation), decoded."""
    first: dict[str, tuple[Path, str]] = {}
    for p, k in sorted(shard_set.items, key=lambda it: it[1]):
        first.setdefault(split_of_key(k), (p, k))
    chosen = [first[s] for s in sorted(first)[:max_shapes]]
    want = {k for _, k in chosen}
    gt = GroundTruth(shard_set.shapes, digests=shard_set.digests)
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

