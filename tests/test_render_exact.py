"""The render path's speed-ups change no output: each is checked against the
straightforward way (pyrender's own path, Pillow's PNG encoder, boolean indexing)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import trimesh
from PIL import Image

from cdc_aug.samples import decode_png, encode_png
from render.cameras import sample_view
from render.meshes import normalize
from render.renderer import Lighting, PyrenderPathRenderer, Renderer, encode_normals

SIZE = 96


def _coloured(mesh: trimesh.Trimesh, rgb) -> trimesh.Trimesh:
    mesh.visual = trimesh.visual.ColorVisuals(mesh, face_colors=np.tile([*rgb, 255], (len(mesh.faces), 1)))
    return mesh


@pytest.fixture(scope="module")
def shape():
    # Two parts that share a face plane (depth ties: the part drawn first must win
    # every time) and a curved one (every light direction shades it differently).
    torus = _coloured(trimesh.creation.torus(0.4, 0.12, major_sections=40, minor_sections=20), (180, 120, 60))
    box = _coloured(trimesh.creation.box((0.3, 0.3, 0.3)), (40, 160, 200))
    lid = _coloured(trimesh.creation.box((0.3, 0.3, 0.3)), (220, 40, 40))
    lid.apply_translation((0.1, 0.0, 0.0))  # its y faces lie in the box's planes
    return normalize([torus, box, lid])


def _views(renderer: Renderer, shape, n: int = 8):
    rng = np.random.default_rng(3)
    out = []
    renderer.load(shape)
    for i in range(n):
        cam = sample_view(rng, i, n, shape.diagonal, SIZE)[0]
        out.append(renderer.render(cam, Lighting.sample(rng)))
    return out


def test_renderer_matches_pyrenders_own_path(shape):
    fast, plain = Renderer(SIZE), PyrenderPathRenderer(SIZE)
    try:
        for a, b in zip(_views(fast, shape), _views(plain, shape)):
            assert (a.rgba[..., 3] > 0).mean() > 0.05
            for f in ("rgba", "depth", "normal"):
                x, y = getattr(a, f), getattr(b, f)
                assert x.dtype == y.dtype and x.shape == y.shape
                np.testing.assert_array_equal(x, y, err_msg=f)
    finally:
        fast.close()
        plain.close()


def test_shader_programs_are_compiled_once_per_renderer(shape):
    r = Renderer(SIZE)
    try:
        _views(r, shape, 4)
        _views(r, shape, 4)  # a second shape load reuses them too
        # the lit program and the flat one; pyrender's own cache missed on every view
        assert len(r._r._renderer._program_cache._program_cache) == 2
    finally:
        r.close()


def test_lights_and_parts_are_drawn_in_the_order_they_were_added(shape):
    r = Renderer(SIZE)
    try:
        for _ in range(6):  # new nodes at new addresses each time
            r.load(shape)
            assert list(r._scene.light_nodes) == r._lights
            assert list(r._scene.mesh_nodes) == [*r._color_nodes, r._normal_node]
    finally:
        r.close()


def test_same_view_same_bytes_after_other_loads(shape):
    r = Renderer(SIZE)
    try:
        first = _views(r, shape, 3)
        for _ in range(3):
            again = _views(r, shape, 3)
            for a, b in zip(first, again):
                np.testing.assert_array_equal(a.rgba, b.rgba)
    finally:
        r.close()


def _pillow_png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


@pytest.mark.parametrize("shape_, dtype", [((37, 23), np.uint8), ((37, 23, 2), np.uint8), ((37, 23, 3), np.uint8),
                                           ((37, 23, 4), np.uint8), ((37, 23), np.uint16)])
def test_png_decodes_to_the_array_pillow_encoded(shape_, dtype):
    rng = np.random.default_rng(0)
    a = rng.integers(0, np.iinfo(dtype).max, shape_, dtype=dtype, endpoint=True)
    a[:5] = 0  # a run of background, as on renders
    for x in (a, a[::-1], a[:, ::2]):  # and views that are not C-contiguous
        got = decode_png(encode_png(x))
        assert got.dtype == x.dtype
        np.testing.assert_array_equal(got, x)
        np.testing.assert_array_equal(got, decode_png(_pillow_png(np.ascontiguousarray(x))))


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 1), np.uint8), np.zeros((4, 4, 3), np.uint16),
                                 np.zeros((4, 4), np.float32), np.zeros((2, 4, 4, 3), np.uint8)])
def test_png_refuses_what_it_cannot_round_trip(bad):
    with pytest.raises(TypeError):
        encode_png(bad)


def test_encoded_normals_equal_the_boolean_indexed_way(shape):
    r = Renderer(SIZE)
    try:
        for v in _views(r, shape, 4):
            mask = v.depth > 0
            ref = np.zeros(v.normal.shape, dtype=np.uint8)
            ref[mask] = np.clip(np.round((v.normal[mask] + 1.0) * 127.5), 0, 255).astype(np.uint8)
            np.testing.assert_array_equal(encode_normals(v.normal, mask), ref)
    finally:
        r.close()


def test_camera_matrices_are_cached_read_only():
    cam = sample_view(np.random.default_rng(0), 0, 4, 1.5, SIZE)[0]
    assert cam.RT is cam.RT and cam.K is cam.K
    with pytest.raises(ValueError):
        cam.RT[0, 3] = 1.0
