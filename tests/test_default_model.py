"""The bundled default model: committed, small, loads offline, samples sensibly."""

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cdc_aug.models import DEFAULT_MODEL_DIR


def test_bundled_model_is_complete_and_small():
    # the weights are committed: a checkout without them is broken, not skippable
    for f in ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
              "scheduler/scheduler_config.json", "MODEL_CARD.md", "training_config.yaml"):
        assert (DEFAULT_MODEL_DIR / f).is_file(), f
    n_bytes = sum(p.stat().st_size for p in Path(DEFAULT_MODEL_DIR).rglob("*") if p.is_file())
    assert n_bytes <= 25 * 2**20


def _varied(images) -> None:
    x = np.stack([np.asarray(im, dtype=np.float64) / 255 for im in images])
    assert np.isfinite(x).all()
    assert float(x.std(axis=(1, 2)).min()) > 0.01  # each image varies across pixels
    assert float(np.abs(x[0] - x[1]).mean()) > 0.01  # different noise, different image


def test_bundled_model_loads_offline_and_samples():
    from diffusers import DDIMScheduler, DDPMPipeline

    from cdc_aug.pretrain.module import sample_images

    pipe = DDPMPipeline.from_pretrained(DEFAULT_MODEL_DIR, local_files_only=True)
    # sampling uses the saved scheduler: DDIM over the cosine schedule the model was trained with
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert pipe.scheduler.config.prediction_type == "epsilon"
    images = sample_images(pipe.unet, pipe.scheduler.config, n=2, steps=4, seed=0)
    assert [im.size for im in images] == [(64, 64)] * 2
    _varied(images)


def test_load_pipeline_default_uses_bundled_model_and_samples_any_size():
    from cdc_aug.models import load_pipeline

    pipe = load_pipeline(None)
    assert pipe.unet.config.in_channels == 3
    assert pipe.scheduler.config.beta_schedule == "squaredcos_cap_v2"
    # unguided (t_in = t_out = 0) at 40x48: not the training size and not square; the UNet is
    # fully convolutional
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`mask_image` . is empty")
        out = pipe([Image.new("RGB", (48, 40), "grey")] * 2, Image.new("L", (48, 40), 0), t_in=0.0, t_out=0.0,
                   num_inference_steps=4, height=40, width=48,
                   generator=[torch.Generator().manual_seed(i) for i in range(2)]).images
    assert [im.size for im in out] == [(48, 40)] * 2
    _varied(out)
