"""Shared set-up of the export tests: a tiny Llama with SmolLM2's vocabulary, adapters with
non-zero B (``bench.adapters``, shared with bench/export.py), and llama.cpp / lorakit logits
over the same token ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench.adapters import ADAPTER_KINDS, make_adapter  # noqa: F401 (the export tests' adapters)
from lorakit.export import check

def require_llama() -> None:
    missing = check.consumer_missing()
    if missing:
        pytest.skip(f"llama.cpp consumer unavailable: {missing}")


def tiny_llama_dir(path: Path) -> Path:
    """A 2-layer Llama (hidden 64, GQA 4/2 heads) with SmolLM2's tokenizer, saved as a
    Hugging Face directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lorakit.models import load_tokenizer

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger weights than the init so logits spread over several units
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    model.save_pretrained(path)
    load_tokenizer().save_pretrained(path)
    return path


def llama_logits(model_file: Path, prompts: list[list[int]], lora: Path | None = None) -> list[np.ndarray]:
    """llama.cpp's logits after every prompt token, ``[len(prompt), vocab]`` per prompt."""
    req = {"model": str(model_file), "jobs": [{"tokens": p, "logits": True} for p in prompts],
           "lora": [{"filePath": str(lora), "scale": 1.0}] if lora else []}
    return [np.asarray(r["logits"], dtype=np.float32) for r in check.run_llama(req)["results"]]


@torch.no_grad()
def torch_logits(model, prompts: list[list[int]]) -> list[np.ndarray]:
    return [model(torch.tensor([p])).logits[0].float().numpy() for p in prompts]


def max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))
