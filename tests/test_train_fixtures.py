"""Shared fixtures for the training tests: a tiny random Llama saved with the real SmolLM2
tokenizer (so data formats, chat templates and masking are the real ones), toy data files and
a config factory. No tests here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lorakit.train.config import TrainConfig
from lorakit.train.config_io import from_dict


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def toy_instruction_rows(n: int = 48) -> list[dict]:
    """A learnable toy task: varied questions, one fixed answer."""
    return [{"instruction": f"Is {i} a number?", "output": "yes"} for i in range(n)]


def toy_classification_rows(n: int = 32) -> list[dict]:
    return [{"text": f"number {i} is {'big' if i >= n // 2 else 'small'}",
             "label": "big" if i >= n // 2 else "small"} for i in range(n)]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny-model steps are microseconds of math: with several intra-op threads on a busy
    2-core machine they spend 5-10x longer in thread hand-offs than in compute."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tokenizer():
    from lorakit.models import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer, hidden-64 random Llama with SmolLM2's vocabulary, saved as an HF directory.

    The default init (std 0.02) makes tied-embedding logits so small that no adapter can move
    the loss far from log(vocab); std 0.3 gives a model that a few LoRA steps visibly teach.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True, initializer_range=0.3,
                         eos_token_id=tokenizer.eos_token_id)
    # No pad_token_id: SmolLM2 pads with its EOS token, and an embedding's padding row is zero
    # and frozen, so with tied embeddings EOS could never be predicted.
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def toy_data(tmp_path) -> Path:
    return write_jsonl(tmp_path / "toy.jsonl", toy_instruction_rows())


@pytest.fixture
def make_config(tmp_path, tiny_model_dir, toy_data):
    """``make_config(**overrides) -> TrainConfig`` for a fast, quiet, fp32 run on the tiny model."""

    def make(**overrides) -> TrainConfig:
        values = {"model": str(tiny_model_dir), "data": str(toy_data), "precision": "fp32",
                  "output_dir": str(tmp_path / "run"), "batch_size": 4, "lr": 1e-2,
                  "progress": False, "save_every": 0, "warmup_ratio": 0.0,
                  "lora": {"r": 8, "lora_alpha": 16}}
        lora = overrides.pop("lora", {})
        values.update(overrides)
        values["lora"] = {**values["lora"], **lora}
        return from_dict(values, "test")

    return make
