"""The real SmolLM2-135M-Instruct behind the engine: the base answers a chat question
sensibly, and base and adapter requests in one batch give offline ``generate``'s greedy tokens.

The exact-token comparison runs in fp32: in bf16 a batched forward and a single-sequence
forward round differently, and a random adapter's near-tied logits then flip greedy choices
(seen here), which says nothing about the engine."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

import lorakit
from lorakit.serve.cache import HostCache
from lorakit.serve.engine import Delta, Engine, Request
from lorakit.serve.sampling import SamplingParams
from lorakit.serve.slots import SlotPool

pytestmark = pytest.mark.slow


def test_smollm2_batch_of_base_and_adapter_equals_generate(tmp_path):
    from lorakit.models import load_model, load_tokenizer

    base = load_model("smollm2-135m-instruct", dtype=torch.float32).eval()
    tok = load_tokenizer()
    adapted = copy.deepcopy(base)
    lorakit.add_adapter(adapted, lorakit.LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"),
                        adapter_dtype=torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:  # large enough to change the answer
                p.normal_(0, 0.3)
    lorakit.save_adapter(adapted, tmp_path / "tuned")
    question = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok(tok.apply_chat_template(question, tokenize=False, add_generation_prompt=True),
              add_special_tokens=False).input_ids

    def offline(model):
        x = torch.tensor([ids])
        with torch.inference_mode():
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=16, do_sample=False)
        return tok.decode(out[0, len(ids):], skip_special_tokens=True)

    served = copy.deepcopy(base)
    pool = SlotPool(served, n_slots=2, max_rank=16)
    adapter = HostCache(pool.layer_shapes, torch.float32).get("tuned", tmp_path / "tuned")
    engine = Engine(served, tok, pool)
    texts, done = {}, threading.Semaphore(0)
    for key, ad in (("base", None), ("tuned", adapter)):
        def emit(event, key=key):
            if not isinstance(event, Delta):
                texts[key] = event.text
                done.release()
        engine.submit(Request(ids, SamplingParams(max_tokens=16, temperature=0), emit, ad))
    engine.start()
    done.acquire(timeout=120)
    done.acquire(timeout=120)
    engine.stop()
    assert "Paris" in texts["base"] and texts["tuned"] != texts["base"]
    assert texts["base"] == offline(base)
    assert texts["tuned"] == offline(adapted)
