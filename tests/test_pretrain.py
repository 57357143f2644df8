import json

import lightning.pytorch  # noqa: F401  (imported here, its log handler writes to the real stderr, not to a test's capture)
import numpy as np
import pytest
import torch
import yaml
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


def _pretrain(photos, runs, *extra):
    return main(["pretrain", "--data.images", str(photos), "--runs_dir", str(runs), "--name", "run",
                 "--data.image_size", "16", "--model.channels", "[8, 16]", "--model.samples", "4",
                 "--model.sample_steps", "2", "--data.batch_size", "2", "--data.crops_per_epoch", "4",
                 "--trainer.val_check_interval", "2", "--checkpoint.every_n_train_steps", "2",
                 "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", *extra])


def _tensorboard_images(run_dir) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    return {tag: [e.step for e in acc.Images(tag)] for tag in acc.Tags()["images"]}


def test_pretrain_writes_model_config_and_sample_images_and_resumes(photos, tmp_path, capsys):
    assert _pretrain(photos, tmp_path, "--trainer.max_steps", "2") == 0
    run = tmp_path / "run"
    model = run / "model"
    assert (model / "model_index.json").exists()
    assert list((model / "unet").glob("*.safetensors"))
    assert json.loads((model / "training_state.json").read_text())["global_step"] == 2
    assert (run / "samples" / "step-000002.png").exists()
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert f"model written to {model}" in capsys.readouterr().out
    # LightningCLI's record of the run, and the sample grid in TensorBoard
    cfg = yaml.safe_load((run / "tensorboard" / "config.yaml").read_text())
    assert cfg["model"]["channels"] == [8, 16] and cfg["data"]["image_size"] == 16  # model.image_size: linked
    assert cfg["ema"]["max_decay"] == 0.9995 and cfg["checkpoint"]["every_n_train_steps"] == 2
    assert _tensorboard_images(run) == {"samples": [2]}
    # --ckpt_path last continues from step 2 instead of starting over
    assert _pretrain(photos, tmp_path, "--trainer.max_steps", "4", "--ckpt_path", "last") == 0
    assert json.loads((model / "training_state.json").read_text())["global_step"] == 4
    assert (run / "samples" / "step-000004.png").exists()

    from diffusers import DDPMPipeline

    pipe = DDPMPipeline.from_pretrained(model)
    assert tuple(pipe.unet.config.block_out_channels) == (8, 16)
    assert pipe.unet.config.sample_size == 16
    assert pipe.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"


def test_pretrain_config_file_flag_wins_and_run_config_is_reusable(photos, tmp_path):
    assert _pretrain(photos, tmp_path / "a", "--trainer.max_steps", "1") == 0
    first = tmp_path / "a" / "run" / "tensorboard" / "config.yaml"
    # a run's own config.yaml is a valid --config; a flag after it wins
    assert main(["pretrain", "--config", str(first), "--runs_dir", str(tmp_path / "b"),
                 "--model.lr", "0.001"]) == 0
    a = yaml.safe_load(first.read_text())
    b = yaml.safe_load((tmp_path / "b" / "run" / "tensorboard" / "config.yaml").read_text())
    assert b["model"]["lr"] == 0.001 and a["model"]["lr"] == 0.0003
    assert b["model"]["channels"] == [8, 16] and b["trainer"]["max_steps"] == 1


def test_default_config_prints_and_flags_win(capsys):
    assert main(["pretrain", "--config", "configs/pretrain/default.yaml", "--data.batch_size", "4",
                 "--print_config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["data"]["batch_size"] == 4  # the flag beats the file
    assert cfg["data"]["images"] == "data/photos/train" and cfg["model"]["channels"] == [32, 64, 128]
    assert cfg["name"] == "pretrain-default" and cfg["trainer"]["val_check_interval"] == 250
    assert cfg["checkpoint"]["every_n_train_steps"] == 100 and cfg["ema"]["max_decay"] == 0.9995


def test_pretrain_bad_input_is_one_line(photos, tmp_path, capsys):
    def err_of(*argv):
        assert main(["pretrain", "--runs_dir", str(tmp_path), "--trainer.max_steps", "1", *argv]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    assert "--data.images" in err_of("--data.images", str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    assert "holds no images" in err_of("--data.images", str(tmp_path / "empty"))
    assert "--data.image_size 18" in err_of("--data.images", str(photos), "--data.image_size", "18",
                                            "--model.channels", "[8, 16, 32]")
    (tmp_path / "bad.yaml").write_text("model:\n  sizes: 3\n")
    assert "sizes" in err_of("--config", str(tmp_path / "bad.yaml"), "--data.images", str(photos))


def test_crops_are_deterministic(photos):
    from cdc_aug.pretrain.data import PhotoCrops, list_images, load_photos

    ph = load_photos(list_images(photos), 64)
    a, b = PhotoCrops(ph, 16, 8, seed=0), PhotoCrops(ph, 16, 8, seed=0)
    assert all(bool((a[i] == b[i]).all()) for i in range(8))
    assert a[0].shape == (3, 16, 16) and float(a[0].min()) >= -1 and float(a[0].max()) <= 1
    b.set_epoch(1)
    assert not bool((a[0] == b[0]).all())


def test_ema_warms_up_as_diffusers_ema_model():
    from diffusers.training_utils import EMAModel

    from cdc_aug.pretrain.module import EMA

    ema = EMA(max_decay=0.999, power=0.75)
    reference = EMAModel([torch.nn.Parameter(torch.zeros(1))], decay=0.999, use_ema_warmup=True, power=0.75)
    for k in (1, 2, 10, 1000, 10**6):
        # Lightning's k-th average (after the first, a copy) is diffusers' (k+1)-th EMA step
        decay = 1 - float(ema._average(torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64),
                                       torch.tensor(k)))
        assert decay == pytest.approx(reference.get_decay(k + 1), abs=1e-9)


def test_kid_on_image_statistics():
    from cdc_aug.pretrain.quality import ImageStatistics, kid

    g = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (16, 3, 16, 16), generator=g, dtype=torch.uint8)
    same = torch.randint(0, 256, (16, 3, 16, 16), generator=g, dtype=torch.uint8)
    dark = same // 4
    features = ImageStatistics(real)
    assert features(real).shape[0] == 16 and features(real).dtype == torch.float64
    near, far = kid(real, same, features), kid(real, dark, features)
    assert abs(near) < 0.1 * far and far > 0
    # torchmetrics' unbiased MMD² with the cubic kernel, written out
    x, y = features(real), features(dark)
    kxx, kyy, kxy = ((a @ b.T / x.shape[1] + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    n = len(x)
    by_hand = ((kxx.sum() - kxx.trace() + kyy.sum() - kyy.trace()) / (n * (n - 1)) - 2 * kxy.mean()).item()
    assert far == pytest.approx(by_hand, rel=1e-9)
    with pytest.raises(ValueError, match="same size"):
        kid(real, same[:8])


def test_figures_read_renders_names_the_problem(tmp_path):
    from cdc_aug.errors import UserError
    from cdc_aug.pretrain.figures import read_renders

    with pytest.raises(UserError, match="--renders .*no shards"):
        read_renders(tmp_path, ["k"])
