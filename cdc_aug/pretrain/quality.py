"""KID (Bińkowski et al. 2018) of generated images against photographs, offline: torchmetrics'
``KernelInceptionDistance`` (unbiased MMD², cubic polynomial kernel) on the features of
:class:`ImageStatistics` instead of an Inception network, which would have to be downloaded.

The features are simple image statistics: per-channel mean and std, gradient-magnitude mean
and std, a 4×4×4 colour histogram and an 8×8 grey thumbnail (136 values), standardised with
the reference (real) images' mean and std. Colour-histogram bins empty in every reference
image have no spread: standardising by it would let one stray pixel dominate the kernel, so
such features are dropped and z-scores are clipped to ±10.
"""

from __future__ import annotations

import warnings

import torch
from torchmetrics.image.kid import KernelInceptionDistance


def image_statistics(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N, 136) float64 raw statistics (H and W multiples of 8 are used)."""
    x = images.double() / 255.0
    n = x.shape[0]
    mean = x.mean(dim=(2, 3))
    std = x.std(dim=(2, 3), unbiased=False)
    grey = x.mean(1)
    gy, gx = torch.gradient(grey, dim=(1, 2))
    mag = (gx**2 + gy**2).sqrt()
    grad = torch.stack([mag.mean(dim=(1, 2)), mag.std(dim=(1, 2), unbiased=False)], 1)
    q = (x * 4).long().clamp(max=3)
    idx = (q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2]).flatten(1)
    hist = torch.zeros(n, 64, dtype=torch.float64).scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    hist /= hist.sum(1, keepdim=True)
    h, w = grey.shape[1] // 8 * 8, grey.shape[2] // 8 * 8
    thumb = grey[:, :h, :w].reshape(n, 8, h // 8, 8, w // 8).mean(dim=(2, 4)).reshape(n, 64)
    return torch.cat([mean, std, grad, hist, thumb], 1)


class ImageStatistics(torch.nn.Module):
    """The KID feature extractor: standardised :func:`image_statistics` of (N, 3, H, W) uint8 images.

    Args:
        reference: images whose statistics' mean and std standardise every input.
    """

    def __init__(self, reference: torch.Tensor):
        super().__init__()
        f = image_statistics(reference)
        mean, std = f.mean(0), f.std(0, unbiased=False)
        self.register_buffer("keep", std > 1e-4)
        self.register_buffer("mean", mean[self.keep])
        self.register_buffer("std", std[self.keep])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        f = image_statistics(images)[:, self.keep]
        return ((f - self.mean) / self.std).clamp(-10, 10)


def kid(real: torch.Tensor, fake: torch.Tensor, features: torch.nn.Module | None = None) -> float:
    """KID of ``fake`` against ``real`` ((N, 3, H, W) uint8 each, the same N) on the whole sets
    (one subset of all N: the unbiased estimate, no resampling). ``features``: default
    ``ImageStatistics(real)``."""
    if len(real) != len(fake) or len(real) < 2:
        raise ValueError(f"kid: need two sets of the same size >= 2, got {len(real)} and {len(fake)}")
    with warnings.catch_warnings():  # "will save all extracted features in buffer": a few hundred numbers here
        warnings.filterwarnings("ignore", message=".*will save all extracted features")
        metric = KernelInceptionDistance(feature=features or ImageStatistics(real), subsets=1,
                                         subset_size=len(real))
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute()[0])
