"""Tiny randomly initialised components of each model family, and local tokenizers (no download).

Each builder returns the keyword arguments of the family's diffusers pipeline
(StableDiffusionXLPipeline, StableDiffusion3Pipeline, FluxPipeline), which are also
those of its masked-ILVR pipeline. Native sizes are 32² (a 2× VAE on a 16² latent grid).
"""

import json
import string

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

SIZE = 32  # every family's native size here


def tiny_tokenizer(path, max_length: int = 16) -> CLIPTokenizer:
    # a character-level CLIP BPE vocabulary: no merges, no download
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + ".,!":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=max_length)


def tiny_t5_tokenizer(max_length: int = 512) -> T5Tokenizer:
    # T5's own Unigram layout (<pad>, </s>, <unk>, then pieces) over single characters
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_lowercase + string.digits + ".,!"]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)


def _clip_config(**kw) -> CLIPTextConfig:
    return CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37,
                          num_attention_heads=4, num_hidden_layers=2, vocab_size=100, max_position_embeddings=16,
                          projection_dim=32, **kw)


def _t5(d_model: int) -> T5EncoderModel:
    # eval(): T5 has dropout, and a pipeline built from parts (not from_pretrained) keeps train mode
    return T5EncoderModel(T5Config(vocab_size=64, d_model=d_model, d_kv=8, d_ff=37, num_layers=1, num_heads=4,
                                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)).eval()


def _vae(latent_channels: int, **kw) -> AutoencoderKL:
    return AutoencoderKL(block_out_channels=[8, 16], in_channels=3, out_channels=3, latent_channels=latent_channels,
                         norm_num_groups=4, down_block_types=["DownEncoderBlock2D"] * 2,
                         up_block_types=["UpDecoderBlock2D"] * 2, sample_size=SIZE, **kw)


def sdxl_components(tmp_path, inpainting: bool = False) -> dict:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=SIZE // 2, in_channels=9 if inpainting else 4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=4,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64,
    )
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
    return dict(vae=_vae(4), text_encoder=CLIPTextModel(_clip_config()),
                text_encoder_2=CLIPTextModelWithProjection(_clip_config()),
                tokenizer=tiny_tokenizer(tmp_path / "tok"), tokenizer_2=tiny_tokenizer(tmp_path / "tok2"),
                unet=unet, scheduler=scheduler)


def sd3_components(tmp_path) -> dict:
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=SIZE // 2, patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=64, pooled_projection_dim=64,
    )
    return dict(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                vae=_vae(4, shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False,
                         use_post_quant_conv=False),
                text_encoder=CLIPTextModelWithProjection(_clip_config()), tokenizer=tiny_tokenizer(tmp_path / "tok"),
                text_encoder_2=CLIPTextModelWithProjection(_clip_config()),
                tokenizer_2=tiny_tokenizer(tmp_path / "tok2"), text_encoder_3=_t5(64),
                tokenizer_3=tiny_t5_tokenizer())


def flux_components(tmp_path, guidance_embeds: bool = True) -> dict:
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * 4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
        guidance_embeds=guidance_embeds,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096,
                                                max_shift=1.15, shift=3.0, use_dynamic_shifting=True)
    return dict(scheduler=scheduler, vae=_vae(4, shift_factor=0.1159, scaling_factor=0.3611, use_quant_conv=False,
                                              use_post_quant_conv=False),
                text_encoder=CLIPTextModel(_clip_config()), tokenizer=tiny_tokenizer(tmp_path / "tok"),
                text_encoder_2=_t5(32), tokenizer_2=tiny_t5_tokenizer(), transformer=transformer)


def reference(seed: int = 0, h: int = 32, w: int = 32) -> np.ndarray:
    """A random RGB reference image (uint8 HxWx3), the same for the same seed."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def square_mask(h: int = 32, w: int = 32) -> np.ndarray:
    """An object mask: the centre square, half the side."""
    m = np.zeros((h, w), np.float32)
    m[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 1
    return m


def save_checkpoint(module, path):
    """``module`` (an untrained LightningModule) as the checkpoint a Lightning run writes:
    what eval and the camera estimator load. Returns ``path``."""
    import lightning

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
    return path
