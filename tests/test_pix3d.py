"""Pix3D as a test domain (eval/pix3d.py) on a fixture in Pix3D's exact layout."""

import json
import shutil

import numpy as np
import pytest
import trimesh
from PIL import Image
from pix3d_fixture import make_pix3d
from tiny_models import save_checkpoint

from cdc_aug.cli import main as cli_main
from cdc_aug.errors import UserError
from cdc_aug.layout import shape_file, split_of_key
from cdc_aug.samples import decode_sample
from cdc_aug.shards import iter_tar_samples, read_failures, read_index, shard_paths
from eval import pix3d
from eval.evaluate import evaluate
from eval.silhouette import silhouette_iou
from render.groundtruth import read


@pytest.fixture(scope="session")
def fixture(tmp_path_factory):
    return make_pix3d(tmp_path_factory.mktemp("pix3d") / "Pix3D")


@pytest.fixture(scope="session")
def prepared(fixture, tmp_path_factory):
    root, _ = fixture
    return pix3d.prepare(root, tmp_path_factory.mktemp("cache"), size=96)


def samples(stage_dir):
    for path in shard_paths(stage_dir):
        for raw in iter_tar_samples(path):
            yield decode_sample(raw)


def unit_mesh(raw_mesh: trimesh.Trimesh, gt_file) -> trimesh.Trimesh:
    """A Pix3D-frame model moved into the unit cube by the shape file's own attributes."""
    a = read(gt_file)["attrs"]
    v = (np.asarray(raw_mesh.vertices) @ np.asarray(a["rotation"]).T - a["center"]) * a["scale"]
    return trimesh.Trimesh(v, raw_mesh.faces, process=False)


def test_fixture_has_pix3d_layout_and_schema(fixture):
    root, _ = fixture
    entries = json.loads((root / "pix3d.json").read_text())
    keys = {"img", "category", "img_size", "2d_keypoints", "mask", "img_source", "model", "model_raw",
            "model_source", "3d_keypoints", "voxel", "rot_mat", "trans_mat", "focal_length", "cam_position",
            "inplane_rotation", "truncated", "occluded", "slightly_occluded", "bbox"}
    for e in entries:
        assert set(e) == keys
        assert e["img"].startswith(f"img/{e['category']}/") and e["mask"].startswith(f"mask/{e['category']}/")
        assert (root / e["img"]).is_file() and (root / e["mask"]).is_file() and (root / e["model"]).is_file()
        assert np.asarray(e["rot_mat"]).shape == (3, 3) and len(e["trans_mat"]) == 3


def test_loads_excludes_occluded_and_reprojects_onto_the_mask(fixture, prepared):
    root, models = fixture
    index = read_index(prepared)
    assert index["stage"] == "pix3d" and index["real"] is True and index["ground_truth"] is True
    assert index["num_samples"] == 5 and index["excluded"]["occluded"] == 1
    assert read_failures(prepared) == []
    shapes = prepared.parent / "shapes"
    seen = []
    for s in samples(prepared):
        meta, cam = s["meta.json"], s["camera.json"]
        assert s["image.png"].shape == (96, 96, 3) and s["mask.png"].shape == (96, 96)
        assert cam["image_size"] == [96, 96] and np.asarray(cam["RT"]).shape == (3, 4)
        gt_file = shape_file(shapes, meta["synset"], meta["model_id"])
        mesh = unit_mesh(models[meta["model"]], gt_file)
        assert np.abs(mesh.vertices).max() <= 0.5 + 1e-9  # the unit cube of cdc_aug.layout
        iou = silhouette_iou(mesh, cam, s["mask.png"])
        assert iou >= 0.95, (meta["img"], iou)
        # a model turned the other way round does not fit
        turned = mesh.copy()
        turned.vertices = np.asarray(turned.vertices) * [-1, 1, -1]
        assert silhouette_iou(turned, cam, s["mask.png"]) < iou
        seen.append((s["__key__"], meta["img"]))
    assert [k for k, _ in seen] == ["03001627_IKEA-TEST-A_00", "03001627_IKEA-TEST-A_01", "03001627_IKEA-TEST-B_00",
                                    "04256520_IKEA-TEST-C_00", "04256520_IKEA-TEST-C_01"]
    assert json.loads((prepared / "splits.json").read_text())["test"] == sorted({split_of_key(k) for k, _ in seen})


