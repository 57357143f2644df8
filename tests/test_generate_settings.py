"""`generate --config` (the paper preset), `--views` and `--model-size`, through the CLI."""

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from fake_renders import make_render_dir

from cdc_aug import cli
from cdc_aug.cli import main
from cdc_aug.commands.generate import make_configs
from cdc_aug.samples import decode_sample
from cdc_aug.shards import iter_tar_samples, shard_paths

PAPER = str(Path(__file__).resolve().parents[1] / "configs" / "generate" / "paper_svr.yaml")


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    return make_render_dir(tmp_path_factory.mktemp("renders"))


def resolve(argv):
    """The GenerateConfig that `cdc-aug generate ARGV` would run."""
    [cfg] = make_configs(cli.resolve("generate", argv))
    return cfg


def test_the_paper_preset_is_the_papers_svr_setting():
    cfg = resolve(["--config", PAPER, "--out", "o"])
    assert cfg.model == "stable-diffusion-v1-5/stable-diffusion-inpainting"
    assert (cfg.model_size, cfg.space, cfg.steps, cfg.guidance) == ("512", "xt", 50, 5.0)
    assert (cfg.n_in, cfg.n_out, cfg.blur, cfg.t_in, cfg.t_out, cfg.resample_start) == (1, 1, "0", 0.5, 0.0, 0.0)
    assert cfg.views == [0, 1, 2, 33, 34, 35] and cfg.negative_prompt == ""
    assert cfg.prompt.format(category="sofa") == "a photograph of a sofa in a living room with windows and a rug"


def test_command_line_flags_win_over_the_file():
    cfg = resolve(["--config", PAPER, "--out", "o", "--t-in", "0.25", "--views", "all", "--model-size", "input"])
    assert (cfg.t_in, cfg.views, cfg.model_size, cfg.space) == (0.25, None, "input", "xt")


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"t_inn": 0.5}, "unknown setting 't_inn'"),
        ({"space": "zz"}, "space: 'zz' is not one of x0, xt"),
        ({"steps": "many"}, "steps: 'many' is not a valid int"),
        ({"overwrite": "yes"}, "overwrite: 'yes' is not true or false"),
        ({"model_size": "huge"}, "model_size: 'huge': write native, input"),
    ],
)
def test_bad_settings_are_one_line_errors(renders, tmp_path, capsys, settings, message):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(settings))
    rc = main(["generate", "--config", str(path), "--in", str(renders), "--out", str(tmp_path / "o"), "--mode",
               "copy-paste", "--backgrounds", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and re.search(re.escape(message), err), err


def test_the_preset_loads_the_real_model_and_says_when_it_is_not_cached(renders, tmp_path, capsys):
    # runs are offline: without the checkpoint in the local HF cache this is one clear line
    rc = main(["generate", "--config", PAPER, "--in", str(renders), "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert "stable-diffusion-v1-5/stable-diffusion-inpainting" in err and "not in the Hugging Face cache" in err


def test_views_and_model_size(renders, tiny_model, tmp_path):
    out = tmp_path / "g"
    rc = main(["generate", "--in", str(renders), "--out", str(out), "--model", str(tiny_model), "--steps", "2",
               "--views", "1", "--model-size", "16", "--split", "all", "--no-progress"])
    assert rc == 0
    samples = [decode_sample(s) for p in shard_paths(out) for s in iter_tar_samples(p)]
    assert len(samples) == 6 and all(s["__key__"].endswith("_01") for s in samples)
    assert all(s["image.png"].shape == (32, 32, 3) and s["aug.json"]["model_size"] == "16" for s in samples)
    assert np.isfinite(np.stack([s["image.png"] for s in samples])).all()
    cfg = yaml.safe_load((out / "config.yaml").read_text())["config"]
    assert cfg["views"] == [1] and cfg["model_size"] == "16"
    # a run's own config.yaml is a settings file too: the same run, resumed as complete
    rc = main(["generate", "--config", str(out / "config.yaml"), "--in", str(renders), "--out", str(out),
               "--no-progress"])
    assert rc == 0
