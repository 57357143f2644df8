"""Model resolution and loading (cdc_aug/models.py): DDPMPipeline dirs, hub ids offline, identity."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

from cdc_aug import MaskedILVRPipeline, models
from cdc_aug.errors import UserError


@pytest.fixture(scope="module")
def ddpm_dir(tmp_path_factory):
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    path = tmp_path_factory.mktemp("ddpm")
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2")).save_pretrained(path)
    return path


def test_load_pipeline_from_a_ddpm_directory(ddpm_dir):
    pipe = models.load_pipeline(str(ddpm_dir))
    assert isinstance(pipe, MaskedILVRPipeline)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.beta_schedule == "squaredcos_cap_v2"  # the training schedule is kept
    assert pipe.unet.dtype == torch.float32 and pipe.vae is None
    pipe.set_progress_bar_config(disable=True)
    img = np.full((32, 32, 3), 200, np.uint8)
    mask = np.zeros((32, 32), np.float32)
    mask[8:24, 8:24] = 1
    out = pipe(img, mask, t_in=1.0, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
               output_type="np").images
    np.testing.assert_allclose(out[0, 12:20, 12:20], 200 / 255, atol=1e-5)


def test_load_pipeline_with_another_scheduler(ddpm_dir):
    assert type(models.load_pipeline(str(ddpm_dir), scheduler="dpm").scheduler).__name__ == (
        "DPMSolverMultistepScheduler"
    )
    with pytest.raises(UserError, match="scheduler 'euler': choose one of"):
        models.load_pipeline(str(ddpm_dir), scheduler="euler")


def test_unknown_hub_id_is_a_one_line_user_error():
    with pytest.raises(UserError, match="not in the Hugging Face cache") as e:
        models.load_pipeline("nobody-here/no-such-model-xyz")
    assert "\n" not in str(e.value)


def test_a_directory_that_is_not_a_pipeline(tmp_path):
    with pytest.raises(UserError, match="no model_index.json"):
        models.load_pipeline(str(tmp_path))


def test_missing_default_model(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "DEFAULT_MODEL_DIR", tmp_path / "absent")
    with pytest.raises(UserError, match="bundled default model is not installed"):
        models.load_pipeline(None)


def test_default_model_is_used_when_none(ddpm_dir, monkeypatch):
    monkeypatch.setattr(models, "DEFAULT_MODEL_DIR", ddpm_dir)
    assert models.model_identity(None)["kind"] == "default"
    assert isinstance(models.load_pipeline(None), MaskedILVRPipeline)


def test_default_dtype():
    assert models.default_dtype("cpu") == torch.float32
    assert models.default_dtype(torch.device("cuda")) == torch.float16


def test_model_identity_hashes_the_weights(ddpm_dir, tmp_path):
    a = models.model_identity(str(ddpm_dir))
    assert a["kind"] == "local" and a["path"] == str(ddpm_dir.resolve()) and len(a["sha256"]) == 64
    assert models.model_identity(str(ddpm_dir)) == a
    pipe = models.load_pipeline(str(ddpm_dir))
    with torch.no_grad():
        pipe.unet.conv_out.bias.add_(1.0)
    pipe.save_pretrained(tmp_path)
    assert models.model_identity(str(tmp_path))["sha256"] != a["sha256"]
