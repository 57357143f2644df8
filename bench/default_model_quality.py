"""How close are the bundled model's samples to real photographs? Measured offline.

A kernel distance (KID: unbiased MMD² with the cubic polynomial kernel, as in Bińkowski
et al. 2018) between feature vectors of generated 64² images and of 64² crops of
held-out photographs. Without an Inception network offline, the features are simple
image statistics: per-channel mean and std, gradient-magnitude mean and std, a 4×4×4
colour histogram and an 8×8 grey thumbnail, standardised with the photo crops' mean/std.

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


def features(images: np.ndarray) -> np.ndarray:
    """images: (N, H, W, 3) uint8 -> (N, D) float64."""
    x = images.astype(np.float64) / 255.0
    n = x.shape[0]
    mean = x.mean(axis=(1, 2))
    std = x.std(axis=(1, 2))
    grey = x.mean(-1)
    gy, gx = np.gradient(grey, axis=(1, 2))
    mag = np.sqrt(gx**2 + gy**2)
    grad = np.stack([mag.mean(axis=(1, 2)), mag.std(axis=(1, 2))], 1)
    q = np.minimum((x * 4).astype(int), 3)
    idx = q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]
    hist = np.stack([np.bincount(i.ravel(), minlength=64) for i in idx]).astype(np.float64)
    hist /= hist.sum(1, keepdims=True)
    h, w = grey.shape[1:]
    thumb = grey[:, : h // 8 * 8, : w // 8 * 8].reshape(n, 8, h // 8, 8, w // 8).mean(axis=(2, 4)).reshape(n, 64)
    return np.concatenate([mean, std, grad, hist, thumb], 1)


def kid(a: np.ndarray, b: np.ndarray) -> float:
    d = a.shape[1]

    def k(x, y):
        return (x @ y.T / d + 1.0) ** 3

    m, n = len(a), len(b)
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    return float((kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
                 - 2 * kab.mean())


def photo_crops(directory: Path, n: int, size: int, seed: int) -> np.ndarray:
    from cdc_aug.pretrain.data import PhotoCrops, list_images, load_photos

    ds = PhotoCrops(load_photos(list_images(directory), max(256, size * 4)), size, n, seed)
    return np.stack([((ds[i].numpy().transpose(1, 2, 0) + 1) * 127.5).round().astype(np.uint8) for i in range(n)])


@torch.no_grad()
def samples(unet, scheduler_config, n: int, size: int, steps: int, seed: int) -> np.ndarray:
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(scheduler_config)
    sched.set_timesteps(steps)
    g = torch.Generator("cpu").manual_seed(seed)
    x = torch.randn((n, 3, size, size), generator=g)
    for t in sched.timesteps:
        x = sched.step(unet(x, t).sample, t, x).prev_sample
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "cdc_aug" / "default_model"))
    ap.add_argument("--heldout", default=str(ROOT / "data" / "photos" / "heldout"))
    ap.add_argument("--train", default=str(ROOT / "data" / "photos" / "train"))
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import DDPMPipeline, UNet2DModel

    pipe = DDPMPipeline.from_pretrained(args.model, local_files_only=True)
    torch.manual_seed(0)
    untrained = UNet2DModel.from_config(pipe.unet.config).eval()
    real = photo_crops(Path(args.heldout), args.n, args.size, seed=1)
    f_real = features(real)
    mu, sd = f_real.mean(0), f_real.std(0)
    # colour-histogram bins empty in every held-out crop have zero spread: standardising by
    # it would let one stray pixel dominate the kernel, so such features are dropped and
    # z-scores are clipped
    keep = sd > 1e-4

    def z(f):
        return np.clip((f[:, keep] - mu[keep]) / sd[keep], -10, 10)

    def score(imgs):
        return kid(z(features(imgs)), z(f_real))

    rows = [
        ("shipped model", samples(pipe.unet.eval(), pipe.scheduler.config, args.n, args.size, args.steps, 0)),
        ("untrained model", samples(untrained, pipe.scheduler.config, args.n, args.size, args.steps, 0)),
    ]
    if Path(args.train).is_dir():
        rows.append(("training photos (floor)", photo_crops(Path(args.train), args.n, args.size, seed=2)))
    print(f"KID on image statistics vs {args.n} crops of held-out photos ({args.size}², {args.steps} DDIM steps)")
    for name, imgs in rows:
        print(f"  {name:26s} {score(imgs):8.4f}")


if __name__ == "__main__":
    main()
