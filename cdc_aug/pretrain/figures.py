"""The evidence figures for the bundled model: unconditional samples and a t_in sweep.

    python -m cdc_aug.pretrain.figures samples --out docs/default_samples.png
    python -m cdc_aug.pretrain.figures sweep --renders data/renders --out docs/default_tin_sweep.png

Both use the model given by --model (default: the bundled one), DDIM with eta 0 and fixed
seeds, so the same model gives the same figure.
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path

import torch
from diffusers.utils import make_image_grid
from PIL import Image, ImageDraw

from cdc_aug.errors import UserError


def _label(img: Image.Image, text: str) -> Image.Image:
    """img with a 14-pixel caption strip above it."""
    out = Image.new("RGB", (img.width, img.height + 14), "white")
    out.paste(img, (0, 14))
    ImageDraw.Draw(out).text((2, 1), text, fill="black")
    return out


def samples_figure(model: str | None, steps: int, n: int = 16) -> Image.Image:
    """n samples at the training size (DDIMPipeline) beside one sample as large as their grid
    (MaskedILVRPipeline unguided: the UNet is fully convolutional)."""
    import warnings

    from cdc_aug.models import load_pipeline

    from .module import grid, sample_images

    pipe = load_pipeline(model)
    s = pipe.unet.config.sample_size
    small = grid(sample_images(pipe.unet, pipe.scheduler.config, n=n, steps=steps, seed=0))
    big = small.width
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`mask_image` 0 is empty")  # t_in = t_out = 0: no guidance
        large = pipe(Image.new("RGB", (big, big), "grey"), Image.new("L", (big, big), 0), t_in=0.0, t_out=0.0,
                     num_inference_steps=steps, height=big, width=big,
                     generator=torch.Generator("cpu").manual_seed(1)).images[0]
    return make_image_grid([_label(small, f"{n} samples, {s}x{s}, {steps} DDIM steps"),
                            _label(large, f"one sample at {big}x{big}")], rows=1, cols=2)


def read_renders(renders: str | Path, keys: list[str]) -> list[tuple[str, Image.Image, Image.Image]]:
    """(key, rgba, mask) for each key, read from a render stage's shards."""
    shards = sorted((Path(renders) / "shards").glob("*.tar"))
    if not shards:
        raise UserError(f"--renders {renders}: no shards/*.tar (run `cdc-aug render` first)")
    found: dict[str, dict[str, bytes]] = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, _, field = m.name.partition(".")
                if key in keys and field in ("rgba.png", "mask.png"):
                    found.setdefault(key, {})[field] = tar.extractfile(m).read()
    missing = [k for k in keys if len(found.get(k, {})) < 2]
    if missing:
        raise UserError(f"--renders {renders}: keys not found: {', '.join(missing)}")
    return [(k, Image.open(io.BytesIO(found[k]["rgba.png"])).convert("RGBA"),
             Image.open(io.BytesIO(found[k]["mask.png"])).convert("L")) for k in keys]


def sweep_figure(model: str | None, renders: str, keys: list[str], t_ins: list[float], steps: int) -> Image.Image:
    """Rows: renders; columns: the render on grey, then masked ILVR at each t_in (t_out = 0)."""
    from cdc_aug.models import load_pipeline

    pipe = load_pipeline(model)
    items = read_renders(renders, keys)
    refs = []
    for _, rgba, _ in items:
        base = Image.new("RGBA", rgba.size, (128, 128, 128, 255))
        refs.append(Image.alpha_composite(base, rgba).convert("RGB"))
    masks = [m for _, _, m in items]
    rows = [[_label(r, "render")] for r in refs]
    for t_in in t_ins:
        # one generator per row, reseeded per t_in: columns differ only by t_in
        gens = [torch.Generator("cpu").manual_seed(i) for i in range(len(refs))]
        out = pipe(refs, masks, t_in=t_in, t_out=0.0, num_inference_steps=steps, generator=gens).images
        for row, img in zip(rows, out):
            row.append(_label(img, f"t_in={t_in:g}"))
    return make_image_grid([tile for row in rows for tile in row], rows=len(rows), cols=len(rows[0]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["samples", "sweep"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default=None, help="pipeline directory (default: the bundled model)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--renders", default="data/renders")
    ap.add_argument("--keys", default="03001627_BlendSwap-CC-BY-armChair2_03,04256520_BlendSwap-CC-0-sofa_05,"
                    "03636649_BlendSwap-CC-0-lamp2_02")
    ap.add_argument("--t-in", default="0,0.25,0.5,0.75,1")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "samples":
        fig = samples_figure(args.model, args.steps)
    else:
        fig = sweep_figure(args.model, args.renders, args.keys.split(","),
                           [float(t) for t in args.t_in.split(",")], args.steps)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.save(args.out)
    meta = {k: v for k, v in vars(args).items()}
    Path(args.out).with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {args.out} ({fig.width}x{fig.height})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
