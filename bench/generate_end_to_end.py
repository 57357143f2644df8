"""`cdc-aug generate` end to end on every visible GPU, against the pipeline alone, in one run.

What a user waits for is more than the sampler: process start-up, model loading, reading and
decoding the render shards, PNG encoding and shard writing. This bench saves a randomly
initialised Stable-Diffusion-sized checkpoint (bench/sd_throughput.py's components: the cost
of a step does not depend on the weights' values; no download), writes a render set of
``--samples`` objects (tests/fake_renders.py's layout, so no renderer is needed on the GPU
machine), then prints, side by side:

1. the masked-ILVR pipeline alone, in this process: images/s at ``--batch-size`` on one GPU;
2. ``cdc-aug generate --model DIR --nproc G`` (``--launcher torchrun``: ``torchrun
   --nproc-per-node G -m cdc_aug generate``) over the set: images/s end to end, and its
   efficiency = end to end / (G x the pipeline alone); the rest is start-up and I/O, printed
   as seconds per process.

    python bench/generate_end_to_end.py                          # on a GPU machine: SD 1.5, 512², 50 steps
    python bench/generate_end_to_end.py --samples 256 --batch-size 16 --launcher torchrun
    python bench/generate_end_to_end.py --tiny --device cpu       # smoke check: tiny model, 64², 3 steps
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))


def pipeline_alone(ilvr, size: int, batch: int, steps: int, device, repeats: int = 2) -> float:
    """Images/s of the masked-ILVR pipeline on ``batch`` references (first call not timed)."""
    from tiny_models import reference, square_mask

    images = [reference(i, size, size) for i in range(batch)]
    masks = [square_mask(size, size)] * batch

    def once():
        ilvr(images, masks, prompt=["a photograph of a chair in a room"] * batch, t_in=0.5, num_inference_steps=steps,
             height=size, width=size, output_type="np",
             generator=[torch.Generator("cpu").manual_seed(i) for i in range(batch)])

    once()
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    for _ in range(repeats):
        once()
    sync()
    return repeats * batch / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a few-channel model of SD 1.5's layout (CPU smoke check)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--samples", type=int, default=None, help="render samples to generate (default 128; 16 tiny)")
    ap.add_argument("--batch-size", type=int, default=None, help="per process (default 8; 2 tiny)")
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps (default 50; 3 tiny)")
    ap.add_argument("--nproc", type=int, default=None, help="processes (default: visible GPUs, else 1)")
    ap.add_argument("--launcher", choices=["spawn", "torchrun"], default="spawn",
                    help="spawn: generate --nproc G; torchrun: torchrun --nproc-per-node G")
    args = ap.parse_args()
    from fake_renders import make_render_dir
    from sd_throughput import build

    on_gpu = torch.device(args.device).type == "cuda"
    dtype = torch.float16 if on_gpu else torch.float32
    size = 64 if args.tiny else 512
    samples = args.samples or (16 if args.tiny else 128)
    batch = args.batch_size or (2 if args.tiny else 8)
    steps = args.steps or (3 if args.tiny else 50)
    nproc = args.nproc or (torch.cuda.device_count() if on_gpu else 1)
    name = torch.cuda.get_device_name(0) if on_gpu else "CPU"
    print(f"{name} x {nproc} ({args.launcher}), torch {torch.__version__}, SD 1.5 layout{' (tiny)' if args.tiny else ''}"
          f", {size}², {steps} DDIM steps, CFG 5, {str(dtype).split('.')[-1]}, batch {batch} per process")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plain, ilvr, _ = build("sd15", args.tiny, torch.device(args.device), dtype, False, True)
        t = time.perf_counter()
        plain.save_pretrained(tmp / "model")
        print(f"checkpoint saved in {time.perf_counter() - t:.1f} s")
        alone = pipeline_alone(ilvr, size, batch, steps, args.device)
        del plain, ilvr
        if on_gpu:
            torch.cuda.empty_cache()
        views = 4
        make_render_dir(tmp / "renders", shapes=-(-samples // views), views=views, size=min(size, 256),
                        shapes_per_shard=8)
        gen = ["--in", str(tmp / "renders"), "--out", str(tmp / "out"), "--model", str(tmp / "model"), "--split",
               "all", "--t-in", "0.5", "--steps", str(steps), "--batch-size", str(batch), "--device", args.device,
               "--no-progress"]
        if args.launcher == "torchrun":
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                   "-m", "cdc_aug", "generate", *gen]
        else:
            cmd = [sys.executable, "-m", "cdc_aug", "generate", *gen, "--nproc", str(nproc)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(f"generate failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        from cdc_aug.shards import read_index

        n = read_index(tmp / "out")["num_samples"]
    e2e = n / wall
    sampling = n / (nproc * alone)
    print(f"{'pipeline alone (1 process)':<34} {alone:8.2f} images/s")
    print(f"{'generate end to end':<34} {e2e:8.2f} images/s  ({n} samples in {wall:.1f} s)")
    print(f"{'efficiency vs ' + str(nproc) + ' x pipeline alone':<34} {e2e / (nproc * alone):8.2f}   "
          f"(start-up and I/O ~{max(0.0, wall - sampling):.1f} s per process)")
    print(f"per GPU end to end: {e2e / nproc:.2f} images/s" if on_gpu else "")
    return 0 if np.isfinite(e2e) else 1


if __name__ == "__main__":
    raise SystemExit(main())
