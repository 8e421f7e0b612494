"""quantize(model): which layers become Linear4bit, that the quantized model computes with the
dequantized weights, errors that name the layer, and sizes. Slow tests use the real SmolLM2."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lorakit
from lorakit.quant import (
    Linear4bit,
    merge_and_unload_quantized,
    nf4_dequantize,
    nf4_quantize,
    quantize,
    quantized_linear_stats,
)
from tests import tiny


def _linear_names(model, cls):
    return sorted(n for n, m in model.named_modules() if isinstance(m, cls))


def _dequantized_copy(model):
    """The reference: every Linear4bit replaced by an nn.Linear holding its dequantized weight."""
    for name, module in list(model.named_modules()):
        if isinstance(module, Linear4bit):
            linear = nn.Linear(module.in_features, module.out_features, module.bias is not None)
            linear.weight.data = module.dequantize().float()
            if module.bias is not None:
                linear.bias.data = module.bias.data.float()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, linear)
    return model


def test_quantizes_every_linear_but_the_head():
    torch.manual_seed(0)
    model = tiny.llama()
    linears = _linear_names(model, nn.Linear)
    total_before = lorakit.trainable_parameters(model)[1]
    assert quantize(model, compute_dtype=torch.float32) is model
    # the parameter count a user sees is the model's, not the packed bytes'
    assert lorakit.trainable_parameters(model)[1] == total_before
    assert _linear_names(model, nn.Linear) == ["lm_head"]
    assert _linear_names(model, Linear4bit) == [n for n in linears if n != "lm_head"]
    # no full-precision copy of a replaced weight is left in the model
    float_params = {n for n, p in model.named_parameters() if p.dim() == 2}
    assert float_params == {"model.embed_tokens.weight", "lm_head.weight"}


def test_classifier_head_stays_full_precision():
    model = quantize(tiny.bert())
    assert _linear_names(model, nn.Linear) == ["classifier"]
    assert len(_linear_names(model, Linear4bit)) == 2 * 6 + 1  # 6 per layer + the pooler


def test_quantized_model_computes_with_the_dequantized_weights():
    torch.manual_seed(0)
    model = quantize(tiny.llama().eval(), compute_dtype=torch.float32)
    ids = torch.randint(0, tiny.VOCAB, (2, 9))
    with torch.no_grad():
        got = model(ids).logits
        want = _dequantized_copy(model)(ids).logits
    assert torch.equal(got, want)


def test_skip_and_targets():
    model = quantize(tiny.llama(), skip=["q_proj", "model.layers.1.mlp.down_proj"])
    full = _linear_names(model, nn.Linear)
    assert full == [
        "lm_head",
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.mlp.down_proj",
        "model.layers.1.self_attn.q_proj",
    ]
    model = quantize(tiny.llama(), skip=["model.layers.0"])
    assert all(n.startswith("model.layers.1.") for n in _linear_names(model, Linear4bit))
    model = quantize(tiny.llama(), targets=["v_proj"], blocksize=128, double_quant=False)
    quantized = _linear_names(model, Linear4bit)
    assert quantized == ["model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.v_proj"]
    assert model.model.layers[0].self_attn.v_proj.blocksize == 128


def test_shared_layer_is_quantized_once():
    shared = nn.Linear(64, 64)
    model = nn.ModuleDict({"a": shared, "b": shared, "head": nn.Linear(64, 8)})
    quantize(model)
    assert isinstance(model["a"], Linear4bit) and model["a"] is model["b"]
    assert isinstance(model["head"], Linear4bit)  # no get_output_embeddings: not a head


def test_errors_name_the_layer():
    with pytest.raises(ValueError, match="'model.layers.0.mlp' is LlamaMLP"):
        quantize(tiny.llama(), targets=["model.layers.0.mlp"])
    with pytest.raises(ValueError, match="'lm_head' is the output head"):
        quantize(tiny.llama(), targets=["lm_head"])
    with pytest.raises(ValueError, match="target 'qq_proj' matches no module"):
        quantize(tiny.llama(), targets=["qq_proj"])
    with pytest.raises(ValueError, match="skip entry 'nope'"):
        quantize(tiny.llama(), skip=["nope"])
    with pytest.raises(ValueError, match="unknown quantization method 'int8'"):
        quantize(tiny.llama(), "int8")
    with pytest.raises(ValueError, match="blocksize 100"):
        quantize(tiny.llama(), blocksize=100)
    model = tiny.llama()
    proj = model.model.layers[1].self_attn.k_proj
    proj.weight = nn.Parameter(torch.ones_like(proj.weight, dtype=torch.int32), requires_grad=False)
    with pytest.raises(TypeError, match="'model.layers.1.self_attn.k_proj'.*torch.int32"):
        quantize(model)
    model = nn.Sequential(nn.Linear(4, 4))
    model[0].weight.data[0, 0] = float("inf")
    with pytest.raises(ValueError, match="layer '0'.*inf or nan"):
        quantize(model)


def test_refuses_a_model_with_adapters():
    model = tiny.llama()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="LoRA adapter: quantize the base model before"):
        quantize(model)


def test_stats_count_bits_per_parameter():
    model = nn.Sequential(nn.Linear(1024, 1024), nn.Linear(1024, 512, bias=False))
    stats = quantized_linear_stats(quantize(model))
    assert stats["layers"] == 2 and stats["params"] == 1024 * 1536
    # 24576 first-level blocks -> 96 nested blocks: exactly 4 + 8/64 + 32/(64*256) bits
    assert stats["bits_per_param"] == 4 + 8 / 64 + 32 / (64 * 256)
    model = quantize(nn.Sequential(nn.Linear(1024, 1024)), double_quant=False)
    assert quantized_linear_stats(model)["bits_per_param"] == 4.5


# ---- the real model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    from lorakit.models import load_model

    return load_model("smollm2-135m-instruct", dtype=torch.bfloat16).eval()


@pytest.mark.slow
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("name", ["layers.0.self_attn.q_proj", "layers.29.mlp.down_proj"])
def test_real_weights_bit_exact_with_bitsandbytes(smollm2, name, double_quant):
    F = pytest.importorskip("bitsandbytes.functional")
    w = smollm2.model.get_submodule(name).weight.detach()
    packed, state = nf4_quantize(w, 64, double_quant)
    ref_packed, ref = F.quantize_4bit(w, compress_statistics=double_quant, quant_type="nf4")
    assert torch.equal(packed, ref_packed) and torch.equal(state.absmax, ref.absmax)
    if double_quant:
        assert torch.equal(state.nested_absmax, ref.state2.absmax)
    expected = F.dequantize_4bit(ref_packed, ref, quant_type="nf4")
    assert torch.equal(nf4_dequantize(packed, state), expected)


# ---- LoRA on a 4-bit base ---------------------------------------------------------------


def _adapted_pair(seed=0):
    """(LoRA on a 4-bit tiny Llama, LoRA on its dequantized fp32 copy), same adapter init."""
    torch.manual_seed(seed)
    quantized = quantize(tiny.llama(), compute_dtype=torch.float32)
    reference = _dequantized_copy(copy.deepcopy(quantized))
    config = lorakit.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")
    for model in (quantized, reference):
        torch.manual_seed(seed + 1)
        lorakit.add_adapter(model, config)
        for p in lorakit.adapter_state_dict(model).values():
            p.data.normal_(0, 0.05)  # B != 0, so the adapters change the output
    return quantized, reference


def test_adapter_gradients_match_the_dequantized_base():
    quantized, reference = _adapted_pair()
    ids = torch.randint(0, tiny.VOCAB, (2, 11))
    grads = []
    for model in (quantized, reference):
        model(ids, labels=ids).loss.backward()
        grads.append({k: p.grad for k, p in lorakit.adapter_state_dict(model).items()})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], rtol=1e-5, atol=1e-7)
    assert not any(p.requires_grad for n, p in quantized.named_parameters() if "lora_" not in n)


def test_core_merge_refuses_a_4bit_base():
    quantized, _ = _adapted_pair()
    with pytest.raises(TypeError, match="merge_and_unload_quantized"):
        lorakit.merge(quantized)


@pytest.mark.parametrize("requantize", [False, True])
def test_merge_into_4bit_base(requantize):
    quantized, reference = _adapted_pair()
    ids = torch.randint(0, tiny.VOCAB, (2, 11))
    with torch.no_grad():
        adapted = quantized(ids).logits
    lorakit.merge_and_unload(reference)  # fp32 merge of the same weights: the exact result
    model, report = merge_and_unload_quantized(quantized, requantize=requantize)
    assert report["layers"] == 14 and report["requantized"] == requantize
    assert not any("lora_" in n for n, _ in model.named_modules())
    layer_cls = Linear4bit if requantize else nn.Linear
    expected = [n for n in _linear_names(reference, nn.Linear) if n != "lm_head"]
    assert [n for n in _linear_names(model, layer_cls) if n != "lm_head"] == expected
    with torch.no_grad():
        merged = model(ids).logits
    if not requantize:
        assert report["max_abs_error"] == 0.0
        torch.testing.assert_close(merged, adapted, rtol=1e-5, atol=1e-5)
        for name, module in reference.named_modules():
            if isinstance(module, nn.Linear) and name != "lm_head":
                assert torch.equal(model.get_submodule(name).weight, module.weight)
        return
    # re-quantization error: reported per layer, bounded by half the widest NF4 code gap
    # (0.16) times the block's absmax, and measured against the exact merged weights
    q_proj = "model.layers.0.self_attn.q_proj"
    exact = reference.get_submodule(q_proj).weight
    layer = model.get_submodule(q_proj)
    decoded = nf4_dequantize(layer.weight, layer.quant_state)
    assert report["per_layer"][q_proj][0] == (decoded - exact).abs().max().item()
    assert 0 < report["mean_abs_error"] < report["max_abs_error"] <= 0.16 * max(
        m.weight.abs().max().item() for m in reference.modules() if isinstance(m, nn.Linear)
    )
    assert (merged - adapted).abs().max() < 0.5 * adapted.abs().max()


def test_failed_safe_merge_restores_the_4bit_bases():
    quantized, _ = _adapted_pair()
    layer = quantized.model.layers[0].self_attn.q_proj
    next(iter(layer.lora_B.values())).weight.data[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN/inf"):
        merge_and_unload_quantized(quantized, safe=True)
    assert isinstance(layer.base_layer, Linear4bit) and layer.merged_adapters == []


@pytest.mark.slow
def test_real_model_quantized_still_answers():
    from lorakit.models import load_model, load_tokenizer

    tok = load_tokenizer()
    model = quantize(load_model("smollm2-135m-instruct", dtype=torch.bfloat16).eval())
    assert quantized_linear_stats(model)["layers"] == 210
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
    ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1] :])
