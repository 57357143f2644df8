"""Masked ILVR on SDXL, SDXL inpainting, SD3- and FLUX-class models, with tiny random components.

The invariants of docs/design.md §4 for each kind (t_in = 1, n_in = 1 keeps the object;
t_in = t_out = 0 ignores the reference; batch independence; native-size sampling with
output at the input size; determinism), then loading each kind from a saved diffusers
checkpoint and running `cdc-aug composite` and `cdc-aug generate` on it.
"""

import json

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    FluxPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)
from fake_renders import make_render_dir
from PIL import Image
from tiny_models import SIZE, flux_components, reference, sd3_components, sdxl_components, square_mask

from cdc_aug import models
from cdc_aug.cli import main
from cdc_aug.errors import UserError
from cdc_aug.pipeline_masked_ilvr_flux import MaskedILVRFluxPipeline
from cdc_aug.pipeline_masked_ilvr_sd3 import MaskedILVRSD3Pipeline
from cdc_aug.pipeline_masked_ilvr_sdxl import MaskedILVRSDXLPipeline

STEPS = 3
GRID = SIZE // 2  # every tiny VAE halves the image
KINDS = ["sdxl", "sdxl_inpaint", "sd3", "flux", "flux_schnell"]
# (components, masked-ILVR class, diffusers class whose checkpoint layout it loads)
BUILD = {
    "sdxl": (lambda p: sdxl_components(p), MaskedILVRSDXLPipeline, StableDiffusionXLPipeline),
    "sdxl_inpaint": (lambda p: sdxl_components(p, inpainting=True), MaskedILVRSDXLPipeline,
                     StableDiffusionXLInpaintPipeline),
    "sd3": (sd3_components, MaskedILVRSD3Pipeline, StableDiffusion3Pipeline),
    "flux": (flux_components, MaskedILVRFluxPipeline, FluxPipeline),
    "flux_schnell": (lambda p: flux_components(p, guidance_embeds=False), MaskedILVRFluxPipeline, FluxPipeline),
}


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    out = {}
    for kind, (build, cls, _) in BUILD.items():
        parts = build(tmp_path_factory.mktemp(kind))
        if cls is MaskedILVRSDXLPipeline:
            # SD's own schedule ends at alpha_bar_0 < 1; end at 1 so that a kept object is exact
            parts["scheduler"] = DDIMScheduler.from_config(parts["scheduler"].config, set_alpha_to_one=True)
        pipe = cls(**parts)
        pipe.set_progress_bar_config(disable=True)
        out[kind] = pipe
    return out


