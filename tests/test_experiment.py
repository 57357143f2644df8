"""The experiment runner chains every stage: render -> generate -> train -> eval -> report."""

import json

import pytest
import yaml

from cdc_aug.cli import main
from cdc_aug.experiment import load_experiment, plan
from cdc_aug.models import DEFAULT_MODEL_DIR


def _config(tmp_path, model=None):
    cfg = {
        "name": "micro",
        "seed": 0,
        "data_root": str(tmp_path / "data"),
        "runs_root": str(tmp_path / "runs"),
        "report_dir": str(tmp_path / "report"),
        "render": {"source": "procedural", "categories": ["chair", "table"], "max_shapes": 3, "views": 2,
                   "size": 32, "workers": 1},
        "generate": {"t_in": [0.5], "steps": 2, "batch_size": 8, "copy_paste": True,
                     "backgrounds": str(tmp_path / "bg")},
        "train": {"config": "configs/train/tiny.yaml",
                  "args": ["--trainer.max_epochs", "1", "--data.image_size", "32", "--data.batch_size", "4",
                           "--data.num_workers", "0", "--data.val_shapes", "0", "--model.val_resolution", "16"]},
        "eval": {"split": "test", "views": [0], "resolution": 16, "points": 2000},
    }
    if model:
        cfg["generate"]["model"] = str(model)
    path = tmp_path / "micro.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_plan_and_bad_config(tmp_path, capsys):
    stages = plan(load_experiment(_config(tmp_path)))
    names = [s.name for s in stages]
    assert names[0] == "render" and names[-1] == "report"
    assert "generate t050" in names and "generate copy-paste" in names
    assert {"train svr-clean", "train svr-t050", "train svr-copy-paste"} <= set(names)
    assert sum(n.startswith("eval") for n in names) == 3  # one per model, every domain inside
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nrendr: {}\n")
    assert main(["experiment", str(bad)]) == 2
    assert "unknown key(s) rendr" in capsys.readouterr().err
    assert main(["experiment", str(tmp_path / "missing.yaml")]) == 2


@pytest.fixture
def tiny_pixel_model(tmp_path):
    import torch
    from diffusers import DDIMScheduler, DDPMPipeline, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       norm_num_groups=4, down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
    DDPMPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=100)).save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_micro_experiment_chains_and_resumes(tmp_path, tiny_pixel_model, capsys):
    from fake_renders import write_backgrounds

    write_backgrounds(tmp_path / "bg")
    # the bundled model when it is there (what users get), else a tiny random one
    model = None if (DEFAULT_MODEL_DIR / "model_index.json").exists() else tiny_pixel_model
    cfg = _config(tmp_path, model)
    assert main(["experiment", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "report" in out and "FAILED" not in out
    report = tmp_path / "report" / "report.html"
    assert report.exists() and report.stat().st_size > 10_000
    summary = json.loads((tmp_path / "runs" / "eval" / "svr-t050__copy-paste" / "summary.json").read_text())
    assert summary["overall"]["n_views"] >= 1
    assert (tmp_path / "runs" / "timings.tsv").exists()
    # run again: every stage but the report is skipped
    assert main(["experiment", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert out.count("done before, skipped") == len(plan(load_experiment(cfg))) - 1
