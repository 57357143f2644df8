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


# Where the decoder's two candidate values (final_candidates) both lie further than this
# from zero (target units), the sign of the final SDF is settled without the front/back
# decision. A margin, not 0: the exact pass reuses the candidate pass's coarse SDF, so the
# final value is one of the candidates bit for bit, but the margin would still keep every
# sign right if a kernel rounded a point differently in the two passes (it costs nothing
# measurable: few values lie that close to 0).
SIGN_MARGIN = 1e-4


def sdf_on_grid(fn: Callable[[torch.Tensor], torch.Tensor], resolution: int, chunk: int, device,
                coarse_to_fine: bool = True, band: float = 2.5,
                candidates: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """``fn`` ((N, 3) points -> (N,) SDF, negative inside) on a resolution^3 grid over
    [-BOUND, BOUND]^3, indexed [x, y, z], as float32: a grid whose marching-cubes mesh
    (mesh_from_sdf) is that of the grid of ``fn``'s values. Values away from the surface
    may be interpolated (coarse to fine) or settled in sign only (``candidates``).

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
    --check); the default 2.5 is 0.25 x the SDF scale. ``coarse_to_fine=False`` evaluates
    every point.

    ``candidates`` ((N, 3) points -> (N, 2 + k), cheaper than ``fn``): two values of which
    ``fn``'s is one at each point, then k columns that ``fn`` accepts as a second argument
    to skip work (D2IMNet.final_candidates). At full resolution they are evaluated first,
    and ``fn`` only where the mesh depends on its value (_settle)."""
    r = resolution
    axis = torch.linspace(-BOUND, BOUND, r, device=device)

    def run(f, idx: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
        """``f`` at grid indices ``idx`` (K, 3), with rows of ``extra`` when given."""
        # Every call gets exactly ``chunk`` points (the last chunk padded with copies of its
        # last point): matrix-product kernels round a batch's last rows differently when the
        # row count is not a multiple of their block, so an unpadded tail would make a
        # point's value depend on the batch it fell in. Padded, it is a function of the point.
        pad = -len(idx) % chunk
        idx_t = torch.from_numpy(np.concatenate([idx, idx[-1:].repeat(pad, 0)])).to(device)
        args = [axis[idx_t]]
        if extra is not None:
            args.append(torch.from_numpy(np.concatenate([extra, extra[-1:].repeat(pad, 0)])).to(device))
        out = torch.cat([f(*(a[i:i + chunk] for a in args)).float() for i in range(0, len(idx_t), chunk)])
        return out[:len(idx)].cpu().numpy()

    def fill(grid: np.ndarray, todo: np.ndarray, coords: np.ndarray) -> None:
        """Evaluate the ``todo`` points of a level (grid indices ``coords`` per axis)."""
        if not todo.any():
            return
        if candidates is not None and len(coords) == r:
            _settle(grid, todo, lambda idx, extra: run(fn, idx, extra), lambda idx: run(candidates, idx))
        else:
            grid[todo] = run(fn, coords[np.argwhere(todo)])

    stride = coarsest_stride(r) if coarse_to_fine else 1
    nodes = _nodes(r, stride)
    n = len(nodes)
    vals = np.empty((n, n, n), np.float32)
    fill(vals, np.ones_like(vals, dtype=bool), nodes)
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
        fill(up, todo, fine)
        vals, known, nodes, n = up, was_known | todo, fine, m
        stride //= 2
    return vals


def _shift(ax: int, sl: slice) -> tuple:
    return tuple(sl if i == ax else slice(None) for i in range(3))


def _per_cell(points: np.ndarray, reduce=np.logical_or) -> np.ndarray:
    """Per grid cell (its 2x2x2 corner points): ``reduce`` of the corners, one axis at a time."""
    for ax in range(3):
        points = reduce(points[_shift(ax, slice(None, -1))], points[_shift(ax, slice(1, None))])
    return points


def _corners_of(cells: np.ndarray) -> np.ndarray:
    """The points that are a corner of some True cell (the shape _per_cell took)."""
    for ax in range(3):
        shape = list(cells.shape)
        shape[ax] += 1
        out = np.zeros(shape, bool)
        out[_shift(ax, slice(None, -1))] = cells
        out[_shift(ax, slice(1, None))] |= cells
        cells = out
    return cells


def _settle(grid: np.ndarray, todo: np.ndarray, exact: Callable[[np.ndarray, np.ndarray], np.ndarray],
            pair: Callable[[np.ndarray], np.ndarray]) -> None:
    """Fill the ``todo`` points of a full-resolution ``grid`` so that mesh_from_sdf gives
    the mesh of ``exact``'s values there, calling ``exact`` on as few points as it can.

    Why it is the same mesh: marching cubes (Lewiner, scikit-image) classifies every point
    by value > 0 and reads values only at the 8 corners of a cell whose corners fall on
    both sides; mesh_from_sdf also reads the grid's largest value (the padding layer's
    value) and whether any value is below / above 0. ``pair`` gives two values per point,
    ``exact``'s being one of them. Where both lie beyond SIGN_MARGIN on one side of 0 the
    sign is settled and the point keeps the first, unless it is a corner of a cell that
    may change sign (next to the padding layer included) or its larger candidate could be
    the grid's largest value: those, and the unsettled points, get ``exact``'s value.
    Points whose two candidates are equal have their exact value already."""
    idx = np.argwhere(todo)
    ab = pair(idx)
    a, b = ab[:, 0], ab[:, 1]
    row = np.zeros(grid.shape, np.int64)
    row[todo] = np.arange(len(idx))
    lo, hi = np.minimum(a, b), np.maximum(a, b)  # NaN-propagating: a NaN is never settled
    settled = (lo > SIGN_MARGIN) | (hi < -SIGN_MARGIN)
    grid[todo] = a
    unsure = np.zeros(grid.shape, bool)
    unsure[todo] = ~settled
    guess = np.zeros(grid.shape, bool)  # a candidate stands in for the exact value
    guess[todo] = settled & (a != b)
    # signs as marching cubes sees them: NaN is read as 1.0, the padding layer is positive
    pos = np.pad((grid > 0) | np.isnan(grid), 1, constant_values=True)
    mixed = _per_cell(pos) & ~_per_cell(pos, np.logical_and) | _per_cell(np.pad(unsure, 1))
    need = unsure | guess & _corners_of(mixed)[1:-1, 1:-1, 1:-1]
    # the largest value is at least the largest lower bound: only candidates above it count
    low = grid.copy()
    low[todo] = lo
    if not np.isnan(low).all():
        larger = np.full(grid.shape, -np.inf, np.float32)
        larger[todo] = hi
        need |= guess & (larger > np.nanmax(low) - SIGN_MARGIN)
    if need.any():
        grid[need] = exact(np.argwhere(need), ab[row[need], 2:])


def sdf_grid(model, latent: torch.Tensor, maps: torch.Tensor, K: torch.Tensor, RT: torch.Tensor,
             resolution: int, chunk: int, coarse_to_fine: bool = True) -> np.ndarray:
    """Final SDF (target units) on a resolution^3 grid, indexed [x, y, z], for its mesh
    (sdf_on_grid: exact where the mesh reads it). Most points cost one coarse-decoder
    pass (D2IMNet.final_candidates) instead of decode's two."""
    def fn(points: torch.Tensor, coarse: torch.Tensor | None = None) -> torch.Tensor:
        coarse = None if coarse is None else coarse[None, :, 0]
        return model.net.decode(latent, maps, points[None], K, RT, coarse)["final"][0]

    def candidates(points: torch.Tensor) -> torch.Tensor:
        return model.net.final_candidates(latent, maps, points[None], K, RT)[0]

    with torch.inference_mode():
        return sdf_on_grid(fn, resolution, chunk, latent.device, coarse_to_fine,
                           band=0.25 * float(getattr(model.hparams, "sdf_scale", 10.0)), candidates=candidates)


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


def default_chunk(device, model=None) -> int:
    """SDF points per forward pass: on GPU large; on CPU a chunk whose widest activation
    (the coarse decoder's first layer, 8 x decoder_width floats a point) takes about
    1 MiB, which stays in the core's cache. The per-point time falls steeply once it
    does: the smoke models (width 32) ran 2-2.5x faster per point with 1024-2048 points
    than with 8192 (4 MiB), and width 64 ran 2x faster with 512-1024 than with 8192, on
    the shared 2-core machine (one thread; bench/eval_speed.py). The result does not
    depend on the chunk."""
    if torch.device(device).type == "cuda":
        return 65536
    width = model.net.coarse.l0.out_features if model is not None else 256
    return max(256, 2**18 // width)


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
        return mesh_from_batch(model, batch, resolution, chunk or default_chunk(device, model), coarse_to_fine)
    finally:
        model.train(was_training)
