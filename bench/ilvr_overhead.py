"""Cost of masked ILVR over plain DDIM sampling with the same model, steps and batch.

Prints the median wall time of each and their ratio (target <= 1.02), and on CPU the
ratio of process CPU time, which other jobs on a shared machine disturb less. The baseline is
diffusers' own pipeline (DDIMPipeline for a pixel UNet, StableDiffusionPipeline for SD);
runs alternate between the two so that load from other processes hits both alike. Both
sample at --size (the ILVR pipeline is given height = width = --size).

The profile line splits each run's CPU time into the UNet's (forward hooks) and the rest
(guidance, scheduler, conversions): the UNet is the same work in both, so the ratio of
(mean UNet time + each pipeline's rest) is the overhead with the UNet's run-to-run noise
taken out.

    python bench/ilvr_overhead.py                       # small pixel UNet, CPU, 64x64
    python bench/ilvr_overhead.py --model cdc_aug/default_model --size 224
    python bench/ilvr_overhead.py --sd15-size --device cuda --size 512 --dtype fp16
"""

from __future__ import annotations

import argparse
import json
import statistics
import string
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdc_aug.pipeline_masked_ilvr import MaskedILVRPipeline  # noqa: E402


def small_unet(size: int):
    from diffusers import UNet2DModel

    # the bundled default model's architecture (cdc_aug/default_model/MODEL_CARD.md), 2.5 M parameters
    return UNet2DModel(
        sample_size=size, in_channels=3, out_channels=3, block_out_channels=(32, 64, 128), layers_per_block=1,
        down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3, add_attention=False,
    )


def char_tokenizer(max_length: int = 77):
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + ".,!":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    d = Path(tempfile.mkdtemp())
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"), model_max_length=max_length)


