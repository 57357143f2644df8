"""cdc-aug train: the D2IM-Net-style model on tiny procedural renders (CPU, 64 px)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import h5py
import lightning as L
import numpy as np
import pytest
import torch
import trimesh

from cdc_aug.cli import main as cdc_main
from cdc_aug.errors import UserError
from cdc_aug.samples import decode_sample
from cdc_aug.shards import iter_tar_samples, shard_paths
from eval.metrics import EMPTY_SCORES
from train_svr.cli import main as train_main
from train_svr.data import camera_tensors, input_image, open_shard_set
from train_svr.datamodule import SVRDataModule
from train_svr.geometry import project
from train_svr.inference import load_model, reconstruct
from train_svr.losses import svr_losses
from train_svr.metrics import chamfer_l1
from train_svr.module import SVRModule
from train_svr.resnet import ResNet18, load_torchvision_weights

TINY = ["--config", "configs/train/tiny.yaml"]
GT = dict(gt_surface_points=4000, gt_sdf_points=8192, gt_occ_points=1000)
SMALL_MODEL = dict(encoder_width=8, latent_dim=32, decoder_width=32, detail_channels=8, image_size=64)


def _render(out: Path, **kw) -> Path:
    from render.api import render_dataset

    render_dataset(out / "renders", source="procedural", size=64, seed=0, progress=False, **GT, **kw)
    return out / "renders"


@pytest.fixture(scope="session")
def renders(tmp_path_factory) -> Path:
    """2 chairs + 2 tables, 4 views each: train = 1 chair + 1 table (8 samples), test = the others."""
    return _render(tmp_path_factory.mktemp("svr"), categories=("chair", "table"), max_shapes=2, views=4)


@pytest.fixture(scope="session")
def one_shape(tmp_path_factory) -> Path:
    """One procedural sofa, 8 views, in every split."""
    root = _render(tmp_path_factory.mktemp("svr1"), categories=("sofa",), max_shapes=1, views=8)
    shape = sum(json.loads((root / "splits.json").read_text()).values(), [])[0]
    (root / "splits.json").write_text(json.dumps({"train": [shape], "val": [shape], "test": [shape]}))
    return root


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst / "renders")
    shutil.copytree(src.parent / "shapes", dst / "shapes")
    return dst / "renders"


def _first_sample(root: Path) -> dict:
    return decode_sample(next(iter_tar_samples(shard_paths(root)[0])))


def _args(root: Path, runs: Path, *extra: str) -> list[str]:
    return [*TINY, "--data.shards", str(root), "--runs_dir", str(runs), "--data.num_workers", "0",
            "--trainer.enable_progress_bar", "false", "--data.val_split", "test", *extra]


# -- pieces ---------------------------------------------------------------------------
def test_input_image_composites_rgba_over_white_and_prefers_image_png():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)
    img = input_image({"rgba.png": rgba})
    assert img.dtype == np.uint8 and img.shape == (4, 4, 3)
    assert tuple(img[0, 0]) == (10, 20, 30) and tuple(img[1, 1]) == (255, 255, 255)
    composite = np.full((4, 4, 3), 7, np.uint8)
    assert (input_image({"rgba.png": rgba, "image.png": composite}) == 7).all()


def test_surface_points_project_into_the_mask(renders):
    s = _first_sample(renders)
    meta = s["meta.json"]
    with h5py.File(renders.parent / "shapes" / meta["synset"] / f"{meta['model_id']}.h5") as f:
        pts = torch.from_numpy(f["surface_points"][:2000]).float()
    K, RT = camera_tensors(s["camera.json"], (64, 64), 64)
    uv = project(pts[None], K[None], RT[None])[0].round().long().clamp(0, 63).numpy()
    inside = s["mask.png"][uv[:, 1], uv[:, 0]] > 127
    assert inside.mean() > 0.95


def test_resnet_loads_torchvision_names_and_skips_other_shapes(tmp_path, caplog):
    src = ResNet18(64)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in src.state_dict().items()}
    assert {"conv1.weight", "layer4.1.bn2.running_var", "layer2.0.downsample.0.weight", "fc.bias"} <= set(state)
    assert sum(1 for k in state if not k.endswith("num_batches_tracked")) == 102  # as torchvision resnet18
    torch.save(state, tmp_path / "r18.pth")
    same = ResNet18(64)
    assert load_torchvision_weights(same, tmp_path / "r18.pth") == []
    assert torch.equal(same.state_dict()["layer3.0.conv1.weight"], state["layer3.0.conv1.weight"])
    narrow = ResNet18(8)
    with caplog.at_level("INFO"):
        skipped = load_torchvision_weights(narrow, tmp_path / "r18.pth")
    assert "conv1.weight" in skipped and "skipped" in caplog.text
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="no torchvision resnet18"):
        load_torchvision_weights(narrow, tmp_path / "other.pth")


def test_same_seed_same_batch(renders):
    def batch():
        dm = SVRDataModule(str(renders), image_size=64, batch_size=4, num_workers=0, points=256, val_shapes=0)
        return next(iter(torch.utils.data.DataLoader(dm.train_dataset(), batch_size=4)))

    a, b = batch(), batch()
    assert a["key"] == b["key"] and torch.equal(a["points"], b["points"])
    assert (a["sdf"] < 0).float().mean() == 0.5  # balanced by sign


def test_ranks_and_workers_split_an_epoch_without_overlap(renders, monkeypatch):
    dm = SVRDataModule(str(renders), image_size=64, batch_size=2, num_workers=2, points=64, val_shapes=0)
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))  # as torchrun sets them; webdataset's split_by_node reads them
        monkeypatch.setenv("WORLD_SIZE", "2")
        loader = torch.utils.data.DataLoader(dm.train_dataset(), batch_size=2, num_workers=2, drop_last=True)
        assert len(loader) == 2
        keys = [k for b in loader for k in b["key"]]
        assert len(keys) == 4  # 8 samples / 2 ranks, 2 per worker
        seen += keys
    assert sorted(seen) == sorted(k for _, k in open_shard_set(renders, "train").items)


def test_shard_sets_mix_by_weight(renders, tmp_path):
    other = _copy(renders, tmp_path)
    for weights, expect in (([1, 0], {0}), ([0, 1], {1}), ([1, 1], {0, 1})):
        dm = SVRDataModule([str(renders), str(other)], weights=weights, image_size=64, batch_size=2, num_workers=0,
                           points=64, val_shapes=0, epoch_samples=16)
        sets = {int(e["set"]) for e in dm.train_dataset()}
        assert sets == expect, weights
    dm = SVRDataModule([f"{renders}:3", f"{other}:1"], image_size=64, points=64, val_shapes=0, num_workers=0)
    assert dm.weights == [3.0, 1.0] and dm.epoch_samples == 16


@pytest.fixture(scope="session")
def copy_paste(renders, tmp_path_factory) -> Path:
    """A generate run (copy-paste mode) over the renders: image.png plus the render's normals and depth."""
    from PIL import Image

    tmp = tmp_path_factory.mktemp("aug")
    rng = np.random.default_rng(0)
    (tmp / "bg").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(tmp / "bg" / f"{i}.png")
    out = tmp / "cp"
    assert cdc_main(["generate", "--mode", "copy-paste", "--backgrounds", str(tmp / "bg"), "--in", str(renders),
                     "--out", str(out), "--split", "all", "--seed", "0", "--no-progress"]) == 0
    return out


