"""Masked ILVR (Hachnochi et al. 2023) as a diffusers pipeline; DESIGN §3.

A reference image's low frequencies are injected into a pretrained model's sampling,
per region: the object (mask 1) is guided for the first ``t_in`` fraction of the steps
with a factor-``n_in`` low-pass, the background for ``t_out`` with ``n_out``. One class
serves three kinds of model:

- pixel space: ``MaskedILVRPipeline(unet=UNet2DModel, scheduler=...)``;
- latent Stable Diffusion text-to-image (``vae``, ``text_encoder``, ``tokenizer``);
- Stable Diffusion inpainting (a 9-channel UNet), conditioned on "keep the object,
  generate the rest" while the object is guided and on "generate everything" after.

Guidance in x0 space (default) is applied to the model output, not to the scheduler:
the predicted clean sample is guided and the output is rebuilt in the model's own
parameterisation, so ``scheduler.step`` runs unchanged and DDIM, DDPM, DPM-Solver,
UniPC and PNDM all work.
"""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from .lowpass import auto_blur_sigma, gaussian_blur, guided_steps, masked_lowpass, stop_fraction, time_mask

# RePaint's jumps re-run steps out of order: only schedulers whose step depends on the
# timestep alone (no history, no internal step counter) can do that.
RESAMPLING_SCHEDULERS = (DDIMScheduler, DDPMScheduler)


def _as_list(x) -> list:
    if isinstance(x, list | tuple):
        return list(x)
    if isinstance(x, torch.Tensor | np.ndarray) and x.ndim == 4:
        return list(x)
    return [x]


def _to_tensor(img, name: str, gray: bool) -> torch.Tensor:
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


