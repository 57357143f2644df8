"""Masked-ILVR sampling settings: their defaults, declared once, and the ``--model-size`` parser.

``cdc-aug generate``, ``cdc-aug composite``, ``GenerateConfig`` and
``MaskedILVRPipeline.__call__`` all take their defaults from ``DEFAULTS``, so a setting
means the same on every path (tests/test_composite.py checks that they agree). The
values follow the paper's code where it has one (guidance 5, RePaint windows of 10 × 10,
50 DDIM steps); where ours differs (x0 space, auto mask blur, the model) the README's
"our defaults and the paper's" table says why. ``configs/generate/paper_svr.yaml`` is the
paper's own SVR setting.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import UserError


@dataclass(frozen=True)
class SamplingDefaults:
    t_in: float = 0.5  # fraction of the steps the object keeps the reference's low frequencies
    t_out: float = 0.0  # same for the background: 0 = a freely generated scene
    n_in: int = 1  # low-pass factors in the model's grid; 1 passes every frequency
    n_out: int = 1
    space: str = "x0"  # guide the predicted clean sample ("xt": classic ILVR on the noisy one)
    blur: str = "auto"  # mask smoothing sigma in pixels, or "auto" = max(n_in, n_out)/2 grid pixels
    steps: int = 50
    guidance: float = 5.0  # classifier-free guidance of text models (the paper's --scale)
    resample_start: float = 0.0  # RePaint resampling off
    jump_length: int = 10  # RePaint's window and repeats (the paper's code fixes 10 and 10)
    jump_n_sample: int = 10
    scheduler: str = "ddim"
    model_size: str = "native"  # sample at the model's own resolution, return at the input's
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


DEFAULTS = SamplingDefaults()


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
