"""Masked-ILVR sampling settings, declared once, and the ``--model-size`` parser.

``GenerateConfig`` (``cdc-aug generate``) and ``CompositeSettings`` (``cdc-aug composite``)
extend ``SamplingSettings``, and ``MaskedILVRPipeline.__call__`` takes its defaults from
``DEFAULTS``, so a setting
means the same on every path (tests/test_composite.py checks that they agree). The
values follow the paper's code where it has one (guidance 5, RePaint windows of 10 × 10,
50 DDIM steps); where ours differs (x0 space, auto mask blur, the model) the README's
"our defaults and the paper's" table says why. ``configs/generate/paper_svr.yaml`` is the
paper's own SVR setting.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

from .errors import UserError
from .settings import setting


def blur_value(value) -> str:
    """``--blur``: "auto" or a sigma in pixels (a YAML number too), kept as text."""
    text = str(value).strip().lower()
    if text != "auto":
        try:
            float(text)
        except ValueError:
            raise argparse.ArgumentTypeError("a number of pixels or auto") from None
    return text


def fraction(value) -> float:
    """A fraction of the sampling steps (``--t-in``, ``--t-out``, ``--resample-start``): a
    number in [0, 1]. The one check of that range for flags, config files, experiment files
    and ``check_config``; the pipeline's ``check_inputs`` guards its own arguments."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{value!r}: not a number") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{value}: must lie in [0, 1]")
    return v


def t_values(value) -> list[float]:
    """``--t-in 0.25,0.5`` (or a YAML number or list): one run per value, each in its tNNN/."""
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    values = [fraction(v) for v in items if str(v).strip()]
    if not values:
        raise argparse.ArgumentTypeError("no value given")
    return values


def t_tag(t: float) -> str:
    """The subdirectory of one value of a --t-in sweep (and an experiment's domain name): tNNN."""
    return f"t{round(float(t) * 100):03d}"


def model_size_value(value) -> str:
    """``--model-size``: native, input, N or WxH (a YAML number too), kept as text."""
    try:
        parse_model_size(value)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1]) from None
    return str(value).strip().lower()


@dataclass(kw_only=True)
class SamplingSettings:
    """The masked-ILVR settings of ``generate`` and ``composite`` (their common fields)."""

    t_in: float = setting(0.5, "fraction of the steps the object keeps the reference's low frequencies, in [0, 1]",
                          type=fraction)
    t_out: float = setting(0.0, "same for the background: 0 = a freely generated scene", type=fraction)
    n_in: int = setting(1, "object low-pass factor in the model's grid; 1 passes every frequency")
    n_out: int = setting(1, "background low-pass factor")
    space: Literal["x0", "xt"] = setting("x0", "guide the predicted clean sample (x0) or the noisy one "
                                               "(xt: classic ILVR)")
    blur: str = setting("auto", "mask smoothing sigma in pixels, or auto = max(n_in, n_out)/2 grid pixels",
                        type=blur_value)
    steps: int = setting(50, "sampling (DDIM) steps")
    guidance: float = setting(5.0, "classifier-free guidance of text models (the paper's --scale)")
    resample_start: float = setting(0.0, "RePaint resampling from this fraction of the steps (0: off)",
                                    type=fraction)
    jump_length: int = setting(10, "RePaint window (the paper's code fixes 10)")
    jump_n_sample: int = setting(10, "RePaint repeats per window (the paper's code fixes 10)")
    model: str | None = setting(None, "diffusers pipeline directory or cached hub id (default: the bundled model)")
    model_size: str = setting("native", "size the model samples at: native (the model's own, e.g. 512 for SD "
                                        "1.5), input (the input's size), N or WxH; outputs keep the input's size",
                              type=model_size_value)
    seed: int = setting(0, "base seed")
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = setting("auto", "auto: fp16 on CUDA, fp32 on CPU")
    device: str = setting("auto", "auto, cpu, cuda, cuda:N")


DEFAULTS = SamplingSettings()


def parse_model_size(text, flag: str = "--model-size"):
    """``"native"`` -> None (the model's own size), ``"input"`` -> "input", N or WxH -> (H, W)."""
    value = str(text).strip().lower()
    if value in ("native", "input"):
        return None if value == "native" else "input"
    try:
        parts = [int(v) for v in value.split("x")]
    except ValueError:
        raise UserError(f"{flag} {text}: write native, input, a side in pixels or WxH") from None
    if len(parts) not in (1, 2) or min(parts) < 8:
        raise UserError(f"{flag} {text}: write native, input, a side in pixels (at least 8) or WxH")
    return parts[-1], parts[0]


def pipeline_size(model_size, image_hw: tuple[int, int]) -> dict:
    """``height``/``width`` keywords for MaskedILVRPipeline from a parsed --model-size."""
    if model_size is None:
        return {}
    h, w = image_hw if model_size == "input" else model_size
    return {"height": int(h), "width": int(w)}
