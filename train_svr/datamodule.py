"""The LightningDataModule: render shards or generate runs (mixed by weight) for
training, the first view of a few validation shapes for validation."""

from __future__ import annotations

import logging
import warnings

import lightning as L
import torch
from torch.utils.data import DataLoader

from cdc_aug.errors import UserError

from .data import ShardSet, ShardStream, load_examples, open_shard_set, parse_shards

log = logging.getLogger(__name__)


class EpochLoader(DataLoader):
    """Tells the dataset the epoch just before each epoch's workers start, so they shuffle
    reproducibly per epoch (an IterableDataset has no sampler for Lightning to tell)."""

    def __init__(self, *args, epoch_fn=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._epoch_fn = epoch_fn

    def __iter__(self):
        if self._epoch_fn is not None:
            self.dataset.epoch = int(self._epoch_fn())
        return super().__iter__()


class SVRDataModule(L.LightningDataModule):
    """Shards in, batches out. Every input problem is reported here, before training.

    Args:
        shards: a render directory or generate run, or a list of them; ``DIR:WEIGHT`` mixes
            sets with the given sampling weights.
        weights: sampling weights, one per shard directory (instead of ``DIR:WEIGHT``).
        image_size: training resolution (images are resized, cameras rescaled).
        batch_size: samples per step and rank.
        num_workers: DataLoader workers per rank.
        points: SDF points per sample, half inside and half outside.
        train_split: split of ``splits.json`` to train on.
        val_split: split to validate on (the first directory's); empty -> no validation.
        val_shapes: shapes (one view each) in validation.
        val_points: ground-truth surface points per validation shape for Chamfer-L1.
        epoch_samples: samples per epoch over all ranks (default: the train sample count).
        shuffle_buffer: samples held per worker for shuffling within shards.
        seed: shuffling and point sampling seed.
    """

    def __init__(self, shards: str | list[str] = "data/renders", weights: list[float] | None = None,
                 image_size: int = 224, batch_size: int = 16, num_workers: int = 2, points: int = 2048,
                 train_split: str = "train", val_split: str = "val", val_shapes: int = 4, val_points: int = 10000,
                 epoch_samples: int | None = None, shuffle_buffer: int = 64, seed: int = 0):
        super().__init__()
        for name, value, lo in (("image_size", image_size, 16), ("batch_size", batch_size, 1),
                                ("num_workers", num_workers, 0), ("points", points, 2), ("val_shapes", val_shapes, 0),
                                ("shuffle_buffer", shuffle_buffer, 1)):
            if value < lo:
                raise UserError(f"--data.{name}: must be >= {lo}, got {value}")
        dirs, self.weights = parse_shards(shards, weights)
        self.train_sets: list[ShardSet] = [open_shard_set(d, train_split) for d in dirs]
        self.val_set: ShardSet | None = None
        if val_shapes > 0:
            try:
                self.val_set = open_shard_set(dirs[0], val_split)
            except UserError as e:
                if "has no samples" not in str(e):
                    raise
                log.warning("no validation: %s", e)
        self.num_train = sum(len(s.items) for s in self.train_sets)
        self.epoch_samples = int(epoch_samples) if epoch_samples else self.num_train
        if self.epoch_samples < 1:
            raise UserError(f"--data.epoch_samples: must be >= 1, got {epoch_samples}")
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        self.points, self.val_shapes, self.val_points = points, val_shapes, val_points
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self._val: list[dict] | None = None

    def train_dataset(self) -> ShardStream:
        """This rank's training stream (the rank as webdataset sees it: RANK/WORLD_SIZE or
        torch.distributed)."""
        return ShardStream(self.train_sets, self.weights, self.image_size, self.points, self.epoch_samples,
                           self.seed, self.shuffle_buffer, self.batch_size, self.num_workers)

    def train_dataloader(self):
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        ds = self.train_dataset()
        if trainer is not None and ds.node != (trainer.global_rank, trainer.world_size):
            raise UserError(f"RANK/WORLD_SIZE say rank {ds.node[0]} of {ds.node[1]}, the trainer runs rank "
                            f"{trainer.global_rank} of {trainer.world_size}; unset them or match --trainer.devices")
        per_worker = -(-self.epoch_samples // world) // max(self.num_workers, 1)
        if per_worker < self.batch_size:
            raise UserError(f"--data.batch_size {self.batch_size}: more than the {per_worker} samples each of "
                            f"{world} rank(s) x {max(self.num_workers, 1)} worker(s) gets per epoch; "
                            "lower it, use fewer workers or raise --data.epoch_samples")
        # ShardStream's length counts each worker's whole batches, so it is exact however
        # many workers split the epoch: Lightning's warning that it might not be is noise.
        warnings.filterwarnings("ignore", "Your `IterableDataset` has `__len__` defined")
        return EpochLoader(ds, batch_size=self.batch_size, num_workers=self.num_workers, drop_last=True,
                           pin_memory=torch.cuda.is_available(),
                           # workers start once per run, not once per epoch (ShardStream.epoch is shared)
                           persistent_workers=self.num_workers > 0,
                           epoch_fn=(lambda: trainer.current_epoch) if trainer is not None else None)

    def val_dataloader(self):
        if self.val_set is None:
            return []
        if self._val is None:
            self._val = load_examples(self.val_set, self.val_shapes, self.image_size, self.points, self.val_points,
                                      self.seed)
        return DataLoader(self._val, batch_size=1, shuffle=False, num_workers=0)
