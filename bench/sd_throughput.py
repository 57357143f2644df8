"""GPU throughput of masked ILVR on a Stable-Diffusion-sized model (no download).

The UNet, VAE and CLIP text encoder are built from the SD-1.5 configs written below and
randomly initialised: the cost of a sampling step does not depend on the weights' values.
For each batch size, images/s of plain text-to-image sampling (diffusers'
StableDiffusionPipeline, the reference) and of masked ILVR (cdc_aug's MaskedILVRPipeline,
the object guided for t_in of the steps) with the same components, steps and
classifier-free guidance, and their ratio (masked-ILVR time / plain time; 1.0 = free).
Defaults: 512², 50 DDIM steps, CFG 5, fp16 on CUDA, SDPA attention, channels-last
weights, batch sizes 1, 2, 4, 8, 16; ``--compile`` adds torch.compile on the UNet.
Goal on an H100-class GPU: >= 2 masked-ILVR images/s at 512², 50 steps.

    python bench/sd_throughput.py                          # on a GPU: the full measurement
    python bench/sd_throughput.py --compile --batch-sizes 8,16
    python bench/sd_throughput.py --tiny --device cpu      # smoke check: tiny model, 64², 3 steps
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
# The same layout, a few channels wide: for a smoke check of this script on a CPU.
TINY_UNET = {**SD15_UNET, "block_out_channels": [32, 64], "layers_per_block": 1, "cross_attention_dim": 32,
             "attention_head_dim": 4, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "sample_size": 32}
TINY_VAE = {**SD15_VAE, "block_out_channels": [32, 64], "layers_per_block": 1,
            "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
            "sample_size": 64}
TINY_TEXT = {**SD15_TEXT, "hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
             "num_hidden_layers": 2, "vocab_size": 1000, "projection_dim": 32}


def build(tiny: bool, device: torch.device, dtype: torch.dtype, compile_unet: bool):
    """(plain pipeline, masked-ILVR pipeline) sharing one set of randomly initialised parts."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0
    from diffusers.utils import logging as dlog
    from ilvr_overhead import char_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel

    from cdc_aug.pipeline_masked_ilvr import MaskedILVRPipeline

    dlog.set_verbosity_error()  # casting random weights to fp16 draws advice meant for checkpoints
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(TINY_UNET if tiny else SD15_UNET)
    vae = AutoencoderKL.from_config(TINY_VAE if tiny else SD15_VAE)
    text = CLIPTextModel(CLIPTextConfig(**(TINY_TEXT if tiny else SD15_TEXT)))
    for m in (unet, vae, text):
        m.to(device, dtype).eval().requires_grad_(False)
    for m in (unet, vae):
        m.set_attn_processor(AttnProcessor2_0())  # torch's scaled_dot_product_attention
        m.to(memory_format=torch.channels_last)
    if compile_unet:
        unet = torch.compile(unet)
    parts = dict(unet=unet, vae=vae, text_encoder=text, tokenizer=char_tokenizer())
    plain = StableDiffusionPipeline(**parts, scheduler=DDIMScheduler.from_config(SD15_SCHEDULER),
                                    safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    ilvr = MaskedILVRPipeline(**parts, scheduler=DDIMScheduler.from_config(SD15_SCHEDULER))
    for p in (plain, ilvr):
        p.set_progress_bar_config(disable=True)
    return plain, ilvr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp16", "bf16", "fp32"],
                    help="auto: fp16 on CUDA, fp32 on CPU")
    ap.add_argument("--tiny", action="store_true", help="a few-channel model of the same layout (CPU smoke check)")
    ap.add_argument("--size", type=int, default=None, help="image side in pixels (default 512; 64 with --tiny)")
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps (default 50; 3 with --tiny)")
    ap.add_argument("--batch-sizes", default=None, help="comma list (default 1,2,4,8,16; 1,2 with --tiny)")
    ap.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance (generate's default)")
    ap.add_argument("--t-in", type=float, default=0.5)
    ap.add_argument("--space", default="x0", choices=["x0", "xt"])
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per pipeline and batch size (median)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet (warm-up pays the compilation)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    size = args.size or (64 if args.tiny else 512)
    steps = args.steps or (3 if args.tiny else 50)
    batches = [int(b) for b in (args.batch_sizes or ("1,2" if args.tiny else "1,2,4,8,16")).split(",")]
    device = torch.device(args.device)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32,
             "auto": torch.float16 if device.type == "cuda" else torch.float32}[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    plain, ilvr = build(args.tiny, device, dtype, args.compile)

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
                plain(prompt, height=size, width=size, num_inference_steps=n_steps, guidance_scale=args.guidance,
                      generator=gens, output_type="np")
            else:
                refs = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(batch)]
                ilvr(refs, [mask] * batch, t_in=args.t_in, t_out=0.0, space=args.space, num_inference_steps=n_steps,
                     guidance_scale=args.guidance, prompt=prompt, generator=gens, output_type="np")
        sync()
        return time.perf_counter() - t0

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    n_params = sum(p.numel() for p in plain.unet.parameters()) / 1e6
    print(f"model: {'tiny' if args.tiny else 'SD-1.5'}-sized, random weights (UNet {n_params:.0f} M parameters); "
          f"device: {name}; dtype: {str(dtype).removeprefix('torch.')}; SDPA; channels-last; "
          f"torch.compile: {'on' if args.compile else 'off'}")
    print(f"{size}x{size}, {steps} DDIM steps, CFG {args.guidance}, masked ILVR t_in={args.t_in} space={args.space}, "
          f"median of {args.repeats}")
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
