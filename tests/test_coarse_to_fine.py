"""Coarse-to-fine SDF grids (train_svr.inference.sdf_on_grid) give the dense grid's mesh on
analytic SDFs; the Lightning-free checkpoint loader gives SVRModule's network."""

import numpy as np
import pytest
import torch

from cdc_aug.errors import UserError
from train_svr.inference import mesh_from_sdf, sdf_on_grid

SCALE = 10.0  # SDFs in target units, as the model predicts them


def sphere(p, centre=(0.0, 0.0, 0.0), radius=0.3):
    return SCALE * ((p - torch.tensor(centre)).norm(dim=-1) - radius)


def chair_like(p):
    """A thin slab (0.008 thick, under one cell at 48^3), a sphere, and a small blob
    (radius 0.02) off every coarse node: the features coarse grids miss."""
    slab = (p[:, 1] - 0.101).abs() - 0.004
    blob = (p - torch.tensor([0.331, -0.27, 0.313])).norm(dim=-1) - 0.02
    return SCALE * torch.minimum(torch.minimum(p.norm(dim=-1) - 0.2, slab), blob)


def box_filling(p):
    """A box reaching past the grid's x = -0.55 wall: the mesh is closed there by the
    padding layer."""
    centre, half = torch.tensor([-0.25, 0.0, 0.0]), torch.tensor([0.4, 0.3, 0.3])
    return SCALE * ((p - centre).abs() - half).max(dim=-1).values


class Counted:
    """Counts the distinct points ``fn`` is asked for (the last batch is padded with copies)."""

    def __init__(self, fn):
        self.fn, self.points = fn, 0

    def __call__(self, p, *extra):
        self.points += len(torch.unique(p, dim=0))
        return self.fn(p, *extra)


def assert_same_mesh(a, b):
    assert len(a.faces) > 0
    assert a.faces.shape == b.faces.shape and a.vertices.shape == b.vertices.shape
    np.testing.assert_array_equal(a.faces, b.faces)
    # bit for bit: a point's value does not depend on the batch it is evaluated in
    np.testing.assert_array_equal(a.vertices, b.vertices)


@pytest.mark.parametrize("fn", [sphere, chair_like, box_filling], ids=lambda f: f.__name__)
@pytest.mark.parametrize("resolution", [17, 32, 47, 48, 64])
def test_coarse_to_fine_mesh_equals_dense_mesh(fn, resolution):
    dense_fn, c2f_fn = Counted(fn), Counted(fn)
    dense = sdf_on_grid(dense_fn, resolution, 4096, "cpu", coarse_to_fine=False)
    c2f = sdf_on_grid(c2f_fn, resolution, 4096, "cpu", coarse_to_fine=True, band=SCALE)
    assert dense_fn.points == resolution ** 3
    # every grid point keeps its sign, so marching cubes sees the same cells
    np.testing.assert_array_equal(dense < 0, c2f < 0)
    assert_same_mesh(mesh_from_sdf(dense), mesh_from_sdf(c2f))
    if resolution >= 32:
        assert c2f_fn.points < dense_fn.points


def test_coarse_to_fine_evaluates_a_fraction_at_128():
    dense_fn, c2f_fn = Counted(sphere), Counted(sphere)
    dense = sdf_on_grid(dense_fn, 128, 65536, "cpu", coarse_to_fine=False)
    c2f = sdf_on_grid(c2f_fn, 128, 65536, "cpu", coarse_to_fine=True, band=SCALE)
    assert_same_mesh(mesh_from_sdf(dense), mesh_from_sdf(c2f))
    assert c2f_fn.points < 0.25 * dense_fn.points


def test_sign_changes_alone_miss_a_small_blob_the_band_finds():
    """Why the band exists: a blob smaller than a coarse cell shows no sign change at the
    coarse nodes, so refining sign changes alone loses it."""
    def blob(p):
        return sphere(p, centre=(0.231, 0.262, -0.213), radius=0.02)

    dense = mesh_from_sdf(sdf_on_grid(blob, 64, 4096, "cpu", coarse_to_fine=False))
    assert len(dense.faces) > 0
    assert len(mesh_from_sdf(sdf_on_grid(blob, 64, 4096, "cpu", coarse_to_fine=True, band=0.0)).faces) == 0
    assert_same_mesh(dense, mesh_from_sdf(sdf_on_grid(blob, 64, 4096, "cpu", coarse_to_fine=True, band=SCALE)))


