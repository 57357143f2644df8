"""The masked-ILVR core every model family shares (docs/design.md §4).

What does not depend on the model: reading the reference and the mask, the argument
checks, the guidance plan (smoothed mask, time masks over the steps, the low-passed
reference) and the update itself, and returning images at the input's size. The family
files (``pipeline_masked_ilvr*.py``) add their conditioning, latent packing and scheduler
maths around it:

- ``pipeline_masked_ilvr.py``: pixel UNets, Stable Diffusion 1.x/2.x and SD inpainting;
- ``pipeline_masked_ilvr_sdxl.py``: SDXL and SDXL inpainting;
- ``pipeline_masked_ilvr_sd3.py``: SD3-class flow-matching transformers;
- ``pipeline_masked_ilvr_flux.py``: FLUX-class flow-matching transformers (packed latents).

The update, in x0 space or in x_t space, is the same line for every family::

    x ← x + M_t · (φ(ref) − φ(x)),   φ = M_b·φ_{n_in} + (1 − M_b)·φ_{n_out}

with ``ref`` the reference's latent (x0 space) or the reference noised to the level the
step lands on (x_t space). Everything runs on the model's latent grid (before packing).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from .lowpass import auto_blur_sigma, gaussian_blur, guided_steps, masked_lowpass, stop_fraction, time_mask


def as_list(x) -> list:
    if isinstance(x, list | tuple):
        return list(x)
    if isinstance(x, torch.Tensor | np.ndarray) and x.ndim == 4:
        return list(x)
    return [x]


def to_tensor(img, name: str, gray: bool) -> torch.Tensor:
    """PIL / numpy / torch image -> float32 (C, H, W) in [0, 1].

    numpy arrays are HW or HWC (uint8 0-255 or float 0-1); tensors are HW, CHW or
    1CHW, in [0, 1], or in [-1, 1] when they hold negative values (as diffusers takes).
    """
    if isinstance(img, PIL.Image.Image):
        img = np.asarray(img.convert("L" if gray else "RGB"))
    if isinstance(img, np.ndarray):
        arr = img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else 1.0)
        t = torch.from_numpy(np.ascontiguousarray(arr))
        t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
    elif isinstance(img, torch.Tensor):
        t = img.detach().float().cpu()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim == 2:
            t = t[None]
        if t.ndim == 3 and t.shape[-1] in (1, 3, 4) and t.shape[0] not in (1, 3, 4):
            t = t.permute(2, 0, 1)
        if not gray and t.min() < 0:
            t = (t + 1) / 2
    else:
        raise ValueError(f"`{name}` must be a PIL image, numpy array or torch tensor, got {type(img).__name__}")
    if t.ndim != 3:
        raise ValueError(f"`{name}` must be an HxW, HxWxC or CxHxW image, got shape {tuple(t.shape)}")
    if gray:
        t = t[:1] if t.shape[0] in (1, 2, 4) else t.mean(0, keepdim=True)
    else:
        t = t[:3] if t.shape[0] >= 3 else t[:1].expand(3, -1, -1)
    return t


def ilvr_update(x: torch.Tensor, phi_ref: torch.Tensor, mt: torch.Tensor, n_in: int, n_out: int,
                mask_b: torch.Tensor) -> torch.Tensor:
    """x + M_t·(φ(ref) − φ(x)): replace x's low frequencies by the reference's where M_t = 1."""
    return x + mt * (phi_ref - masked_lowpass(x, n_in, n_out, mask_b))


@dataclass
class GuidancePlan:
    """Everything the update needs, on the model's grid, computed once per call."""

    n_in: int
    n_out: int
    mask_b: torch.Tensor  # the smoothed mask M_b
    phi_y0: torch.Tensor  # φ(reference latent)
    time_masks: list  # M_t per step (shared tensors where steps agree)
    guided: list  # whether any pixel is guided at step k

    def update(self, x: torch.Tensor, k: int, ref: torch.Tensor | None = None) -> torch.Tensor:
        """Guide ``x`` at step k toward ``ref`` (already low-passed; default φ(y0))."""
        phi = self.phi_y0 if ref is None else ref
        return ilvr_update(x, phi, self.time_masks[k], self.n_in, self.n_out, self.mask_b)

    def lowpass(self, x: torch.Tensor) -> torch.Tensor:
        return masked_lowpass(x, self.n_in, self.n_out, self.mask_b)


