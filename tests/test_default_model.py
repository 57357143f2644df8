"""The bundled default model: committed, small, loads offline, samples sensibly."""

from pathlib import Path

import torch

from cdc_aug.models import DEFAULT_MODEL_DIR


def test_bundled_model_is_complete_and_small():
    # the weights are committed: a checkout without them is broken, not skippable
    for f in ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
              "scheduler/scheduler_config.json", "MODEL_CARD.md", "training_config.yaml"):
        assert (DEFAULT_MODEL_DIR / f).is_file(), f
    n_bytes = sum(p.stat().st_size for p in Path(DEFAULT_MODEL_DIR).rglob("*") if p.is_file())
    assert n_bytes <= 25 * 2**20


def test_bundled_model_loads_offline_and_samples():
    from diffusers import DDIMScheduler, DDPMPipeline

    pipe = DDPMPipeline.from_pretrained(DEFAULT_MODEL_DIR, local_files_only=True)
    # sampling uses the saved scheduler: DDIM over the cosine schedule the model was trained with
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert pipe.scheduler.config.prediction_type == "epsilon"
    sched = pipe.scheduler
    sched.set_timesteps(4)
    g = torch.Generator().manual_seed(0)
    # 40x48: not the training size and not square; the UNet is fully convolutional
    x = torch.randn((2, 3, 40, 48), generator=g)
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(pipe.unet(x, t).sample, t, x).prev_sample
    assert x.shape == (2, 3, 40, 48)
    assert torch.isfinite(x).all()
    assert float(x.std(dim=(2, 3)).min()) > 0.02  # each image varies across pixels
    assert float((x[0] - x[1]).abs().mean()) > 0.02  # different noise, different image


def test_load_pipeline_default_uses_bundled_model():
    from cdc_aug.models import load_pipeline

    pipe = load_pipeline(None)
    assert pipe.unet.config.in_channels == 3
    assert pipe.scheduler.config.beta_schedule == "squaredcos_cap_v2"