def test_augmented_samples_get_the_laplacian_term_like_clean_ones(copy_paste, renders):
    dm = SVRDataModule([str(copy_paste), str(renders)], weights=[1, 1], image_size=64, batch_size=4, num_workers=0,
                       points=64, val_shapes=0, epoch_samples=32)
    examples = list(dm.train_dataset())
    aug = [e for e in examples if e["set"] == 0]
    clean = [e for e in examples if e["set"] == 1]
    assert aug and clean
    assert all(e["has_detail"] == 1 for e in aug) and all(e["has_detail"] == 1 for e in clean)
    # the augmented sample carries its render's normal map (same key, same targets)
    by_key = {e["key"]: e for e in clean}
    shared = [e for e in aug if e["key"] in by_key]
    assert shared
    assert torch.equal(shared[0]["normal"], by_key[shared[0]["key"]]["normal"])
    assert torch.equal(shared[0]["depth"], by_key[shared[0]["key"]]["depth"])
    # the composite, not the white-backed render: background pixels are not white
    img = aug[0]["image"] * torch.tensor([0.229, 0.224, 0.225])[:, None, None] + torch.tensor([0.485, 0.456, 0.406])[
        :, None, None]
    assert (img[:, aug[0]["mask"][0] == 0] < 0.99).any()
    batch = torch.utils.data.default_collate(aug[:2])
    model = SVRModule(**SMALL_MODEL)
    losses = svr_losses(model.net(batch["image"], batch["points"], batch["K"], batch["RT"]), batch)
    assert losses["laplacian"] > 0 and losses["loss"] > 0


