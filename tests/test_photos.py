"""A folder of photos with masks as a test domain (eval/photos.py): 2D IoU only."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from pix3d_fixture import make_pix3d
from tiny_models import save_checkpoint

from cdc_aug.cli import main as cli_main
from cdc_aug.errors import UserError
from cdc_aug.samples import decode_sample
from cdc_aug.shards import iter_tar_samples, read_failures, read_index, shard_paths
from eval import photos, pix3d, real
from eval.evaluate import evaluate


@pytest.fixture(scope="session")
def folder(tmp_path_factory):
    """Photos of the Pix3D fixture as a flat folder (NAME.png + NAME_mask.png), with a
    categories.csv, a photo without mask, one whose mask has another size and one with an
    empty mask; returns (folder, {photo name: (pix3d entry, model mesh)})."""
    root, models = make_pix3d(tmp_path_factory.mktemp("src") / "Pix3D")
    out = tmp_path_factory.mktemp("photos") / "photos"
    out.mkdir()
    truth = {}
    rows = ["image,category"]
    for e in json.loads((root / "pix3d.json").read_text())[:5]:
        name = e["img"].replace("img/", "").replace("/", "_")
        shutil.copy(root / e["img"], out / name)
        shutil.copy(root / e["mask"], out / name.replace(".png", "_mask.png"))
        truth[name] = (e, models[e["model"]])
        rows.append(f"{name},{e['category']}")
    (out / "categories.csv").write_text("\n".join(rows) + "\n")
    first = next(iter(truth))
    shutil.copy(out / first, out / "lonely.jpg")  # no mask
    shutil.copy(out / first, out / "small.png")
    Image.new("L", (20, 10), 255).save(out / "small_mask.png")
    shutil.copy(out / first, out / "blank.png")
    Image.new("L", Image.open(out / first).size, 0).save(out / "blank_mask.png")
    return out, truth


def test_folder_converts_with_recorded_skips(folder, tmp_path):
    root, truth = folder
    stage = photos.prepare(root, tmp_path / "cache", size=96)
    index = read_index(stage)
    assert index["real"] is True and index["ground_truth"] is False and index["cameras"] is False
    assert index["num_samples"] == 5
    assert {(f["item"], f["reason"]) for f in read_failures(stage)} == {
        ("lonely.jpg", "missing mask"), ("small.png", "mask size differs"), ("blank.png", "empty mask")}
    cats = {}
    for path in shard_paths(stage):
        for raw in iter_tar_samples(path):
            s = decode_sample(raw)
            assert "camera.json" not in s and s["image.png"].shape == (96, 96, 3)
            cats[s["meta.json"]["img"]] = s["meta.json"]["category"]
    assert cats == {name: e["category"] for name, (e, _) in truth.items()}
    assert photos.prepare(root, tmp_path / "cache", size=96) == stage  # reused


def test_2d_iou_with_the_true_shape_and_camera(folder, tmp_path):
    """With each photo's true model and camera (Pix3D's, moved with the photo crop) the 2D
    IoU is near 1; a shifted model scores lower; the 3D metrics are absent."""
    root, truth = folder
    stage = photos.prepare(root, tmp_path / "cache", size=96)
    from render.meshes import normalize

    cams, meshes = {}, {}
    for path in shard_paths(stage):
        for raw in iter_tar_samples(path):
            key, name = raw["__key__"], decode_sample(raw)["meta.json"]["img"]
            e, mesh = truth[name]
            shape = normalize([mesh.copy()], rotation=pix3d.MODEL_ROTATION)
            K, RT = pix3d.camera(e, shape.center, shape.scale)
            mask = real.read_mask(root / name.replace(".png", "_mask.png"))
            _, _, K_crop = real.square_crop(np.zeros((*mask.shape, 3), np.uint8), mask, real.mask_bbox(mask), 96, K)
            cams[key] = {"K": K_crop.tolist(), "RT": RT.tolist(), "image_size": [96, 96]}
            meshes[json.dumps(RT.tolist())] = shape.merged()

    def oracle(image, camera):
        return meshes[json.dumps(camera["RT"])]

    def shifted(image, camera):
        m = oracle(image, camera).copy()
        m.apply_translation((0.15, 0, 0))
        return m

    s = evaluate(stage, oracle, tmp_path / "ev", save_meshes=1, progress=False,
                 camera_fn=lambda key, image, stored: cams[key])
    o = s["overall"]
    assert o["n_views"] == 5 and o["iou_2d"] >= 0.95
    assert o["chamfer_l1"] is None and o["iou_3d"] is None  # no ground truth: NaN, written as null
    assert set(s["per_category"]) == {"chair", "sofa"} and s["domain"] == "images"
    worse = evaluate(stage, shifted, tmp_path / "ev2", save_meshes=0, progress=False,
                     camera_fn=lambda key, image, stored: cams[key])
    assert worse["overall"]["iou_2d"] < o["iou_2d"] - 0.1


def test_eval_command_on_photos_uses_the_estimator(folder, tmp_path, capsys):

    from train_svr.camera import CameraModule
    from train_svr.module import SVRModule

    root, _ = folder
    torch.manual_seed(0)
    svr = SVRModule(image_size=32, encoder_width=8, latent_dim=16, decoder_width=8, detail_channels=8)
    cam = CameraModule(image_size=32, encoder_width=8, hidden=16)
    cam.mean_K.copy_(torch.tensor([[35.0, 0, 15.5], [0, 35.0, 15.5], [0, 0, 1]]))  # as after a training step
    paths = {}
    for name, m in (("svr-clean", svr), ("camera", cam)):
        paths[name] = save_checkpoint(m, tmp_path / "runs" / name / "checkpoints" / "last.ckpt")
    base = ["eval", "--ckpt", str(paths["svr-clean"]), "--data", f"images:{root}", "--crop-size", "48",
            "--cache-dir", str(tmp_path / "cache"), "--resolution", "12", "--no-progress", "--out", str(tmp_path / "o")]
    assert cli_main(base) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no cameras" in err[0]
    assert cli_main([*base, "--camera-ckpt", str(paths["camera"])]) == 0
    printed = capsys.readouterr().out
    assert "svr-clean on images (test, 5 views of 5 shapes, 3 skipped, predicted camera): iou_2d" in printed
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["real"] is True and s["camera"] == "predicted" and s["n_skipped"] == 3
    assert s["skipped_by_reason"] == {"missing mask": 1, "mask size differs": 1, "empty mask": 1}
    assert s["overall"]["iou_2d"] is not None and s["overall"]["chamfer_l1"] is None
    assert "camera_rot_err_deg" not in s  # no true cameras to compare with


def test_bad_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no photos"):
        photos.prepare(tmp_path / "empty", tmp_path / "c")
    with pytest.raises(UserError, match="not a directory"):
        photos.prepare(tmp_path / "nowhere", tmp_path / "c")
    d = tmp_path / "one"
    d.mkdir()
    Image.new("RGB", (40, 30)).save(d / "a.png")
    Image.new("L", (40, 30), 0).save(d / "a_mask.png")
    with pytest.raises(UserError, match="nothing to evaluate, 1 item.*empty mask"):
        photos.prepare(d, tmp_path / "c")
    (d / "categories.csv").write_text("image,category\nb.png,chair\n")
    with pytest.raises(UserError, match="names 'b.png', which is not a photo"):
        photos.prepare(d, tmp_path / "c")


def test_experiment_plans_real_test_domains(tmp_path):
    import yaml

    from cdc_aug.experiment import load_experiment, plan

    def planned(ev: dict):
        cfg = {"name": "x", "data_root": str(tmp_path / "d"), "runs_root": str(tmp_path / "r"),
               "render": {"size": 64}, "generate": {"t_in": [0.5], "copy_paste": False}, "eval": ev}
        path = tmp_path / "x.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return plan(load_experiment(path))

    stages = planned({"views": [0], "categories": "chair", "camera_args": ["--trainer.max_epochs", "2"],
                      "extra_domains": {"pix3d": "pix3d:/data/Pix3D", "photos": "images:/data/sofas"}})
    names = [s.name for s in stages]
    assert names.index("train camera") < names.index("eval svr-clean")
    cam = next(s for s in stages if s.name == "train camera")
    assert cam.argv[-2:] == ["--trainer.max_epochs", "2"]
    ev = next(s for s in stages if s.name == "eval svr-clean")
    data = ev.argv[ev.argv.index("--data") + 1:ev.argv.index("--out")]
    assert data[-2:] == ["pix3d:/data/Pix3D", "images:/data/sofas"]
    assert ev.argv[ev.argv.index("--camera-ckpt") + 1] == str(tmp_path / "r" / "camera" / "checkpoints" / "last.ckpt")
    assert ev.argv[ev.argv.index("--categories") + 1] == "chair" and ev.argv[ev.argv.index("--crop-size") + 1] == "64"
    assert str(ev.output).endswith("svr-clean__photos")
    # Pix3D alone has cameras: no estimator; a given estimator is used as it is
    assert "train camera" not in [s.name for s in planned({"extra_domains": {"pix3d": "pix3d:/data/Pix3D"}})]
    stages = planned({"camera": "predicted", "camera_ckpt": "cam.ckpt", "extra_domains": {"p": "pix3d:/x"}})
    assert "train camera" not in [s.name for s in stages]
    with pytest.raises(UserError, match="clean used twice"):
        planned({"extra_domains": {"clean": "pix3d:/x"}})
    with pytest.raises(UserError, match="expected 'pix3d:ROOT' or 'images:DIR'"):
        planned({"extra_domains": {"p": "/data/Pix3D"}})
