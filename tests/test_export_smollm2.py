"""The real model: SmolLM2's own Q4_1 GGUF + an exported LoRA file in llama.cpp vs lorakit with
the adapter on the dequantized base (greedy continuations and logits), and the merged export.

llama.cpp computes a Q4_1 matmul with 8-bit-quantized activations, so even the bare base does
not decode exactly like the fp32 dequantized weights; the sweep reports that reference beside
the adapters' agreement, and the f32 base GGUF (no quantization) is the exactness check."""

from __future__ import annotations

import json

import numpy as np
import pytest

import lorakit
from lorakit.export import check, export, load_source
from lorakit.export.source import embedded_gguf
from lorakit.models import load_tokenizer
from tests.export_support import ADAPTER_KINDS, llama_logits, make_adapter, require_llama, torch_logits

BASE = "smollm2-135m-instruct"


@pytest.mark.slow
def test_q4_1_gguf_plus_exported_lora_tracks_lorakit(tmp_path):
    require_llama()
    adapter = make_adapter(BASE, tmp_path / "plain", "plain", std=0.04)
    src = load_source(adapter)
    report = export(src, "gguf-lora", tmp_path / "a.gguf", check_prompts=2, check_tokens=8)
    print(json.dumps(report["agreement"]))
    prompts = check.chat_prompts(load_tokenizer(), check.PROMPTS[:2])
    ours = torch_logits(src.model, prompts)
    with lorakit.disabled(src.model):
        base = torch_logits(src.model, prompts)
    theirs = llama_logits(embedded_gguf(BASE), prompts, lora=tmp_path / "a.gguf")
    changed = np.mean([(a.argmax(-1) != b.argmax(-1)).mean() for a, b in zip(ours, base)])
    top1 = np.mean([(a.argmax(-1) == b.argmax(-1)).mean() for a, b in zip(ours, theirs)])
    print(json.dumps({"top1_agreement_q4_1_plus_lora": float(top1), "predictions_changed_by_adapter": float(changed),
                      "max_abs_logit_diff": max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs)),
                      "adapter_effect": max(float(np.abs(a - b).max()) for a, b in zip(ours, base))}))
    assert changed > 0.05, "the adapter does not change the model's predictions"
    assert top1 > 0.9, f"llama.cpp (Q4_1 + LoRA) agrees with lorakit on {top1:.0%} of positions"
    assert report["agreement"]["prompts"] == 2


@pytest.mark.heavy
def test_greedy_sweep_20_prompts(tmp_path):
    """20 prompts x 24 greedy tokens for plain LoRA, rsLoRA and a rank/alpha-pattern adapter,
    on the Q4_1 GGUF and on an f32 GGUF of the dequantized base (the exactness check).

    llama.cpp runs once per (base file, adapter file), all 20 prompts in that one process;
    lorakit decodes the prompts in batches."""
    require_llama()
    tok = load_tokenizer()
    prompts = check.chat_prompts(tok, check.PROMPTS)
    eos = {tok.eos_token_id}
    f32 = tmp_path / "base-f32.gguf"
    base_src = load_source(None, base=BASE)
    export(base_src, "gguf", f32, outtype="f32", check_prompts=0)
    base_ours = check.lorakit_greedy(base_src.model, prompts, 24, eos)
    del base_src
    results = {"base_only_q4_1": check.agreement(
        base_ours, check.llama_greedy(embedded_gguf(BASE), prompts, 24)[0]).to_dict()}
    for kind in ADAPTER_KINDS:
        src = load_source(make_adapter(BASE, tmp_path / kind, kind, std=0.02))
        export(src, "gguf-lora", tmp_path / f"{kind}.gguf", check_prompts=0)
        ours = check.lorakit_greedy(src.model, prompts, 24, eos)
        lora = [{"filePath": str(tmp_path / f"{kind}.gguf"), "scale": 1.0}]
        q41 = check.agreement(ours, check.llama_greedy(embedded_gguf(BASE), prompts, 24, lora)[0])
        exact = check.agreement(ours, check.llama_greedy(f32, prompts, 24, lora)[0])
        results[kind] = {"q4_1": q41.to_dict(), "f32": exact.to_dict(),
                         "differs_from_base": sum(a != b for a, b in zip(ours, base_ours))}
    print(json.dumps(results, indent=1))
    for kind in ADAPTER_KINDS:
        assert results[kind]["differs_from_base"] >= 10, (kind, results[kind])
        assert results[kind]["f32"]["identical"] >= 18, (kind, results[kind])
        assert results[kind]["q4_1"]["tokens_agreeing"] >= results["base_only_q4_1"]["tokens_agreeing"] - 0.2


@pytest.mark.heavy
def test_merged_f16_gguf_real_model_in_llama_and_transformers(tmp_path):
    """SmolLM2 + an rsLoRA adapter merged into an f16 GGUF: llama.cpp and transformers' GGUF
    loader both give the merged model's logits (llama.cpp within f16 weights + f16 KV cache;
    transformers exactly the merged weights rounded to f16)."""
    require_llama()
    import torch
    from transformers import AutoModelForCausalLM

    src = load_source(make_adapter(BASE, tmp_path / "r", "rslora", std=0.02))
    export(src, "gguf", tmp_path / "m.gguf", outtype="f16", check_prompts=0)
    prompts = check.chat_prompts(load_tokenizer(), check.PROMPTS[:2])
    ours = torch_logits(src.model, prompts)   # the merged fp32 model
    theirs = llama_logits(tmp_path / "m.gguf", prompts)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32)
    hf = torch_logits(loaded, prompts)
    src.model.load_state_dict({k: v.half().float() for k, v in src.model.state_dict().items()})
    rounded = torch_logits(src.model, prompts)   # the merged weights rounded to f16
    spread = float(np.concatenate([a.ravel() for a in ours]).std())
    numbers = {"logit_spread_std": spread}
    for name, ref, other in (("llama.cpp", ours, theirs), ("transformers", ours, hf),
                             ("transformers_vs_f16_rounded_merge", rounded, hf)):
        rms = float(np.sqrt(np.mean(np.concatenate([(a - b).ravel() ** 2 for a, b in zip(ref, other)]))))
        numbers[name] = {"max_abs_logit_diff": max(float(np.abs(a - b).max()) for a, b in zip(ref, other)),
                         "rel_rms": rms / spread,
                         "top1_agreement": float(np.mean(np.concatenate([a.argmax(-1) == b.argmax(-1)
                                                                         for a, b in zip(ref, other)])))}
    print(json.dumps(numbers, indent=1))
    assert numbers["llama.cpp"]["rel_rms"] < 0.01 and numbers["transformers"]["rel_rms"] < 0.01, numbers
    assert numbers["transformers_vs_f16_rounded_merge"]["max_abs_logit_diff"] < 1e-3, numbers
    assert numbers["llama.cpp"]["top1_agreement"] >= 0.95, numbers
