"""Cameras and image-space operators: projecting points into the view, reading maps at
their projections, and the Laplacian terms of the detail loss.

Camera convention (cdc_aug.layout): ``RT`` maps unit-cube world points to OpenCV camera
coordinates (x right, y down, z forward); ``K`` is in pixels with pixel centres at
integer coordinates (cx = (W - 1) / 2 for a centred camera).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def resize_intrinsics(K: np.ndarray, old_size: tuple[int, int], new_size: tuple[int, int]) -> np.ndarray:
    """``K`` for the same view resampled from ``old_size`` to ``new_size`` (H, W), pixel
    centres kept at integer coordinates."""
    K = np.array(K, dtype=np.float64)
    sy, sx = new_size[0] / old_size[0], new_size[1] / old_size[1]
    out = K.copy()
    out[0, 0], out[0, 1] = K[0, 0] * sx, K[0, 1] * sx
    out[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    out[1, 1] = K[1, 1] * sy
    out[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return out


def to_camera(points: torch.Tensor, RT: torch.Tensor) -> torch.Tensor:
    """(B, N, 3) world -> (B, N, 3) camera coordinates."""
    return points @ RT[:, :, :3].transpose(1, 2) + RT[:, None, :, 3]


def camera_centre(RT: torch.Tensor) -> torch.Tensor:
    """(B, 3) camera centre in world coordinates: -R^T t."""
    R, t = RT[:, :, :3], RT[:, :, 3]
    return -(R.transpose(1, 2) @ t[..., None])[..., 0]


def project(points: torch.Tensor, K: torch.Tensor, RT: torch.Tensor) -> torch.Tensor:
    """(B, N, 2) pixel coordinates (u, v) of world points."""
    pc = to_camera(points, RT)
    z = pc[..., 2:3].clamp(min=1e-6)
    uv1 = (pc / z) @ K.transpose(1, 2)
    return uv1[..., :2]


def depth_image(points: torch.Tensor, K: torch.Tensor, RT: torch.Tensor, size: int) -> torch.Tensor:
    """(size, size) camera depth of the nearest of (N, 3) world points at each pixel they
    project to (a point splat: cheap, for pictures, not for metrics); inf where none lands."""
    z = to_camera(points[None], RT[None])[0, :, 2]
    u, v = project(points[None], K[None], RT[None])[0].round().long().unbind(-1)
    ok = (z > 0) & (u >= 0) & (u < size) & (v >= 0) & (v < size)
    depth = torch.full((size * size,), float("inf"), dtype=z.dtype, device=z.device)
    depth.scatter_reduce_(0, v[ok] * size + u[ok], z[ok], reduce="amin")
    return depth.view(size, size)


def sample_maps(maps: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear read of (B, C, H, W) maps at (B, N, 2) pixel coordinates -> (B, N, C);
    zero outside the image."""
    H, W = maps.shape[-2:]
    grid = torch.stack([uv[..., 0] / max(W - 1, 1), uv[..., 1] / max(H - 1, 1)], -1) * 2 - 1
    out = F.grid_sample(maps, grid[:, :, None].to(maps.dtype), mode="bilinear", padding_mode="zeros",
                        align_corners=True)
    return out[..., 0].transpose(1, 2)


_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def laplacian(x: torch.Tensor) -> torch.Tensor:
    """5-point Laplacian of (B, 1, H, W), in pixel units, replicate-padded."""
    k = _LAPLACE.to(x)[None, None]
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k)


def normal_laplacian_target(normal: torch.Tensor, depth: torch.Tensor, K: torch.Tensor, mask: torch.Tensor,
                            min_nz: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """What the Laplacian of a front displacement map should be, from the view's normals.

    The visible surface is a depth field z(u, v); its camera-space normal is parallel to
    (z_x, z_y, -1), so z_x = -n_x / n_z and z_y = -n_y / n_z (world units per world unit).
    The Laplacian of z in pixel units is then the pixel-space divergence of that gradient
    field times the pixel footprint depth / f. A point near the front surface has SDF
    about z_surface - z_point, so the front displacement (in SDF units) should share that
    Laplacian. Returns (target (B, 1, H, W), valid mask): only object pixels whose 3x3
    neighbourhood is all object and whose normal is not grazing (|n_z| >= min_nz).

    ``normal``: (B, 3, H, W) unit camera-space normals, ``depth``: (B, 1, H, W),
    ``K``: (B, 3, 3), ``mask``: (B, 1, H, W) in {0, 1}.
    """
    nz = normal[:, 2:3]
    ok = (mask > 0.5) & (nz.abs() >= min_nz)
    safe_nz = torch.where(ok, nz, torch.full_like(nz, -1.0))
    gx = torch.where(ok, -normal[:, 0:1] / safe_nz, torch.zeros_like(nz))
    gy = torch.where(ok, -normal[:, 1:2] / safe_nz, torch.zeros_like(nz))
    # central differences of the gradient field: the divergence
    div = 0.5 * (F.pad(gx, (0, 2, 0, 0))[..., 2:] - F.pad(gx, (2, 0, 0, 0))[..., :-2])
    div = div + 0.5 * (F.pad(gy, (0, 0, 0, 2))[..., 2:, :] - F.pad(gy, (0, 0, 2, 0))[..., :-2, :])
    f = 0.5 * (K[:, 0, 0] + K[:, 1, 1])
    target = div * depth / f[:, None, None, None]
    interior = -F.max_pool2d(-ok.float(), 3, 1, 1) > 0.5  # all 3x3 neighbours valid
    return torch.where(interior, target, torch.zeros_like(target)), interior
