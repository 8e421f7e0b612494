"""Tiny diffusers models built from configs (no download): a Stable-Diffusion-shaped pipeline
whose parts are small enough for CPU tests, and the byte-level CLIP tokenizer it needs.

No Stable Diffusion weights can be fetched here; these models have SD 1.x's architecture and
module names (so adapters, file keys and diffusers' loaders behave exactly as on the real one)
at a few hundred thousand parameters, with random or locally trained weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def unet(sample_size: int = 8, in_channels: int = 4, cross_attention_dim: int = 16, seed: int = 0):
    """A two-level ``UNet2DConditionModel`` with SD 1.x's block types (cross-attention down and
    up blocks, a cross-attention mid block)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
        layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim).eval()


def text_encoder(hidden_size: int = 16, vocab_size: int = 514, seed: int = 0):
    """A two-layer ``CLIPTextModel`` (SD 1.x's text encoder class and module names)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=32, bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)).eval()


def write_byte_vocab(directory: str | Path) -> Path:
    """``vocab.json`` + ``merges.txt`` of a byte-level CLIP BPE with no merges (one token per
    byte, 514 ids with the two special tokens); returns the directory."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return directory


def tokenizer(directory: str | Path, max_length: int = 16):
    from transformers import CLIPTokenizer

    directory = write_byte_vocab(directory)
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"),
                         model_max_length=max_length)


def vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,),
                         down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                         norm_num_groups=4, layers_per_block=1, sample_size=8).eval()


def pipeline(vocab_dir: str | Path, seed: int = 0):
    """A ``StableDiffusionPipeline`` of tiny parts (U-Net, CLIP text encoder + byte tokenizer,
    one-level VAE, DDPM scheduler), no safety checker."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae(seed), text_encoder=text_encoder(seed=seed), tokenizer=tokenizer(vocab_dir),
        unet=unet(seed=seed), scheduler=DDPMScheduler(num_train_timesteps=100, steps_offset=1, clip_sample=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


__all__ = ["pipeline", "text_encoder", "tokenizer", "unet", "vae", "write_byte_vocab"]
