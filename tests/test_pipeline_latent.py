"""MaskedILVRPipeline with tiny random Stable Diffusion parts: text-to-image and inpainting."""

import contextlib
import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tiny_models import reference, square_mask, tiny_tokenizer
from transformers import CLIPTextConfig, CLIPTextModel

from cdc_aug import MaskedILVRPipeline, models

SIZE = 32  # the tiny VAE halves it: a 16x16 latent grid
STEPS = 4


def tiny_components(tmp_path, inpainting=False):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=9 if inpainting else 4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, norm_num_groups=4,
        attention_head_dim=4,
    )
    vae = AutoencoderKL(
        block_out_channels=[8, 16], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, vocab_size=100, max_position_embeddings=16,
    ))
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tiny_tokenizer(tmp_path / "tok"),
                scheduler=scheduler)


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    pipe = MaskedILVRPipeline(**tiny_components(tmp_path_factory.mktemp("sd")))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def inpaint(tmp_path_factory):
    pipe = MaskedILVRPipeline(**tiny_components(tmp_path_factory.mktemp("inp"), inpainting=True))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, image=None, mask=None, seed=0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    kw.setdefault("prompt", "a chair in a room")
    image = reference() if image is None else image
    mask = square_mask() if mask is None else mask
    return pipe(image, mask, generator=kw.pop("generator", torch.Generator().manual_seed(seed)),
                output_type="np", **kw).images


def test_kind_detection(sd, inpaint):
    assert sd.is_latent and sd.is_text_conditioned and not sd.is_inpainting and sd.vae_scale_factor == 2
    assert inpaint.is_inpainting


def test_text_to_image_returns_the_input_size_and_is_seeded(sd):
    a = run(sd, image=reference(h=33, w=38), mask=square_mask(33, 38), guidance_scale=3.0)
    assert a.shape == (1, 33, 38, 3) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, run(sd, image=reference(h=33, w=38), mask=square_mask(33, 38),
                                         guidance_scale=3.0))
    assert np.abs(run(sd, seed=1) - run(sd, seed=2)).max() > 1e-3


def test_the_prompt_matters(sd):
    assert np.abs(run(sd, prompt="a red chair") - run(sd, prompt="zzz")).max() > 1e-4


def test_full_guidance_on_a_full_mask_returns_the_vae_round_trip(sd):
    # SD's own schedule ends at alpha_bar_0 < 1 (a trace of noise stays); end at 1 to compare exactly
    scheduler = DDIMScheduler.from_config(sd.scheduler.config, set_alpha_to_one=True)
    sd = MaskedILVRPipeline(**{**sd.components, "scheduler": scheduler})
    sd.set_progress_bar_config(disable=True)
    ref = reference()
    with pytest.warns(UserWarning, match="is full"):
        out = run(sd, image=ref, mask=np.ones((SIZE, SIZE), np.float32), t_in=1.0, n_in=1)
    x = torch.from_numpy(ref).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        rt = sd._decode_vae(sd._encode_vae(x))
    rt = (rt / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(out, rt, atol=1e-4)


@pytest.mark.parametrize("kind", ["sd", "inpaint"])
@pytest.mark.parametrize("space", ["x0", "xt"])
def test_zero_guidance_ignores_the_reference(kind, space, request):
    # for inpainting models this covers the masked-image channels too: with nothing guided
    # they never carry the reference (mask all ones, latent zero from the first step)
    pipe = request.getfixturevalue(kind)
    a = run(pipe, image=reference(1), t_in=0.0, t_out=0.0, space=space)
    b = run(pipe, image=reference(2), t_in=0.0, t_out=0.0, space=space)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["sd", "inpaint"])
def test_native_resolution_a_224_input_runs_on_the_native_latent_grid(kind, request):
    # sample_size 16 x VAE factor 2: the native size is 32x32, a 16x16 latent grid
    pipe = request.getfixturevalue(kind)
    seen = []
    handle = pipe.unet.register_forward_pre_hook(lambda mod, args: seen.append(tuple(args[0].shape)))
    try:
        out = run(pipe, image=reference(h=224, w=224), mask=square_mask(224, 224), guidance_scale=1.0)
        explicit = run(pipe, image=reference(h=224, w=224), mask=square_mask(224, 224), guidance_scale=1.0,
                       height=48, width=64)
    finally:
        handle.remove()
    channels = 9 if kind == "inpaint" else 4
    assert out.shape == explicit.shape == (1, 224, 224, 3) and np.isfinite(out).all()
    assert seen == [(1, channels, 16, 16)] * STEPS + [(1, channels, 24, 32)] * STEPS
    with pytest.raises(ValueError, match="needs sides divisible by 2"):
        run(pipe, image=reference(h=224, w=224), mask=square_mask(224, 224), height=33)


