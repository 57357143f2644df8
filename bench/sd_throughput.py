"""GPU throughput of masked ILVR on Stable-Diffusion-, SDXL-, SD3- and FLUX-sized models (no download).

Each family's denoiser, VAE and text encoders are built from the real checkpoints' configs
written below (SD 1.5, SDXL 1.0 base, SD3 medium, FLUX.1-dev) and randomly initialised:
the cost of a sampling step does not depend on the weights' values. For each batch size,
images/s of plain text-to-image sampling (diffusers' own pipeline for the family, the
reference) and of masked ILVR (cdc_aug's pipeline for it, the object guided for t_in of
the steps) with the same components, steps and guidance, and their ratio (masked-ILVR
time / plain time; 1.0 = free). Defaults per family (diffusers' own): SD 1.5 512², SDXL,
SD3 and FLUX 1024²; 50 DDIM steps CFG 5 (SD 1.5, SDXL), 28 flow-matching Euler steps
with CFG 7 (SD3) or guidance embedding 3.5 (FLUX); fp16 on CUDA (bf16 for FLUX), SDPA
attention, channels-last UNets, batch sizes 1, 2, 4, 8, 16; ``--compile`` adds
torch.compile on the denoiser. Goal on an H100-class GPU: >= 2 masked-ILVR images/s for
SD 1.5 at 512², 50 steps. Parameters are created on the device in the target dtype, so
T5-XXL and FLUX's transformer fit (FLUX in bf16 needs ~35 GiB; SD3 without --no-t5 ~20).

    python bench/sd_throughput.py                          # on a GPU: SD 1.5, the full measurement
    python bench/sd_throughput.py --family sdxl --device cuda --dtype fp16 --batch-sizes 1,4
    python bench/sd_throughput.py --family sd3 --batch-sizes 1,2 --no-t5
    python bench/sd_throughput.py --compile --batch-sizes 8,16
    python bench/sd_throughput.py --family flux --tiny --device cpu   # smoke check: tiny model, 64², 3 steps
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

# Stable Diffusion 1.5 (runwayml/stable-diffusion-v1-5): unet/, vae/, text_encoder/ and
# scheduler/ configs, less the bookkeeping keys.
SD15_UNET = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD15_VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 512, "up_block_types": ["UpDecoderBlock2D"] * 4, "scaling_factor": 0.18215,
}
SD15_TEXT = {  # CLIP ViT-L/14's text tower
    "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
    "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "quick_gelu", "projection_dim": 768,
    "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1,
}
SD15_SCHEDULER = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False,
    "set_alpha_to_one": False, "steps_offset": 1, "num_train_timesteps": 1000, "prediction_type": "epsilon",
}
# SDXL 1.0 base (stabilityai/stable-diffusion-xl-base-1.0); its Euler scheduler's betas, run with DDIM.
SDXL_UNET = {
    **SD15_UNET, "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "projection_class_embeddings_input_dim": 2816, "sample_size": 128, "transformer_layers_per_block": [1, 2, 10],
    "use_linear_projection": True,
}
SDXL_VAE = {**SD15_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
SDXL_TEXT_2 = {  # OpenCLIP ViT-bigG/14's text tower (CLIPTextModelWithProjection)
    **SD15_TEXT, "hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20, "num_hidden_layers": 32,
    "hidden_act": "gelu", "projection_dim": 1280,
}
SDXL_SCHEDULER = {**SD15_SCHEDULER, "timestep_spacing": "leading"}
# SD3 medium (stabilityai/stable-diffusion-3-medium-diffusers)
SD3_TRANSFORMER = {
    "attention_head_dim": 64, "caption_projection_dim": 1536, "in_channels": 16, "joint_attention_dim": 4096,
    "num_attention_heads": 24, "num_layers": 24, "out_channels": 16, "patch_size": 2, "pooled_projection_dim": 2048,
    "pos_embed_max_size": 192, "sample_size": 128,
}
SD3_VAE = {**SD15_VAE, "latent_channels": 16, "sample_size": 1024, "scaling_factor": 1.5305, "shift_factor": 0.0609,
           "use_quant_conv": False, "use_post_quant_conv": False}
T5_XXL = {  # google/t5-v1_1-xxl's encoder
    "d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "num_layers": 24, "vocab_size": 32128,
    "feed_forward_proj": "gated-gelu", "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1,
}
SD3_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0}
# FLUX.1-dev (black-forest-labs/FLUX.1-dev)
FLUX_TRANSFORMER = {
    "attention_head_dim": 128, "guidance_embeds": True, "in_channels": 64, "joint_attention_dim": 4096,
    "num_attention_heads": 24, "num_layers": 19, "num_single_layers": 38, "patch_size": 1,
    "pooled_projection_dim": 768, "axes_dims_rope": [16, 56, 56],
}
FLUX_VAE = {**SD3_VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159}
FLUX_SCHEDULER = {"base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
                  "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True}

# The same layouts, a few channels wide: for a smoke check of this script on a CPU (64² images).
TINY_UNET = {**SD15_UNET, "block_out_channels": [32, 64], "layers_per_block": 1, "cross_attention_dim": 32,
             "attention_head_dim": 4, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "sample_size": 32}
TINY_VAE = {**SD15_VAE, "block_out_channels": [32, 64], "layers_per_block": 1,
            "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
            "sample_size": 64}
TINY_TEXT = {**SD15_TEXT, "hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
             "num_hidden_layers": 2, "vocab_size": 1000, "projection_dim": 32}
TINY_SDXL_UNET = {**SDXL_UNET, "block_out_channels": [32, 64], "layers_per_block": 1, "attention_head_dim": [2, 4],
                  "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
                  "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "transformer_layers_per_block": [1, 1],
                  "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 6 * 8 + 32,
                  "cross_attention_dim": 64, "sample_size": 32}
TINY_SDXL_VAE = {**TINY_VAE, "scaling_factor": 0.13025, "force_upcast": True}
TINY_FLOW_VAE = {**TINY_VAE, "latent_channels": 16, "use_quant_conv": False, "use_post_quant_conv": False,
                 "scaling_factor": 1.5305, "shift_factor": 0.0609}
TINY_T5 = {**T5_XXL, "d_model": 64, "d_ff": 37, "d_kv": 8, "num_heads": 4, "num_layers": 1}
TINY_SD3_TRANSFORMER = {**SD3_TRANSFORMER, "attention_head_dim": 8, "caption_projection_dim": 32,
                        "joint_attention_dim": 64, "num_attention_heads": 4, "num_layers": 1,
                        "pooled_projection_dim": 64, "sample_size": 32}
TINY_FLUX_TRANSFORMER = {**FLUX_TRANSFORMER, "attention_head_dim": 16, "joint_attention_dim": 64,
                         "num_attention_heads": 2, "num_layers": 1, "num_single_layers": 1,
                         "pooled_projection_dim": 32, "axes_dims_rope": [4, 4, 8]}

# family -> (name, default size, default steps, default guidance, guidance kind)
FAMILIES = {
    "sd15": ("SD-1.5", 512, 50, 5.0, "CFG"),
    "sdxl": ("SDXL-1.0", 1024, 50, 5.0, "CFG"),
    "sd3": ("SD3-medium", 1024, 28, 7.0, "CFG"),
    "flux": ("FLUX.1-dev", 1024, 28, 3.5, "guidance embedding"),
}


def t5_tokenizer():
    """A T5 Unigram tokenizer over single characters (no download); only the id count matters here."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789.,!"]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def build(family: str, tiny: bool, device: torch.device, dtype: torch.dtype, compile_model: bool, no_t5: bool):
    """(plain pipeline, masked-ILVR pipeline, denoiser) sharing one set of randomly initialised parts."""
    import diffusers
    from diffusers.models.attention_processor import AttnProcessor2_0
    from diffusers.utils import logging as dlog
    from ilvr_overhead import char_tokenizer
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    from cdc_aug.pipeline_masked_ilvr import MaskedILVRPipeline
    from cdc_aug.pipeline_masked_ilvr_flux import MaskedILVRFluxPipeline
    from cdc_aug.pipeline_masked_ilvr_sd3 import MaskedILVRSD3Pipeline
    from cdc_aug.pipeline_masked_ilvr_sdxl import MaskedILVRSDXLPipeline

    dlog.set_verbosity_error()  # casting random weights to fp16 draws advice meant for checkpoints
    torch.manual_seed(0)
    # Built on the device and cast one module at a time: T5-XXL and FLUX's 12B transformer
    # never exist on the host, and never all at once in fp32.
    def on(m):
        return m.to(dtype).eval().requires_grad_(False)

    with torch.device(device):
        clip_l = CLIPTextConfig(**(TINY_TEXT if tiny else SD15_TEXT))
        if family == "sd15":
            unet = on(diffusers.UNet2DConditionModel.from_config(TINY_UNET if tiny else SD15_UNET))
            vae = on(diffusers.AutoencoderKL.from_config(TINY_VAE if tiny else SD15_VAE))
            parts = dict(unet=unet, vae=vae, text_encoder=on(CLIPTextModel(clip_l)), tokenizer=char_tokenizer())
        elif family == "sdxl":
            unet = on(diffusers.UNet2DConditionModel.from_config(TINY_SDXL_UNET if tiny else SDXL_UNET))
            vae = on(diffusers.AutoencoderKL.from_config(TINY_SDXL_VAE if tiny else SDXL_VAE))
            text_2 = CLIPTextConfig(**(TINY_TEXT if tiny else SDXL_TEXT_2))
            parts = dict(unet=unet, vae=vae, text_encoder=on(CLIPTextModel(clip_l)), tokenizer=char_tokenizer(),
                         text_encoder_2=on(CLIPTextModelWithProjection(text_2)), tokenizer_2=char_tokenizer())
        elif family == "sd3":
            unet = on(diffusers.SD3Transformer2DModel.from_config(TINY_SD3_TRANSFORMER if tiny else SD3_TRANSFORMER))
            vae = on(diffusers.AutoencoderKL.from_config(TINY_FLOW_VAE if tiny else SD3_VAE))
            text_2 = CLIPTextConfig(**(TINY_TEXT if tiny else SDXL_TEXT_2))
            t5 = None if no_t5 else on(T5EncoderModel(T5Config(**(TINY_T5 if tiny else T5_XXL))))
            parts = dict(transformer=unet, vae=vae, text_encoder=on(CLIPTextModelWithProjection(clip_l)),
                         tokenizer=char_tokenizer(), text_encoder_2=on(CLIPTextModelWithProjection(text_2)),
                         tokenizer_2=char_tokenizer(), text_encoder_3=t5,
                         tokenizer_3=None if no_t5 else t5_tokenizer())
        else:
            unet = on(diffusers.FluxTransformer2DModel.from_config(
                TINY_FLUX_TRANSFORMER if tiny else FLUX_TRANSFORMER))
            vae = on(diffusers.AutoencoderKL.from_config(TINY_FLOW_VAE if tiny else FLUX_VAE))
            t5 = on(T5EncoderModel(T5Config(**(TINY_T5 if tiny else T5_XXL))))
            parts = dict(transformer=unet, vae=vae, text_encoder=on(CLIPTextModel(clip_l)),
                         tokenizer=char_tokenizer(), text_encoder_2=t5, tokenizer_2=t5_tokenizer())
    if family in ("sd15", "sdxl"):
        for m in (unet, vae):
            m.set_attn_processor(AttnProcessor2_0())  # torch's scaled_dot_product_attention
            m.to(memory_format=torch.channels_last)
    if compile_model:
        compiled = torch.compile(unet)
        parts["unet" if "unet" in parts else "transformer"] = compiled
    if family == "sd15":
        scheduler = diffusers.DDIMScheduler.from_config(SD15_SCHEDULER)
        plain = diffusers.StableDiffusionPipeline(**parts, scheduler=scheduler, safety_checker=None,
                                                  feature_extractor=None, requires_safety_checker=False)
        ilvr = MaskedILVRPipeline(**parts, scheduler=diffusers.DDIMScheduler.from_config(SD15_SCHEDULER))
    elif family == "sdxl":
        plain = diffusers.StableDiffusionXLPipeline(**parts, scheduler=diffusers.DDIMScheduler.from_config(
            SDXL_SCHEDULER))
        ilvr = MaskedILVRSDXLPipeline(**parts, scheduler=diffusers.DDIMScheduler.from_config(SDXL_SCHEDULER))
    elif family == "sd3":
        sched = diffusers.FlowMatchEulerDiscreteScheduler.from_config(SD3_SCHEDULER)
        plain = diffusers.StableDiffusion3Pipeline(**parts, scheduler=sched)
        ilvr = MaskedILVRSD3Pipeline(**parts, scheduler=diffusers.FlowMatchEulerDiscreteScheduler.from_config(
            SD3_SCHEDULER))
    else:
        sched = diffusers.FlowMatchEulerDiscreteScheduler.from_config(FLUX_SCHEDULER)
        plain = diffusers.FluxPipeline(**parts, scheduler=sched)
        ilvr = MaskedILVRFluxPipeline(**parts, scheduler=diffusers.FlowMatchEulerDiscreteScheduler.from_config(
            FLUX_SCHEDULER))
    for p in (plain, ilvr):
        p.set_progress_bar_config(disable=True)
    return plain, ilvr, unet


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default="sd15", choices=list(FAMILIES),
                    help="model family: sd15 (default), sdxl, sd3 or flux, at the real checkpoint's size")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp16", "bf16", "fp32"],
                    help="auto: fp16 on CUDA (bf16 for flux), fp32 on CPU")
    ap.add_argument("--tiny", action="store_true", help="a few-channel model of the same layout (CPU smoke check)")
    ap.add_argument("--size", type=int, default=None,
                    help="image side in pixels (default: the family's, 512 or 1024; 64 with --tiny)")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: the family's; 3 with --tiny)")
    ap.add_argument("--batch-sizes", default=None, help="comma list (default 1,2,4,8,16; 1,2 with --tiny)")
    ap.add_argument("--guidance", type=float, default=None,
                    help="guidance scale (default: the family's; CFG, or FLUX's guidance embedding)")
    ap.add_argument("--t-in", type=float, default=0.5)
    ap.add_argument("--space", default="x0", choices=["x0", "xt"])
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per pipeline and batch size (median)")
    ap.add_argument("--no-cudnn-benchmark", action="store_true",
                    help="leave cuDNN's autotuner off (smaller peak memory; speed may differ)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the denoiser (warm-up pays the compilation)")
    ap.add_argument("--no-t5", action="store_true", help="sd3: without T5-XXL (zero embeddings, as diffusers allows)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    name, native, family_steps, family_guidance, guidance_kind = FAMILIES[args.family]
    size = args.size or (64 if args.tiny else native)
    steps = args.steps or (3 if args.tiny else family_steps)
    guidance = family_guidance if args.guidance is None else args.guidance
    batches = [int(b) for b in (args.batch_sizes or ("1,2" if args.tiny else "1,2,4,8,16")).split(",")]
    device = torch.device(args.device)
    auto = torch.bfloat16 if args.family == "flux" else torch.float16
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32,
             "auto": auto if device.type == "cuda" else torch.float32}[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        # cuDNN's autotuner tries algorithms with large workspaces once per shape: their
        # memory counts in the peak column (--no-cudnn-benchmark shows the sampling's own).
        torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    plain, ilvr, denoiser = build(args.family, args.tiny, device, dtype, args.compile, args.no_t5)
    sampler = "DDIM" if args.family in ("sd15", "sdxl") else "flow-matching Euler"

    rng = np.random.default_rng(0)
    mask = np.zeros((size, size), np.float32)
    mask[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def run(which: str, batch: int, n_steps: int) -> float:
        prompt = ["a chair in a living room"] * batch
        gens = [torch.Generator("cpu").manual_seed(i) for i in range(batch)]
        sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            if which == "plain":
                plain(prompt, height=size, width=size, num_inference_steps=n_steps, guidance_scale=guidance,
                      generator=gens, output_type="np")
            else:
                refs = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(batch)]
                ilvr(refs, [mask] * batch, t_in=args.t_in, t_out=0.0, space=args.space, num_inference_steps=n_steps,
                     guidance_scale=guidance, prompt=prompt, generator=gens, height=size, width=size,
                     output_type="np")
        sync()
        return time.perf_counter() - t0

    device_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({torch.get_num_threads()} threads)")
    n_params = sum(p.numel() for p in denoiser.parameters()) / 1e6
    kind = "UNet" if args.family in ("sd15", "sdxl") else "transformer"
    print(f"model: {'tiny ' if args.tiny else ''}{name}-sized, random weights ({kind} {n_params:.4g} M parameters"
          f"{', no T5' if args.no_t5 else ''}); device: {device_name}; dtype: {str(dtype).removeprefix('torch.')}; "
          f"SDPA; {'channels-last; ' if kind == 'UNet' else ''}torch.compile: {'on' if args.compile else 'off'}")
    print(f"{size}x{size}, {steps} {sampler} steps, {guidance_kind} {guidance}, masked ILVR t_in={args.t_in} "
          f"space={args.space}, median of {args.repeats}")
    print(f"{'batch':>5}  {'plain img/s':>11}  {'ILVR img/s':>10}  {'ILVR/plain time':>15}  {'peak GiB':>8}")
    for b in batches:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        warm = 2 if steps >= 2 else 1  # warm-up: kernels, cuDNN autotuning, compilation for this shape
        run("plain", b, warm), run("ilvr", b, warm)
        tp, ti = [], []
        for r in range(args.repeats):  # alternate, so a slow period hits both
            order = ("plain", "ilvr") if r % 2 == 0 else ("ilvr", "plain")
            for which in order:
                (tp if which == "plain" else ti).append(run(which, b, steps))
        mp, mi = statistics.median(tp), statistics.median(ti)
        peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f}" if device.type == "cuda" else "-"
        print(f"{b:>5}  {b / mp:>11.3f}  {b / mi:>10.3f}  {mi / mp:>15.3f}  {peak:>8}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
