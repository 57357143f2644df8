"""Masked ILVR on SD3-class models: an MMDiT (`SD3Transformer2DModel`) on a 16-channel latent.

SD3 conditions on three text encoders: two CLIPs (penultimate hidden states side by
side, their pooled projections concatenated) and a T5 (the sequence after the CLIP
tokens; zeros when a checkpoint ships without it). Guidance is classifier-free on the
velocity. Its scheduler shifts the sigmas by ``shift`` (3.0 for SD3) or, for 3.5-style
configs with dynamic shifting, by ``mu`` from the image's token count. The loop is
``MaskedILVRFlowPipeline``'s.

Native size: ``transformer.config.sample_size × 8`` = 1024² for SD3; sides must be
multiples of 8 × ``patch_size`` (16).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from .pipeline_masked_ilvr_flow import MaskedILVRFlowPipeline


class MaskedILVRSD3Pipeline(MaskedILVRFlowPipeline):
    r"""Masked ILVR for SD3-class checkpoints (`StableDiffusion3Pipeline`).

    Args:
        transformer (`SD3Transformer2DModel`): predicts the flow velocity.
        scheduler (`FlowMatchEulerDiscreteScheduler`): the checkpoint's own (its `shift` matters).
        vae (`AutoencoderKL`): 16 latent channels, with `shift_factor`.
        text_encoder, text_encoder_2 (`CLIPTextModelWithProjection`): the two CLIP towers.
        tokenizer, tokenizer_2 (`CLIPTokenizer`): one per CLIP tower.
        text_encoder_3 (`T5EncoderModel`, *optional*): the T5; None gives zero embeddings, as diffusers.
        tokenizer_3 (`T5TokenizerFast`, *optional*): the T5's tokenizer.

    Example:

    ```py
    >>> import numpy as np
    >>> import torch
    >>> from cdc_aug.pipeline_masked_ilvr_sd3 import MaskedILVRSD3Pipeline

    >>> pipe = MaskedILVRSD3Pipeline.from_pretrained("stabilityai/stable-diffusion-3-medium-diffusers")
    >>> pipe.to("cuda", torch.float16)
    >>> image = np.full((512, 512, 3), 127, np.uint8)
    >>> mask = np.zeros((512, 512), np.float32)
    >>> mask[128:384, 128:384] = 1
    >>> out = pipe(image, mask, prompt="a chair in a sunny living room", t_in=0.5, num_inference_steps=28,
    ...            guidance_scale=7.0)
    >>> out.images[0].size  # sampled at 1024², returned at the input's size
    (512, 512)

    ```
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->text_encoder_3->transformer->vae"
    _optional_components = ["text_encoder_3", "tokenizer_3"]
    max_sequence_length = 256  # T5 tokens, as diffusers' default

    def __init__(self, transformer, scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2,
                 text_encoder_3=None, tokenizer_3=None):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                              tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                              text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)

    @property
    def size_multiple(self) -> int:
        return self.vae_scale_factor * self.transformer.config.patch_size

    def default_size(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        s = self.transformer.config.sample_size * self.vae_scale_factor
        return s, s

    # Follows diffusers' StableDiffusion3Pipeline._get_clip_prompt_embeds (no clip-skip).
    def _clip_embeds(self, tokenizer, text_encoder, prompt: list[str], device):
        ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        out = text_encoder(ids.to(device), output_hidden_states=True)
        return out.hidden_states[-2], out[0]

    # Follows diffusers' StableDiffusion3Pipeline._get_t5_prompt_embeds.
    def _t5_embeds(self, prompt: list[str], device, dtype) -> torch.Tensor:
        if self.text_encoder_3 is None:
            dim = self.transformer.config.joint_attention_dim
            return torch.zeros((len(prompt), self.max_sequence_length, dim), device=device, dtype=dtype)
        ids = self.tokenizer_3(prompt, padding="max_length", max_length=self.max_sequence_length, truncation=True,
                               add_special_tokens=True, return_tensors="pt").input_ids
        return self.text_encoder_3(ids.to(device))[0]

    # Follows diffusers' StableDiffusion3Pipeline.encode_prompt: CLIP states padded to T5's
    # width, then T5's tokens after them; the pooled projections side by side.
    @torch.no_grad()
    def encode_prompt(self, prompt: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        e1, p1 = self._clip_embeds(self.tokenizer, self.text_encoder, prompt, device)
        e2, p2 = self._clip_embeds(self.tokenizer_2, self.text_encoder_2, prompt, device)
        clip = torch.cat([e1, e2], dim=-1)
        t5 = self._t5_embeds(prompt, device, clip.dtype).to(clip.dtype)
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return torch.cat([clip, t5], dim=-2), torch.cat([p1, p2], dim=-1)

    def encode_conditions(self, prompt, negative_prompt, batch: int, guidance_scale: float, device) -> dict:
        prompts, negs = self.prompts_for(prompt, negative_prompt, batch)
        embeds, pooled = self.encode_prompt(prompts, device)
        if guidance_scale > 1.0:
            neg_embeds, neg_pooled = self.encode_prompt(negs, device)
            embeds, pooled = torch.cat([neg_embeds, embeds]), torch.cat([neg_pooled, pooled])
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    # Follows diffusers' StableDiffusion3Pipeline.__call__, step 5 (mu only with dynamic shifting).
    def set_schedule(self, num_steps: int, grid_hw: tuple[int, int], device) -> None:
        config, kwargs = self.scheduler.config, {}
        if config.get("use_dynamic_shifting", None):
            p = self.transformer.config.patch_size
            kwargs["mu"] = calculate_shift(
                (grid_hw[0] // p) * (grid_hw[1] // p), config.get("base_image_seq_len", 256),
                config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5), config.get("max_shift", 1.16),
            )
        self.scheduler.set_timesteps(num_steps, device=device, **kwargs)

    def predict_velocity(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        return self.transformer(hidden_states=x, timestep=t.expand(x.shape[0]), return_dict=False, **cond)[0]
