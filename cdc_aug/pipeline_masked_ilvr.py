"""Masked ILVR (Hachnochi et al. 2023) as a diffusers pipeline; docs/design.md §4.

A reference image's low frequencies are injected into a pretrained model's sampling,
per region: the object (mask 1) is guided for the first ``t_in`` fraction of the steps
with a factor-``n_in`` low-pass, the background for ``t_out`` with ``n_out``. One class
serves three kinds of model:

- pixel space: ``MaskedILVRPipeline(unet=UNet2DModel, scheduler=...)``;
- latent Stable Diffusion text-to-image (``vae``, ``text_encoder``, ``tokenizer``);
- Stable Diffusion inpainting (a 9-channel UNet), conditioned on "keep the object,
  generate the rest" while the object is guided and on "generate everything" after.

Like diffusers pipelines it samples at the model's native size (``height``/``width``,
default ``unet.config.sample_size × vae_scale_factor``: 512² for SD 1.5) and returns the
input's size, so a 224² render runs on SD's 64² latent grid, not on a 28² one.

Guidance in x0 space (default) is applied to the model output, not to the scheduler:
the predicted clean sample is guided and the output is rebuilt in the model's own
parameterisation, so ``scheduler.step`` runs unchanged and DDIM, DDPM, DPM-Solver,
UniPC and PNDM all work.

The update, the time masks and the low-pass are the shared core (``masked_ilvr.py``);
this file holds the ε/v-prediction maths and the SD conditioning. SDXL subclasses it
(``pipeline_masked_ilvr_sdxl.py``: its conditioning only); the flow-matching
transformers have their own loop (``pipeline_masked_ilvr_flow.py``).
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor

from .lowpass import guided_steps
from .masked_ilvr import MaskedILVRMixin, plan_guidance, read_inputs
from .sampling import DEFAULTS

# RePaint's jumps re-run steps out of order: only schedulers whose step depends on the
# timestep alone (no history, no internal step counter) can do that.
RESAMPLING_SCHEDULERS = (DDIMScheduler, DDPMScheduler)


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


class MaskedILVRPipeline(DiffusionPipeline, MaskedILVRMixin):
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

    @property
    def size_multiple(self) -> int:
        if self.is_latent:
            return self.vae_scale_factor
        # A UNet2DModel halves the grid once per down block but the last.
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    def default_size(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """The model's native (height, width): ``unet.config.sample_size × vae_scale_factor``,
        as diffusers pipelines default to; the input's size when the UNet records none."""
        s = getattr(self.unet.config, "sample_size", None)
        if s is None:
            return image_hw
        sh, sw = (s, s) if isinstance(s, int) else s
        return sh * self.vae_scale_factor, sw * self.vae_scale_factor

    def check_inputs(
        self, images, masks, t_in, t_out, n_in, n_out, space, blur, num_inference_steps, prompt,
        negative_prompt, resample_start, jump_length, jump_n_sample, generator, output_type, height, width,
    ) -> None:
        if not isinstance(resample_start, int | float) or not 0.0 <= resample_start <= 1.0:
            raise ValueError(f"`resample_start` must lie in [0, 1], got {resample_start!r}")
        for name, v in (("jump_length", jump_length), ("jump_n_sample", jump_n_sample)):
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {v!r}")
        self.check_ilvr_inputs(images, masks, t_in, t_out, n_in, n_out, space, blur, num_inference_steps, prompt,
                               negative_prompt, generator, output_type, height, width)
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

    # Follows diffusers' StableDiffusionPipeline.encode_prompt (padding to the tokenizer's
    # max length, an attention mask only where the encoder asks for one), without LoRA and clip-skip.
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

    def _model_output(self, x, t, cond, guidance_scale, inpaint_cond, unet_dtype):
        """The UNet's output for state ``x`` in float32, classifier-free guidance applied.

        ``cond`` holds the UNet's conditioning keywords (None: unconditional), each with
        the unconditional half first when it has twice the batch (guidance on).
        """
        x_in = self.scheduler.scale_model_input(x, t)
        use_cfg = cond is not None and cond["encoder_hidden_states"].shape[0] == 2 * x.shape[0]
        if use_cfg:
            x_in = torch.cat([x_in, x_in])
        if inpaint_cond is not None:
            x_in = torch.cat([x_in, *(torch.cat([c, c]) if use_cfg else c for c in inpaint_cond)], dim=1)
        x_in = x_in.to(unet_dtype)
        if cond is None:
            out = self.unet(x_in, t).sample
        else:
            out = self.unet(x_in, t, **cond).sample
        out = out.float()[:, : x.shape[1]]  # drop learned-variance channels if any
        if use_cfg:
            uncond, text = out.chunk(2)
            out = uncond + guidance_scale * (text - uncond)
        return out

    def encode_conditions(self, prompt, negative_prompt, batch: int, guidance_scale: float, device,
                          height: int, width: int) -> dict | None:
        """The UNet's conditioning keywords, unconditional half first when guidance is on."""
        if not self.is_text_conditioned:
            return None
        prompts, negs = self.prompts_for(prompt, negative_prompt, batch)
        cond = self.encode_prompt(prompts, device)
        if guidance_scale > 1.0:
            cond = torch.cat([self.encode_prompt(negs, device), cond])
        return {"encoder_hidden_states": cond}

    def _inpaint_conditions(self, keep, masked_latents, time_masks) -> list:
        """The inpainting UNet's extra input, (mask channel, masked-image latent), per step.

        Inpainting UNets take 1 = "repaint". The object is kept, per pixel, while it is
        guided: kept = keep · M_t. Where its guidance has ended the UNet is told to repaint
        and its masked-image latent there is zeroed; once no object pixel is guided the
        whole image switches to the paper's "generate everything" (mask all ones, latent
        zero; its code: ``c_concat[:, 0] = 1; c_concat[:, 1:] = 0`` when guidance ends), so
        nothing of the reference reaches the UNet through these channels afterwards.

        Per pixel, not for the whole image when all guidance ends (the paper's rule): with
        the background guided longer than the object (t_out > t_in, object immersion) a
        whole-image switch would keep the object pinned by the inpainting channels for all
        of t_out and make t_in meaningless. With t_out = 0 and no blur (the paper's SVR
        setting) the two rules are the same step by step.
        """
        conds, cache = [], {}
        for mt in time_masks:
            key = id(mt)
            if key not in cache:
                kept = keep * mt
                # per sample: is any of its object still guided? (a batch mixes samples)
                active = (kept.amax(dim=(1, 2, 3), keepdim=True) > 0).float()
                # while active, the background holds the encoded masked image, as diffusers and the paper pass it
                cache[key] = (1 - kept, masked_latents * (1 - keep + kept) * active)
            conds.append(cache[key])
        return conds

    @torch.no_grad()
    def __call__(
        self,
        image,
        mask_image,
        t_in: float = DEFAULTS.t_in,
        t_out: float = DEFAULTS.t_out,
        n_in: int = DEFAULTS.n_in,
        n_out: int = DEFAULTS.n_out,
        space: str = DEFAULTS.space,
        blur: str | float = DEFAULTS.blur,
        num_inference_steps: int = DEFAULTS.steps,
        guidance_scale: float = DEFAULTS.guidance,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        resample_start: float = DEFAULTS.resample_start,
        jump_length: int = DEFAULTS.jump_length,
        jump_n_sample: int = DEFAULTS.jump_n_sample,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        r"""Composite: sample from the model, guided toward `image` region by region.

        The defaults are `cdc_aug.sampling.DEFAULTS`, shared with `cdc-aug generate` and
        `cdc-aug composite`.

        Args:
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them):
                The reference image(s): PIL, numpy (HxWxC, uint8 or float in [0, 1]) or torch
                (CxHxW in [0, 1] or [-1, 1]); a list or a 4-d array is a batch of equally sized
                images.
            mask_image (same types as `image`):
                1 on the object, 0 on the background; one per image or one for all.
            t_in (`float`, *optional*, defaults to 0.5):
                Fraction of the steps, from the noisiest, during which the object keeps the
                reference's low frequencies: 1 keeps them all the way, 0 frees the object.
            t_out (`float`, *optional*, defaults to 0.0):
                The same for the background; 0 generates a free scene.
            n_in (`int`, *optional*, defaults to 1):
                Low-pass factor on the object, in the model's grid (latent pixels for latent
                models): 1 passes every frequency, larger keeps only coarser structure.
            n_out (`int`, *optional*, defaults to 1):
                The same for the background.
            space (`str`, *optional*, defaults to `"x0"`):
                `"x0"` guides the predicted clean sample; `"xt"` is classic ILVR on the noisy
                sample, with the reference noised to the level the step lands on.
            blur (`str` or `float`, *optional*, defaults to `"auto"`):
                Gaussian sigma, in pixels of the sampled image, smoothing the mask and the time
                masks; `"auto"` = max(n_in, n_out) / 2 grid pixels, 0 = hard masks.
            num_inference_steps (`int`, *optional*, defaults to 50):
                K, the scheduler's number of steps.
            guidance_scale (`float`, *optional*, defaults to 5.0):
                Classifier-free guidance for text models; <= 1 disables it.
            prompt (`str` or `List[str]`, *optional*):
                Text for text models; ignored (with a warning) by unconditional ones.
            negative_prompt (`str` or `List[str]`, *optional*):
                Text to guide away from (text models with `guidance_scale` > 1).
            resample_start (`float`, *optional*, defaults to 0.0):
                Fraction of the steps, from the noisiest, run with RePaint-style resampling;
                0 disables it (needs a DDIM or DDPM scheduler).
            jump_length (`int`, *optional*, defaults to 10):
                RePaint's window length in steps.
            jump_n_sample (`int`, *optional*, defaults to 10):
                RePaint's repeats per window.
            height (`int`, *optional*, defaults to `unet.config.sample_size * vae_scale_factor`):
                Height the model samples at; reference and mask are resized to it and the
                result back to the input's size. Pass the input's height to sample at it
                (fully convolutional pixel UNets such as the bundled model can).
            width (`int`, *optional*, defaults to `unet.config.sample_size * vae_scale_factor`):
                Width the model samples at, as `height`.
            generator (`torch.Generator` or `List[torch.Generator]`, *optional*):
                A generator, or one per image (then each image's result does not depend on
                what else is in the batch).
            output_type (`str`, *optional*, defaults to `"pil"`):
                `"pil"`, `"np"` (NHWC float in [0, 1]) or `"pt"` (NCHW float in [0, 1]).
            return_dict (`bool`, *optional*, defaults to `True`):
                Return an `ImagePipelineOutput` instead of a tuple.

        Example:

        ```py
        >>> import numpy as np
        >>> import torch
        >>> from cdc_aug import MaskedILVRPipeline
        >>> from cdc_aug.models import DEFAULT_MODEL_DIR

        >>> pipe = MaskedILVRPipeline.from_pretrained(DEFAULT_MODEL_DIR)  # the bundled 64² pixel model
        >>> pipe.set_progress_bar_config(disable=True)
        >>> image = np.full((96, 96, 3), 127, np.uint8)  # a red square on grey
        >>> image[24:72, 24:72] = (200, 40, 40)
        >>> mask = np.zeros((96, 96), np.float32)
        >>> mask[24:72, 24:72] = 1
        >>> out = pipe(image, mask, t_in=0.5, num_inference_steps=10, generator=torch.Generator().manual_seed(0))
        >>> out.images[0].size  # sampled at the model's 64², returned at the input's size
        (96, 96)

        ```

        Returns:
            [`~pipelines.ImagePipelineOutput`] or `tuple`: the composites at the input images'
            size; a tuple whose first element is the list of images when `return_dict` is False.
        """
        # 1. Convert and check inputs
        images, masks = read_inputs(image, mask_image)
        self.check_inputs(
            images, masks, t_in, t_out, n_in, n_out, space, blur, num_inference_steps, prompt,
            negative_prompt, resample_start, jump_length, jump_n_sample, generator, output_type, height, width,
        )
        self.warn_inputs(masks, prompt)
        device = self._execution_device
        batch = len(images)
        if len(masks) == 1:
            masks = masks * batch
        in_h, in_w = images[0].shape[-2:]
        model_h, model_w = self.default_size((in_h, in_w))
        height, width = height or model_h, width or model_w
        y = torch.stack(images).to(device) * 2 - 1
        mask = torch.stack(masks).to(device)

        # 2. Encode the prompt (text models), unconditional embeddings first
        cond = self.encode_conditions(prompt, negative_prompt, batch, guidance_scale, device, height, width)

        # 3. Bring the reference and the mask to the model's size, then to its grid
        y, mask = self.resize_reference(y, mask, height, width)
        if self.is_latent:
            y0 = self._encode_vae(y)
            mask_grid = F.interpolate(mask, size=y0.shape[-2:], mode="area")
        else:
            y0, mask_grid = y, mask

        # 4. Timesteps, guidance plan (time masks) and initial noise
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        # K is the number of model calls; PNDM's PLMS warm-up adds one to the steps asked for.
        num_steps = len(timesteps)
        guide = plan_guidance(y0, mask_grid, t_in, t_out, n_in, n_out, blur, self.vae_scale_factor, num_steps)
        inpaint_conds = None
        if self.is_inpainting:
            keep = (mask_grid >= 0.5).float()
            masked_latents = self._encode_vae(y * (mask >= 0.5)) if t_in > 0 else torch.zeros_like(y0)
            inpaint_conds = self._inpaint_conditions(keep, masked_latents, guide.time_masks)
        alphas = self.scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
        shape = (batch, y0.shape[1], y0.shape[2], y0.shape[3])
        x = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        x = x * self.scheduler.init_noise_sigma
        # Follows diffusers' prepare_extra_step_kwargs: a generator only where step() takes one.
        step_kwargs = {}
        params = inspect.signature(self.scheduler.step).parameters
        if "generator" in params:
            step_kwargs["generator"] = generator
        kind = self.scheduler.config.prediction_type
        # `unet.dtype` walks every parameter: read once, not once per step
        unet_dtype = self.unet.dtype

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
                inpaint_cond = inpaint_conds[k] if inpaint_conds is not None else None
                out = self._model_output(x, t, cond, guidance_scale, inpaint_cond, unet_dtype)
                if guide.guided[k] and space == "x0":
                    ab = alphas[t]
                    x0 = guide.update(_to_x0(out, x, ab, kind), k)
                    out = _from_x0(x0, x, ab, kind)
                x = self.scheduler.step(out, t, x, **step_kwargs, return_dict=False)[0].float()
                if guide.guided[k] and space == "xt":
                    phi_yt = None  # after the last step: the clean reference
                    if k + 1 < num_steps:
                        # The level the step landed on, not one step noisier.
                        ab = alphas[timesteps[k + 1]]
                        noise = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
                        phi_yt = guide.lowpass(ab.sqrt() * y0 + (1 - ab).sqrt() * noise)
                    x = guide.update(x, k, phi_yt)
                progress.update()

        # 6. Decode and return at the input size
        img = self._decode_vae(x) if self.is_latent else x
        return self.postprocess(img, (in_h, in_w), output_type, return_dict)
