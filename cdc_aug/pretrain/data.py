"""Random-scale square crops with flips from a folder of photographs.

Photos are decoded once and kept in memory at a bounded size: the training set is a
few dozen photos, and decoding multi-megapixel JPEGs every step would dominate a CPU run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cdc_aug.errors import UserError
from cdc_aug.layout import IMAGE_EXTS


def list_images(directory: str | Path) -> list[Path]:
    d = Path(directory)
    if not d.is_dir():
        raise UserError(f"--images {directory}: no such directory")
    files = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise UserError(f"--images {directory}: holds no images ({', '.join(sorted(IMAGE_EXTS))})")
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
