"""Random-scale square crops with flips from a folder of photographs.

Photos are decoded once and kept in memory at a bounded size: the training set is a
few dozen photos, and decoding multi-megapixel JPEGs every step would dominate a CPU run.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from cdc_aug.errors import UserError
from cdc_aug.layout import IMAGE_EXTS


def list_images(directory: str | Path, flag: str = "--data.images") -> list[Path]:
    d = Path(directory)
    if not d.is_dir():
        raise UserError(f"{flag} {directory}: no such directory")
    files = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise UserError(f"{flag} {directory}: holds no images ({', '.join(sorted(IMAGE_EXTS))})")
    return files


def load_photos(files: list[Path], max_side: int) -> list[np.ndarray]:
    photos = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert("RGB")
                im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
                photos.append(np.asarray(im).copy())
        except (OSError, Image.DecompressionBombError) as e:
            raise UserError(f"{f}: not a readable image ({e})") from e
    return photos


class PhotoCrops(torch.utils.data.Dataset):
    """``length`` crops per epoch; crop i of epoch e is a function of (seed, e, i) only."""

    def __init__(self, photos: list[np.ndarray], size: int, length: int = 4096, seed: int = 0,
                 min_scale: float = 0.25):
        self.photos, self.size, self.length, self.seed = photos, size, length, seed
        self.min_scale = min_scale
        self.epoch = 0

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        photo = self.photos[rng.integers(len(self.photos))]
        h, w = photo.shape[:2]
        short = min(h, w)
        # crop side between min_scale of the short side (fine texture) and all of it
        lo = max(self.size, int(short * self.min_scale))
        side = int(rng.integers(min(lo, short), short + 1))
        y = int(rng.integers(0, h - side + 1))
        x = int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((self.size, self.size), Image.Resampling.BICUBIC)
        arr = np.asarray(crop, dtype=np.float32) / 127.5 - 1.0
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


class PhotoDataModule(L.LightningDataModule):
    """Random-scale crops of a folder of photographs for training; for validation, one item
    that asks the model for its sample grid.

    Args:
        images: folder of photographs (searched recursively).
        image_size: crop size (linked to ``model.image_size``).
        batch_size: crops per step and rank.
        crops_per_epoch: crops in an epoch (an epoch is a reshuffle point, not a pass over the photos).
        min_scale: the smallest crop side as a fraction of a photo's short side.
        seed: crop seed; crop i of epoch e depends on (seed, e, i) only.
    """

    def __init__(self, images: str = "data/photos/train", image_size: int = 64, batch_size: int = 16,
                 crops_per_epoch: int = 4096, min_scale: float = 0.25, seed: int = 0):
        super().__init__()
        for name, value in (("batch_size", batch_size), ("crops_per_epoch", crops_per_epoch)):
            if value < 1:
                raise UserError(f"--data.{name} {value}: must be at least 1")
        if batch_size > crops_per_epoch:
            raise UserError(f"--data.batch_size {batch_size}: larger than --data.crops_per_epoch {crops_per_epoch}")
        if not 0 < min_scale <= 1:
            raise UserError(f"--data.min_scale {min_scale}: must be in (0, 1]")
        self.save_hyperparameters()
        self.files = list_images(images)  # a bad folder is reported before the trainer starts
        self.crops: PhotoCrops | None = None

    def setup(self, stage: str) -> None:
        if self.crops is None:
            h = self.hparams
            photos = load_photos(self.files, max_side=max(256, h.image_size * 4))
            self.crops = PhotoCrops(photos, h.image_size, h.crops_per_epoch, h.seed, h.min_scale)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.crops, batch_size=self.hparams.batch_size, shuffle=False, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        # the model samples from noise: one dummy item runs its validation_step once
        return DataLoader(range(1), batch_size=1)