def test_no_surface_gives_an_empty_mesh():
    grid = sdf_on_grid(lambda p: torch.ones(len(p)), 48, 4096, "cpu")
    assert (grid == 1).all() and len(mesh_from_sdf(grid).faces) == 0


def test_load_model_builds_the_checkpoint_network_without_lightning(tmp_path):
    from train_svr.inference import load_model
    from train_svr.module import SVRModule

    torch.manual_seed(0)
    m = SVRModule(image_size=32, encoder_width=8, latent_dim=16, decoder_width=8, detail_channels=8).eval()
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams)}, ckpt)
    loaded = load_model(ckpt)
    assert not loaded.training and loaded.hparams.image_size == 32
    image, pts = torch.randn(1, 3, 32, 32), torch.rand(1, 50, 3) - 0.5
    K = torch.tensor([[[40.0, 0, 15.5], [0, 40.0, 15.5], [0, 0, 1]]])
    RT = torch.tensor([[[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2.0]]])
    with torch.inference_mode():
        a, b = m.net(image, pts, K, RT)["final"], loaded.net(image, pts, K, RT)["final"]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    bad = tmp_path / "bad.ckpt"
    torch.save({"weights": 1}, bad)
    with pytest.raises(UserError, match="not a loadable cdc-aug SVR checkpoint"):
        load_model(bad)


def two_valued(base):
    """An SDF built like D2IMNet.decode's final value: base + w * front + (1 - w) * back with
    w in {0, 1}, NaN in one corner of the box, and its candidates (final_candidates)."""
    def parts(p):
        c = torch.where((p[:, 0] > 0.45) & (p[:, 1] > 0.45), float("nan"), base(p))
        front, back = 0.3 * torch.sin(9 * p[:, 0]), -0.25 * torch.cos(7 * p[:, 1])
        return c, torch.stack([front, back], -1), (torch.sin(13 * p[:, 2]) > 0).float()

    def fn(p, extra=None):
        c, disp, w = parts(p)
        c = c if extra is None else extra[:, 0]
        return c + w * disp[:, 0] + (1 - w) * disp[:, 1]

    def candidates(p):
        c, disp, _ = parts(p)
        return torch.cat([c[:, None] + disp, c[:, None]], -1)

    return fn, candidates


@pytest.mark.parametrize("base", [sphere, box_filling], ids=lambda f: f.__name__)
@pytest.mark.parametrize("resolution", [17, 48])
@pytest.mark.parametrize("coarse_to_fine", [False, True], ids=["dense", "c2f"])
def test_candidates_give_the_same_mesh_bit_for_bit(base, resolution, coarse_to_fine):
    fn, candidates = two_valued(base)
    plain_fn, lazy_fn = Counted(fn), Counted(fn)
    plain = sdf_on_grid(plain_fn, resolution, 1000, "cpu", coarse_to_fine, band=SCALE)
    lazy = sdf_on_grid(lazy_fn, resolution, 1000, "cpu", coarse_to_fine, band=SCALE, candidates=candidates)
    a, b = mesh_from_sdf(plain), mesh_from_sdf(lazy)
    assert len(a.faces) > 0
    np.testing.assert_array_equal(a.faces, b.faces)
    np.testing.assert_array_equal(a.vertices, b.vertices)
    np.testing.assert_array_equal(plain > 0, lazy > 0)
    assert np.nanmax(plain) == np.nanmax(lazy)
    assert lazy_fn.points < 0.6 * plain_fn.points