def test_ground_truth_is_cached_and_conversion_reused(fixture, prepared):
    root, _ = fixture
    gt_files = sorted((prepared.parent / "shapes").rglob("*.h5"))
    assert len(gt_files) == 3
    g = read(gt_files[0])
    assert g["surface_points"].shape == (100_000, 3) and np.abs(g["surface_points"]).max() <= 0.5 + 1e-6
    assert g["attrs"]["source"] == "pix3d"
    stamps = [p.stat().st_mtime_ns for p in gt_files]
    assert pix3d.prepare(root, prepared.parent, size=96) == prepared
    # another crop size: a new conversion, the same ground-truth files
    other = pix3d.prepare(root, prepared.parent, size=64, categories="sofa")
    assert other != prepared and read_index(other)["num_samples"] == 2
    assert [p.stat().st_mtime_ns for p in gt_files] == stamps


def test_evaluate_with_the_true_models_scores_near_perfect(fixture, prepared, tmp_path):
    root, models = fixture
    shapes = prepared.parent / "shapes"
    truth = {}
    for s in samples(prepared):
        m = s["meta.json"]
        truth[json.dumps(s["camera.json"]["RT"])] = unit_mesh(models[m["model"]], shape_file(shapes, m["synset"],
                                                                                              m["model_id"]))
    summary = evaluate(prepared, lambda image, camera: truth[json.dumps(camera["RT"])], tmp_path / "ev",
                       n_points=20_000, save_meshes=2, progress=False, identity={"model": "oracle", "real": True})
    o = summary["overall"]
    assert summary["domain"] == "pix3d" and summary["real"] is True
    assert o["n_views"] == 5 and o["n_shapes"] == 3
    assert o["iou_3d"] > 0.99 and o["chamfer_l1"] < 0.006 and o["iou_2d"] >= 0.95
    assert set(summary["per_category"]) == {"chair", "sofa"}


