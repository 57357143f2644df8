"""``cdc-aug composite``: masked ILVR on one image.

Object immersion: an object pasted on a background (--image obj.png --background bg.png,
or a ready composite plus --mask), the background kept with --t-out 1. Scribble editing:
strokes painted on a photo, with a mask around them. --sweep t_in=0,0.25,0.5,0.75,1
(repeatable; prompts separated by |) writes a labelled grid of results, one axis per
swept parameter, like the paper's parameter ablation.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from cdc_aug.sampling import SamplingSettings
from cdc_aug.settings import setting

log = logging.getLogger(__name__)

# Parameters a --sweep may vary: name -> (type, pipeline keyword or None if special).
SWEEPABLE = {
    "t_in": float, "t_out": float, "n_in": int, "n_out": int, "space": str, "blur": str, "steps": int,
    "guidance": float, "seed": int, "resample_start": float, "jump_length": int, "jump_n_sample": int,
    "prompt": str,
}
HELP = "{help}. " + __doc__.split("\n\n", 1)[1]


def sweep_specs(value) -> list[str]:
    """--sweep's values: PARAM=V1,V2 texts, or the {param: [values]} a composite's .yaml records."""
    if isinstance(value, dict):
        return [f"{k}={('|' if k == 'prompt' else ',').join(map(str, v))}" for k, v in value.items()]
    return [str(v) for v in (value if isinstance(value, list) else [value])]


@dataclass(kw_only=True)
class CompositeSettings(SamplingSettings):
    """``cdc-aug composite``'s settings; the sampling ones (and their defaults) are generate's."""

    image: str | None = setting(None, "reference image (PNG/JPEG; required); an RGBA image's alpha is the default "
                                      "mask, and it is placed on mid grey unless --background is given")
    mask: str | None = setting(None, "mask image, white = object (default: the image's alpha)")
    background: str | None = setting(None, "paste the RGBA --image onto this background first (object immersion)")
    out: str | None = setting(None, "output PNG (required; the grid when --sweep is given)")
    scheduler: str = setting("ddim", "ddim, ddpm, dpm, unipc or pndm")
    prompt: str | None = setting(None, "text for text-conditioned models")
    negative_prompt: str | None = setting(None, "negative text for classifier-free guidance")
    size: str | None = setting(None, "resize the inputs to WxH (or one number for a square) first")
    sweep: list[str] = setting(factory=list, help="vary a parameter over values, PARAM=V1,V2,... (repeatable); "
                               f"one of {', '.join(SWEEPABLE)}", type=sweep_specs, nargs="append")


def settings_class():
    return CompositeSettings


def _record_only() -> tuple[str, ...]:
    """generate's settings that are not composite's: one preset (configs/generate/*.yaml)
    serves both commands, and a composite's own .yaml records the model's identity."""
    from cdc_aug.generate import GenerateConfig

    ours = {f.name for f in fields(CompositeSettings)}
    return tuple(f.name for f in fields(GenerateConfig) if f.name not in ours) + ("model_identity",)


RECORD_ONLY = _record_only()


def parse_sweeps(specs: list[str]) -> list[tuple[str, list]]:
    from cdc_aug.errors import UserError

    sweeps = []
    for spec in specs:
        name, sep, values = spec.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not values.strip():
            raise UserError(f"--sweep {spec!r}: write PARAM=V1,V2,...")
        if name not in SWEEPABLE:
            raise UserError(f"--sweep {spec!r}: {name} cannot be swept; choose one of {', '.join(SWEEPABLE)}")
        if name in (s[0] for s in sweeps):
            raise UserError(f"--sweep {spec!r}: {name} is swept twice")
        sep_char = "|" if name == "prompt" else ","
        try:
            vals = [SWEEPABLE[name](v.strip()) for v in values.split(sep_char)]
        except ValueError:
            raise UserError(f"--sweep {spec!r}: values must be {SWEEPABLE[name].__name__}s") from None
        sweeps.append((name, vals))
    return sweeps


def _parse_size(text: str | None):
    from cdc_aug.errors import UserError

    if not text:
        return None
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise UserError(f"--size {text}: write WxH or one number") from None
    if len(parts) not in (1, 2) or min(parts) < 8:
        raise UserError(f"--size {text}: write WxH or one number (at least 8)")
    return (parts[0], parts[-1])


def load_inputs(args):
    """(reference RGB uint8 HxWx3, mask float32 HxW in [0, 1]) from the flags."""
    import numpy as np
    from PIL import Image

    from cdc_aug.errors import UserError

    def open_image(path, flag):
        try:
            return Image.open(path)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise UserError(f"{flag} {path}: cannot read it as an image ({e})") from None

    img = open_image(args.image, "--image")
    size = _parse_size(args.size)
    alpha = img.getchannel("A") if "A" in img.getbands() else None
    if args.mask:
        mask = open_image(args.mask, "--mask").convert("L")
    elif alpha is not None:
        mask = alpha
    else:
        raise UserError(f"--image {args.image} has no alpha channel: pass --mask (white = object)")
    rgb = img.convert("RGB")
    if args.background:
        if alpha is None:
            raise UserError("--background needs an RGBA --image (its alpha says where the object is)")
        bg = open_image(args.background, "--background").convert("RGB").resize(rgb.size, Image.LANCZOS)
        rgb = Image.composite(rgb, bg, alpha)
    elif alpha is not None:
        # a render on a transparent background: put it on mid grey, as `generate` does, so
        # the colour hidden under alpha 0 does not leak in through the blurred mask
        rgb = Image.composite(rgb, Image.new("RGB", rgb.size, (127, 127, 127)), alpha)
    if size:
        rgb = rgb.resize(size, Image.LANCZOS)
        mask = mask.resize(size, Image.BILINEAR)
    if mask.size != rgb.size:
        raise UserError(f"--mask {args.mask} is {mask.size[0]}x{mask.size[1]} but --image is "
                        f"{rgb.size[0]}x{rgb.size[1]}")
    return np.asarray(rgb), np.asarray(mask, dtype=np.float32) / 255.0


def cell_kwargs(args, overrides: dict) -> dict:
    """Pipeline keywords for one result: the flags with the sweep's values on top."""
    import torch

    p = {k: getattr(args, k) for k in SWEEPABLE}
    p.update(overrides)
    blur = p["blur"]
    if blur != "auto":
        try:
            blur = float(blur)
        except ValueError:
            from cdc_aug.errors import UserError

            raise UserError(f"--blur {blur}: a number of pixels or auto") from None
    return dict(
        t_in=p["t_in"], t_out=p["t_out"], n_in=p["n_in"], n_out=p["n_out"], space=p["space"], blur=blur,
        num_inference_steps=p["steps"], guidance_scale=p["guidance"], prompt=p["prompt"],
        negative_prompt=args.negative_prompt, resample_start=p["resample_start"], jump_length=p["jump_length"],
        jump_n_sample=p["jump_n_sample"], generator=torch.Generator("cpu").manual_seed(p["seed"]),
    )


def _label(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def make_grid(rows: list[list], row_labels: list[str], col_labels: list[str], reference=None):
    """A labelled grid of equally sized PIL images; ``reference`` opens every row."""
    from PIL import Image, ImageDraw, ImageFont

    w, h = rows[0][0].size
    font = ImageFont.load_default()
    pad, head = 4, 18
    left = max([0] + [int(ImageDraw.Draw(Image.new("L", (1, 1))).textlength(s, font=font)) + 2 * pad
                      for s in row_labels if s])
    cols = len(rows[0]) + (reference is not None)
    grid = Image.new("RGB", (left + cols * (w + pad) + pad, head + len(rows) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    labels = (["reference"] if reference is not None else []) + col_labels
    for c, text in enumerate(labels):
        draw.text((left + pad + c * (w + pad), 3), text, fill="black", font=font)
    for r, row in enumerate(rows):
        y = head + r * (h + pad)
        if row_labels[r]:
            draw.text((pad, y + h // 2 - 6), row_labels[r], fill="black", font=font)
        tiles = ([reference] if reference is not None else []) + row
        for c, tile in enumerate(tiles):
            grid.paste(tile, (left + pad + c * (w + pad), y))
    return grid


def run(args: CompositeSettings) -> int:
    import numpy as np
    from PIL import Image, ImageFilter

    from cdc_aug.device import resolve_device, resolve_dtype
    from cdc_aug.errors import UserError
    from cdc_aug.models import load_pipeline, model_identity
    from cdc_aug.runinfo import write_config
    from cdc_aug.sampling import parse_model_size, pipeline_size

    for name in ("image", "out"):
        if not getattr(args, name):
            raise UserError(f"--{name} is required (on the command line or in --config)")
    if args.prompt and "{" in args.prompt:
        raise UserError(f"--prompt {args.prompt!r} is a generate template (from a --config preset?); "
                        "composite has no category or scene to fill in: pass --prompt TEXT")
    model_size = parse_model_size(args.model_size)
    sweeps = parse_sweeps(args.sweep)
    ref, mask = load_inputs(args)
    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise UserError(f"--out {args.out}: give an image file name (.png)")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    identity = model_identity(args.model)
    pipe = load_pipeline(args.model, device=device, dtype=dtype, scheduler=args.scheduler)
    pipe.set_progress_bar_config(disable=bool(sweeps))

    names = [s[0] for s in sweeps]
    combos = list(itertools.product(*(s[1] for s in sweeps))) if sweeps else [()]
    results = []
    for combo in combos:
        overrides = dict(zip(names, combo))
        start = time.perf_counter()
        try:
            image = pipe(ref, mask, output_type="pil", **pipeline_size(model_size, ref.shape[:2]),
                         **cell_kwargs(args, overrides)).images[0]
        except ValueError as e:
            hint = " (choose another --model-size or --size)" if "divisible" in str(e) else ""
            raise UserError(f"{e}{hint}".replace("\n", " ")) from None
        label = ", ".join(f"{k}={_label(v)}" for k, v in overrides.items())
        log.info("%s%.1f s", f"{label}: " if label else "", time.perf_counter() - start)
        results.append(image)

    out.parent.mkdir(parents=True, exist_ok=True)
    if sweeps:
        ncols = len(sweeps[-1][1])
        rows = [results[i : i + ncols] for i in range(0, len(results), ncols)]
        col_labels = [f"{names[-1]}={_label(v)}" for v in sweeps[-1][1]]
        row_labels = [", ".join(f"{k}={_label(v)}" for k, v in zip(names[:-1], combo))
                      for combo in combos[::ncols]]
        # the reference tile shows the mask's border, so each result is read against it
        edge = np.asarray(Image.fromarray((mask > 0.5).astype(np.uint8) * 255).filter(ImageFilter.FIND_EDGES)) > 0
        marked = ref.copy()
        marked[edge] = (255, 0, 0)
        make_grid(rows, row_labels, col_labels, reference=Image.fromarray(marked)).save(out)
    else:
        results[0].save(out)
    config = asdict(args)
    config.update(sweep={n: v for n, v in sweeps}, model_identity=identity)
    write_config(out.parent, config, name=f"{out.stem}.yaml")
    print(f"wrote {out} ({len(results)} result{'s' if len(results) > 1 else ''}) and {out.parent / (out.stem + '.yaml')}")
    return 0
