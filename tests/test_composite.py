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
        (["--t-in", "2"], r"--t-in/--t_in: 2: must lie in \[0, 1\]"),
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


def test_generate_and_composite_resolve_to_the_same_defaults():
    import inspect
    from dataclasses import asdict

    from cdc_aug import MaskedILVRPipeline
    from cdc_aug.cli import resolve
    from cdc_aug.generate import GenerateConfig
    from cdc_aug.sampling import DEFAULTS

    shared = asdict(DEFAULTS)
    gen = resolve("generate", ["--out", "o"])
    comp = resolve("composite", ["--image", "i.png", "--out", "o.png"])
    api = GenerateConfig(in_dir="r", out_dir="o")
    for settings in (gen, comp, api):
        assert {k: getattr(settings, k) for k in shared} == shared, type(settings).__name__
    # the pipeline's own keyword defaults are the same values
    params = inspect.signature(MaskedILVRPipeline.__call__).parameters
    names = dict(steps="num_inference_steps", guidance="guidance_scale")
    for key in ("t_in", "t_out", "n_in", "n_out", "space", "blur", "steps", "guidance", "resample_start",
                "jump_length", "jump_n_sample"):
        assert params[names.get(key, key)].default == shared[key], key


def test_the_paper_preset_serves_composite_and_flags_win(model_dir, inputs, capsys):
    from pathlib import Path

    d, _ = inputs
    preset = Path(__file__).resolve().parents[1] / "configs" / "generate" / "paper_svr.yaml"
    base = ["composite", "--config", str(preset), "--image", str(d / "ref.png"), "--mask", str(d / "mask.png"),
            "--out", str(d / "p.png")]
    # its prompt is a generate template ({category}): composite asks for text
    assert main(base) == 2
    assert "is a generate template" in capsys.readouterr().err
    rc = main([*base, "--prompt", "a sofa", "--model", model_dir, "--steps", "2", "--model-size", "input"])
    assert rc == 0
    cfg = yaml.safe_load((d / "p.yaml").read_text())["config"]
    assert (cfg["space"], cfg["blur"], cfg["guidance"], cfg["t_in"], cfg["steps"]) == ("xt", "0", 5.0, 0.5, 2)
    assert cfg["model_size"] == "input" and np.asarray(Image.open(d / "p.png")).shape == (SIZE, SIZE, 3)


def test_model_size_samples_at_another_size_and_returns_the_input_size(model_dir, inputs):
    d, _ = inputs
    rc = main(["composite", "--image", str(d / "ref.png"), "--mask", str(d / "mask.png"), "--steps", "2",
               "--model", model_dir, "--model-size", "64", "--out", str(d / "m.png")])
    assert rc == 0 and np.asarray(Image.open(d / "m.png")).shape == (SIZE, SIZE, 3)
