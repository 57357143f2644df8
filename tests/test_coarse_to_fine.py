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
    def __init__(self, fn):
        self.fn, self.points = fn, 0

    def __call__(self, p):
        self.points += len(p)
        return self.fn(p)


def assert_same_mesh(a, b):
    assert len(a.faces) > 0
    assert a.faces.shape == b.faces.shape and a.vertices.shape == b.vertices.shape
    np.testing.assert_array_equal(a.faces, b.faces)
    # the same points evaluated in other batches may differ in the last float bit
    np.testing.assert_allclose(a.vertices, b.vertices, rtol=0, atol=1e-6)


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
