"""DISN-style cameras ("easy" distribution) and the OpenCV / OpenGL conventions.

World frame: the unit cube (cdc_aug.layout), y up. ``RT`` maps world to OpenCV camera
coordinates (x right, y down, z forward); ``K`` is in OpenCV pixel convention, where the
centre of pixel (0, 0) is at (0, 0) — pyrender's rasteriser puts it at (0.5, 0.5), hence
the half-pixel shift between the two principal points.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

FOCAL_MM = 35.0
SENSOR_MM = 32.0
# DISN's camera distance. Its renders are of ShapeNetCore v1 models, whose bounding-box
# diagonal is 1; scaling the distance by the shape's own diagonal makes the object fill
# the frame as in those renders (on the default corpus about 1 % of the views touch the
# border at the near end of the range and are drawn again).
DISN_DISTANCE = 1.75


@dataclass(frozen=True)
class Camera:
    azimuth: float  # degrees, about +y, 0 looks at the shape's +z side
    elevation: float  # degrees above the horizon
    distance: float  # from the origin, unit-cube units
    size: int  # square image, pixels

    @property
    def focal_px(self) -> float:
        return FOCAL_MM * self.size / SENSOR_MM

    # K and RT are computed once per camera (a view reads them to fit, render and
    # record): cached, read-only, so a caller cannot change the camera through them.
    @functools.cached_property
    def K(self) -> np.ndarray:
        f, c = self.focal_px, self.size / 2 - 0.5
        return _read_only(np.array([[f, 0, c], [0, f, c], [0, 0, 1]], dtype=np.float64))

    @property
    def eye(self) -> np.ndarray:
        az, el = math.radians(self.azimuth), math.radians(self.elevation)
        return self.distance * np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])

    @functools.cached_property
    def RT(self) -> np.ndarray:
        eye = self.eye
        z = -eye / np.linalg.norm(eye)  # looks at the origin
        x = np.cross(z, [0.0, 1.0, 0.0])
        x /= np.linalg.norm(x)
        y = np.cross(z, x)  # points down in the image
        R = np.stack([x, y, z])
        return _read_only(np.concatenate([R, (-R @ eye)[:, None]], axis=1))

    def gl_pose(self) -> np.ndarray:
        """Camera-to-world pose in pyrender's (OpenGL) convention: looks down -z, y up."""
        RT = self.RT
        pose = np.eye(4)
        pose[:3, :3] = RT[:, :3].T @ np.diag([1.0, -1.0, -1.0])
        pose[:3, 3] = self.eye
        return pose

    def to_json(self, distance_ratio: float | None = None) -> dict:
        out = {
            "K": self.K.tolist(),
            "RT": self.RT.tolist(),
            "azimuth": self.azimuth,
            "elevation": self.elevation,
            "distance": self.distance,
            "image_size": [self.size, self.size],
            "focal_mm": FOCAL_MM,
            "sensor_mm": SENSOR_MM,
        }
        if distance_ratio is not None:
            out["distance_ratio"] = distance_ratio
        return out


def _read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def project(points: np.ndarray, K: np.ndarray, RT: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (N, 2; OpenCV convention) and camera z (N,) of world points."""
    cam = points @ RT[:, :3].T + RT[:, 3]
    uvw = cam @ K.T
    return uvw[:, :2] / uvw[:, 2:3], cam[:, 2]


def sample_view(rng: np.random.Generator, view: int, views: int, diagonal: float, size: int,
                scale: float = 1.0) -> tuple[Camera, float]:
    """One DISN "easy" view: azimuth view·(360/views) ± half a step, elevation U(20°, 30°),
    distance 1.75·U(0.65, 1)·diagonal (``diagonal``: the shape's bounding-box diagonal),
    times ``scale`` (> 1 when a view is drawn again)."""
    step = 360.0 / views
    azimuth = (view * step + rng.uniform(-step / 2, step / 2)) % 360.0
    elevation = rng.uniform(20.0, 30.0)
    ratio = rng.uniform(0.65, 1.0) * scale
    return Camera(float(azimuth), float(elevation), float(DISN_DISTANCE * ratio * diagonal), size), float(ratio)


def fits(vertices: np.ndarray, camera: Camera, margin: float = 1.0) -> bool:
    """True when every vertex lies in front of the camera and inside the image (with a
    ``margin`` in pixels), i.e. the object does not touch the border."""
    uv, z = project(vertices, camera.K, camera.RT)
    lo, hi = margin - 0.5, camera.size - 0.5 - margin
    return bool(np.all(z > 1e-6) and uv.min() >= lo and uv.max() <= hi)


MAX_SCALE_STEP = 1.1  # distance factor per redraw once plain redraws have failed twice