def test_marching_cubes_reads_values_only_where_cells_change_sign():
    """The premise of _settle: values off the cells that change sign (the padding layer
    counted as positive) may take any value of the same sign below the maximum."""
    from train_svr.inference import _corners_of, _per_cell

    rng = np.random.default_rng(0)
    x, y, z = np.meshgrid(*[np.linspace(-0.55, 0.55, 40)] * 3, indexing="ij")
    sdf = (np.sqrt(x**2 + y**2 + z**2) - 0.3 + 0.05 * np.sin(20 * x) * np.cos(15 * y)).astype(np.float32)
    sdf[:, :, 0] = -0.1  # surface through the box wall: cells next to the padding change sign
    pos = np.pad(sdf > 0, 1, constant_values=True)
    read = _corners_of(_per_cell(pos) & ~_per_cell(pos, np.logical_and))[1:-1, 1:-1, 1:-1]
    other = sdf.copy()
    free = ~read & (sdf < sdf.max())
    scale = rng.uniform(0.01, 1.0, sdf.shape).astype(np.float32)
    other[free] = sdf[free] * scale[free]  # same sign, other value
    assert (other != sdf).mean() > 0.5
    a, b = mesh_from_sdf(sdf), mesh_from_sdf(other)
    np.testing.assert_array_equal(a.faces, b.faces)
    np.testing.assert_array_equal(a.vertices, b.vertices)


def tiny_net_inputs():
    from train_svr.model import D2IMNet

    torch.manual_seed(0)
    net = D2IMNet(encoder_width=8, latent_dim=16, decoder_width=8, detail_channels=8).eval()
    torch.nn.init.normal_(net.detail.head.weight, std=0.5)  # front and back maps differ
    with torch.no_grad():  # a wavy coarse SDF: its gradient faces the camera at some points only
        net.coarse.l0.weight[:, -3:] *= 30
    K = torch.tensor([[[40.0, 0, 15.5], [0, 40.0, 15.5], [0, 0, 1]]])
    RT = torch.tensor([[[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2.0]]])
    with torch.inference_mode():
        latent, maps = net.encode(torch.randn(1, 3, 32, 32))
    return net, latent, maps, K, RT


def test_decoder_final_is_one_of_its_candidates_bit_for_bit():
    net, latent, maps, K, RT = tiny_net_inputs()
    pts = torch.rand(1, 3000, 3) * 1.1 - 0.55
    with torch.inference_mode():
        out = net.decode(latent, maps, pts, K, RT)
        cand = net.final_candidates(latent, maps, pts, K, RT)
        reused = net.decode(latent, maps, pts, K, RT, coarse=cand[..., 2])["final"]
    front = out["w"] > 0
    assert 0 < front.float().mean() < 1 and (cand[..., 0] != cand[..., 1]).all()
    assert torch.equal(out["final"], torch.where(front, cand[..., 0], cand[..., 1]))
    assert torch.equal(out["final"], reused) and torch.equal(out["coarse"], cand[..., 2])


@pytest.mark.parametrize("coarse_to_fine", [False, True], ids=["dense", "c2f"])
def test_sdf_grid_gives_the_decoders_mesh_bit_for_bit(coarse_to_fine):
    """sdf_grid (candidates, padded chunks) against every point through decode."""
    from types import SimpleNamespace

    from train_svr.inference import sdf_grid

    net, latent, maps, K, RT = tiny_net_inputs()
    model = SimpleNamespace(net=net, hparams=SimpleNamespace(sdf_scale=10.0))
    with torch.inference_mode():
        plain = sdf_on_grid(lambda p: net.decode(latent, maps, p[None], K, RT)["final"][0], 40, 1000, "cpu",
                            coarse_to_fine, band=2.5)
    lazy = sdf_grid(model, latent, maps, K, RT, 40, 256, coarse_to_fine)
    a, b = mesh_from_sdf(plain), mesh_from_sdf(lazy)
    assert len(a.faces) > 0
    np.testing.assert_array_equal(a.faces, b.faces)
    np.testing.assert_array_equal(a.vertices, b.vertices)


def test_a_points_value_does_not_depend_on_its_batch():
    """Padded chunks: the decoder's value at a point is the same whatever the chunk size.
    Unpadded, a last chunk of a few points (23^3 = 2 x 6082 + 3) comes out of the matrix
    kernels' short-batch path, rounded differently."""
    net, latent, maps, K, RT = tiny_net_inputs()
    with torch.inference_mode():
        grids = [sdf_on_grid(lambda p: net.decode(latent, maps, p[None], K, RT)["final"][0], 23, chunk, "cpu",
                             coarse_to_fine=False) for chunk in (256, 1000, 6082)]
    np.testing.assert_array_equal(grids[0], grids[1])
    np.testing.assert_array_equal(grids[0], grids[2])
