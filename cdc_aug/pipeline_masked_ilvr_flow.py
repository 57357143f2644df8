"""Masked ILVR on flow-matching transformers (SD3- and FLUX-class): the sampling loop.

A rectified-flow model predicts a velocity v along the straight path between data and
noise, x_t = (1 − σ)·x0 + σ·ε, so v = ε − x0 and

    x0 = x_t − σ·v          (the clean sample the model predicts)
    v  = (x_t − x0) / σ     (the velocity that, with x_t, implies a guided x0)

Guidance in x0 space guides that prediction and rebuilds v from it, so
``FlowMatchEulerDiscreteScheduler.step`` runs unchanged; in x_t space the reference is
noised to the level σ the step lands on, the same path the model samples along. T_in and
T_out are fractions of the scheduler's sigmas (its steps), as for the UNet families.

This file holds the loop and the velocity maths; ``pipeline_masked_ilvr_sd3.py`` and
``pipeline_masked_ilvr_flux.py`` add each model's text encoders, schedule shift, latent
packing and guidance. The update, the time masks and the low-pass are ``masked_ilvr.py``'s
and run on the VAE's latent grid (before FLUX's 2×2 packing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

from .masked_ilvr import MaskedILVRMixin, plan_guidance, read_inputs
from .sampling import DEFAULTS


class MaskedILVRFlowPipeline(DiffusionPipeline, MaskedILVRMixin):
    """The masked-ILVR loop for velocity-predicting transformers; subclassed per model.

    A subclass provides ``default_size``, ``size_multiple``, ``encode_conditions`` (the
    transformer's keywords, unconditional half first under classifier-free guidance),
    ``set_schedule`` and ``predict_velocity``.
    """

    is_latent = True
    is_text_conditioned = True
    is_flow_matching = True  # no --scheduler choice: flow models sample with their own Euler scheduler

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def check_inputs(
        self, images, masks, t_in, t_out, n_in, n_out, space, blur, num_inference_steps, prompt,
        negative_prompt, resample_start, generator, output_type, height, width,
    ) -> None:
        if resample_start:
            raise ValueError(f"`resample_start`={resample_start}: RePaint resampling needs a DDIM or DDPM "
                             f"scheduler; {type(self).__name__} samples with flow matching (use 0)")
        self.check_ilvr_inputs(images, masks, t_in, t_out, n_in, n_out, space, blur, num_inference_steps, prompt,
                               negative_prompt, generator, output_type, height, width)
        sched = self.scheduler
        if not isinstance(sched, FlowMatchEulerDiscreteScheduler) or sched.config.get("invert_sigmas"):
            raise ValueError(f"`scheduler` {type(sched).__name__} is not supported: flow-matching models need "
                             "FlowMatchEulerDiscreteScheduler (sigmas falling from 1 to 0)")

    def _model_output(self, x, t, cond, guidance_scale, dtype) -> torch.Tensor:
        """The velocity for state ``x`` in float32, classifier-free guidance applied."""
        use_cfg = cond["encoder_hidden_states"].shape[0] == 2 * x.shape[0]
        x_in = torch.cat([x, x]) if use_cfg else x
        v = self.predict_velocity(x_in.to(dtype), t, cond).float()
        if use_cfg:
            uncond, text = v.chunk(2)
            v = uncond + guidance_scale * (text - uncond)
        return v

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
        r"""Composite: sample from the flow model, guided toward `image` region by region.

        Args:
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list of them):
                The reference image(s), as for `MaskedILVRPipeline`.
            mask_image (same types as `image`): 1 on the object, 0 on the background.
            t_in (`float`, *optional*, defaults to 0.5): fraction of the scheduler's sigmas, from
                σ = 1, during which the object keeps the reference's low frequencies.
            t_out (`float`, *optional*, defaults to 0.0): the same for the background.
            n_in (`int`, *optional*, defaults to 1): low-pass factor on the object, in latent
                pixels (before FLUX's packing).
            n_out (`int`, *optional*, defaults to 1): the same for the background.
            space (`str`, *optional*, defaults to `"x0"`): `"x0"` guides x0 = x_t − σ·v; `"xt"`
                guides the state, the reference noised to the σ the step lands on.
            blur (`str` or `float`, *optional*, defaults to `"auto"`): mask smoothing sigma in
                pixels of the sampled image; `"auto"` = max(n_in, n_out) / 2 latent pixels.
            num_inference_steps (`int`, *optional*, defaults to 50): K, the number of Euler steps.
            guidance_scale (`float`, *optional*, defaults to 5.0): classifier-free guidance for
                SD3 (<= 1 disables it); the distilled guidance embedding for FLUX-dev-like models
                (ignored by models without one, e.g. FLUX-schnell).
            prompt (`str` or `List[str]`, *optional*): the text.
            negative_prompt (`str` or `List[str]`, *optional*): text to guide away from (SD3 with
                `guidance_scale` > 1; FLUX has no classifier-free guidance).
            resample_start (`float`, *optional*, defaults to 0.0): must be 0 (RePaint needs DDIM/DDPM).
            jump_length, jump_n_sample (`int`, *optional*): accepted for a common signature; unused.
            height, width (`int`, *optional*, defaults to the model's native size): the size the
                model samples at; the result has the input's size.
            generator (`torch.Generator` or `List[torch.Generator]`, *optional*): one per image makes
                each result independent of the batch.
            output_type (`str`, *optional*, defaults to `"pil"`): `"pil"`, `"np"` or `"pt"`.
            return_dict (`bool`, *optional*, defaults to `True`): return an `ImagePipelineOutput`.

        Example: see the SD3 and FLUX pipelines' class docstrings.

        Returns:
            [`~pipelines.ImagePipelineOutput`] or `tuple`: the composites at the input images' size.
        """
        # 1. Convert and check inputs
        images, masks = read_inputs(image, mask_image)
        self.check_inputs(images, masks, t_in, t_out, n_in, n_out, space, blur, num_inference_steps, prompt,
                          negative_prompt, resample_start, generator, output_type, height, width)
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

        # 2. Encode the prompt: the transformer's keywords
        cond = self.encode_conditions(prompt, negative_prompt, batch, guidance_scale, device)

        # 3. Bring the reference and the mask to the model's size, then to its latent grid
        y, mask = self.resize_reference(y, mask, height, width)
        y0 = self._encode_vae(y)
        mask_grid = F.interpolate(mask, size=y0.shape[-2:], mode="area")

        # 4. Sigmas, guidance plan (time masks) and initial noise
        self.set_schedule(num_inference_steps, tuple(y0.shape[-2:]), device)
        timesteps = self.scheduler.timesteps
        sigmas = self.scheduler.sigmas.to(device=device, dtype=torch.float32)  # K + 1 values, the last 0
        num_steps = len(timesteps)
        guide = plan_guidance(y0, mask_grid, t_in, t_out, n_in, n_out, blur, self.vae_scale_factor, num_steps)
        shape = tuple(y0.shape)
        x = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)  # σ = 1: pure noise
        # `transformer.dtype` walks every parameter: read once, not once per step
        dtype = self.transformer.dtype

        # 5. Denoising loop
        with self.progress_bar(total=num_steps) as progress:
            for k, t in enumerate(timesteps):
                v = self._model_output(x, t, cond, guidance_scale, dtype)
                if guide.guided[k] and space == "x0":
                    sigma = sigmas[k]
                    x0 = guide.update(x - sigma * v, k)
                    v = (x - x0) / sigma
                x = self.scheduler.step(v, t, x, return_dict=False)[0].float()
                if guide.guided[k] and space == "xt":
                    phi_yt = None  # after the last step (σ = 0): the clean reference
                    sigma_next = sigmas[k + 1]
                    if sigma_next > 0:
                        noise = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
                        phi_yt = guide.lowpass((1 - sigma_next) * y0 + sigma_next * noise)
                    x = guide.update(x, k, phi_yt)
                progress.update()

        # 6. Decode and return at the input size
        return self.postprocess(self._decode_vae(x), (in_h, in_w), output_type, return_dict)
