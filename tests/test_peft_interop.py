"""Interop with PEFT both ways: our adapters load in PEFT with the same logits, and PEFT's
adapters (rsLoRA, rank_pattern, modules_to_save, embeddings, bias) load in lorakit."""

from __future__ import annotations

import pytest
import torch

import lorakit
from tests import tiny

peft = pytest.importorskip("peft")

CASES = {
    "llama-qv": ("llama", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])),
    "llama-all-linear-rslora-patterns": ("llama", dict(r=8, lora_alpha=16, target_modules="all-linear", use_rslora=True,
                                                       rank_pattern={"up_proj": 2}, alpha_pattern={"k_proj": 5})),
    "llama-embedding": ("llama", dict(r=4, target_modules=["embed_tokens", "o_proj"])),
    "llama-regex": ("llama", dict(r=4, target_modules=r".*\.1\.mlp\.(gate|down)_proj")),
    "gpt2-conv1d": ("gpt2", dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)),
    "bert-cls-modules-to-save": ("bert", dict(r=4, target_modules=["query", "value"], modules_to_save=["classifier"])),
    "bert-bias-all": ("bert", dict(r=4, target_modules=["query", "value"], bias="all")),
    "convnet": ("convnet", dict(r=2, target_modules=["conv1", "conv2", "seq", "head"])),
}


def _base(kind, tmp_path):
    """The same base weights, as a directory PEFT can name, and a fresh in-memory copy."""
    model = tiny.make(kind)
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(tmp_path / "base")
    return model


def _fresh(kind):
    return tiny.make(kind)


def _perturb_trainables(model):
    # Give every trainable tensor (modules_to_save copies, biases) a visible change.
    torch.manual_seed(7)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad and "lora_" not in n:
                p.add_(torch.randn_like(p) * 0.1)


@pytest.mark.parametrize("case", CASES)
def test_lorakit_adapter_loads_in_peft(case, tmp_path):
    kind, kw = CASES[case]
    model = _base(kind, tmp_path)
    lorakit.add_adapter(model, lorakit.LoraConfig(init_lora_weights=False, **kw))
    _perturb_trainables(model)
    x = tiny.batch(kind)
    ours = tiny.run(model, x)
    lorakit.save_adapter(model, tmp_path / "adapter")
    theirs = peft.PeftModel.from_pretrained(_fresh(kind), tmp_path / "adapter").eval()
    torch.testing.assert_close(tiny.run(theirs, x), ours, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_peft_adapter_loads_in_lorakit(case, tmp_path):
    kind, kw = CASES[case]
    task = {"llama": "CAUSAL_LM", "gpt2": "CAUSAL_LM", "bert": "SEQ_CLS"}.get(kind)
    model = _fresh(kind)
    torch.manual_seed(3)
    cfg = peft.LoraConfig(init_lora_weights=False, task_type=task, **kw)
    pm = peft.get_peft_model(model, cfg).eval()
    _perturb_trainables(pm)
    x = tiny.batch(kind)
    theirs = tiny.run(pm, x)
    pm.save_pretrained(tmp_path / "peft")
    ours = lorakit.load_adapter(_fresh(kind), tmp_path / "peft")
    torch.testing.assert_close(tiny.run(ours, x), theirs, atol=1e-5, rtol=1e-5)
