"""Low-pass filters, mask smoothing and time masks for masked ILVR (docs/design.md §4).

All functions take and return ``(B, C, H, W)`` tensors and work on any device and
floating dtype; the pipeline calls them in float32 so that fp16 models on CUDA get the
same guidance arithmetic as fp32 models on CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def lowpass(x: torch.Tensor, n: int) -> torch.Tensor:
    """φ_N(x) = upsample_N(downsample_N(x)); N = 1 is the identity.

    The downsampling is antialiased (a triangle filter as wide as the scale), so
    frequencies above the coarse grid's Nyquist limit are removed rather than folded
    back; that aliasing is what makes plain bilinear ILVR leave grid artefacts.
    """
    n = int(n)
    if n == 1:
        return x
    h, w = x.shape[-2:]
    if h % n or w % n:
        raise ValueError(f"low-pass factor {n} does not divide the {h}x{w} grid")
    small = F.interpolate(x, size=(h // n, w // n), mode="bilinear", antialias=True, align_corners=False)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def masked_lowpass(x: torch.Tensor, n_in: int, n_out: int, mask: torch.Tensor) -> torch.Tensor:
    """φ(x) = M_b·φ_{n_in}(x) + (1 − M_b)·φ_{n_out}(x) for a smoothed mask ``mask``."""
    if n_in == n_out:
        return lowpass(x, n_in)
    return torch.lerp(lowpass(x, n_out), lowpass(x, n_in), mask)


def gaussian_kernel1d(sigma: float, device=None, dtype=torch.float32) -> torch.Tensor:
    radius = max(1, math.ceil(3.0 * sigma))
    xs = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (xs / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur; ``sigma`` in pixels of ``x``'s grid, 0 = identity.

    Edges are replicated, so a mask that touches the border is not darkened there.
    """
    if sigma <= 0:
        return x
    k = gaussian_kernel1d(sigma, device=x.device, dtype=x.dtype)
    r = (k.numel() - 1) // 2
    b, c, h, w = x.shape
    y = x.reshape(b * c, 1, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return y.reshape(b, c, h, w)


def auto_blur_sigma(n_in: int, n_out: int) -> float:
    """Mask smoothing tied to the low-pass factor: σ = max(N)/2 grid pixels.

    A factor-N low-pass spreads an edge over about N pixels; a mask smoothed on the
    same scale switches between the two filters (and between guided and free pixels)
    without a seam sharper than the filters themselves.
    """
    return 0.5 * max(int(n_in), int(n_out))


def stop_fraction(mask_b: torch.Tensor, t_in: float, t_out: float) -> torch.Tensor:
    """T(p) = t_in·M_b(p) + t_out·(1 − M_b(p)): the fraction of steps pixel p is guided."""
    return t_out + (t_in - t_out) * mask_b


def guided_steps(t: float, num_steps: int) -> int:
    """Number of steps k (0 = noisiest) with k + 0.5 < t·K: round(t·K), halves down."""
    return sum(1 for k in range(num_steps) if k + 0.5 < t * num_steps)


def time_mask(stop: torch.Tensor, k: int, num_steps: int, sigma: float) -> torch.Tensor:
    """M_t at step k = b(1[k < T(p)·K]), with a step counted as guided at its midpoint.

    Counting at the midpoint makes t·K = 2.5 guide 2 steps and t = 1 guide all K, and
    lets ``check_inputs`` say exactly when a t > 0 rounds to no step at all.
    """
    hard = (stop * num_steps > k + 0.5).to(stop.dtype)
    if sigma <= 0 or bool((hard == hard.flatten()[0]).all()):
        return hard
    return gaussian_blur(hard, sigma)