def test_eval_command_on_pix3d(fixture, prepared, tmp_path, capsys):
    import torch

    from train_svr.module import SVRModule

    root, _ = fixture
    torch.manual_seed(0)
    m = SVRModule(image_size=64, encoder_width=8, latent_dim=16, decoder_width=8, detail_channels=8)
    ckpt = save_checkpoint(m, tmp_path / "runs" / "svr-clean" / "checkpoints" / "last.ckpt")
    out = tmp_path / "ev"
    assert cli_main(["eval", "--ckpt", str(ckpt), "--data", f"pix3d:{root}", "--categories", "chair",
                     "--crop-size", "64", "--cache-dir", str(prepared.parent), "--resolution", "16",
                     "--points", "500", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "svr-clean on pix3d (test, 3 views of 2 shapes, gt camera)" in printed
    s = json.loads((out / "summary.json").read_text())
    assert s["real"] is True and s["camera"] == "gt" and s["stage"] == "pix3d" and s["n_skipped"] == 0
    assert s["source"] == f"pix3d:{root}" and set(s["per_category"]) == {"chair"}


@pytest.fixture
def broken(fixture, tmp_path):
    """A copy of the fixture with an entry whose model is missing, one whose mask is
    missing and one whose mask has another size than its image."""
    root, _ = fixture
    copy = tmp_path / "Pix3D-broken"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns(".cdc-aug"))
    entries = json.loads((copy / "pix3d.json").read_text())
    no_model = dict(entries[0], img="img/chair/0001.png", model="model/chair/IKEA_GONE/model.obj")
    no_mask = dict(entries[2], mask="mask/chair/9999.png")
    small = dict(entries[3], img="img/sofa/0003.png", mask="mask/sofa/0003.png")
    shutil.copy(copy / entries[3]["img"], copy / small["img"])
    Image.open(copy / entries[3]["mask"]).resize((50, 40)).save(copy / small["mask"])
    (copy / "pix3d.json").write_text(json.dumps([*entries, no_model, no_mask, small]))
    return copy


def test_bad_entries_are_recorded_skips_counted_in_the_summary(broken, prepared, tmp_path):
    out = pix3d.prepare(broken, prepared.parent, size=64)  # the models' ground truth is cached there
    fails = {(f["item"], f["reason"]) for f in read_failures(out)}
    assert fails == {("img/chair/0001.png", "missing file"), ("img/chair/0003.png", "missing file"),
                     ("img/sofa/0003.png", "mask size differs")}
    assert read_index(out)["num_samples"] == 5
    summary = evaluate(out, lambda image, camera: trimesh.Trimesh(), tmp_path / "ev", n_points=100,
                       save_meshes=0, progress=False)
    assert summary["overall"]["n_views"] == 5
    from cdc_aug.commands.eval import source_identity

    ident = source_identity(f"pix3d:{broken}", out)
    assert ident["n_skipped"] == 3 and ident["skipped_by_reason"] == {"missing file": 2, "mask size differs": 1}


def test_bad_roots_and_flags_are_one_line_errors(fixture, tmp_path, capsys):
    root, _ = fixture
    ckpt = tmp_path / "x.ckpt"
    ckpt.write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    cases = [
        ([f"pix3d:{tmp_path / 'empty'}"], [], "pix3d.json: missing"),
        ([f"pix3d:{tmp_path / 'nowhere'}"], [], "not a directory"),
        ([f"pix3d:{root}"], ["--categories", "chair,spaceship"], "unknown Pix3D category 'spaceship'"),
        ([f"pix3d:{root}"], ["--categories", "bed"], "has no bed entries"),
        (["pix3d:"], [], "names no directory"),
    ]
    for data, flags, message in cases:
        code = cli_main(["eval", "--ckpt", str(ckpt), "--data", *data, *flags, "--cache-dir", str(tmp_path / "c"),
                         "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], (data, flags, err)
    bad = tmp_path / "badjson"
    bad.mkdir()
    (bad / "pix3d.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        pix3d.prepare(bad, tmp_path / "c")


def test_camera_conversion_matches_pix3d_projection():
    """Pix3D's formula (u = w/2 - f X/Z, v = h/2 - f Y/Z, pixel edges at integers) against
    K, RT of the conversion for random points and poses."""
    from pix3d_fixture import pix3d_project, rotation

    from render.cameras import project

    rng = np.random.default_rng(1)
    for _ in range(5):
        R = rotation(*rng.uniform(-180, 180, 3))
        t = np.array([*rng.uniform(-0.3, 0.3, 2), rng.uniform(2, 4)])
        e = {"img_size": [int(rng.integers(50, 400)), int(rng.integers(50, 400))], "focal_length": rng.uniform(20, 60),
             "rot_mat": R.tolist(), "trans_mat": t.tolist()}
        center, scale = rng.normal(size=3) * 0.1, rng.uniform(0.5, 2)
        raw = rng.normal(size=(50, 3)) * 0.3
        unit = (raw @ pix3d.MODEL_ROTATION.T - center) * scale
        K, RT = pix3d.camera(e, center, scale)
        uv, z = project(unit, K, RT)
        u, v, depth = pix3d_project(raw, R, t, e["focal_length"], *e["img_size"])
        np.testing.assert_allclose(uv, np.stack([u - 0.5, v - 0.5], 1), atol=1e-9)
        np.testing.assert_allclose(z, depth * scale, rtol=1e-9)


def test_mesh_rcnn_split_file_selects_images(fixture, prepared, tmp_path):
    root, _ = fixture
    split = tmp_path / "pix3d_s1_test.json"
    split.write_text(json.dumps({"images": [{"id": 1, "file_name": "img/chair/0002.png", "width": 320, "height": 240},
                                            {"id": 2, "file_name": "img/chair/0004.png", "width": 320,
                                             "height": 240}],
                                 "annotations": [], "categories": []}))
    out = pix3d.prepare(root, prepared.parent, size=64, keep_occluded=True, split_file=split)
    index = read_index(out)
    assert index["num_samples"] == 2 and index["excluded"]["split"] == 4  # 0004 is the occluded one, kept
    assert sorted(s["meta.json"]["img"] for s in samples(out)) == ["img/chair/0002.png", "img/chair/0004.png"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"annotations": []}))
    with pytest.raises(UserError, match="not a Mesh R-CNN split file"):
        pix3d.prepare(root, prepared.parent, split_file=bad)
