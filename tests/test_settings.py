"""Every command's settings: one declaration, a --config file under the command line, unknown
keys as one-line errors, and --print_config as a file --config reads back."""

import pytest
import yaml

from cdc_aug.cli import main, resolve

# command -> (a setting in the file, the flag that overrides it with the default value, what wins)
CASES = {
    "render": ({"size": 64}, ["--size", "224"], ("size", 224)),
    "generate": ({"t_in": 0.25}, ["--t-in", "0.5"], ("t_in", [0.5])),
    "composite": ({"steps": 8}, ["--steps", "50"], ("steps", 50)),
    "eval": ({"resolution": 32}, ["--resolution", "128"], ("resolution", 128)),
    "report": ({"out": "a"}, ["--out", "b"], ("out", "b")),
    "verify": ({"stage": "render"}, ["--stage", "aug"], ("stage", "aug")),
    "experiment": ({"jobs": 2}, ["--jobs", "1"], ("jobs", 1)),
}


@pytest.mark.parametrize("command", sorted(CASES))
def test_a_flag_beats_the_config_file(command, tmp_path):
    data, flag, (name, value) = CASES[command]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    assert getattr(resolve(command, ["--config", str(path)]), name) != value  # the file's value
    # before or after --config, and equal to the default: the command line wins
    assert getattr(resolve(command, [*flag, "--config", str(path)]), name) == value
    assert getattr(resolve(command, ["--config", str(path), *flag]), name) == value


@pytest.mark.parametrize("command", sorted(CASES))
def test_an_unknown_config_key_is_a_one_line_error(command, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("sizee: 3\n")
    assert main([command, "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"--config {path}: unknown setting 'sizee'" in err, err


@pytest.mark.parametrize("command", sorted(CASES))
def test_print_config_reads_back(command, tmp_path, capsys):
    _, flag, (name, value) = CASES[command]
    assert main([command, *flag, "--print_config"]) == 0
    path = tmp_path / "printed.yaml"
    path.write_text(capsys.readouterr().out)
    assert yaml.safe_load(path.read_text())[name] is not None
    assert getattr(resolve(command, ["--config", str(path)]), name) == value
    assert main([command, "--config", str(path), "--print_config"]) == 0
    assert capsys.readouterr().out == path.read_text()


def test_the_render_smoke_config_keeps_a_size_flag():
    # the bug of issue 14: a flag equal to its default counted as unset
    s = resolve("render", ["--config", "configs/render_smoke.yaml", "--size", "224"])
    assert (s.size, s.views, s.source) == (224, 4, "procedural")


def test_dashed_and_underscored_flags_are_one_setting():
    a = resolve("generate", ["--t-in", "0.25", "--model-size", "64", "--no-progress", "--in", "r"])
    b = resolve("generate", ["--t_in", "0.25", "--model_size", "64", "--no_progress", "--in_dir", "r"])
    assert a == b and (a.model_size, a.progress, a.in_dir) == ("64", False, "r")


@pytest.mark.parametrize("command", ["train", "train-camera", "pretrain"])
def test_lightning_commands_flag_beats_file_and_refuse_unknown_keys(command, tmp_path, capsys):
    """The LightningCLI commands keep the same contract: the command line beats --config
    and an unknown key is one line and exit 2."""
    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  max_epochs: 3\n")
    assert main([command, "--config", str(path), "--trainer.max_epochs", "1000", "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["max_epochs"] == 1000
    path.write_text("trainerz: 1\n")
    assert main([command, "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "trainerz" in err and len(err.splitlines()) == 1
