"""Reconstruction as a function other stages call: image + camera -> mesh in unit-cube
coordinates. The SDF is evaluated on a grid over the padded box [-0.55, 0.55]^3 in
chunks, coarse to fine (only cells that may hold surface are refined; sdf_on_grid);
marching cubes (scikit-image) extracts its zero level set."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import trimesh
from scipy import ndimage

from cdc_aug.errors import UserError

from .data import camera_tensors, image_tensor

BOUND = 0.55  # the ground truth's padded box (render.groundtruth.PADDING)


class Reconstructor(torch.nn.Module):
    """The trained network without its LightningModule: ``net`` (D2IMNet) and ``hparams``
    (the checkpoint's hyper-parameters, attribute access), all ``reconstruct`` needs.
    Building it imports no Lightning, which was about 5 s of every eval process's start-up
    on the shared 2-core machine (python -X importtime)."""

    def __init__(self, hparams: dict):
        super().__init__()
        from .model import D2IMNet

        # SVRModule's defaults for the two that inference reads
        self.hparams = SimpleNamespace(**{"image_size": 224, "sdf_scale": 10.0, **hparams})
        keys = ("encoder_width", "latent_dim", "decoder_width", "detail_channels")
        self.net = D2IMNet(**{k: hparams[k] for k in keys if k in hparams})


def load_model(ckpt_path: str | Path, device: str = "cpu") -> Reconstructor:
    """The network of a ``cdc-aug train`` checkpoint, in eval mode on ``device``."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint")
    try:
        # weights_only: a checkpoint is data; one that needs arbitrary code to unpickle is
        # refused whatever torch's default (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, torch < 2.6).
        ckpt = torch.load(path, map_location=device, weights_only=True)
        model = Reconstructor(dict(ckpt["hyper_parameters"]))
        model.load_state_dict(ckpt["state_dict"])
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, TypeError, ValueError, zipfile.BadZipFile) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not a loadable cdc-aug SVR checkpoint ({first[:200]})") from None
    return model.eval().to(device)


def coarsest_stride(resolution: int, min_cells: int = 8) -> int:
    """The largest power-of-two stride whose grid still has ``min_cells`` cells per axis."""
    s = 1
    while (resolution - 1) // (2 * s) >= min_cells:
        s *= 2
    return s


def _nodes(resolution: int, stride: int) -> np.ndarray:
    """Grid indices of one level: every ``stride``-th index and the last one (so levels nest
    and every level spans the whole box, whatever the resolution)."""
    return np.unique(np.r_[np.arange(0, resolution, stride), resolution - 1])


