"""Reconstruction as a function other stages call: image + camera -> mesh in unit-cube
coordinates. The SDF is evaluated on a grid over the padded box [-0.55, 0.55]^3 in
chunks; marching cubes (scikit-image) extracts its zero level set."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch
import trimesh

from cdc_aug.errors import UserError

from .data import camera_tensors, image_tensor

BOUND = 0.55  # the ground truth's padded box (render.groundtruth.PADDING)


def load_model(ckpt_path: str | Path, device: str = "cpu"):
    """An ``SVRModule`` from a Lightning checkpoint, in eval mode on ``device``."""
    from .module import SVRModule

    path = Path(ckpt_path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint")
    try:
        # weights_only: a checkpoint is data; one that needs arbitrary code to unpickle is
        # refused whatever torch's default (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, torch < 2.6).
        model = SVRModule.load_from_checkpoint(path, map_location=device, encoder_weights=None, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not a loadable cdc-aug SVR checkpoint ({first[:200]})") from e
    return model.eval().to(device)


@torch.no_grad()
def sdf_grid(model, latent: torch.Tensor, maps: torch.Tensor, K: torch.Tensor, RT: torch.Tensor,
             resolution: int, chunk: int) -> np.ndarray:
    """Final SDF (target units) on a resolution^3 grid, indexed [x, y, z]."""
    axis = torch.linspace(-BOUND, BOUND, resolution, device=latent.device)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    out = torch.empty(len(grid), device=latent.device)
    for i in range(0, len(grid), chunk):
        pts = grid[i:i + chunk][None]
        out[i:i + chunk] = model.net.decode(latent, maps, pts, K, RT)["final"][0].float()
    return out.reshape(resolution, resolution, resolution).cpu().numpy()


def mesh_from_sdf(sdf: np.ndarray) -> trimesh.Trimesh:
    """Zero level set of a grid over [-BOUND, BOUND]^3 (negative inside). The grid is
    padded with an outside layer so the mesh is closed even where the shape touches the
    box; no zero crossing gives an empty mesh."""
    from skimage.measure import marching_cubes

    if not (np.nanmin(sdf) < 0 < np.nanmax(sdf)):
        return trimesh.Trimesh()
    r = sdf.shape[0]
    step = 2 * BOUND / (r - 1)
    padded = np.pad(np.nan_to_num(sdf, nan=1.0), 1, constant_values=max(float(np.nanmax(sdf)), 1e-3))
    verts, faces, _, _ = marching_cubes(padded, level=0.0, spacing=(step, step, step), gradient_direction="descent")
    # the padding layer lies one step outside the box; keep vertices on the box
    verts = np.clip(verts - step - BOUND, -BOUND, BOUND)
    return trimesh.Trimesh(verts, faces, process=True)


def mesh_from_batch(model, batch: dict, resolution: int, chunk: int) -> trimesh.Trimesh:
    latent, maps = model.net.encode(batch["image"])
    return mesh_from_sdf(sdf_grid(model, latent, maps, batch["K"], batch["RT"], resolution, chunk))


def reconstruct(model, image: np.ndarray, camera: dict, resolution: int = 128, chunk: int = 65536
                ) -> trimesh.Trimesh:
    """Mesh (unit-cube coordinates) of the object in ``image`` (HxWx3 uint8) seen through
    ``camera`` (a camera.json dict); an empty Trimesh when the SDF has no zero crossing."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image: expected HxWx3 uint8, got {image.shape} {image.dtype}")
    size = int(model.hparams.image_size)
    device = next(model.parameters()).device
    K, RT = camera_tensors(camera, image.shape[:2], size)
    batch = {"image": image_tensor(image, size)[None].to(device), "K": K[None].to(device), "RT": RT[None].to(device)}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return mesh_from_batch(model, batch, resolution, chunk)
    finally:
        model.train(was_training)
