"""The paper's copy-paste baseline: the render alpha-composited on a random photo crop."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import UserError
from .layout import IMAGE_EXTS


def list_backgrounds(source: str | Path) -> list[Path]:
    """The photos of ``--backgrounds``: every image under a directory, or the images a text
    file lists (one path per line, relative to the file or absolute; ``#`` starts a comment),
    which is how a curated set such as configs/backgrounds/heldout_photos.txt is named."""
    d = Path(source)
    if d.is_file():
        files = []
        for n, line in enumerate(d.read_text(errors="replace").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            p = Path(line) if Path(line).is_absolute() else d.parent / line
            if not p.is_file():
                raise UserError(f"--backgrounds {source}: line {n}: no such image {line}")
            if p.suffix.lower() not in IMAGE_EXTS:
                raise UserError(f"--backgrounds {source}: line {n}: {line} is not a .jpg/.png/.bmp/.webp image")
            files.append(p)
        if not files:
            raise UserError(f"--backgrounds {source}: lists no images")
        return files
    if not d.is_dir():
        raise UserError(f"--backgrounds {source}: no such directory or list file")
    files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not files:
        raise UserError(f"--backgrounds {source}: holds no .jpg/.png images")
    return files


class BackgroundPool:
    """Background photos, each decoded once and kept at a working size."""

    def __init__(self, files: list[Path], max_side: int = 768):
        self.files = files
        self.max_side = max_side
        self._cache: dict[Path, Image.Image] = {}

    def get(self, path: Path) -> Image.Image:
        if path not in self._cache:
            with Image.open(path) as im:
                im = im.convert("RGB")
                im.thumbnail((self.max_side, self.max_side), Image.Resampling.LANCZOS)
                self._cache[path] = im.copy()
        return self._cache[path]

    def composite(self, rgba: np.ndarray, seed: int) -> tuple[np.ndarray, dict]:
        """Alpha-composite ``rgba`` (HxWx4 uint8) over a seeded random crop of a photo."""
        rng = random.Random(seed)
        path = rng.choice(self.files)
        bg = self.get(path)
        h, w = rgba.shape[:2]
        # A random square-ish crop covering 40-100% of the photo's short side.
        side = min(bg.size)
        crop = max(8, int(side * rng.uniform(0.4, 1.0)))
        x0 = rng.randint(0, bg.size[0] - crop)
        y0 = rng.randint(0, bg.size[1] - crop)
        flip = rng.random() < 0.5
        patch = bg.crop((x0, y0, x0 + crop, y0 + crop)).resize((w, h), Image.Resampling.BICUBIC)
        if flip:
            patch = patch.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        back = np.asarray(patch, dtype=np.float32)
        alpha = rgba[..., 3:4].astype(np.float32) / 255.0
        out = rgba[..., :3].astype(np.float32) * alpha + back * (1.0 - alpha)
        info = {"background": path.name, "crop": [x0, y0, crop], "flip": flip}
        return np.clip(out + 0.5, 0, 255).astype(np.uint8), info
