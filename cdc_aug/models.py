"""Which diffusion model a run uses: resolution (bundled / local / hub cache), loading, identity.

A model is a diffusers pipeline directory: the DDPMPipeline layout (unet/, scheduler/)
for pixel models such as the bundled default, or a Stable Diffusion 1.x/2.x, SDXL, SD3 or
FLUX layout, text-to-image or inpainting. Its model_index.json's ``_class_name`` picks the
masked-ILVR pipeline that runs it (``PIPELINES``). Runs are offline: a hub id is looked up
in the local Hugging Face cache only.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cdc_aug

from .errors import UserError

if TYPE_CHECKING:
    import torch

    from .pipeline_masked_ilvr import MaskedILVRPipeline

log = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(cdc_aug.__file__).parent / "default_model"
# model_index.json's _class_name -> (module, class) of the masked-ILVR pipeline for it;
# a pipeline saved by one of ours records its own class name.
_PIXEL_OR_SD = ("pipeline_masked_ilvr", "MaskedILVRPipeline")
_SDXL = ("pipeline_masked_ilvr_sdxl", "MaskedILVRSDXLPipeline")
_SD3 = ("pipeline_masked_ilvr_sd3", "MaskedILVRSD3Pipeline")
_FLUX = ("pipeline_masked_ilvr_flux", "MaskedILVRFluxPipeline")
PIPELINES = {
    "DDPMPipeline": _PIXEL_OR_SD,
    "DDIMPipeline": _PIXEL_OR_SD,
    "StableDiffusionPipeline": _PIXEL_OR_SD,
    "StableDiffusionInpaintPipeline": _PIXEL_OR_SD,
    "MaskedILVRPipeline": _PIXEL_OR_SD,
    "StableDiffusionXLPipeline": _SDXL,
    "StableDiffusionXLInpaintPipeline": _SDXL,
    "MaskedILVRSDXLPipeline": _SDXL,
    "StableDiffusion3Pipeline": _SD3,
    "MaskedILVRSD3Pipeline": _SD3,
    "FluxPipeline": _FLUX,
    "MaskedILVRFluxPipeline": _FLUX,
}
SCHEDULERS = ("ddim", "ddpm", "dpm", "unipc", "pndm")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")


def _is_pipeline_dir(path: Path) -> bool:
    return (path / "model_index.json").is_file()


def resolve_model(model: str | None) -> tuple[Path, str]:
    """A local pipeline directory for ``model`` and its kind: "default", "local" or "hub"."""
    if model is None:
        if not _is_pipeline_dir(DEFAULT_MODEL_DIR):
            raise UserError(
                f"the bundled default model is not installed ({DEFAULT_MODEL_DIR} has no model_index.json); "
                "pass --model DIR_OR_HUB_ID or train one with `cdc-aug pretrain`"
            )
        return DEFAULT_MODEL_DIR, "default"
    path = Path(model).expanduser()
    if path.exists():
        if not _is_pipeline_dir(path):
            raise UserError(f"model {model}: not a diffusers pipeline directory (no model_index.json)")
        return path.resolve(), "local"
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise UserError(f"model {model}: no such directory")
    from huggingface_hub import snapshot_download

    try:
        snap = snapshot_download(repo_id=model, local_files_only=True)
    except Exception as e:  # every failure here means "not cached"
        raise UserError(
            f"model {model}: not a local directory and not in the Hugging Face cache (runs are offline); "
            f"download it once with `hf download {model}` ({type(e).__name__})"
        ) from None
    snap = Path(snap)
    if not _is_pipeline_dir(snap):
        raise UserError(f"model {model}: the cached snapshot {snap} has no model_index.json")
    return snap, "hub"


def default_dtype(device) -> torch.dtype:
    """fp16 on CUDA (the UNet dominates and tolerates it), fp32 elsewhere."""
    import torch

    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def make_scheduler(name: str, config):
    """A scheduler of kind ``name`` built from another scheduler's config (DDIM by default)."""
    from diffusers import (
        DDIMScheduler,
        DDPMScheduler,
        DPMSolverMultistepScheduler,
        PNDMScheduler,
        UniPCMultistepScheduler,
    )

    table = {
        "ddim": DDIMScheduler,
        "ddpm": DDPMScheduler,
        "dpm": DPMSolverMultistepScheduler,
        "unipc": UniPCMultistepScheduler,
        "pndm": PNDMScheduler,
    }
    if name not in table:
        raise UserError(f"scheduler {name!r}: choose one of {', '.join(SCHEDULERS)}")
    return table[name].from_config(config)


def pipeline_class(path: Path, model: str | None = None) -> type:
    """The masked-ILVR pipeline class for the checkpoint at ``path``, from its ``_class_name``."""
    import importlib

    try:
        name = json.loads((path / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(f"model {model or path}: cannot read {path / 'model_index.json'} ({e})") from None
    if name not in PIPELINES:
        kinds = ", ".join(k for k in PIPELINES if not k.startswith("MaskedILVR"))
        raise UserError(f"model {model or path}: {name} checkpoints are not supported (masked ILVR runs {kinds})")
    module, cls = PIPELINES[name]
    return getattr(importlib.import_module(f"cdc_aug.{module}"), cls)


def load_pipeline(
    model: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    scheduler: str = "ddim",
) -> MaskedILVRPipeline:
    """A ready masked-ILVR pipeline for ``model`` (None = the bundled default) on ``device``.

    The pipeline class follows the checkpoint's kind (``PIPELINES``). UNet models get
    the ``scheduler`` asked for, built from their own schedule; flow-matching models
    keep their flow-matching Euler scheduler.
    """
    import torch

    path, _ = resolve_model(model)
    cls = pipeline_class(path, model)
    dtype = dtype or default_dtype(device)
    from diffusers.utils import logging as dlog

    # Loading prints a progress bar and advice (install accelerate, ...) that is noise for
    # a command's user; errors still surface as exceptions.
    verbosity, bars = dlog.get_verbosity(), dlog.is_progress_bar_enabled()
    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    try:
        # Cast after loading: the dtype keyword was renamed across diffusers releases.
        pipe = cls.from_pretrained(path, local_files_only=True)
        pipe.to(torch.device(device), dtype)
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"model {model or path}: cannot load it as a pipeline ({e})".replace("\n", " ")) from None
    finally:
        dlog.set_verbosity(verbosity)
        if bars:
            dlog.enable_progress_bar()
    if getattr(cls, "is_flow_matching", False):
        if scheduler not in SCHEDULERS:
            raise UserError(f"scheduler {scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
        if scheduler != "ddim":
            log.warning("scheduler %s ignored: %s samples with its flow-matching Euler scheduler", scheduler,
                        cls.__name__)
        return pipe
    pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    return pipe


def weights_sha256(path: Path) -> str:
    """sha256 over the weight files under ``path`` (relative names and contents, sorted)."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)):
        h.update(str(f.relative_to(path)).encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def model_identity(model: str | None) -> dict[str, Any]:
    """What config.yaml records about the model: where it came from and what its weights were."""
    path, kind = resolve_model(model)
    ident: dict[str, Any] = {"kind": kind, "path": str(path)}
    if kind == "hub":
        ident["hub_id"] = model
        ident["revision"] = path.name  # the snapshot folder is the commit hash
    else:
        ident["sha256"] = weights_sha256(path)
    return ident
