"""MaskedILVRPipeline with a tiny random pixel-space UNet: docs/design.md §4 invariants, checks, I/O."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    PNDMScheduler,
    UNet2DModel,
    UniPCMultistepScheduler,
)
from tiny_models import reference, square_mask

from cdc_aug import MaskedILVRPipeline
from cdc_aug.pipeline_masked_ilvr import step_plan

SIZE = 32
STEPS = 4


def tiny_unet(seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=SIZE, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )


def make_pipe(scheduler=None) -> MaskedILVRPipeline:
    pipe = MaskedILVRPipeline(unet=tiny_unet(), scheduler=scheduler or DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe():
    return make_pipe()


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def run(pipe, image=None, mask=None, seed=0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    image = reference() if image is None else image
    mask = square_mask() if mask is None else mask
    return pipe(image, mask, generator=kw.pop("generator", gen(seed)), output_type="np", **kw).images


# the object's interior, clear of the smoothed border
INNER = (slice(None), slice(12, 20), slice(12, 20))


@pytest.mark.parametrize(
    "scheduler",
    [
        DDIMScheduler(),
        DDIMScheduler(prediction_type="v_prediction"),
        DDPMScheduler(),
        DPMSolverMultistepScheduler(final_sigmas_type="zero"),
    ],
    ids=["ddim-eps", "ddim-v", "ddpm", "dpm-solver"],
)
@pytest.mark.parametrize("space", ["x0", "xt"])
def test_full_guidance_keeps_the_object_exactly(scheduler, space):
    pipe = make_pipe(scheduler)
    out = run(pipe, t_in=1.0, n_in=1, t_out=0.0, space=space)
    ref = reference() / 255.0
    np.testing.assert_allclose(out[0][INNER[1:]], ref[INNER[1:]], atol=1e-5)
    # the background is free: it does not copy the reference
    assert np.abs(out[0, :4] - ref[:4]).mean() > 0.1


def test_full_guidance_with_a_low_pass_keeps_the_low_frequencies():
    from cdc_aug.lowpass import lowpass

    pipe = make_pipe()
    ref = torch.from_numpy(reference() / 255.0).permute(2, 0, 1)[None].float()
    err = {}
    for t in (0.0, 1.0):
        out = torch.from_numpy(run(pipe, t_in=t, n_in=4, num_inference_steps=6)).permute(0, 3, 1, 2)
        err[t] = (lowpass(out, 4) - lowpass(ref, 4))[..., 14:18, 14:18].abs().mean().item()
        # the high frequencies are the model's own, not the reference's
        assert (out - lowpass(out, 4) - (ref - lowpass(ref, 4)))[..., 14:18, 14:18].abs().mean() > 0.05
    assert err[1.0] < 0.25 * err[0.0]


def test_zero_guidance_ignores_the_reference(pipe):
    a = run(pipe, image=reference(1), t_in=0.0, t_out=0.0)
    b = run(pipe, image=reference(2), mask=1 - square_mask(), t_in=0.0, t_out=0.0)
    np.testing.assert_array_equal(a, b)


def test_guidance_changes_the_object_toward_the_reference(pipe):
    free = run(pipe, t_in=0.0)
    half = run(pipe, t_in=0.5, n_in=2)
    ref = reference() / 255.0
    err_free = np.abs(free[0][INNER[1:]] - ref[INNER[1:]]).mean()
    err_half = np.abs(half[0][INNER[1:]] - ref[INNER[1:]]).mean()
    assert err_half < err_free


def test_same_seed_same_output_other_seed_other_output(pipe):
    a, b, c = run(pipe, seed=3, t_in=0.5), run(pipe, seed=3, t_in=0.5), run(pipe, seed=4, t_in=0.5)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-2


@pytest.mark.parametrize("space", ["x0", "xt"])
def test_a_sample_does_not_depend_on_the_rest_of_its_batch(pipe, space):
    refs, masks = [reference(5), reference(6)], [square_mask(), 1 - square_mask()]
    both = pipe(refs, masks, t_in=0.5, space=space, num_inference_steps=STEPS, generator=[gen(11), gen(12)],
                output_type="np").images
    alone = pipe(refs[1], masks[1], t_in=0.5, space=space, num_inference_steps=STEPS, generator=[gen(12)],
                 output_type="np").images
    assert both.shape == (2, SIZE, SIZE, 3)
    np.testing.assert_allclose(both[1], alone[0], atol=1e-5)


def test_step_plan_without_and_with_resampling():
    assert step_plan(5, 0.0, 10, 10) == [("step", k) for k in range(5)]
    plan = step_plan(6, 0.5, 2, 3)
    # the first half (steps 0-2) in windows of 2: window [0, 2) runs 3 times; the rest once
    assert plan[:8] == [("step", 0), ("step", 1), ("jump", 2, 0), ("step", 0), ("step", 1), ("jump", 2, 0),
                        ("step", 0), ("step", 1)]
    assert plan[8:] == [("step", k) for k in range(2, 6)]


def test_resampling_runs_and_keeps_the_invariant(pipe):
    pipe = make_pipe()
    calls = []
    pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    out = run(pipe, t_in=1.0, resample_start=1.0, jump_length=2, jump_n_sample=2)
    assert len(calls) == 2 * STEPS - 2  # every window but the last is run twice
    np.testing.assert_allclose(out[0][INNER[1:]], reference()[INNER[1:]] / 255.0, atol=1e-5)
    plain = run(pipe, t_in=0.5)
    resampled = run(pipe, t_in=0.5, resample_start=0.5, jump_length=1, jump_n_sample=2)
    assert np.abs(plain - resampled).max() > 1e-3


def test_output_types_and_a_non_square_size(pipe):
    ref, mask = reference(h=32, w=48), square_mask(32, 48)
    pil = pipe(ref, mask, num_inference_steps=2, generator=gen()).images
    assert isinstance(pil[0], PIL.Image.Image) and pil[0].size == (48, 32)
    pt = pipe(ref, mask, num_inference_steps=2, generator=gen(), output_type="pt").images
    npy = pipe(ref, mask, num_inference_steps=2, generator=gen(), output_type="np").images
    assert pt.shape == (1, 3, 32, 48) and npy.shape == (1, 32, 48, 3)
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), npy, atol=1e-6)
    assert 0.0 <= npy.min() and npy.max() <= 1.0
    tup = pipe(ref, mask, num_inference_steps=2, generator=gen(), output_type="np", return_dict=False)
    np.testing.assert_array_equal(tup[0], npy)


def test_pil_numpy_and_torch_inputs_agree(pipe):
    ref, mask = reference(), square_mask()
    a = run(pipe, image=ref, mask=mask)
    b = run(pipe, image=PIL.Image.fromarray(ref), mask=PIL.Image.fromarray((mask * 255).astype(np.uint8)))
    c = run(pipe, image=torch.from_numpy(ref).permute(2, 0, 1) / 127.5 - 1, mask=torch.from_numpy(mask))
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, c, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(t_in=1.5), r"`t_in` must lie in \[0, 1\]"),
        (dict(t_out=-0.1), r"`t_out` must lie in \[0, 1\]"),
        (dict(n_in=0), "`n_in` must be a positive integer"),
        (dict(n_out=2.5), "`n_out` must be a positive integer"),
        (dict(n_in=3), "`n_in`=3 does not divide the model's 32x32 grid"),
        (dict(t_in=0.1), r"`t_in`=0.1 guides 0 of 4 steps"),
        (dict(space="zz"), "`space` must be 'x0' or 'xt'"),
        (dict(blur=-1), "`blur` must be 'auto' or"),
        (dict(output_type="jpg"), "`output_type` must be"),
        (dict(num_inference_steps=0), "`num_inference_steps` must be a positive integer"),
        (dict(resample_start=2.0), r"`resample_start` must lie in \[0, 1\]"),
        (dict(jump_length=0), "`jump_length` must be a positive integer"),
        (dict(jump_n_sample=-1), "`jump_n_sample` must be a positive integer"),
        (dict(mask_image=np.zeros((16, 16), np.float32)), "`mask_image` is 16x16 but `image` is 32x32"),
        (dict(mask_image=np.full((32, 32), 2.0, np.float32)), r"`mask_image` 0 must hold values in \[0, 1\]"),
        (dict(mask_image=[square_mask()] * 3), "`mask_image` holds 3 masks for 1 images"),
        (dict(height=31, width=31), r"`height`x`width` is 31x31; this model needs sides divisible by 2"),
        (dict(height=0), "`height` must be a positive integer or None"),
        (dict(generator=[gen(), gen()]), "`generator` is a list of 2 for a batch of 1"),
        (dict(prompt=["a", "b"]), "`prompt` is a list of 2 for a batch of 1"),
        (dict(image=[reference(), reference(h=64, w=64)], mask_image=[square_mask()]), "`image` 1 is 64x64"),
    ],
)
def test_check_inputs_names_the_argument(pipe, kwargs, message):
    args = dict(image=reference(), mask_image=square_mask(), num_inference_steps=STEPS, generator=gen())
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        pipe(**args)


def test_resampling_needs_a_stateless_scheduler():
    pipe = make_pipe(DPMSolverMultistepScheduler())
    with pytest.raises(ValueError, match="`resample_start` > 0 needs a DDIM or DDPM scheduler"):
        run(pipe, resample_start=0.5)


def test_warnings_for_empty_and_full_masks_and_a_prompt(pipe):
    with pytest.warns(UserWarning, match="`mask_image` 0 is empty"):
        run(pipe, mask=np.zeros((SIZE, SIZE), np.float32), num_inference_steps=2)
    with pytest.warns(UserWarning, match="`mask_image` 0 is full"):
        run(pipe, mask=np.ones((SIZE, SIZE), np.float32), num_inference_steps=2)
    with pytest.warns(UserWarning, match="`prompt` is ignored: this model is unconditional"):
        run(pipe, prompt="a chair in a garden", num_inference_steps=2)


def test_save_and_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    loaded = MaskedILVRPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.vae is None and loaded.text_encoder is None
    # same weights and config; a freshly allocated model may differ in the last float bits
    np.testing.assert_allclose(run(pipe, t_in=0.5, n_in=2), run(loaded, t_in=0.5, n_in=2), atol=1e-5)


def test_xt_space_noises_the_reference_to_the_level_the_step_lands_on():
    # With the whole image guided at n = 1, the UNet's input at step k + 1 is the reference
    # noised to timesteps[k + 1]: x = sqrt(ab) * y0 + sqrt(1 - ab) * eps. Regressing x on
    # y0 recovers sqrt(ab) (the paper's code would give the level one step noisier).
    pipe = make_pipe()
    seen = []
    pipe.unet.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    ref, full = reference(h=64, w=64), np.ones((64, 64), np.float32)
    with pytest.warns(UserWarning, match="is full"):
        run(pipe, image=ref, mask=full, t_in=1.0, space="xt", blur=0, height=64, width=64)
    y0 = torch.from_numpy(ref).permute(2, 0, 1)[None].float() / 127.5 - 1
    timesteps = pipe.scheduler.timesteps
    for k in (1, 2, 3):
        beta = float((seen[k] * y0).sum() / (y0 * y0).sum())
        expected = float(pipe.scheduler.alphas_cumprod[timesteps[k]].sqrt())
        one_noisier = float(pipe.scheduler.alphas_cumprod[timesteps[k - 1]].sqrt())
        assert abs(beta - expected) < 0.03 and abs(beta - one_noisier) > 0.2


def test_low_precision_model_keeps_the_guidance_exact():
    # The guidance arithmetic stays in float32 whatever the UNet's dtype (fp16 on CUDA).
    pipe = make_pipe()
    pipe.unet.to(torch.bfloat16)
    out = run(pipe, t_in=1.0)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0][INNER[1:]], reference()[INNER[1:]] / 255.0, atol=1e-5)


@pytest.mark.parametrize("scheduler", [PNDMScheduler(skip_prk_steps=True), UniPCMultistepScheduler()],
                         ids=["pndm", "unipc"])
def test_multistep_schedulers_run_every_timestep(scheduler):
    pipe = make_pipe(scheduler)
    calls = []
    pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    out = run(pipe, t_in=0.5, n_in=2)
    assert np.isfinite(out).all() and len(calls) == len(pipe.scheduler.timesteps)
    # multistep updates mix several steps' outputs, so the object is close, not exact
    assert np.abs(run(pipe, t_in=1.0)[0][INNER[1:]] - reference()[INNER[1:]] / 255.0).mean() < 0.05


def test_samples_at_the_models_native_size_and_returns_the_input_size(pipe):
    # the UNet's sample_size is 32: a 48x40 input is sampled on 32x32 and comes back at 48x40
    seen = []
    handle = pipe.unet.register_forward_pre_hook(lambda mod, args: seen.append(tuple(args[0].shape[-2:])))
    try:
        out = run(pipe, image=reference(h=40, w=48), mask=square_mask(40, 48))
        at_input = run(pipe, image=reference(h=40, w=48), mask=square_mask(40, 48), height=40, width=48)
    finally:
        handle.remove()
    assert out.shape == at_input.shape == (1, 40, 48, 3)
    assert seen == [(32, 32)] * STEPS + [(40, 48)] * STEPS


def test_full_guidance_survives_the_resize_to_the_model_size(pipe):
    # t_in = 1 on a full mask at another size: the result is the reference through the
    # down- and up-sampling, so close to it at low frequencies
    ref = np.kron(reference(h=8, w=8), np.ones((8, 8, 1), np.uint8))  # 64x64, piecewise constant
    with pytest.warns(UserWarning, match="is full"):
        out = run(pipe, image=ref, mask=np.ones((64, 64), np.float32), t_in=1.0)
    assert np.abs(out[0] - ref / 255.0)[4:-4:8, 4:-4:8].max() < 0.02


def test_the_docstring_example_runs():
    import doctest

    finder = doctest.DocTestFinder()
    [test] = [t for t in finder.find(MaskedILVRPipeline.__call__, "MaskedILVRPipeline.__call__") if t.examples]
    result = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS).run(test)
    assert result.failed == 0 and result.attempted >= 8
