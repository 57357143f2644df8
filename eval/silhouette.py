"""2D IoU: the predicted mesh's silhouette seen through a test view's stored camera,
against that view's mask. The silhouette comes from the render stage's own rasteriser
(render.renderer.render_mask), so a ground-truth mesh reproduces its stored mask."""

from __future__ import annotations

import numpy as np

from .metrics import iou, is_empty


class Silhouettes:
    """Reuses one offscreen renderer per image size: creating a GL context per view would
    cost more than the rendering."""

    def __init__(self):
        self._renderers: dict[int, object] = {}

    def renderer(self, size: int):
        from render.renderer import Renderer

        if size not in self._renderers:
            self._renderers[size] = Renderer(size)
        return self._renderers[size]

    def mask(self, mesh, camera: dict, size: int) -> np.ndarray:
        from render.renderer import render_mask

        if is_empty(mesh):
            return np.zeros((size, size), dtype=bool)
        return render_mask(mesh, np.asarray(camera["K"]), np.asarray(camera["RT"]), size,
                           renderer=self.renderer(size))

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def gt_mask(mask: np.ndarray) -> np.ndarray:
    """A stored mask.png (0/255, maybe with a channel axis) as booleans."""
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., 0]
    return m > 127


def silhouette_iou(mesh, camera: dict, mask: np.ndarray, silhouettes: Silhouettes | None = None) -> float:
    """IoU of ``mesh``'s silhouette (camera.json ``K``/``RT``) with ``mask`` (mask.png);
    0 for an empty prediction. Non-square masks are not produced by the render stage."""
    target = gt_mask(mask)
    if target.shape[0] != target.shape[1]:
        raise ValueError(f"mask: expected a square image, got {target.shape}")
    if is_empty(mesh):
        return 0.0
    own = silhouettes is None
    s = silhouettes or Silhouettes()
    try:
        return iou(s.mask(mesh, camera, target.shape[0]), target)
    finally:
        if own:
            s.close()