def _cells_of(coarse: np.ndarray, fine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each fine index: the coarse cell left of it and right of it (the same cell unless
    it lies on a coarse node), and its position in the right cell (0..1)."""
    n = len(coarse)
    pos = np.clip(np.searchsorted(coarse, fine, side="right") - 1, 0, n - 2)
    t = (fine - coarse[pos]) / (coarse[pos + 1] - coarse[pos])
    left = np.where((coarse[pos] == fine) & (pos > 0), pos - 1, pos)
    return left, pos, t


def _interp_axis(a: np.ndarray, pos: np.ndarray, t: np.ndarray, axis: int) -> np.ndarray:
    shape = [1, 1, 1]
    shape[axis] = len(t)
    t = t.reshape(shape).astype(np.float32)
    return np.take(a, pos, axis) * (1 - t) + np.take(a, pos + 1, axis) * t


def sdf_on_grid(fn: Callable[[torch.Tensor], torch.Tensor], resolution: int, chunk: int, device,
                coarse_to_fine: bool = True, band: float = 2.5) -> np.ndarray:
    """``fn`` ((N, 3) points -> (N,) SDF, negative inside) on a resolution^3 grid over
    [-BOUND, BOUND]^3, indexed [x, y, z], as float32.

    Coarse to fine (IM-Net/D2IM-Net style): the grid is evaluated at the coarsest stride,
    then each level halves the stride and evaluates only the points of cells that may hold
    surface: cells whose corners change sign, or whose smallest |SDF| is at most ``band``
    x the cell diagonal (unit-cube lengths), grown by one cell. Every other point takes
    the trilinear interpolation of the level above, which keeps its corners' common sign,
    so marching cubes finds the same cells and vertices as on the dense grid wherever the
    refined cells hold every zero crossing. ``band`` is that guard: with an exact SDF of
    slope ``band`` no crossing can hide in an unrefined cell. A learned SDF is not exact:
    small blobs where it dips just below zero are what sign changes alone miss. On the
    smoke experiment's tiny model (SDF scale 10) band 1 lost such blobs at 128^3 and
    band 2 reproduced the dense mesh exactly on every view tried (bench/eval_speed.py
    --check); the default 2.5 is 0.25 x the SDF scale. ``coarse_to_fine=False``
    evaluates every point."""
    r = resolution
    axis = torch.linspace(-BOUND, BOUND, r, device=device)

    def run(idx: np.ndarray) -> np.ndarray:
        idx_t = torch.from_numpy(idx).to(device)
        out = torch.empty(len(idx), device=device)
        for i in range(0, len(idx), chunk):
            out[i:i + chunk] = fn(axis[idx_t[i:i + chunk]]).float()
        return out.cpu().numpy()

    stride = coarsest_stride(r) if coarse_to_fine else 1
    nodes = _nodes(r, stride)
    n = len(nodes)
    grid = np.stack(np.meshgrid(nodes, nodes, nodes, indexing="ij"), -1).reshape(-1, 3)
    vals = run(grid).reshape(n, n, n)
    known = np.ones_like(vals, dtype=bool)  # evaluated, not interpolated
    step = 2 * BOUND / (r - 1)
    while stride > 1:
        fine = _nodes(r, stride // 2)
        m = len(fine)
        # cells of the current level that may hold surface
        corners = [vals[i:n - 1 + i, j:n - 1 + j, k:n - 1 + k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]
        neg = np.stack([c < 0 for c in corners])
        near = np.min(np.abs(np.stack(corners)), axis=0) <= band * stride * step * np.sqrt(3)
        mark = ndimage.binary_dilation(neg.any(0) & ~neg.all(0) | near, np.ones((3, 3, 3), bool))
        left, right, t = _cells_of(nodes, fine)
        # a fine point is needed when a marked cell holds it (on a coarse node: either side);
        # one axis at a time, which is far cheaper than 8 three-axis gathers
        need = mark
        for ax in range(3):
            need = np.take(need, left, ax) | np.take(need, right, ax)
        # the next level: interpolated everywhere, the current level's values kept exactly
        up = vals
        for ax in range(3):
            up = _interp_axis(up, right, t, ax)
        at = np.ix_(*[np.flatnonzero(np.isin(fine, nodes))] * 3)
        up[at] = vals
        was_known = np.zeros((m, m, m), bool)
        was_known[at] = known
        todo = need & ~was_known
        idx = np.argwhere(todo)
        if len(idx):
            up[todo] = run(fine[idx])
        vals, known, nodes, n = up, was_known | todo, fine, m
        stride //= 2
    return vals


def sdf_grid(model, latent: torch.Tensor, maps: torch.Tensor, K: torch.Tensor, RT: torch.Tensor,
             resolution: int, chunk: int, coarse_to_fine: bool = True) -> np.ndarray:
    """Final SDF (target units) on a resolution^3 grid, indexed [x, y, z] (sdf_on_grid)."""
    def fn(points: torch.Tensor) -> torch.Tensor:
        return model.net.decode(latent, maps, points[None], K, RT)["final"][0]

    with torch.inference_mode():
        return sdf_on_grid(fn, resolution, chunk, latent.device, coarse_to_fine,
                           band=0.25 * float(getattr(model.hparams, "sdf_scale", 10.0)))


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


def mesh_from_batch(model, batch: dict, resolution: int, chunk: int, coarse_to_fine: bool = True
                    ) -> trimesh.Trimesh:
    with torch.inference_mode():
        latent, maps = model.net.encode(batch["image"])
    return mesh_from_sdf(sdf_grid(model, latent, maps, batch["K"], batch["RT"], resolution, chunk, coarse_to_fine))


def default_chunk(device) -> int:
    """SDF points per forward pass: on CPU a chunk whose activations stay in cache
    (8192 points ran twice as fast per point as 65536 with the tiny model), on GPU large."""
    return 65536 if torch.device(device).type == "cuda" else 8192


def reconstruct(model, image: np.ndarray, camera: dict, resolution: int = 128, chunk: int | None = None,
                coarse_to_fine: bool = True) -> trimesh.Trimesh:
    """Mesh (unit-cube coordinates) of the object in ``image`` (HxWx3 uint8) seen through
    ``camera`` (a camera.json dict); an empty Trimesh when the SDF has no zero crossing.
    ``chunk``: SDF points per forward pass (default_chunk); ``coarse_to_fine``: see
    sdf_on_grid (False evaluates the dense grid)."""
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
        return mesh_from_batch(model, batch, resolution, chunk or default_chunk(device), coarse_to_fine)
    finally:
        model.train(was_training)
