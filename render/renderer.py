"""One pyrender OffscreenRenderer per process: colour, depth and camera-space normals.

Headless by default through OSMesa (``PYOPENGL_PLATFORM`` is set to ``osmesa`` unless the
caller chose, e.g. ``egl`` on a GPU machine). Lighting is a studio three-point rig that
moves with the camera, so every view shows the shape; pyrender's default leaves
furniture nearly black.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

import numpy as np

from .cameras import Camera
from .meshes import Normalized

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
# PyOpenGL reports its optional accelerator and shutdown order at INFO on every run.
logging.getLogger("OpenGL").setLevel(logging.WARNING)


@dataclass(frozen=True)
class Lighting:
    """A three-point rig in camera coordinates (OpenGL: x right, y up, camera looks -z)."""

    key: float = 3.0
    fill: float = 1.4
    rim: float = 2.0
    ambient: float = 0.35
    key_azimuth: float = -35.0  # degrees, about the camera's up axis
    key_elevation: float = 40.0

    @staticmethod
    def sample(rng: np.random.Generator) -> Lighting:
        return Lighting(
            key=float(rng.uniform(2.4, 3.6)),
            fill=float(rng.uniform(1.0, 1.8)),
            rim=float(rng.uniform(1.4, 2.6)),
            ambient=float(rng.uniform(0.25, 0.45)),
            key_azimuth=float(rng.uniform(-55.0, -15.0)),
            key_elevation=float(rng.uniform(25.0, 55.0)),
        )


@functools.lru_cache(maxsize=64)
def _direction_pose(azimuth: float, elevation: float) -> np.ndarray:
    """Pose of a directional light shining from (azimuth, elevation) relative to the
    camera's viewing direction towards the object (pyrender lights shine along -z).
    Cached (read-only): the studio rig asks for the same three on every view."""
    az, el = np.radians(azimuth), np.radians(elevation)
    src = np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])  # from object to light
    z = src / np.linalg.norm(src)
    x = np.cross([0.0, 1.0, 0.0], z)
    if np.linalg.norm(x) < 1e-6:
        x = np.array([1.0, 0.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, y, z], axis=1)
    pose.flags.writeable = False
    return pose


@dataclass
class Views:
    rgba: np.ndarray  # (H, W, 4) uint8
    depth: np.ndarray  # (H, W) float32, 0 = background
    normal: np.ndarray | None  # (H, W, 3) float32 unit camera-space (OpenCV) normals, 0 = background


class Renderer:
    """Renders one shape at a time; keep one per process and reuse it."""

    def __init__(self, size: int):
        import pyrender

        self.size = size
        self._pr = pyrender
        self._r = pyrender.OffscreenRenderer(size, size)
        self._r._renderer._program_cache = _program_cache()
        self._scene = None

    def close(self) -> None:
        if self._r is not None:
            self._r.delete()
            self._r = None

    def load(self, shape: Normalized, normals: bool = True) -> None:
        """Upload a shape: its coloured parts, and a flat-shaded copy whose colours encode
        world-space face normals (rotated into the camera frame per view)."""
        pr = self._pr
        scene = pr.Scene(bg_color=[0.0, 0.0, 0.0, 0.0], ambient_light=[0.0, 0.0, 0.0])
        rank = iter(range(1 << 30))

        def add(**obj):
            node = _ranked_node(next(rank), **obj)
            scene.add_node(node)
            return node

        self._color_nodes = [add(mesh=pr.Mesh.from_trimesh(p, smooth=False)) for p in shape.parts]
        self._normal_node = None
        if normals:
            merged = shape.merged()
            fn = np.asarray(merged.face_normals, dtype=np.float64)
            colors = np.clip(np.round((fn + 1.0) * 127.5), 0, 255).astype(np.uint8)
            import trimesh

            merged.visual = trimesh.visual.ColorVisuals(
                merged, face_colors=np.concatenate([colors, np.full((len(colors), 1), 255, np.uint8)], axis=1))
            self._normal_node = add(mesh=pr.Mesh.from_trimesh(merged, smooth=False))
            self._normal_node.mesh.is_visible = False
        self._cam_node = add(camera=pr.IntrinsicsCamera(1.0, 1.0, 0.0, 0.0, znear=0.01, zfar=100.0))
        self._lights = [add(light=pr.DirectionalLight(color=np.ones(3), intensity=1.0)) for _ in range(3)]
        self._scene = scene

    def render(self, camera: Camera, lighting: Lighting = Lighting()) -> Views:
        return self.render_krt(camera.K, camera.RT, lighting)

    def render_krt(self, K: np.ndarray, RT: np.ndarray, lighting: Lighting = Lighting()) -> Views:
        """Render with any OpenCV camera (``K`` 3x3, ``RT`` 3x4 world->camera), e.g. the
        one stored in a sample's camera.json."""
        pr, scene = self._pr, self._scene
        K, RT = np.asarray(K, dtype=np.float64), np.asarray(RT, dtype=np.float64)
        # pyrender measures cx, cy from the image's top-left corner, pixel centres at +0.5
        self._cam_node.camera = pr.IntrinsicsCamera(K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5,
                                                    znear=0.01, zfar=100.0)
        pose = np.eye(4)
        pose[:3, :3] = RT[:, :3].T @ np.diag([1.0, -1.0, -1.0])
        pose[:3, 3] = -RT[:, :3].T @ RT[:, 3]
        scene.set_pose(self._cam_node, pose)
        rig = [(lighting.key, lighting.key_azimuth, lighting.key_elevation),
               (lighting.fill, 50.0, 10.0),
               (lighting.rim, 180.0 + lighting.key_azimuth / 2, 50.0)]
        for node, (intensity, az, el) in zip(self._lights, rig):
            node.light.intensity = intensity
            scene.set_pose(node, pose @ _direction_pose(az, el))
        scene.ambient_light = np.full(3, lighting.ambient)
        for n in self._color_nodes:
            n.mesh.is_visible = True
        color, depth = self._draw(0, depth=True)
        # pyrender's depth is already 0 off the object and float32; the colour there is the
        # clear colour (0). Whole-image arithmetic instead of boolean indexing: same bytes,
        # a fraction of the time.
        mask = depth > 0
        rgba = np.empty((*mask.shape, 4), dtype=np.uint8)
        np.multiply(color[..., :3], mask[..., None], out=rgba[..., :3])
        np.multiply(mask, np.uint8(255), out=rgba[..., 3], casting="unsafe")
        normal = None
        if self._normal_node is not None:
            for n in self._color_nodes:
                n.mesh.is_visible = False
            self._normal_node.mesh.is_visible = True
            ncol, _ = self._draw(pr.RenderFlags.FLAT, depth=False)
            self._normal_node.mesh.is_visible = False
            normal = _camera_normals(ncol[..., :3], mask, K, RT)
        return Views(rgba=rgba, depth=np.where(mask, depth, np.float32(0)).astype(np.float32, copy=False),
                     normal=normal)

    def _draw(self, flags: int, depth: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """One pyrender pass: colour (H, W, 3) uint8 and, when ``depth``, linear depth.

        Under OSMesa pyrender's ``OffscreenRenderer.render`` reads back and converts the
        depth buffer on every pass (boolean-indexed, ~0.6 ms at 224²); the normal pass
        needs only colour, and the conversion below is the same float32 arithmetic on
        the whole image (tests: equal to pyrender's). With framebuffers (EGL) pyrender
        reads both from its own framebuffer: that path is left as it is."""
        r = self._r
        if r._platform.supports_framebuffers():
            return r.render(self._scene, flags=flags)
        r._platform.make_current()
        r._renderer.render(self._scene, flags)
        color = r._renderer.read_color_buf()
        if not depth:
            return color, None
        cam = self._cam_node.camera
        return color, _linear_depth(self.size, cam.znear, cam.zfar)


class PyrenderPathRenderer(Renderer):
    """The straightforward path: pyrender's own program cache and
    ``OffscreenRenderer.render`` (colour and depth read back and converted by pyrender
    on both passes). The reference that tests and bench/render_throughput.py compare
    ``Renderer`` against; not for production (it compiles two programs per view)."""

    def __init__(self, size: int):
        super().__init__(size)
        from pyrender.shader_program import ShaderProgramCache

        self._r._renderer._program_cache = ShaderProgramCache()

    def _draw(self, flags: int, depth: bool) -> tuple[np.ndarray, np.ndarray | None]:
        return self._r.render(self._scene, flags=flags)


def _linear_depth(size: int, znear: float, zfar: float) -> np.ndarray:
    """The front buffer's depth as pyrender's ``read_depth_buf`` returns it: linear
    camera depth, float32, 0 where nothing was drawn (window depth 1)."""
    from OpenGL import GL

    GL.glBindFramebuffer(GL.GL_READ_FRAMEBUFFER, 0)
    GL.glReadBuffer(GL.GL_FRONT)
    buf = GL.glReadPixels(0, 0, size, size, GL.GL_DEPTH_COMPONENT, GL.GL_FLOAT)
    z = np.frombuffer(buf, dtype=np.float32).reshape(size, size)[::-1]
    # pyrender's expression and operand order, Python-float constants included, so every
    # pixel is rounded as there (float32 throughout).
    ndc = 2.0 * z - 1.0
    linear = (2.0 * znear * zfar) / (zfar + znear - ndc * (zfar - znear))
    return np.where(z == 1.0, np.float32(0), linear)


def _program_cache():
    """pyrender's shader-program cache, keyed on the shaders and their defines only.

    pyrender keys its cache on ``OpenGL.contextdata.getContext()`` as well; with PyOpenGL
    3.1.10 and OSMesa that returns a new ctypes pointer object on every call (hashed by
    identity), so every render missed the cache: two programs compiled and JIT-compiled
    by llvmpipe per view, and never freed. A Renderer owns one context, so the context
    adds nothing to the key. Same shaders, same defines: the same pixels.
    """
    return _pyrender_classes()[0]()


def _ranked_node(rank: int, **obj):
    """A pyrender Node whose hash is ``rank``, so the sets pyrender iterates to draw
    (``scene.mesh_nodes``, equal-distance ties kept in set order) and to bind lights
    (``scene.light_nodes``) go in the order the nodes were added.

    With identity hashes that order followed memory addresses: the rig's three lights
    were summed in the shader in an order that changed from one ``load`` to the next,
    and about one pixel in 100k per view changed by 1 (measured); parts that overlap
    would swap which one wins a depth tie. Small distinct int hashes sit in their own
    slots of a CPython set, which iterates them in hash order."""
    return _pyrender_classes()[1](rank, **obj)


@functools.cache
def _pyrender_classes():
    """The two pyrender subclasses above, made once pyrender is imported (lazily: it
    needs ``PYOPENGL_PLATFORM`` and is heavy for modules that only encode normals)."""
    from pyrender import Node
    from pyrender.shader_program import ShaderProgramCache

    class ProgramCache(ShaderProgramCache):
        def __init__(self):
            super().__init__()
            self._by_source = {}

        def get_program(self, vertex_shader, fragment_shader, geometry_shader=None, defines=None):
            key = (vertex_shader, fragment_shader, geometry_shader, tuple(sorted((defines or {}).items())))
            if key not in self._by_source:
                self._by_source[key] = super().get_program(vertex_shader, fragment_shader, geometry_shader,
                                                           defines)
            return self._by_source[key]

        def clear(self):
            super().clear()
            self._by_source = {}

    class RankedNode(Node):
        def __init__(self, rank: int, **kwargs):
            super().__init__(**kwargs)
            self._rank = rank

        def __hash__(self) -> int:
            return self._rank

    return ProgramCache, RankedNode


def _camera_normals(encoded: np.ndarray, mask: np.ndarray, K: np.ndarray, RT: np.ndarray) -> np.ndarray:
    """Decode world normals, rotate them into the OpenCV camera frame and turn them to
    face the camera (open meshes often have inconsistently wound faces). Only the
    object's pixels are touched: this runs once per view."""
    v, u = np.nonzero(mask)
    n = encoded[v, u].astype(np.float32) / 127.5 - 1.0
    n = n @ RT[:, :3].T.astype(np.float32)
    # n . ray, ray = ((u - cx) / fx, (v - cy) / fy, 1), without building the rays
    dot = n[:, 0] * ((u - K[0, 2]) / K[0, 0]) + n[:, 1] * ((v - K[1, 2]) / K[1, 1]) + n[:, 2]
    n[dot > 0] *= -1
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-6)
    out = np.zeros((*mask.shape, 3), dtype=np.float32)
    out[v, u] = n
    return out


def render_mask(mesh, K, RT, size: int, renderer: Renderer | None = None) -> np.ndarray:
    """Silhouette (bool, size x size) of a trimesh ``mesh`` seen by an OpenCV camera, as
    the render stage draws its masks (for 2D IoU against a sample's mask.png). Pass a
    ``renderer`` of that size to reuse it across calls."""
    from .meshes import Normalized

    r = renderer or Renderer(size)
    try:
        r.load(Normalized([mesh], np.zeros(3), 1.0), normals=False)
        return r.render_krt(K, RT).depth > 0
    finally:
        if renderer is None:
            r.close()


def encode_normals(normal: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(n + 1) / 2 * 255 as uint8; background stays 0 (mask.png tells it apart)."""
    # The whole image, then the background zeroed: the same arithmetic per object pixel
    # as on ``normal[mask]``, half the time of the boolean-index gather and scatter.
    out = np.clip(np.round((normal + 1.0) * 127.5), 0, 255).astype(np.uint8)
    np.multiply(out, mask[..., None], out=out)
    return out