def _to_x0(out: torch.Tensor, x: torch.Tensor, ab: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "epsilon":
        return (x - (1 - ab).sqrt() * out) / ab.sqrt()
    if kind == "v_prediction":
        return ab.sqrt() * x - (1 - ab).sqrt() * out
    if kind == "sample":
        return out
    raise ValueError(f"unsupported prediction_type {kind!r}")


def _from_x0(x0: torch.Tensor, x: torch.Tensor, ab: torch.Tensor, kind: str) -> torch.Tensor:
    """The model output that, with x_t, implies the clean sample ``x0`` (inverse of _to_x0)."""
    if kind == "sample":
        return x0
    eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
    if kind == "epsilon":
        return eps
    return ab.sqrt() * eps - (1 - ab).sqrt() * x0


def step_plan(num_steps: int, resample_start: float, jump_length: int, jump_n_sample: int) -> list[tuple]:
    """The order of work: ("step", k) runs step k; ("jump", a, b) re-noises from position a to b.

    Position p is the state before step p. RePaint's schedule: the first
    ``resample_start`` fraction of the steps runs in windows of ``jump_length`` steps,
    each run ``jump_n_sample`` times, re-noised back to the window's start in between.
    """
    plan: list[tuple] = []
    last = guided_steps(resample_start, num_steps)
    i = 0
    while i < num_steps:
        end = min(i + jump_length, num_steps)
        reps = jump_n_sample if end <= last and end < num_steps else 1
        for r in range(reps):
            plan.extend(("step", k) for k in range(i, end))
            if r < reps - 1:
                plan.append(("jump", end, i))
        i = end
    return plan


class MaskedILVRPipeline(DiffusionPipeline):
    r"""Masked ILVR: region-wise low-frequency guidance from a reference image.

    Args:
        unet: a `UNet2DModel` (pixel space) or `UNet2DConditionModel` (latent; 9 input
            channels for inpainting).
        scheduler: any scheduler with `alphas_cumprod` and unit initial noise sigma
            (DDIM, DDPM, DPM-Solver++, UniPC, PNDM, ...).
        vae, text_encoder, tokenizer: the Stable Diffusion parts; None for pixel models.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["vae", "text_encoder", "tokenizer"]

    def __init__(self, unet, scheduler, vae=None, text_encoder=None, tokenizer=None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer)

    @property
    def vae_scale_factor(self) -> int:
        if getattr(self, "vae", None) is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def is_latent(self) -> bool:
        return getattr(self, "vae", None) is not None

    @property
    def is_inpainting(self) -> bool:
        return self.is_latent and self.unet.config.in_channels == 2 * self.vae.config.latent_channels + 1

    @property
    def is_text_conditioned(self) -> bool:
        return getattr(self, "text_encoder", None) is not None

    def _unet_size_multiple(self) -> int:
        # A UNet2DModel halves the grid once per down block but the last.
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    def _grid_size(self, h: int, w: int) -> tuple[int, int]:
        if not self.is_latent:
            return h, w
        f = self.vae_scale_factor
        return max(1, h // f), max(1, w // f)

    def check_inputs(
        self, images, masks, t_in, t_out, n_in, n_out, space, blur, num_inference_steps, prompt,
        negative_prompt, resample_start, jump_length, jump_n_sample, generator, output_type,
    ) -> None:
        for name, v in (("t_in", t_in), ("t_out", t_out), ("resample_start", resample_start)):
            if not isinstance(v, int | float) or not 0.0 <= v <= 1.0:
                raise ValueError(f"`{name}` must lie in [0, 1], got {v!r}")
        for name, v in (("n_in", n_in), ("n_out", n_out), ("num_inference_steps", num_inference_steps),
                        ("jump_length", jump_length), ("jump_n_sample", jump_n_sample)):
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
        if not self.is_latent and (h % self._unet_size_multiple() or w % self._unet_size_multiple()):
            raise ValueError(
                f"`image` is {w}x{h}; this pixel UNet needs sides divisible by {self._unet_size_multiple()}"
            )
        gh, gw = self._grid_size(h, w)
        for name, n in (("n_in", n_in), ("n_out", n_out)):
            if gh % n or gw % n:
                raise ValueError(f"`{name}`={n} does not divide the model's {gw}x{gh} grid (image {w}x{h})")
        sched = self.scheduler
        if not hasattr(sched, "alphas_cumprod") or float(getattr(sched, "init_noise_sigma", 1.0)) != 1.0:
            raise ValueError(
                f"`scheduler` {type(sched).__name__} is not supported: masked ILVR needs `alphas_cumprod` and "
                "unit initial noise (DDIM, DDPM, DPM-Solver++, UniPC, PNDM)"
            )
        if resample_start > 0 and not isinstance(sched, RESAMPLING_SCHEDULERS):
            raise ValueError(
                f"`resample_start` > 0 needs a DDIM or DDPM scheduler (steps re-run out of order), "
                f"got {type(sched).__name__}"
            )

    def _warn_inputs(self, masks, prompt) -> None:
        for i, m in enumerate(masks):
            if float(m.max()) == 0.0:
                warnings.warn(f"`mask_image` {i} is empty: the whole image is background", stacklevel=3)
            elif float(m.min()) == 1.0:
                warnings.warn(f"`mask_image` {i} is full: the whole image is object", stacklevel=3)
        if prompt is not None and not self.is_text_conditioned:
            warnings.warn("`prompt` is ignored: this model is unconditional", stacklevel=3)

    @torch.no_grad()
    def encode_prompt(self, prompt: list[str], device) -> torch.Tensor:
        tok = self.tokenizer(
            prompt, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        )
        attn = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            attn = tok.attention_mask.to(device)
        return self.text_encoder(tok.input_ids.to(device), attention_mask=attn)[0]

    def _encode_vae(self, x: torch.Tensor) -> torch.Tensor:
        # The distribution's mode: the reference must not depend on the generator.
        z = self.vae.encode(x.to(self.vae.dtype)).latent_dist.mode().float()
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (z - shift) * self.vae.config.scaling_factor

    def _decode_vae(self, z: torch.Tensor) -> torch.Tensor:
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        z = z / self.vae.config.scaling_factor + shift
        return self.vae.decode(z.to(self.vae.dtype)).sample.float()

    def _model_output(self, x, t, cond, guidance_scale, inpaint_cond):
        """The UNet's output for state ``x`` in float32, classifier-free guidance applied."""
        x_in = self.scheduler.scale_model_input(x, t)
        use_cfg = cond is not None and cond.shape[0] == 2 * x.shape[0]
        if use_cfg:
            x_in = torch.cat([x_in, x_in])
        if inpaint_cond is not None:
            x_in = torch.cat([x_in, *(torch.cat([c, c]) if use_cfg else c for c in inpaint_cond)], dim=1)
        x_in = x_in.to(self.unet.dtype)
        if cond is None:
            out = self.unet(x_in, t).sample
        else:
            out = self.unet(x_in, t, encoder_hidden_states=cond).sample
        out = out.float()[:, : x.shape[1]]  # drop learned-variance channels if any
        if use_cfg:
            uncond, text = out.chunk(2)
            out = uncond + guidance_scale * (text - uncond)
        return out

    @torch.no_grad()
    def __call__(
        self,
        image,
        mask_image,
        t_in: float = 0.5,
        t_out: float = 0.0,
        n_in: int = 1,
        n_out: int = 1,
        space: str = "x0",
        blur: str | float = "auto",
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        resample_start: float = 0.0,
        jump_length: int = 10,
        jump_n_sample: int = 10,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        r"""Composite: sample from the model, guided toward ``image`` region by region.

        Args:
            image: reference image(s): PIL, numpy (HxWxC, uint8 or float in [0, 1]) or torch
                (CxHxW in [0, 1] or [-1, 1]); a list or a 4-d array is a batch.
            mask_image: 1 on the object, 0 on the background; one per image or one for all.
            t_in, t_out: fraction of the steps (from the noisiest) during which the object /
                background keeps the reference's low frequencies: 1 keeps them, 0 frees them.
            n_in, n_out: low-pass factors (in the model's grid: latent pixels for latent
                models); 1 passes everything, larger keeps only coarser structure.
            space: "x0" guides the predicted clean sample (default, no aliasing of the
                noise); "xt" is classic ILVR on the noisy sample, with the reference noised
                to the level the step lands on.
            blur: Gaussian sigma, in image pixels, smoothing the mask and the time masks;
                "auto" = max(n_in, n_out) / 2 grid pixels.
            num_inference_steps: K, the scheduler's number of steps.
            guidance_scale: classifier-free guidance for text models (<= 1 disables it).
            prompt, negative_prompt: text for text models; ignored (with a warning) otherwise.
            resample_start: fraction of the steps (from the noisiest) run with RePaint-style
                resampling; 0 disables it.
            jump_length, jump_n_sample: RePaint's window length and repeats per window.
            generator: a generator, or one per image (then each image's result does not
                depend on what else is in the batch).
            output_type: "pil", "np" (NHWC float in [0, 1]) or "pt" (NCHW float in [0, 1]).

        Returns:
            `ImagePipelineOutput` with the composites at the input images' size, or a tuple.
        """
        # 1. Convert and check inputs
        images = [_to_tensor(im, "image", gray=False) for im in _as_list(image)]
        masks = [_to_tensor(m, "mask_image", gray=True) for m in _as_list(mask_image)]
        self.check_inputs(
            images, masks, t_in, t_out, n_in, n_out, space, blur, num_inference_steps, prompt,
            negative_prompt, resample_start, jump_length, jump_n_sample, generator, output_type,
        )
        self._warn_inputs(masks, prompt)
        device = self._execution_device
        batch = len(images)
        if len(masks) == 1:
            masks = masks * batch
        height, width = images[0].shape[-2:]
        y = torch.stack(images).to(device) * 2 - 1
        mask = torch.stack(masks).to(device)

        # 2. Encode the prompt (text models), unconditional embeddings first
        cond = None
        if self.is_text_conditioned:
            prompts = [prompt or ""] * batch if not isinstance(prompt, list) else prompt
            cond = self.encode_prompt(prompts, device)
            if guidance_scale > 1.0:
                negs = [negative_prompt or ""] * batch if not isinstance(negative_prompt, list) else negative_prompt
                cond = torch.cat([self.encode_prompt(negs, device), cond])

        # 3. Bring the reference and the mask to the model's grid
        if self.is_latent:
            f = self.vae_scale_factor
            gh, gw = self._grid_size(height, width)
            if (gh * f, gw * f) != (height, width):
                y = F.interpolate(y, size=(gh * f, gw * f), mode="bilinear", antialias=True, align_corners=False)
                mask = F.interpolate(mask, size=(gh * f, gw * f), mode="area")
            y0 = self._encode_vae(y)
            mask_grid = F.interpolate(mask, size=(gh, gw), mode="area")
        else:
            f = 1
            y0, mask_grid = y, mask
        sigma = auto_blur_sigma(n_in, n_out) if blur == "auto" else float(blur) / f
        mask_b = gaussian_blur(mask_grid, sigma)
        stop = stop_fraction(mask_b, float(t_in), float(t_out))
        phi_y0 = masked_lowpass(y0, n_in, n_out, mask_b)

        inpaint_keep = masked_latents = None
        if self.is_inpainting:
            # Inpainting UNets take 1 = "repaint"; the object is what we keep.
            inpaint_keep = (mask_grid >= 0.5).float()
            masked_latents = self._encode_vae(y * (mask >= 0.5))

        # 4. Timesteps and initial noise
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        # K is the number of model calls; PNDM's PLMS warm-up adds one to the steps asked for.
        num_steps = len(timesteps)
        alphas = self.scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
        shape = (batch, y0.shape[1], y0.shape[2], y0.shape[3])
        x = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        x = x * self.scheduler.init_noise_sigma
        step_kwargs = {}
        params = inspect.signature(self.scheduler.step).parameters
        if "generator" in params:
            step_kwargs["generator"] = generator
        kind = self.scheduler.config.prediction_type

        # 5. Denoising loop (with RePaint jumps where the plan has them)
        plan = step_plan(num_steps, resample_start, jump_length, jump_n_sample)
        with self.progress_bar(total=sum(1 for p in plan if p[0] == "step")) as progress:
            for entry in plan:
                if entry[0] == "jump":
                    # q(x_a | x_b): forward-diffuse from position a back to the noisier b.
                    a_from, a_to = alphas[timesteps[entry[1]]], alphas[timesteps[entry[2]]]
                    noise = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
                    x = (a_to / a_from).sqrt() * x + (1 - a_to / a_from).sqrt() * noise
                    continue
                k = entry[1]
                t = timesteps[k]
                mt = time_mask(stop, k, num_steps, sigma)
                guided = bool(mt.max() > 0)
                inpaint_cond = None
                if inpaint_keep is not None:
                    inpaint_cond = (1 - inpaint_keep * mt, masked_latents)
                out = self._model_output(x, t, cond, guidance_scale, inpaint_cond)
                if guided and space == "x0":
                    ab = alphas[t]
                    x0 = _to_x0(out, x, ab, kind)
                    x0 = x0 + mt * (phi_y0 - masked_lowpass(x0, n_in, n_out, mask_b))
                    out = _from_x0(x0, x, ab, kind)
                x = self.scheduler.step(out, t, x, **step_kwargs, return_dict=False)[0].float()
                if guided and space == "xt":
                    if k + 1 < num_steps:
                        # The level the step landed on, not one step noisier.
                        ab = alphas[timesteps[k + 1]]
                        noise = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
                        yt = ab.sqrt() * y0 + (1 - ab).sqrt() * noise
                        phi_yt = masked_lowpass(yt, n_in, n_out, mask_b)
                    else:
                        phi_yt = phi_y0
                    x = x + mt * (phi_yt - masked_lowpass(x, n_in, n_out, mask_b))
                progress.update()

        # 6. Decode and return at the input size
        img = self._decode_vae(x) if self.is_latent else x
        img = (img / 2 + 0.5).clamp(0, 1)
        if img.shape[-2:] != (height, width):
            img = F.interpolate(img, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)
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