def sd15_components():
    """Stable Diffusion 1.5's architecture with random weights (no download)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=0.18215,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
        max_position_embeddings=77, vocab_size=49408, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=char_tokenizer())


def sd_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--t-in", type=float, default=0.5)
    ap.add_argument("--t-out", type=float, default=0.0)
    ap.add_argument("--n-in", type=int, default=2)
    ap.add_argument("--n-out", type=int, default=1)
    ap.add_argument("--space", default="x0", choices=["x0", "xt"])
    ap.add_argument("--model", help="a pixel pipeline directory (DDPMPipeline layout) instead of a random UNet")
    ap.add_argument("--sd15-size", action="store_true", help="Stable Diffusion 1.5-sized random weights")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    args = ap.parse_args()

    from diffusers import DDIMPipeline, DDIMScheduler, StableDiffusionPipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    torch.manual_seed(0)
    if args.sd15_size:
        parts = sd15_components()
        ilvr = MaskedILVRPipeline(**parts, scheduler=sd_scheduler())
        plain = StableDiffusionPipeline(**parts, scheduler=sd_scheduler(), safety_checker=None,
                                        feature_extractor=None, requires_safety_checker=False)
        kind = "SD-1.5-sized random weights"
    else:
        if args.model:
            from cdc_aug.models import load_pipeline

            unet = load_pipeline(args.model).unet
            unet.register_to_config(sample_size=args.size)
            kind = f"pixel UNet from {args.model}"
        else:
            unet = small_unet(args.size)
            kind = "pixel UNet (32, 64, 128), random weights"
        ilvr = MaskedILVRPipeline(unet=unet, scheduler=DDIMScheduler())
        plain = DDIMPipeline(unet=unet, scheduler=DDIMScheduler())
    for p in (ilvr, plain):
        p.to(device) if dtype == torch.float32 else p.to(device, dtype)
        p.set_progress_bar_config(disable=True)

    rng = np.random.default_rng(0)
    refs = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(args.batch)]
    mask = np.zeros((args.size, args.size), np.float32)
    mask[args.size // 4 : 3 * args.size // 4, args.size // 4 : 3 * args.size // 4] = 1
    prompt = ["a chair in a living room"] * args.batch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def run_ilvr():
        gens = [torch.Generator("cpu").manual_seed(i) for i in range(args.batch)]
        ilvr(refs, [mask] * args.batch, t_in=args.t_in, t_out=args.t_out, n_in=args.n_in, n_out=args.n_out,
             space=args.space, num_inference_steps=args.steps, generator=gens, output_type="np",
             prompt=prompt if args.sd15_size else None, height=args.size, width=args.size)

    def run_plain():
        gens = [torch.Generator("cpu").manual_seed(i) for i in range(args.batch)]
        if args.sd15_size:
            plain(prompt, height=args.size, width=args.size, num_inference_steps=args.steps, generator=gens,
                  output_type="np")
        else:
            plain(batch_size=args.batch, num_inference_steps=args.steps, generator=gens, output_type="np")

    unet_cpu = [0.0]  # CPU seconds inside the UNet's forward, per run (CPU only: no syncs added on CUDA)
    if device.type == "cpu":
        unet = ilvr.unet
        unet.register_forward_pre_hook(lambda *a: unet_cpu.append(-time.process_time()))
        unet.register_forward_hook(lambda *a: unet_cpu.append(unet_cpu.pop() + time.process_time()))

    def timed(fn) -> tuple[float, float, float]:
        """(wall seconds, this process's CPU seconds, of which in the UNet)."""
        sync()
        unet_cpu[:] = []
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        sync()
        return time.perf_counter() - start, time.process_time() - cpu, sum(unet_cpu)

    timed(run_ilvr), timed(run_plain)  # warm-up: allocator, kernels, lazy inits
    t_ilvr, t_plain = [], []
    for r in range(args.repeats):
        # alternate the order so that a slow period is shared
        if r % 2:
            t_plain.append(timed(run_plain))
            t_ilvr.append(timed(run_ilvr))
        else:
            t_ilvr.append(timed(run_ilvr))
            t_plain.append(timed(run_plain))
    u_ilvr, u_plain = [u for _, _, u in t_ilvr], [u for _, _, u in t_plain]
    c_ilvr, c_plain = [c for _, c, _ in t_ilvr], [c for _, c, _ in t_plain]
    t_ilvr, t_plain = [w for w, _, _ in t_ilvr], [w for w, _, _ in t_plain]
    mi, mp = statistics.median(t_ilvr), statistics.median(t_plain)
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"model: {kind}; device: {dev}; dtype: {args.dtype}")
    print(f"{args.size}x{args.size}, batch {args.batch}, {args.steps} DDIM steps, t_in={args.t_in} "
          f"t_out={args.t_out} n_in={args.n_in} n_out={args.n_out} space={args.space}, {args.repeats} repeats")
    print(f"plain DDIM   median {mp:.3f} s  (min {min(t_plain):.3f})")
    print(f"masked ILVR  median {mi:.3f} s  (min {min(t_ilvr):.3f})")
    print(f"ratio (median) {mi / mp:.3f}   ratio (min) {min(t_ilvr) / min(t_plain):.3f}   target <= 1.02")
    if device.type == "cpu":
        # CPU seconds of this process: other processes on a shared machine slow the wall
        # clock of whichever run they overlap, but not the work each run does.
        ci, cp = statistics.median(c_ilvr), statistics.median(c_plain)
        print(f"CPU time: plain {cp:.3f} s, masked ILVR {ci:.3f} s, ratio {ci / cp:.3f}")
        unet_mean = statistics.mean(u_ilvr + u_plain)
        ri = statistics.median(c - u for c, u in zip(c_ilvr, u_ilvr))
        rp = statistics.median(c - u for c, u in zip(c_plain, u_plain))
        print(f"profile (CPU s per run): UNet {unet_mean:.3f} in both; rest: plain {rp:.4f}, masked ILVR {ri:.4f} "
              f"-> ratio without the UNet's noise {(unet_mean + ri) / (unet_mean + rp):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
