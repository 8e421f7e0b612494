"""The library on the real embedded model (SmolLM2-135M-Instruct): injection, zero-adapter
no-op, merge, PEFT round trip and the `lorakit merge` command."""

from __future__ import annotations

import pytest
import torch

import lorakit
from lorakit.cli import main as cli_main
from lorakit.models import load_model, load_tokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def _ids(tok):
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    return tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]


def test_real_model_adapter_lifecycle(tok, tmp_path):
    model = load_model(dtype=torch.float32).eval()
    ids = _ids(tok)
    with torch.no_grad():
        base = model(ids).logits
    lorakit.add_adapter(model, lorakit.LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    trainable, total = lorakit.trainable_parameters(model)
    # r * (in + out) for q, k, v, o, gate, up, down in each of the 30 layers
    per_layer = (576 + 576) + 2 * (576 + 192) + (576 + 576) + 3 * (576 + 1536)
    assert trainable == 30 * 16 * per_layer
    with torch.no_grad():
        assert torch.equal(model(ids).logits, base)
        for p in lorakit.adapter_state_dict(model).values():
            p.normal_(0, 0.02)
        adapted = model(ids).logits
    assert (adapted - base).abs().max() > 1e-3
    lorakit.save_adapter(model, tmp_path / "adapter")
    lorakit.merge(model, safe=True)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, adapted, atol=2e-4, rtol=1e-4)
    rc = cli_main(["merge", "--adapter", str(tmp_path / "adapter"), "--out", str(tmp_path / "merged")])
    assert rc == 0
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted, atol=2e-4, rtol=1e-4)


def test_real_model_answers(tok):
    model = load_model(dtype=torch.bfloat16).eval()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=8, target_modules="all-linear"))
    ids = _ids(tok)
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])