def run(pipe, image=None, mask=None, seed=0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    kw.setdefault("prompt", "a chair in a room")
    kw.setdefault("guidance_scale", 3.0)
    image = reference() if image is None else image
    mask = square_mask() if mask is None else mask
    return pipe(image, mask, generator=kw.pop("generator", torch.Generator().manual_seed(seed)),
                output_type="np", **kw).images


def vae_round_trip(pipe, image):
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        rt = pipe._decode_vae(pipe._encode_vae(x))
    return (rt / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("space", ["x0", "xt"])
@pytest.mark.parametrize("kind", KINDS)
def test_full_guidance_keeps_the_object(pipes, kind, space):
    # t_in = 1, n_in = 1 on a full mask: the result is the reference through the VAE
    ref = reference()
    with pytest.warns(UserWarning, match="is full"):
        out = run(pipes[kind], image=ref, mask=np.ones((SIZE, SIZE), np.float32), t_in=1.0, space=space)
    np.testing.assert_allclose(out, vae_round_trip(pipes[kind], ref), atol=1e-4)


@pytest.mark.parametrize("space", ["x0", "xt"])
@pytest.mark.parametrize("kind", KINDS)
def test_zero_guidance_ignores_the_reference(pipes, kind, space):
    a = run(pipes[kind], image=reference(1), t_in=0.0, t_out=0.0, space=space)
    b = run(pipes[kind], image=reference(2), t_in=0.0, t_out=0.0, space=space)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - run(pipes[kind], image=reference(1), t_in=1.0, space=space)).max() > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_batch_matches_single_samples_and_is_seeded(pipes, kind):
    pipe = pipes[kind]
    refs, prompts = [reference(3), reference(4)], ["a chair", "a lamp"]
    both = pipe(refs, [square_mask()] * 2, prompt=prompts, negative_prompt=["blurry", "dark"], t_in=0.5,
                generator=[torch.Generator().manual_seed(s) for s in (7, 8)], num_inference_steps=STEPS,
                guidance_scale=3.0, output_type="np").images
    alone = pipe(refs[1], square_mask(), prompt=prompts[1], negative_prompt="dark", t_in=0.5,
                 generator=[torch.Generator().manual_seed(8)], num_inference_steps=STEPS, guidance_scale=3.0,
                 output_type="np").images
    np.testing.assert_allclose(both[1], alone[0], atol=1e-5)
    np.testing.assert_array_equal(run(pipe, seed=1), run(pipe, seed=1))
    assert np.abs(run(pipe, seed=1) - run(pipe, seed=2)).max() > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_native_size_sampling_returns_the_input_size(pipes, kind):
    pipe = pipes[kind]
    model = pipe.unet if kind.startswith("sdxl") else pipe.transformer
    seen = []

    def hook(module, args, kwargs):
        seen.append(tuple((args[0] if args else kwargs["hidden_states"]).shape))

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        out = run(pipe, image=reference(h=56, w=72), mask=square_mask(56, 72), guidance_scale=1.0)
    finally:
        handle.remove()
    assert out.shape == (1, 56, 72, 3) and np.isfinite(out).all()
    assert pipe.default_size((56, 72)) == (SIZE, SIZE)
    if kind.startswith("flux"):
        assert seen == [(1, (GRID // 2) ** 2, 16)] * STEPS  # 2x2 patches of the 16x16 latent grid
    else:
        assert seen == [(1, 9 if kind == "sdxl_inpaint" else 4, GRID, GRID)] * STEPS


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_flow_models_check_their_sizes_and_refuse_resampling(pipes, kind):
    with pytest.raises(ValueError, match="needs sides divisible by 4"):
        run(pipes[kind], height=SIZE + 2)
    with pytest.raises(ValueError, match="RePaint resampling needs a DDIM or DDPM"):
        run(pipes[kind], resample_start=0.5)


def test_flow_x0_update_guides_the_velocity(pipes, monkeypatch):
    # golden single step: t_in = 1, n = 1 on a full mask makes the velocity handed to the
    # scheduler imply x0 = x_t - sigma * v = the reference's latent, at every step
    pipe = pipes["sd3"]
    seen = []
    step = pipe.scheduler.step

    def spy(v, t, x, **kw):
        seen.append((v.clone(), x.clone(), pipe.scheduler.sigmas[pipe.scheduler.step_index or 0].item()))
        return step(v, t, x, **kw)

    monkeypatch.setattr(pipe.scheduler, "step", spy)
    with pytest.warns(UserWarning, match="is full"):
        run(pipe, mask=np.ones((SIZE, SIZE), np.float32), t_in=1.0, num_inference_steps=2)
    x = torch.from_numpy(reference()).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        y0 = pipe._encode_vae(x)
    assert len(seen) == 2 and 0 < seen[1][2] < seen[0][2] <= 1
    for v, xt, sigma in seen:
        torch.testing.assert_close(xt - sigma * v, y0, atol=1e-4, rtol=1e-4)


def test_sdxl_fp16_vae_is_upcast_for_encoding_and_decoding(tmp_path):
    pipe = MaskedILVRSDXLPipeline(**sdxl_components(tmp_path))
    assert pipe.vae.config.force_upcast
    pipe.vae.to(torch.float16)
    seen = []
    for part in (pipe.vae.encoder, pipe.vae.decoder):
        part.register_forward_pre_hook(lambda m, a: seen.append((a[0].dtype, m.conv_in.weight.dtype)))
    z = pipe._encode_vae(torch.zeros(1, 3, SIZE, SIZE))
    img = pipe._decode_vae(z)
    assert seen == [(torch.float32, torch.float32)] * 2  # both ran in float32
    assert z.dtype == img.dtype == torch.float32 and pipe.vae.dtype == torch.float16  # and it is fp16 again


# -- saved checkpoints: load_pipeline picks the class, the commands run ----------------------
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Each kind saved as its diffusers pipeline would save it (that class in model_index.json)."""
    out = {}
    for kind in ("sdxl", "sdxl_inpaint", "sd3", "flux"):
        build, _, diffusers_cls = BUILD[kind]
        root = tmp_path_factory.mktemp(f"ckpt_{kind}")
        diffusers_cls(**build(root / "parts")).save_pretrained(root / "model")
        out[kind] = root / "model"
    return out


@pytest.mark.parametrize("kind", ["sdxl", "sdxl_inpaint", "sd3", "flux"])
def test_load_pipeline_picks_the_family_from_model_index(checkpoints, kind):
    _, cls, diffusers_cls = BUILD[kind]
    assert json.loads((checkpoints[kind] / "model_index.json").read_text())["_class_name"] == diffusers_cls.__name__
    pipe = models.load_pipeline(str(checkpoints[kind]))
    assert type(pipe) is cls
    pipe.set_progress_bar_config(disable=True)
    assert run(pipe, num_inference_steps=2).shape == (1, SIZE, SIZE, 3)


def test_an_unsupported_checkpoint_is_refused_in_one_line(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    with pytest.raises(UserError, match="WanPipeline checkpoints are not supported") as e:
        models.load_pipeline(str(tmp_path))
    assert "\n" not in str(e.value)
    Image.fromarray(reference()).save(tmp_path / "x.png")
    rc = main(["composite", "--image", str(tmp_path / "x.png"), "--mask", str(tmp_path / "x.png"),
               "--model", str(tmp_path), "--out", str(tmp_path / "o.png")])
    assert rc == 2


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    return make_render_dir(tmp_path_factory.mktemp("renders"), shapes=2, views=1)


@pytest.mark.parametrize("kind", ["sdxl", "sdxl_inpaint", "sd3", "flux"])
def test_composite_and_generate_commands_run_on_a_saved_checkpoint(checkpoints, renders, kind, tmp_path, capsys):
    rgb = reference()
    Image.fromarray(rgb).save(tmp_path / "ref.png")
    Image.fromarray((square_mask() * 255).astype(np.uint8)).save(tmp_path / "mask.png")
    model = str(checkpoints[kind])
    assert main(["composite", "--image", str(tmp_path / "ref.png"), "--mask", str(tmp_path / "mask.png"),
                 "--model", model, "--steps", "2", "--prompt", "a chair", "--out", str(tmp_path / "c.png")]) == 0
    assert np.asarray(Image.open(tmp_path / "c.png")).shape == (SIZE, SIZE, 3)
    assert main(["generate", "--in", str(renders), "--out", str(tmp_path / "g"), "--model", model, "--steps", "2",
                 "--split", "all", "--no-progress"]) == 0
    from cdc_aug.shards import iter_tar_samples, shard_paths

    samples = [s for p in shard_paths(tmp_path / "g") for s in iter_tar_samples(p)]
    assert len(samples) == 2 and all("image.png" in s for s in samples)
    aug = json.loads(samples[0]["aug.json"])
    assert aug["mode"] == "ilvr" and "prompt" in aug