def plan_guidance(y0, mask_grid, t_in, t_out, n_in, n_out, blur, scale: int, num_steps: int) -> GuidancePlan:
    """The guidance plan for reference latent ``y0`` and mask ``mask_grid`` (both on the grid).

    ``scale`` is the grid's size in image pixels (the VAE factor; 1 in pixel space):
    ``blur`` is given in image pixels, "auto" in grid pixels.
    """
    sigma = auto_blur_sigma(n_in, n_out) if blur == "auto" else float(blur) / scale
    mask_b = gaussian_blur(mask_grid, sigma)
    stop = stop_fraction(mask_b, float(t_in), float(t_out))
    phi_y0 = masked_lowpass(y0, n_in, n_out, mask_b)
    # M_t depends on the step alone: computed once, not once per (re-)run of a step
    time_masks, guided, last = [], [], None
    for k in range(num_steps):
        hard = stop * num_steps > k + 0.5
        if last is None or not torch.equal(hard, last[0]):
            last = (hard, time_mask(stop, k, num_steps, sigma))
        time_masks.append(last[1])
        guided.append(bool(hard.any()))
    return GuidancePlan(n_in, n_out, mask_b, phi_y0, time_masks, guided)


class MaskedILVRMixin:
    """The parts of a masked-ILVR pipeline that every family shares.

    A family sets ``is_latent``, ``is_text_conditioned``, ``vae_scale_factor`` and
    ``default_size``; ``size_multiple`` is the factor its sampled sides must be divisible by.
    """

    @property
    def size_multiple(self) -> int:
        return self.vae_scale_factor

    def check_ilvr_inputs(
        self, images, masks, t_in, t_out, n_in, n_out, space, blur, num_inference_steps, prompt,
        negative_prompt, generator, output_type, height, width,
    ) -> None:
        """The checks every family makes, each error naming its argument."""
        for name, v in (("t_in", t_in), ("t_out", t_out)):
            if not isinstance(v, int | float) or not 0.0 <= v <= 1.0:
                raise ValueError(f"`{name}` must lie in [0, 1], got {v!r}")
        for name, v in (("n_in", n_in), ("n_out", n_out), ("num_inference_steps", num_inference_steps)):
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {v!r}")
        for name, v in (("t_in", t_in), ("t_out", t_out)):
            if v > 0 and guided_steps(v, num_inference_steps) == 0:
                raise ValueError(
                    f"`{name}`={v} guides 0 of {num_inference_steps} steps (a step counts when its midpoint "
                    f"is before t*K); use 0 or more than {0.5 / num_inference_steps:.4g}"
                )
        if space not in ("x0", "xt"):
            raise ValueError(f"`space` must be 'x0' or 'xt', got {space!r}")
        if not (blur == "auto" or isinstance(blur, int | float) and not isinstance(blur, bool) and blur >= 0):
            raise ValueError(f"`blur` must be 'auto' or a Gaussian sigma in pixels >= 0, got {blur!r}")
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"`output_type` must be 'pil', 'np' or 'pt', got {output_type!r}")
        if len(masks) not in (1, len(images)):
            raise ValueError(f"`mask_image` holds {len(masks)} masks for {len(images)} images")
        if isinstance(generator, list) and len(generator) != len(images):
            raise ValueError(f"`generator` is a list of {len(generator)} for a batch of {len(images)} images")
        for name, p in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if isinstance(p, list) and len(p) != len(images):
                raise ValueError(f"`{name}` is a list of {len(p)} for a batch of {len(images)} images")
            if p is not None and not isinstance(p, str | list):
                raise ValueError(f"`{name}` must be a string or a list of strings, got {type(p).__name__}")
        h, w = images[0].shape[-2:]
        for i, img in enumerate(images):
            if img.shape[-2:] != (h, w):
                raise ValueError(f"`image` {i} is {img.shape[-1]}x{img.shape[-2]} but `image` 0 is {w}x{h}")
        for i, m in enumerate(masks):
            if m.shape[-2:] != (h, w):
                raise ValueError(f"`mask_image` is {m.shape[-1]}x{m.shape[-2]} but `image` is {w}x{h}")
            if m.min() < 0 or m.max() > 1:
                raise ValueError(f"`mask_image` {i} must hold values in [0, 1] (1 = object)")
        for name, v in (("height", height), ("width", width)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1):
                raise ValueError(f"`{name}` must be a positive integer or None (the model's size), got {v!r}")
        mh, mw = self.default_size((h, w))
        mh, mw = height or mh, width or mw
        f = self.size_multiple
        if mh % f or mw % f:
            raise ValueError(f"`height`x`width` is {mw}x{mh}; this model needs sides divisible by {f}")
        s = self.vae_scale_factor
        gh, gw = mh // s, mw // s
        for name, n in (("n_in", n_in), ("n_out", n_out)):
            if gh % n or gw % n:
                raise ValueError(f"`{name}`={n} does not divide the model's {gw}x{gh} grid (sampled at {mw}x{mh})")

    def warn_inputs(self, masks, prompt) -> None:
        for i, m in enumerate(masks):
            if float(m.max()) == 0.0:
                warnings.warn(f"`mask_image` {i} is empty: the whole image is background", stacklevel=3)
            elif float(m.min()) == 1.0:
                warnings.warn(f"`mask_image` {i} is full: the whole image is object", stacklevel=3)
        if prompt is not None and not self.is_text_conditioned:
            warnings.warn("`prompt` is ignored: this model is unconditional", stacklevel=3)

    @staticmethod
    def prompts_for(prompt, negative_prompt, batch: int) -> tuple[list[str], list[str]]:
        """(prompts, negative prompts), one per image; None is the empty prompt."""
        prompts = [prompt or ""] * batch if not isinstance(prompt, list) else prompt
        negs = [negative_prompt or ""] * batch if not isinstance(negative_prompt, list) else negative_prompt
        return prompts, negs

    @staticmethod
    def resize_reference(y, mask, height: int, width: int):
        """Reference (in [-1, 1]) and mask at the size the model samples at."""
        if tuple(y.shape[-2:]) != (height, width):
            y = F.interpolate(y, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
            mask = F.interpolate(mask, size=(height, width), mode="bilinear", antialias=True,
                                 align_corners=False).clamp(0, 1)
        return y, mask

    # Follows diffusers' retrieve_latents(..., sample_mode="argmax") with scaling_factor / shift_factor.
    def _encode_vae(self, x: torch.Tensor) -> torch.Tensor:
        # The distribution's mode: the reference must not depend on the generator.
        z = self.vae.encode(x.to(self.vae.dtype)).latent_dist.mode().float()
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (z - shift) * self.vae.config.scaling_factor

    def _decode_vae(self, z: torch.Tensor) -> torch.Tensor:
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        z = z / self.vae.config.scaling_factor + shift
        return self.vae.decode(z.to(self.vae.dtype)).sample.float()

    def postprocess(self, img: torch.Tensor, in_hw: tuple[int, int], output_type: str, return_dict: bool):
        """Decoded images in [-1, 1] -> the input's size, as PIL, numpy or torch."""
        img = (img / 2 + 0.5).clamp(0, 1)
        if tuple(img.shape[-2:]) != tuple(in_hw):
            img = F.interpolate(img, size=in_hw, mode="bicubic", antialias=True, align_corners=False)
            img = img.clamp(0, 1)
        img = img.cpu()
        self.maybe_free_model_hooks()
        if output_type == "pt":
            result = img
        else:
            result = img.permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                result = self.numpy_to_pil(result)
        if not return_dict:
            return (result,)
        return ImagePipelineOutput(images=result)


def read_inputs(image, mask_image) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The reference images and masks as lists of (C, H, W) float tensors in [0, 1]."""
    images = [to_tensor(im, "image", gray=False) for im in as_list(image)]
    masks = [to_tensor(m, "mask_image", gray=True) for m in as_list(mask_image)]
    return images, masks
