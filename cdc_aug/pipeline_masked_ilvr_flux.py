"""Masked ILVR on FLUX-class models: `FluxTransformer2DModel` on packed 2×2 latent patches.

FLUX conditions on CLIP's pooled output and T5's sequence (with zero text position ids),
and sees the latent as a sequence of 2×2 patches with (0, row, column) position ids.
The state of the loop stays on the VAE's latent grid, where the low-pass and the masks
live; it is packed for each transformer call and the velocity unpacked after. Guidance is
the distilled guidance embedding of FLUX-dev-like configs (``guidance_embeds``), no
classifier-free guidance; models without it (FLUX-schnell) take none. Sigmas are
``linspace(1, 1/K, K)`` shifted by ``mu`` from the token count, as diffusers does.

Native size: the VAE's ``sample_size`` (1024² for FLUX.1; the transformer records none,
diffusers defaults to 128 × 8 = 1024); sides must be multiples of 16 (VAE × packing).
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from .pipeline_masked_ilvr_flow import MaskedILVRFlowPipeline


class MaskedILVRFluxPipeline(MaskedILVRFlowPipeline):
    r"""Masked ILVR for FLUX-class checkpoints (`FluxPipeline`).

    Args:
        scheduler (`FlowMatchEulerDiscreteScheduler`): the checkpoint's own (dynamic shifting).
        vae (`AutoencoderKL`): 16 latent channels, with `shift_factor`.
        text_encoder (`CLIPTextModel`): its pooled output conditions the transformer.
        tokenizer (`CLIPTokenizer`): CLIP's.
        text_encoder_2 (`T5EncoderModel`): the sequence the transformer attends to.
        tokenizer_2 (`T5TokenizerFast`): T5's.
        transformer (`FluxTransformer2DModel`): 64 input channels (16 latent × 2×2 patch).

    Example:

    ```py
    >>> import numpy as np
    >>> import torch
    >>> from cdc_aug.pipeline_masked_ilvr_flux import MaskedILVRFluxPipeline

    >>> pipe = MaskedILVRFluxPipeline.from_pretrained("black-forest-labs/FLUX.1-dev")
    >>> pipe.to("cuda", torch.bfloat16)
    >>> image = np.full((512, 512, 3), 127, np.uint8)
    >>> mask = np.zeros((512, 512), np.float32)
    >>> mask[128:384, 128:384] = 1
    >>> out = pipe(image, mask, prompt="a chair in a sunny living room", t_in=0.5, num_inference_steps=28,
    ...            guidance_scale=3.5)
    >>> out.images[0].size  # sampled at 1024², returned at the input's size
    (512, 512)

    ```
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->transformer->vae"
    max_sequence_length = 512  # T5 tokens, as diffusers' default

    def __init__(self, scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, transformer):
        super().__init__()
        self.register_modules(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)

    @property
    def size_multiple(self) -> int:
        return self.vae_scale_factor * 2  # the VAE's factor, then 2×2 packing

    def default_size(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        s = getattr(self.vae.config, "sample_size", None) or 128 * self.vae_scale_factor
        sh, sw = (s, s) if isinstance(s, int) else s
        return sh, sw

    # Follows diffusers' FluxPipeline._get_clip_prompt_embeds and _get_t5_prompt_embeds.
    @torch.no_grad()
    def encode_prompt(self, prompt: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.tokenizer(prompt, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        pooled = self.text_encoder(ids.to(device), output_hidden_states=False).pooler_output
        ids = self.tokenizer_2(prompt, padding="max_length", max_length=self.max_sequence_length, truncation=True,
                               return_tensors="pt").input_ids
        embeds = self.text_encoder_2(ids.to(device), output_hidden_states=False)[0]
        return embeds, pooled

    def encode_conditions(self, prompt, negative_prompt, batch: int, guidance_scale: float, device) -> dict:
        prompts, _ = self.prompts_for(prompt, negative_prompt, batch)
        embeds, pooled = self.encode_prompt(prompts, device)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full([batch], float(guidance_scale), device=device, dtype=torch.float32)
        text_ids = torch.zeros(embeds.shape[1], 3, device=device, dtype=embeds.dtype)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled, "txt_ids": text_ids,
                "guidance": guidance}

    # Follows diffusers' FluxPipeline.__call__, step 5.
    def set_schedule(self, num_steps: int, grid_hw: tuple[int, int], device) -> None:
        config = self.scheduler.config
        sigmas = None if config.get("use_flow_sigmas") else np.linspace(1.0, 1 / num_steps, num_steps)
        mu = calculate_shift(
            (grid_hw[0] // 2) * (grid_hw[1] // 2), config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5), config.get("max_shift", 1.15),
        )
        if sigmas is None:
            self.scheduler.set_timesteps(num_steps, device=device, mu=mu)
        else:
            self.scheduler.set_timesteps(sigmas=sigmas, device=device, mu=mu)

    def predict_velocity(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        """Pack the latent grid into 2×2 patches, run the transformer, unpack its velocity."""
        b, c, h, w = x.shape
        image_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype)
        packed = FluxPipeline._pack_latents(x, b, c, h, w)
        timestep = t.expand(b).to(x.dtype) / 1000
        out = self.transformer(hidden_states=packed, timestep=timestep, img_ids=image_ids,
                               return_dict=False, **cond)[0]
        f = self.vae_scale_factor
        return FluxPipeline._unpack_latents(out, h * f, w * f, f)
