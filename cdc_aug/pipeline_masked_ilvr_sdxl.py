"""Masked ILVR on Stable Diffusion XL: text-to-image and inpainting UNets, refiner-free.

SDXL is Stable Diffusion's UNet with a second text encoder and "micro-conditioning":
the two encoders' penultimate hidden states are concatenated, the second one's pooled
projection and ``add_time_ids`` (original size, crop corner, target size) enter through
the UNet's added embedding. Everything else (ε/v-prediction, the denoising loop, RePaint
jumps, the inpainting channels of a 9-channel UNet) is ``MaskedILVRPipeline``'s, so this
file holds only that conditioning and the fp16 VAE handling.

Native size: ``unet.config.sample_size × 8`` = 1024² for SDXL 1.0. The SDXL VAE
overflows in fp16; its config says ``force_upcast`` and, as diffusers does, it then runs
in float32 around an fp16 UNet.
"""

from __future__ import annotations

import contextlib

import torch
from diffusers import DiffusionPipeline

from .pipeline_masked_ilvr import MaskedILVRPipeline


class MaskedILVRSDXLPipeline(MaskedILVRPipeline):
    r"""Masked ILVR for SDXL checkpoints (`StableDiffusionXLPipeline`, `StableDiffusionXLInpaintPipeline`).

    Args:
        vae (`AutoencoderKL`): the SDXL VAE (`force_upcast` in its config runs it in float32).
        text_encoder (`CLIPTextModel`): CLIP ViT-L; None for refiner-style checkpoints.
        text_encoder_2 (`CLIPTextModelWithProjection`): OpenCLIP ViT-bigG; its projection is the pooled embedding.
        tokenizer, tokenizer_2 (`CLIPTokenizer`): one per text encoder.
        unet (`UNet2DConditionModel`): `addition_embed_type="text_time"`; 9 input channels for inpainting.
        scheduler: any scheduler with `alphas_cumprod` (DDIM, DDPM, DPM-Solver++, UniPC, PNDM).
        force_zeros_for_empty_prompt (`bool`, defaults to `True`): an absent negative prompt is a zero
            embedding, as SDXL was trained (the model_index.json setting).
        requires_aesthetics_score (`bool`, defaults to `False`): the time ids carry an aesthetic score
            (6 for the prompt, 2.5 for the negative) instead of the target size.

    `__call__` is `MaskedILVRPipeline.__call__` (same arguments, same numbered steps).

    Example:

    ```py
    >>> import numpy as np
    >>> import torch
    >>> from cdc_aug.pipeline_masked_ilvr_sdxl import MaskedILVRSDXLPipeline

    >>> pipe = MaskedILVRSDXLPipeline.from_pretrained("stabilityai/stable-diffusion-xl-base-1.0")
    >>> pipe.to("cuda", torch.float16)
    >>> image = np.full((512, 512, 3), 127, np.uint8)
    >>> mask = np.zeros((512, 512), np.float32)
    >>> mask[128:384, 128:384] = 1
    >>> out = pipe(image, mask, prompt="a chair in a sunny living room", t_in=0.5, num_inference_steps=30)
    >>> out.images[0].size  # sampled at 1024², returned at the input's size
    (512, 512)

    ```
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->unet->vae"
    _optional_components = ["tokenizer", "text_encoder"]

    def __init__(
        self,
        vae,
        text_encoder,
        text_encoder_2,
        tokenizer,
        tokenizer_2,
        unet,
        scheduler,
        force_zeros_for_empty_prompt: bool = True,
        requires_aesthetics_score: bool = False,
    ):
        DiffusionPipeline.__init__(self)
        self.register_modules(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                              tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler)
        self.register_to_config(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
                                requires_aesthetics_score=requires_aesthetics_score)

    @property
    def is_text_conditioned(self) -> bool:
        return True

    # Follows diffusers' StableDiffusionXLPipeline.encode_prompt (penultimate hidden states of
    # both encoders, concatenated; the pooled output of the one with a projection), without
    # LoRA, textual inversion and clip-skip.
    @torch.no_grad()
    def encode_prompt(self, prompt: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [(self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)]
        embeds, pooled = [], None
        for tokenizer, text_encoder in pairs:
            if text_encoder is None:
                continue
            ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids
            out = text_encoder(ids.to(device), output_hidden_states=True)
            if pooled is None and out[0].ndim == 2:  # CLIPTextModelWithProjection's text_embeds
                pooled = out[0]
            embeds.append(out.hidden_states[-2])
        return torch.cat(embeds, dim=-1), pooled

    # Follows diffusers' StableDiffusionXLPipeline._get_add_time_ids (and the inpainting
    # pipeline's aesthetic-score variant).
    def _time_ids(self, size: tuple[int, int], negative: bool, dtype) -> torch.Tensor:
        crop = (0, 0)  # the reference is resized, never cropped
        if self.config.requires_aesthetics_score:
            ids = list(size + crop + ((2.5 if negative else 6.0),))
        else:
            ids = list(size + crop + size)
        passed = self.unet.config.addition_time_embed_dim * len(ids) + self.text_encoder_2.config.projection_dim
        expected = self.unet.add_embedding.linear_1.in_features
        if passed != expected:
            raise ValueError(f"`unet` expects an added embedding of {expected} values but the text encoder and "
                             f"time ids give {passed}; is this an SDXL UNet (addition_embed_type='text_time')?")
        return torch.tensor([ids], dtype=dtype)

    def encode_conditions(self, prompt, negative_prompt, batch: int, guidance_scale: float, device,
                          height: int, width: int) -> dict:
        """Text embeddings, pooled embeddings and time ids; unconditional half first with guidance."""
        prompts, negs = self.prompts_for(prompt, negative_prompt, batch)
        embeds, pooled = self.encode_prompt(prompts, device)
        # the reference is resized to the sampled size: original size = target size
        time_ids = self._time_ids((height, width), False, embeds.dtype).to(device).expand(batch, -1)
        if guidance_scale > 1.0:
            if negative_prompt is None and self.config.force_zeros_for_empty_prompt:
                neg_embeds, neg_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
            else:
                neg_embeds, neg_pooled = self.encode_prompt(negs, device)
            neg_ids = self._time_ids((height, width), True, embeds.dtype).to(device).expand(batch, -1)
            embeds, pooled = torch.cat([neg_embeds, embeds]), torch.cat([neg_pooled, pooled])
            time_ids = torch.cat([neg_ids, time_ids])
        return {"encoder_hidden_states": embeds, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}

    @contextlib.contextmanager
    def _vae_precision(self):
        """The VAE in float32 for the duration when it is fp16 and its config asks for upcasting."""
        upcast = self.vae.dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False)
        if upcast:
            self.vae.to(dtype=torch.float32)
        try:
            yield
        finally:
            if upcast:
                self.vae.to(dtype=torch.float16)

    def _encode_vae(self, x: torch.Tensor) -> torch.Tensor:
        with self._vae_precision():
            return super()._encode_vae(x)

    def _decode_vae(self, z: torch.Tensor) -> torch.Tensor:
        with self._vae_precision():
            return super()._decode_vae(z)
