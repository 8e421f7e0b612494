"""The variants on the real SmolLM2-135M (slow): a DoRA adapter gives PEFT's logits, and a PiSSA
init starts at the base model's logits."""

from __future__ import annotations

import pytest
import torch

import lorakit
from tests.variants_support import randomize_adapter

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.slow

TARGETS = ["q_proj", "v_proj", "down_proj"]
LAYERS = [0, 15, 29]


@pytest.fixture(scope="module")
def model_dir():
    from lorakit.models import embedded_model_dir

    return embedded_model_dir()


def _load(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def _logits(model):
    ids = torch.tensor([[1, 504, 3458, 314, 260, 1476, 30]])
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_dora_adapter_matches_peft_on_smollm2(model_dir, tmp_path):
    cfg = lorakit.LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, layers_to_transform=LAYERS,
                             use_dora=True, init_lora_weights=False)
    ours = lorakit.add_adapter(_load(model_dir), cfg)
    randomize_adapter(ours, scale=0.01)
    want = _logits(ours)
    lorakit.save_adapter(ours, tmp_path / "dora")
    theirs = peft.PeftModel.from_pretrained(_load(model_dir), tmp_path / "dora").eval()
    torch.testing.assert_close(_logits(theirs), want, rtol=1e-4, atol=1e-4)


def test_pissa_starts_at_the_base_model(model_dir):
    ref = _logits(_load(model_dir))
    cfg = lorakit.LoraConfig(r=16, lora_alpha=16, target_modules=TARGETS, layers_to_transform=LAYERS,
                             init_lora_weights="pissa_niter_4")
    model = lorakit.add_adapter(_load(model_dir), cfg)
    torch.testing.assert_close(_logits(model), ref, rtol=1e-4, atol=1e-3)
