"""How close are the bundled model's samples to real photographs? Measured offline.

KID (torchmetrics' KernelInceptionDistance: unbiased MMD², cubic polynomial kernel, as in
Bińkowski et al. 2018) between generated 64² images and 64² crops of held-out photographs.
Without an Inception network offline, the features are simple image statistics
(cdc_aug.pretrain.quality.ImageStatistics: per-channel mean and std, gradient-magnitude mean
and std, a 4×4×4 colour histogram and an 8×8 grey thumbnail, standardised with the photo
crops' mean/std).

Printed side by side: the shipped model, an untrained model of the same architecture,
and crops of the training photos (the floor: real photos of a related distribution).

    .venv/bin/python bench/default_model_quality.py [--model DIR] [--heldout data/photos/heldout]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def photo_crops(directory: Path, n: int, size: int, seed: int, flag: str) -> torch.Tensor:
    """(n, 3, size, size) uint8 crops, as pretrain trains on."""
    from cdc_aug.pretrain.data import PhotoCrops, list_images, load_photos

    ds = PhotoCrops(load_photos(list_images(directory, flag), max(256, size * 4)), size, n, seed)
    return torch.stack([((ds[i] + 1) * 127.5).round().to(torch.uint8) for i in range(n)])


def samples(unet, scheduler_config, n: int, steps: int, seed: int) -> torch.Tensor:
    from cdc_aug.pretrain.module import sample_images

    images = sample_images(unet, scheduler_config, n=n, steps=steps, seed=seed)
    return torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "cdc_aug" / "default_model"))
    ap.add_argument("--heldout", default=str(ROOT / "data" / "photos" / "heldout"))
    ap.add_argument("--train", default=str(ROOT / "data" / "photos" / "train"))
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import DDPMPipeline, UNet2DModel

    from cdc_aug.pretrain.quality import ImageStatistics, kid

    pipe = DDPMPipeline.from_pretrained(args.model, local_files_only=True)
    torch.manual_seed(0)
    untrained = UNet2DModel.from_config(pipe.unet.config).eval()
    unet, size = pipe.unet.eval(), pipe.unet.config.sample_size  # crops at the size the model samples
    real = photo_crops(Path(args.heldout), args.n, size, seed=1, flag="--heldout")
    features = ImageStatistics(real)
    rows = [
        ("shipped model", samples(unet, pipe.scheduler.config, args.n, args.steps, 0)),
        ("untrained model", samples(untrained, pipe.scheduler.config, args.n, args.steps, 0)),
    ]
    if Path(args.train).is_dir():
        rows.append(("training photos (floor)", photo_crops(Path(args.train), args.n, size, 2, "--train")))
    print(f"KID on image statistics vs {args.n} crops of held-out photos ({size}², {args.steps} DDIM steps)")
    for name, imgs in rows:
        print(f"  {name:26s} {kid(real, imgs, features):8.4f}")


if __name__ == "__main__":
    main()
