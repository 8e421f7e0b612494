"""Shared helpers for the variant / init / combine tests: a tiny random Llama saved to disk, so
lorakit and PEFT can each load the very same base weights."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

VOCAB = 128


def save_tiny_llama(directory: Path, seed: int = 0) -> Path:
    """A 2-layer Llama (hidden 64, GQA 4/2 heads) with random weights, saved with save_pretrained."""
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # HF init leaves biases/norms trivial; perturb norms so they matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(directory)
    return directory


def load_base(directory: Path, dtype: torch.dtype = torch.float32):
    return AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).eval()


def token_ids(batch: int = 2, length: int = 9, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=g)


@torch.no_grad()
def logits(model, ids: torch.Tensor | None = None) -> torch.Tensor:
    ids = token_ids() if ids is None else ids
    return model(input_ids=ids).logits.float()


def randomize_adapter(model, seed: int = 0, scale: float = 0.05) -> None:
    """Give every trainable adapter tensor a random value so an adapter changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g).to(p.dtype))
