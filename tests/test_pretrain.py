import json

import numpy as np
import pytest
from PIL import Image

from cdc_aug.cli import main


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(3):
        yy, xx = np.mgrid[:60, :80]
        img = np.stack([(xx * (i + 1)) % 255, (yy * 3) % 255, rng.integers(0, 255, (60, 80))], -1)
        Image.fromarray(img.astype(np.uint8)).save(d / f"p{i}.png")
    return d


def _pretrain(photos, out, *extra):
    return main(["pretrain", "--images", str(photos), "--out", str(out), "--size", "16", "--channels", "8,16",
                 "--batch-size", "2", "--sample-every", "2", "--checkpoint-every", "2", "--threads", "1",
                 "--accelerator", "cpu", *extra])


def test_pretrain_writes_model_and_resumes(photos, tmp_path):
    out = tmp_path / "run"
    assert _pretrain(photos, out, "--max-steps", "2") == 0
    model = out / "model"
    assert (model / "model_index.json").exists()
    assert list((model / "unet").glob("*.safetensors"))
    assert json.loads((model / "training_state.json").read_text())["global_step"] == 2
    assert list((out / "samples").glob("step-*.png"))
    assert (out / "checkpoints" / "last.ckpt").exists()
    # resume continues from step 2 instead of starting over
    assert _pretrain(photos, out, "--max-steps", "4", "--resume") == 0
    assert json.loads((model / "training_state.json").read_text())["global_step"] == 4

    from diffusers import DDPMPipeline

    pipe = DDPMPipeline.from_pretrained(model)
    assert pipe.unet.config.block_out_channels == [8, 16] or tuple(pipe.unet.config.block_out_channels) == (8, 16)
    assert pipe.scheduler.config.beta_schedule == "squaredcos_cap_v2"


def test_pretrain_config_file_reuses_a_runs_config(photos, tmp_path):
    first = tmp_path / "a"
    assert _pretrain(photos, first, "--max-steps", "1") == 0
    # a run's own config.yaml is a valid --config; command-line flags win over it
    second = tmp_path / "b"
    assert main(["pretrain", "--config", str(first / "config.yaml"), "--out", str(second), "--max-steps", "1"]) == 0
    import yaml

    a = yaml.safe_load((first / "config.yaml").read_text())["config"]
    b = yaml.safe_load((second / "config.yaml").read_text())["config"]
    assert a["channels"] == b["channels"] == [8, 16] and b["out"] == str(second)
    assert {k: v for k, v in a.items() if k != "out"} == {k: v for k, v in b.items() if k != "out"}


def test_pretrain_bad_input(photos, tmp_path, capsys):
    assert _pretrain(tmp_path / "nope", tmp_path / "o", "--max-steps", "1") == 2
    assert "--images" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert _pretrain(tmp_path / "empty", tmp_path / "o", "--max-steps", "1") == 2
    assert "holds no images" in capsys.readouterr().err
    assert _pretrain(photos, tmp_path / "o", "--max-steps", "1", "--resume") == 2
    assert "last.ckpt" in capsys.readouterr().err
    assert main(["pretrain", "--images", str(photos), "--out", str(tmp_path / "o"), "--size", "18"]) == 2
    assert "--size" in capsys.readouterr().err
    assert main(["pretrain", "--out", str(tmp_path / "o")]) == 2
    assert "--images is required" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("sizes: 3\n")
    assert main(["pretrain", "--config", str(tmp_path / "bad.yaml"), "--images", str(photos), "--out", "x"]) == 2
    assert "unknown setting 'sizes'" in capsys.readouterr().err


def test_crops_are_deterministic(photos):
    from cdc_aug.pretrain.data import PhotoCrops, list_images, load_photos

    ph = load_photos(list_images(photos), 64)
    a, b = PhotoCrops(ph, 16, 8, seed=0), PhotoCrops(ph, 16, 8, seed=0)
    assert all(bool((a[i] == b[i]).all()) for i in range(8))
    assert a[0].shape == (3, 16, 16) and float(a[0].min()) >= -1 and float(a[0].max()) <= 1
    b.set_epoch(1)
    assert not bool((a[0] == b[0]).all())



def test_figures_read_renders_names_the_problem(tmp_path):
    from cdc_aug.errors import UserError
    from cdc_aug.pretrain.figures import read_renders

    with pytest.raises(UserError, match="--renders .*no shards"):
        read_renders(tmp_path, ["k"])
