"""eval.evaluate and `cdc-aug eval` on a tiny procedural render set."""

import csv
import json
import math
import shutil

import numpy as np
import pytest
import trimesh
from tiny_models import save_checkpoint

from cdc_aug.cli import main as cli_main
from cdc_aug.errors import UserError
from cdc_aug.layout import read_splits, split_of_key
from cdc_aug.samples import decode_sample
from cdc_aug.shards import iter_tar_samples, shard_paths
from eval.evaluate import PER_VIEW_COLUMNS, evaluate, select
from eval.identity import checkpoint_identity, train_domain_from_name
from eval.silhouette import silhouette_iou


@pytest.fixture(scope="session")
def renders(tmp_path_factory):
    from render.api import render_dataset

    out = tmp_path_factory.mktemp("eval") / "renders"
    render_dataset(out, source="procedural", categories=("chair", "table"), max_shapes=3, views=2, size=64,
                   workers=1, seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def true_meshes():
    """The normalised meshes the render stage drew, by shape key."""
    from render.sources import list_shapes, load

    return {r.key: load(r, None).merged() for r in list_shapes("procedural", ["chair", "table"], 3, 0)}


def samples(root):
    for path in shard_paths(root):
        for raw in iter_tar_samples(path):
            yield decode_sample(raw, ["mask.png", "camera.json", "meta.json"])


def oracle(root, meshes):
    """A reconstructor that knows each view's shape from its camera: returns the true mesh."""
    by_cam = {json.dumps(s["camera.json"]["RT"]): meshes[split_of_key(s["__key__"])] for s in samples(root)}

    def fn(image, camera):
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
        return by_cam[json.dumps(camera["RT"])]

    return fn


def test_mesh_against_its_own_render_has_2d_iou_one(renders, true_meshes):
    n = 0
    for s in samples(renders):
        mesh = true_meshes[split_of_key(s["__key__"])]
        assert silhouette_iou(mesh, s["camera.json"], s["mask.png"]) == 1.0
        # a shifted mesh no longer matches
        moved = mesh.copy()
        moved.apply_translation((0.2, 0, 0))
        assert silhouette_iou(moved, s["camera.json"], s["mask.png"]) < 0.9
        assert silhouette_iou(trimesh.Trimesh(), s["camera.json"], s["mask.png"]) == 0.0
        n += 1
    assert n == 12


def test_evaluate_oracle_scores_perfectly(renders, true_meshes, tmp_path):
    out = tmp_path / "ev"
    summary = evaluate(renders, oracle(renders, true_meshes), out, n_points=20_000, save_meshes=3, progress=False,
                       identity={"model": "oracle"})
    test_shapes = read_splits(renders)["test"]
    assert len(test_shapes) == 2  # one chair, one table (3 shapes per category: 1/1/1)
    rows = list(csv.DictReader(open(out / "per_view.csv")))
    assert [list(r) for r in rows][0] == PER_VIEW_COLUMNS
    assert len(rows) == 4 and {split_of_key(r["key"]) for r in rows} == set(test_shapes)
    for r in rows:
        assert float(r["iou_3d"]) == 1.0
        assert float(r["iou_2d"]) == 1.0
        # 20k points on the mesh against the file's 100k: only the sampling gap remains
        assert float(r["chamfer_l1"]) < 0.006
        assert float(r["fscore@0.02"]) > 0.97
        assert float(r["normal_consistency"]) > 0.9
    o = summary["overall"]
    assert o["n_views"] == 4 and o["n_shapes"] == 2 and o["n_empty"] == 0
    assert o["chamfer_l1"] == pytest.approx(np.mean([float(r["chamfer_l1"]) for r in rows]))
    assert set(summary["per_category"]) == {"chair", "table"}
    assert all(c["n_views"] == 2 for c in summary["per_category"].values())
    assert summary["stage"] == "render" and summary["domain"] == "clean" and summary["model"] == "oracle"
    assert json.loads((out / "summary.json").read_text()) == summary
    assert (out / "config.yaml").exists()
    # one saved sample per test shape (two shapes; asked for three)
    saved = sorted(p.name for p in (out / "samples").iterdir())
    assert len([p for p in saved if p.endswith("_input.png")]) == 2
    assert len([p for p in saved if p.endswith("_recon.png")]) == 2
    assert len([p for p in saved if p.endswith(".ply")]) == 2


def test_evaluate_empty_reconstructor_and_view_subset(renders, tmp_path):
    summary = evaluate(renders, lambda image, camera: trimesh.Trimesh(), tmp_path / "e", views=[1], n_points=100,
                       save_meshes=1, progress=False)
    o = summary["overall"]
    assert o["n_views"] == 2 and o["n_empty"] == 2
    assert o["chamfer_l1"] == pytest.approx(math.sqrt(3))
    assert o["fscore@0.01"] == 0.0 and o["iou_3d"] == 0.0 and o["iou_2d"] == 0.0
    assert o["normal_consistency"] == -1.0
    rows = list(csv.DictReader(open(tmp_path / "e" / "per_view.csv")))
    assert {r["view"] for r in rows} == {"1"}
    assert summary["views"] == [1]


def test_bad_inputs_fail_before_work(renders, tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        select(tmp_path / "nope")
    with pytest.raises(UserError, match="no split 'tset'"):
        select(renders, "tset")
    with pytest.raises(UserError, match="no view 7"):
        select(renders, "test", [0, 7])
    # a copy of the render dir beside it (so ../shapes still resolves) with an empty test split
    copy = renders.parent / "renders-empty-test"
    if not copy.exists():
        shutil.copytree(renders, copy)
        splits = json.loads((copy / "splits.json").read_text())
        splits["test"] = []
        (copy / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(UserError, match="'test' of .* is empty"):
        select(copy)


def test_eval_command_errors_are_one_line(renders, tmp_path, capsys):
    ckpt = tmp_path / "missing.ckpt"
    assert cli_main(["eval", "--ckpt", str(ckpt), "--data", str(renders), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
    ckpt.write_bytes(b"x")
    assert cli_main(["eval", "--ckpt", str(ckpt), "--data", str(renders), "--views", "0,99",
                     "--out", str(tmp_path / "o")]) == 2
    assert "no view 99" in capsys.readouterr().err
    assert cli_main(["eval", "--ckpt", str(ckpt), "--data", str(renders), "--views", "a",
                     "--out", str(tmp_path / "o")]) == 2
    assert "comma-separated integers" in capsys.readouterr().err


def test_model_identity_from_run_config(renders, tmp_path):
    run = tmp_path / "runs" / "svr-t050"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(b"")
    assert checkpoint_identity(ckpt)["train_t_in"] == 0.5  # no config.yaml: from the name
    assert checkpoint_identity(ckpt)["train_identity_from"] == "run name"
    (run / "config.yaml").write_text(f"data:\n  shards:\n  - {renders}\n")
    ident = checkpoint_identity(ckpt)
    assert ident["model"] == "svr-t050" and ident["train_domain"] == "clean"
    assert ident["train_identity_from"] == "config"
    assert train_domain_from_name("svr-copy-paste")["domain"] == "copy-paste"
    assert train_domain_from_name("svr-t025")["t_in"] == 0.25
    assert train_domain_from_name("svr-clean")["domain"] == "clean"


def test_eval_command_end_to_end_with_a_tiny_checkpoint(renders, tmp_path, capsys):
    """The command loads a Lightning checkpoint of an (untrained) tiny model and writes every
    output; an untrained SDF has no zero crossing, so every view scores as empty."""
    import torch
    import yaml

    from train_svr.module import SVRModule

    torch.manual_seed(0)
    m = SVRModule(image_size=64, encoder_width=16, latent_dim=64, decoder_width=32, detail_channels=16)
    ckpt = save_checkpoint(m, tmp_path / "runs" / "svr-t025" / "checkpoints" / "last.ckpt")
    out = tmp_path / "ev"
    assert cli_main(["eval", "--ckpt", str(ckpt), "--data", str(renders), "--views", "0", "--resolution", "16",
                     "--points", "1000", "--no-progress", "--out", str(out)]) == 0
    assert "svr-t025 on clean (test, 2 views of 2 shapes)" in capsys.readouterr().out
    s = json.loads((out / "summary.json").read_text())
    assert s["model"] == "svr-t025" and s["train_t_in"] == 0.25 and s["resolution"] == 16
    assert s["overall"]["n_views"] == 2 and s["views"] == [0]
    rows = list(csv.DictReader(open(out / "per_view.csv")))
    assert all(float(r["chamfer_l1"]) == pytest.approx(math.sqrt(3)) for r in rows if r["empty"] == "1")
    cfg = yaml.safe_load((out / "config.yaml").read_text())["config"]
    assert cfg["resolution"] == 16 and cfg["ckpt"] == str(ckpt.resolve()) and cfg["device"] == "cpu"
