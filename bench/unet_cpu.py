"""How close the generate stage's UNet runs to the CPU's arithmetic limit, and what
torch.compile adds, side by side in one process.

Prints the UNet's GFLOPs per image (torch's FlopCounterMode, a multiply-add counted as two),
its CPU milliseconds per image-step eager (channels-last, as generate runs it) and compiled
(inductor), the compile time, the achieved GFLOP/s per thread and their ratio. With the
smoke experiment's work (3 T_in x 324 samples x 8 steps) it also prints the least CPU time
that work needs at the measured speed: the floor under `generate` in the main job.

    .venv/bin/python bench/unet_cpu.py                     # bundled model, 64², batch 16, 1 thread
    .venv/bin/python bench/unet_cpu.py --no-compile --batch 8
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cpu_ms_per_image(model, x, t, repeats: int) -> float:
    with torch.inference_mode():
        model(x, t)  # warm-up: oneDNN primitives, allocator
        start = time.process_time()
        for _ in range(repeats):
            model(x, t)
        return (time.process_time() - start) / repeats / len(x) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "cdc_aug" / "default_model" / "unet"), help="a UNet2DModel folder")
    ap.add_argument("--batch", type=int, default=16, help="generate's smoke batch size (default %(default)s)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--image-steps", type=int, default=3 * 324 * 8,
                    help="work of the smoke experiment's generate stages (default %(default)s)")
    args = ap.parse_args()

    from diffusers import UNet2DModel
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(args.threads)
    unet = UNet2DModel.from_pretrained(args.model).eval().to(memory_format=torch.channels_last)
    size = unet.config.sample_size
    x = torch.randn(args.batch, unet.config.in_channels, size, size).to(memory_format=torch.channels_last)
    t = torch.full((args.batch,), 500)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        unet(x[:1], t[:1])
    gflop = counter.get_total_flops() / 1e9
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    print(f"UNet {params:.2f} M parameters, {size}x{size}, batch {args.batch}, {args.threads} thread(s): "
          f"{gflop:.2f} GFLOP per image-step")
    rows = [("eager, channels-last", cpu_ms_per_image(unet, x, t, args.repeats))]
    if not args.no_compile:
        start = time.perf_counter()
        compiled = torch.compile(unet)
        with torch.inference_mode():
            compiled(x, t)
        print(f"torch.compile (inductor): {time.perf_counter() - start:.1f} s to compile")
        rows.append(("torch.compile", cpu_ms_per_image(compiled, x, t, args.repeats)))
        rows.append(("eager again", cpu_ms_per_image(unet, x, t, args.repeats)))
    print(f"{'':22} {'CPU ms/image-step':>17} {'GFLOP/s/thread':>14}")
    for name, ms in rows:
        print(f"{name:22} {ms:>17.1f} {gflop / ms * 1000 / args.threads:>14.1f}")
    eager = min(ms for name, ms in rows if name != "torch.compile")
    if not args.no_compile:
        print(f"eager / compiled time: {eager / rows[1][1]:.2f}")
    print(f"{args.image_steps} image-steps (the smoke experiment's generate work) at {eager:.1f} ms: "
          f"{args.image_steps * eager / 1000:.0f} CPU-s, {args.image_steps * eager / 1000 / 2:.0f} s on 2 cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
