"""`cdc-aug composite` end to end with a tiny random pixel model (offline, CPU, 2 steps)."""

import re

import numpy as np
import pytest
import torch
import yaml
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from PIL import Image

from cdc_aug.cli import main
from cdc_aug.commands.composite import parse_sweeps
from cdc_aug.errors import UserError

SIZE = 32


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=SIZE, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    path = tmp_path_factory.mktemp("model")
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(path)
    return str(path)


@pytest.fixture()
def inputs(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(rgb).save(tmp_path / "ref.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.fromarray(np.dstack([rgb, mask])).save(tmp_path / "obj.png")
    Image.fromarray(np.full((48, 48, 3), 30, np.uint8)).save(tmp_path / "bg.png")
    return tmp_path, rgb


def test_single_composite_keeps_the_object_with_t_in_1(model_dir, inputs, capsys):
    d, rgb = inputs
    rc = main(["composite", "--image", str(d / "ref.png"), "--mask", str(d / "mask.png"), "--t-in", "1",
               "--steps", "2", "--model", model_dir, "--out", str(d / "out.png")])
    assert rc == 0 and "wrote" in capsys.readouterr().out
    out = np.asarray(Image.open(d / "out.png"))
    assert out.shape == (SIZE, SIZE, 3)
    assert np.abs(out[12:20, 12:20].astype(int) - rgb[12:20, 12:20]).max() <= 1
    cfg = yaml.safe_load((d / "out.yaml").read_text())["config"]
    assert cfg["t_in"] == 1.0 and len(cfg["model_identity"]["sha256"]) == 64


def test_object_immersion_on_a_background_from_alpha(model_dir, inputs):
    d, rgb = inputs
    rc = main(["composite", "--image", str(d / "obj.png"), "--background", str(d / "bg.png"), "--t-in", "1",
               "--t-out", "1", "--steps", "2", "--model", model_dir, "--out", str(d / "imm.png")])
    assert rc == 0
    out = np.asarray(Image.open(d / "imm.png")).astype(int)
    assert np.abs(out[12:20, 12:20] - rgb[12:20, 12:20]).max() <= 1
    assert np.abs(out[:4, :4] - 30).max() <= 1  # t_out = 1 keeps the background too


def test_sweep_writes_a_labelled_grid(model_dir, inputs):
    d, _ = inputs
    rc = main(["composite", "--image", str(d / "ref.png"), "--mask", str(d / "mask.png"), "--steps", "2",
               "--model", model_dir, "--sweep", "t_in=0,0.5,1", "--sweep", "n-in=1,2", "--out", str(d / "g.png")])
    assert rc == 0
    grid = Image.open(d / "g.png")
    # 2 columns of results + the reference column, 3 rows, label margins around them
    assert grid.width > 3 * SIZE and grid.width < 3 * SIZE + 120
    assert grid.height > 3 * SIZE and grid.height < 3 * SIZE + 60
    cfg = yaml.safe_load((d / "g.yaml").read_text())["config"]
    assert cfg["sweep"] == {"t_in": [0.0, 0.5, 1.0], "n_in": [1, 2]}


def test_parse_sweeps():
    assert parse_sweeps(["t_in=0,0.25", "prompt=a cat|a dog"]) == [("t_in", [0.0, 0.25]), ("prompt", ["a cat", "a dog"])]
    for bad, msg in [("t_in", "PARAM=V1"), ("colour=1,2", "cannot be swept"), ("n_in=1,x", "must be ints")]:
        with pytest.raises(UserError, match=msg):
            parse_sweeps([bad])


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--t-in", "2"], r"`t_in` must lie in \[0, 1\]"),
        (["--sweep", "zz=1"], "zz cannot be swept"),
        (["--mask", "MISSING"], "--mask MISSING: cannot read"),
        (["--model", "nobody/none-such"], "not in the Hugging Face cache"),
    ],
)
def test_errors_are_one_line_with_exit_2(model_dir, inputs, capsys, extra, message):
    d, _ = inputs
    args = ["composite", "--image", str(d / "ref.png"), "--mask", str(d / "mask.png"), "--steps", "2",
            "--model", model_dir, "--out", str(d / "e.png")]
    i = args.index(extra[0]) if extra[0] in args else None
    if i is not None:
        args[i + 1] = extra[1]
    else:
        args += extra
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cdc-aug composite: error:") and "\n" not in err, err
    assert re.search(message, err)


def test_an_image_without_alpha_needs_a_mask(model_dir, inputs, capsys):
    d, _ = inputs
    assert main(["composite", "--image", str(d / "ref.png"), "--model", model_dir, "--out", str(d / "x.png")]) == 2
    assert "no alpha channel: pass --mask" in capsys.readouterr().err


def test_an_rgba_render_alone_is_placed_on_grey(model_dir, inputs):
    d, rgb = inputs
    rc = main(["composite", "--image", str(d / "obj.png"), "--t-in", "1", "--t-out", "1", "--steps", "2",
               "--model", model_dir, "--out", str(d / "grey.png")])
    assert rc == 0
    out = np.asarray(Image.open(d / "grey.png")).astype(int)
    assert np.abs(out[:4, :4] - 127).max() <= 1 and np.abs(out[12:20, 12:20] - rgb[12:20, 12:20]).max() <= 1