# -- training ---------------------------------------------------------------------------
def test_a_few_steps_lower_the_loss(renders):
    L.seed_everything(0)
    dm = SVRDataModule(str(renders), image_size=64, batch_size=4, num_workers=0, points=512, val_shapes=0,
                       epoch_samples=8)
    model = SVRModule(lr=1e-3, **SMALL_MODEL)
    fixed = next(iter(torch.utils.data.DataLoader(dm.train_dataset(), batch_size=8)))

    def loss() -> float:
        with torch.no_grad():
            out = model.net(fixed["image"], fixed["points"], fixed["K"], fixed["RT"])
            return float(svr_losses(out, fixed)["loss"])

    before = loss()
    trainer = L.Trainer(max_steps=100, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    after = loss()
    assert trainer.global_step == 100
    assert after < 0.8 * before, (before, after)


def test_same_seed_same_weights(renders):
    def train() -> dict:
        L.seed_everything(0)
        dm = SVRDataModule(str(renders), image_size=64, batch_size=4, num_workers=0, points=128, val_shapes=0)
        model = SVRModule(lr=1e-3, **SMALL_MODEL)
        L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False).fit(model, datamodule=dm)
        return model.state_dict()

    a, b = train(), train()
    assert all(torch.equal(a[k], b[k]) for k in a)
    L.seed_everything(0)
    init = SVRModule(lr=1e-3, **SMALL_MODEL).state_dict()
    assert not torch.equal(a["net.coarse.out.weight"], init["net.coarse.out.weight"])  # it did train


def test_checkpoint_save_and_resume(renders, tmp_path):
    common = ["--name", "r", "--trainer.max_epochs", "-1", "--data.batch_size", "4", "--model.val_resolution", "16",
              "--trainer.check_val_every_n_epoch", "1", "--trainer.log_every_n_steps", "1"]
    assert train_main(_args(renders, tmp_path, *common, "--trainer.max_steps", "4")) == 0
    run = tmp_path / "r"
    first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert first["global_step"] == 4
    assert (run / "tensorboard" / "config.yaml").exists() and (run / "csv" / "version_0" / "metrics.csv").exists()
    assert train_main(_args(renders, tmp_path, *common, "--trainer.max_steps", "8", "--ckpt_path", "last")) == 0
    second = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert second["global_step"] == 8 and second["epoch"] > first["epoch"]
    rows = [list(csv.DictReader(open(run / "csv" / f"version_{v}" / "metrics.csv"))) for v in (0, 1)]
    steps = [[int(r["step"]) for r in rs if r.get("train/loss")] for rs in rows]
    # the second run went on, not over (Lightning numbers the resumed rows from 5)
    assert steps[0] == [0, 1, 2, 3] and len(steps[1]) == 4 and min(steps[1]) > 3
    chamfers = [float(r["val/chamfer_l1"]) for rs in rows for r in rs if r.get("val/chamfer_l1")]
    assert chamfers and all(0 < c <= EMPTY_SCORES["chamfer_l1"] for c in chamfers)  # sqrt(3) for an empty mesh
    # once per validation: the first input beside the depth of its reconstruction, in TensorBoard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert events.Tags()["images"] == ["val/input_and_reconstruction_depth"]
    images = events.Images("val/input_and_reconstruction_depth")
    assert len(images) == len(chamfers) and (images[0].width, images[0].height) == (128, 64)
    model = load_model(run / "checkpoints" / "last.ckpt")
    assert not model.training
    s = _first_sample(renders)
    mesh = reconstruct(model, input_image(s), s["camera.json"], resolution=16)
    assert isinstance(mesh, trimesh.Trimesh)


class _KeyRecorder(SVRModule):
    """Writes the sample keys its rank trained on."""

    def __init__(self, out: str, **kw):
        super().__init__(**kw)
        self.out, self.keys = out, []

    def training_step(self, batch, batch_idx):
        self.keys += list(batch["key"])
        return super().training_step(batch, batch_idx)

    def on_train_epoch_end(self):
        Path(self.out, f"rank{self.global_rank}-epoch{self.current_epoch}.json").write_text(json.dumps(self.keys))
        self.keys = []


def test_ddp_two_processes_see_each_sample_once_per_epoch(renders, tmp_path):
    dm = SVRDataModule(str(renders), image_size=64, batch_size=2, num_workers=0, points=64, val_shapes=0)
    model = _KeyRecorder(str(tmp_path), **SMALL_MODEL)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    train_keys = sorted(k for _, k in open_shard_set(renders, "train").items)
    assert len(train_keys) == 8
    for epoch in (0, 1):
        seen = [json.loads((tmp_path / f"rank{r}-epoch{epoch}.json").read_text()) for r in (0, 1)]
        assert len(seen[0]) == len(seen[1]) == 4
        assert sorted(seen[0] + seen[1]) == train_keys


