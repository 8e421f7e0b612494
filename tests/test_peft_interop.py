"""Interop with PEFT both ways, on the shared table (tests/adapter_cases.py): our adapters load
in PEFT with the same logits, and PEFT's adapters (rsLoRA, rank_pattern, modules_to_save,
embeddings, bias, DoRA, VeRA) load in lorakit."""

from __future__ import annotations

import pytest
import torch

import lorakit
from tests import tiny
from tests.adapter_cases import CASES, PEFT_CASES

peft = pytest.importorskip("peft")

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


@pytest.mark.parametrize("case", PEFT_CASES)
def test_lorakit_adapter_loads_in_peft(case, tmp_path):
    kind = CASES[case].kind
    model = _base(kind, tmp_path)
    lorakit.add_adapter(model, CASES[case].ours(init=False))
    _perturb_trainables(model)
    x = tiny.batch(kind)
    ours = tiny.run(model, x)
    lorakit.save_adapter(model, tmp_path / "adapter")
    theirs = peft.PeftModel.from_pretrained(_fresh(kind), tmp_path / "adapter").eval()
    torch.testing.assert_close(tiny.run(theirs, x), ours, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", PEFT_CASES)
def test_peft_adapter_loads_in_lorakit(case, tmp_path):
    kind = CASES[case].kind
    task = {"llama": "CAUSAL_LM", "gpt2": "CAUSAL_LM", "bert": "SEQ_CLS"}.get(kind)
    model = _fresh(kind)
    torch.manual_seed(3)
    cfg = CASES[case].peft(init=False, task_type=task)
    pm = peft.get_peft_model(model, cfg).eval()
    _perturb_trainables(pm)
    x = tiny.batch(kind)
    theirs = tiny.run(pm, x)
    pm.save_pretrained(tmp_path / "peft")
    ours = lorakit.load_adapter(_fresh(kind), tmp_path / "peft")
    torch.testing.assert_close(tiny.run(ours, x), theirs, atol=1e-5, rtol=1e-5)