def test_batch_with_prompts_and_generators_matches_single_samples(sd):
    refs, prompts = [reference(3), reference(4)], ["a chair", "a lamp"]
    gens = [torch.Generator().manual_seed(s) for s in (7, 8)]
    both = sd(refs, [square_mask()] * 2, prompt=prompts, negative_prompt=["blurry", "dark"], generator=gens,
              num_inference_steps=STEPS, output_type="np").images
    alone = sd(refs[1], square_mask(), prompt=prompts[1], negative_prompt="dark",
               generator=[torch.Generator().manual_seed(8)], num_inference_steps=STEPS, output_type="np").images
    np.testing.assert_allclose(both[1], alone[0], atol=1e-5)


def test_n_must_divide_the_latent_grid(sd):
    with pytest.raises(ValueError, match=r"`n_in`=3 does not divide the model's 16x16 grid \(sampled at 32x32\)"):
        run(sd, n_in=3)


def test_inpainting_keeps_the_object_while_it_is_guided_then_frees_it(inpaint):
    seen = []
    handle = inpaint.unet.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    try:
        out = run(inpaint, t_in=0.5, guidance_scale=1.0, blur=0)
    finally:
        handle.remove()
    assert out.shape == (1, SIZE, SIZE, 3) and len(seen) == STEPS
    grid_mask = torch.from_numpy(square_mask(16, 16))
    x = torch.from_numpy(reference()).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        object_latents = inpaint._encode_vae(x * torch.from_numpy(square_mask())[None, None])
    for k, cond in enumerate(seen):
        # inpainting UNets take 1 = repaint: the object is kept for the first half only,
        # then the whole image is "generate everything" (mask ones, masked-image latent zero)
        if k < STEPS // 2:
            torch.testing.assert_close(cond[0, 4], 1 - grid_mask)
            torch.testing.assert_close(cond[0, 5:], object_latents[0], atol=1e-5, rtol=1e-5)
        else:
            torch.testing.assert_close(cond[0, 4], torch.ones(16, 16))
            assert not cond[0, 5:].any()


def test_save_load_and_load_pipeline_from_an_sd_layout(sd, tmp_path):
    sd.save_pretrained(tmp_path)
    # a real SD checkpoint also lists a safety checker and a feature extractor; they are skipped
    index = json.loads((tmp_path / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionPipeline"
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    loaded = models.load_pipeline(str(tmp_path))
    loaded.set_progress_bar_config(disable=True)
    assert loaded.is_latent and isinstance(loaded.scheduler, DDIMScheduler)
    assert not loaded.scheduler.config.set_alpha_to_one  # SD's own schedule survives the switch to DDIM
    np.testing.assert_allclose(run(sd, t_in=0.5), run(loaded, t_in=0.5), atol=1e-5)


def test_stable_diffusion_pipeline_directory_loads(tmp_path):
    parts = tiny_components(tmp_path)
    StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(tmp_path / "sd")
    pipe = models.load_pipeline(str(tmp_path / "sd"))
    assert pipe.is_text_conditioned and pipe.tokenizer.model_max_length == 16


def test_inpainting_batch_matches_single_samples_when_guidance_ends_at_different_steps(inpaint):
    # sample 1's object is empty (nothing guided): its conditioning switches to "generate
    # everything" at once, while sample 0's object is still kept
    refs, masks = [reference(3), reference(4)], [square_mask(), np.zeros((SIZE, SIZE), np.float32)]
    with pytest.warns(UserWarning, match="is empty"):
        both = inpaint(refs, masks, prompt="a chair", t_in=0.5, generator=[torch.Generator().manual_seed(s) for s in (7, 8)],
                       num_inference_steps=STEPS, output_type="np").images
    for i, seed in enumerate((7, 8)):
        if i == 1:
            ctx = pytest.warns(UserWarning, match="is empty")
        else:
            ctx = contextlib.nullcontext()
        with ctx:
            alone = inpaint(refs[i], masks[i], prompt="a chair", t_in=0.5, generator=[torch.Generator().manual_seed(seed)],
                            num_inference_steps=STEPS, output_type="np").images
        np.testing.assert_allclose(both[i], alone[0], atol=1e-5)
