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
    changed = yaml.safe_load(cfg.read_text())
    changed["generate"]["t_in"] = [0.5, 1.0]  # one generate sweep writing aug/t050 and aug/t100
    cfg.write_text(yaml.safe_dump(changed))
    assert main(["experiment", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "report" in out and "FAILED" not in out
    splits = json.loads((tmp_path / "data" / "renders" / "splits.json").read_text())
    for t in ("t050", "t100", "copy-paste"):
        # every view of the train and val shapes, only the scored view (0 of 2) of the test shapes
        n = json.loads((tmp_path / "data" / "aug" / t / "index.json").read_text())["num_samples"]
        assert n == 2 * (len(splits["train"]) + len(splits["val"])) + len(splits["test"])
    report = tmp_path / "report" / "report.html"
    assert report.exists() and report.stat().st_size > 10_000
    summary = json.loads((tmp_path / "runs" / "eval" / "svr-t050__copy-paste" / "summary.json").read_text())
    assert summary["overall"]["n_views"] >= 1
    assert (tmp_path / "runs" / "timings.tsv").exists()
    # run again: every stage but the report is skipped
    assert main(["experiment", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert out.count("done before, skipped") == len(plan(load_experiment(cfg))) - 1


def _write(tmp_path, **changes):
    cfg = yaml.safe_load(_config(tmp_path).read_text())
    for key, value in changes.items():
        cfg[key] = value
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_models_differ_only_in_training_data_and_seed(tmp_path):
    from fake_renders import write_backgrounds

    write_backgrounds(tmp_path / "bg")
    cfg = load_experiment(_write(tmp_path, seeds=[0, 1, 2],
                                 test_domains={"ood-xt": {"t_in": 0.5, "space": "xt"}}))
    trains = [s for s in plan(cfg) if s.name.startswith("train ")]
    assert len(trains) == 3 * 3  # clean, t050, copy-paste x 3 seeds
    varying = {"--name", "--data.shards", "--seed_everything"}

    def rest(argv):
        out, skip = [], False
        for a in argv:
            if skip:
                skip = False
                continue
            if a in varying:
                skip = True
                continue
            out.append(a)
        return out

    assert all(rest(s.argv) == rest(trains[0].argv) for s in trains)
    assert {s.argv[s.argv.index("--seed_everything") + 1] for s in trains} == {"0", "1", "2"}
    # the test-only domain is generated for the test split only, under its own label, and
    # every model is evaluated on it
    gen = next(s for s in plan(cfg) if s.name == "generate ood-xt")
    assert gen.argv[gen.argv.index("--split") + 1] == "test" and "--label" in gen.argv
    assert gen.argv[gen.argv.index("--space") + 1] == "xt"
    evals = [s for s in plan(cfg) if s.name.startswith("eval ")]
    assert len(evals) == 9 and all(any(a.endswith("__ood-xt") for a in s.argv) for s in evals)


@pytest.mark.parametrize("changes, message", [
    ({"seeds": []}, "seeds must be a non-empty list"),
    ({"seeds": [0, 0]}, "listed twice"),
    ({"test_domains": {"t050": {"t_in": 0.3}}}, "domain name(s) t050 used twice"),
    ({"test_domains": {"clean": {"mode": "copy-paste", "backgrounds": "x"}}}, "domain name(s) clean used twice"),
    ({"generate": {"t_in": [0.5], "step": 8}}, "generate: unknown key(s) step"),
    ({"test_domains": {"ood": {"t_in": 0.5, "spac": "xt"}}}, "test_domains.ood: unknown key(s) spac"),
    ({"eval": {"resolutoin": 32}}, "eval: unknown key(s) resolutoin"),
    ({"render": {"view": 3}}, "render: unknown key(s) view"),
])
def test_bad_experiment_files_fail_before_any_work(tmp_path, capsys, changes, message):
    path = _write(tmp_path, **changes)
    assert main(["experiment", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()


def test_held_out_photos_must_not_overlap_the_copy_paste_backgrounds(tmp_path, capsys):
    import shutil

    from fake_renders import write_backgrounds

    write_backgrounds(tmp_path / "bg")
    held = tmp_path / "held"
    held.mkdir()
    first = sorted((tmp_path / "bg").iterdir())[0]
    shutil.copy(first, held / "renamed.png")  # same photo under another name: still caught
    listing = tmp_path / "held.txt"
    listing.write_text(f"# a list file\n{held / 'renamed.png'}\n")
    for source in (held, listing):
        path = _write(tmp_path, test_domains={"ood-photos": {"mode": "copy-paste", "backgrounds": str(source)}})
        assert main(["experiment", str(path)]) == 2
        err = capsys.readouterr().err
        assert "is also a copy-paste training background" in err and len(err.strip().splitlines()) == 1


def test_stage_order_lets_independent_stages_run_side_by_side(tmp_path):
    from fake_renders import write_backgrounds

    from cdc_aug.experiment import after

    write_backgrounds(tmp_path / "bg")
    stages = plan(load_experiment(_write(tmp_path, seeds=[0, 1])))
    names = [s.name for s in stages]
    by = {s.name: s for s in stages}
    assert after(by["render"], stages) == set()
    assert after(by["generate t050"], stages) == {"render"}
    # a training waits for the generate stage of its own set, not for other sets or trainings
    assert after(by["train svr-t050-s1"], stages) == {"render", "generate t050"}
    assert after(by["train svr-clean-s0"], stages) == {"render"}
    assert after(by["train svr-copy-paste-s0"], stages) == {"render", "generate copy-paste"}
    # an evaluation needs its own model only (and every test domain)
    ev = after(by["eval svr-t050-s1"], stages)
    assert "train svr-t050-s1" in ev and "train svr-clean-s0" not in ev and "generate copy-paste" in ev
    assert after(by["report"], stages) == set(names) - {"report"}
    # every stage's dependencies come before it in the plan, so the runner never waits forever
    assert all(names.index(a) < names.index(s.name) for s in stages for a in after(s, stages))


def test_stage_env_shares_the_cores_between_parallel_stages(monkeypatch):
    from cdc_aug.experiment import stage_env

    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert stage_env(2, environ={})["OMP_NUM_THREADS"] == "2"
    assert stage_env(8, environ={})["OMP_NUM_THREADS"] == "1"
    assert stage_env(1, environ={})["MKL_NUM_THREADS"] == "4"
    # a thread count the user exported is kept
    assert stage_env(2, environ={"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3"
    # freed activations stay in the process (bench/train_stage.py), unless the user says otherwise
    assert int(stage_env(1, environ={})["MALLOC_MMAP_THRESHOLD_"]) >= 2**30
    assert stage_env(1, environ={"MALLOC_TRIM_THRESHOLD_": "0"})["MALLOC_TRIM_THRESHOLD_"] == "0"


def test_generate_makes_only_the_test_views_eval_scores(tmp_path):
    stages = {s.name: s for s in plan(load_experiment(_config(tmp_path)))}
    for name in ("generate t050", "generate copy-paste"):
        argv = stages[name].argv
        assert argv[argv.index("--test-views") + 1] == "0"
    cfg = yaml.safe_load(_config(tmp_path).read_text())
    del cfg["eval"]["views"]  # every view scored: every view made
    (tmp_path / "all.yaml").write_text(yaml.safe_dump(cfg))
    assert all("--test-views" not in s.argv for s in plan(load_experiment(tmp_path / "all.yaml")))


def test_t_in_values_are_one_generate_sweep(tmp_path):
    """Several T_in values: one generate stage (its processes start once) writing aug/tNNN
    each, and one model per value trained on its own set."""
    cfg = yaml.safe_load(_config(tmp_path).read_text())
    cfg["generate"]["t_in"] = [0.25, 0.5]
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(cfg))
    stages = {s.name: s for s in plan(load_experiment(tmp_path / "sweep.yaml"))}
    gen = stages["generate t025,t050"]
    assert [n for n in stages if n.startswith("generate")] == ["generate t025,t050", "generate copy-paste"]
    assert gen.argv[gen.argv.index("--t-in") + 1] == "0.25,0.5"
    aug = tmp_path / "data" / "aug"
    assert gen.argv[gen.argv.index("--out") + 1] == str(aug) and gen.done_file == aug / "t050" / "index.json"
    for t in ("t025", "t050"):
        train = stages[f"train svr-{t}"].argv
        assert train[train.index("--data.shards") + 1] == f"[{aug / t}]"
    from cdc_aug.cli import resolve
    from cdc_aug.commands.generate import make_configs

    settings = resolve("generate", gen.argv[1:])
    assert [c.out_dir for c in make_configs(settings)] == [str(aug / "t025"), str(aug / "t050")]