def test_one_minute_on_one_shape_reconstructs_a_closed_mesh_near_it(one_shape, tmp_path):
    args = _args(one_shape, tmp_path, "--name", "one", "--trainer.max_steps", "250", "--trainer.max_epochs", "-1",
                 "--trainer.check_val_every_n_epoch", "1000", "--data.batch_size", "8", "--data.epoch_samples", "8")
    assert train_main(args) == 0
    model = load_model(tmp_path / "one" / "checkpoints" / "last.ckpt")
    s = _first_sample(one_shape)
    mesh = reconstruct(model, input_image(s), s["camera.json"], resolution=48)
    meta = s["meta.json"]
    with h5py.File(one_shape.parent / "shapes" / meta["synset"] / f"{meta['model_id']}.h5") as f:
        surface = f["surface_points"][:]
    assert mesh.is_watertight and mesh.volume > 0
    assert np.abs(mesh.vertices).max() <= 0.55
    blob = trimesh.creation.icosphere(3, radius=0.3)  # a shapeless guess, for scale
    cd, cd_blob = chamfer_l1(mesh, surface), chamfer_l1(blob, surface)
    print(f"one shape: Chamfer-L1 {cd:.4f}, sphere guess {cd_blob:.4f}")
    assert cd < 0.05 and cd < 0.5 * cd_blob, (cd, cd_blob)


def test_depth_image_keeps_the_nearest_point_per_pixel():
    from train_svr.geometry import depth_image

    K = torch.tensor([[10.0, 0, 3.0], [0, 10.0, 3.0], [0, 0, 1]])
    RT = torch.cat([torch.eye(3), torch.tensor([[0.0], [0.0], [2.0]])], 1)  # the origin 2 units ahead
    points = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.5], [0.0, 0.0, -5.0], [0.4, 0.0, 0.0]])
    depth = depth_image(points, K, RT, 8)
    # (0, 0, z) projects to the principal point (3, 3); the nearer wins, behind the camera is dropped
    assert depth[3, 3] == 2.0 and depth[3, 5] == 2.0  # (0.4, 0, 0): u = 10 * 0.4 / 2 + 3 = 5
    assert torch.isinf(depth).sum() == 62


def test_empty_sdf_gives_an_empty_mesh():
    from train_svr.inference import mesh_from_sdf

    assert len(mesh_from_sdf(np.ones((8, 8, 8))).faces) == 0
    g = np.linspace(-0.55, 0.55, 24)
    x, y, z = np.meshgrid(g, g, g, indexing="ij")
    sphere = mesh_from_sdf(np.sqrt(x**2 + y**2 + z**2) - 0.3)
    assert sphere.is_watertight and abs(sphere.volume - 4 / 3 * np.pi * 0.3**3) < 0.01


# -- bad input ----------------------------------------------------------------------------
def _run_bad(capsys, argv) -> str:
    assert cdc_main(["train", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_missing_shard_directory(capsys, tmp_path):
    assert "no such directory" in _run_bad(capsys, _args(tmp_path / "nope", tmp_path))


def test_missing_shard_file(capsys, renders, tmp_path):
    root = _copy(renders, tmp_path)
    shard_paths(root)[0].unlink()
    assert "renders-000000.tar: missing" in _run_bad(capsys, _args(root, tmp_path))


def test_missing_shape_file(capsys, renders, tmp_path):
    root = _copy(renders, tmp_path)
    train = json.loads((root / "splits.json").read_text())["train"][0]
    synset, model_id = train.split("_", 1)
    (tmp_path / "shapes" / synset / f"{model_id}.h5").unlink()
    assert "shape file missing" in _run_bad(capsys, _args(root, tmp_path))


def test_split_without_samples(capsys, renders, tmp_path):
    assert "'val' split has no samples" in _run_bad(capsys, _args(renders, tmp_path, "--data.train_split", "val"))


def test_unknown_config_key(capsys, renders, tmp_path):
    assert "nonexistent" in _run_bad(capsys, _args(renders, tmp_path, "--model.nonexistent", "3"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  batchsize: 4\n")
    assert "batchsize" in _run_bad(capsys, _args(renders, tmp_path, "--config", str(bad)))


def test_weights_must_match_directories(capsys, renders, tmp_path):
    assert "weights" in _run_bad(capsys, _args(renders, tmp_path, "--data.weights", "[1, 2]"))
