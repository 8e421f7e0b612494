"""PiSSA, OLoRA and LoftQ inits: the adapted model starts at the base model, the factors match
PEFT's, PEFT's conversion rule gives an adapter for the untouched base, and adapters move
between lorakit and PEFT in both directions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lorakit
from lorakit.init_methods import loftq_decompose, pissa_factors
from lorakit.quant.linear4bit import Linear4bit
from lorakit.quant.nf4 import nf4_dequantize, nf4_quantize
from tests.variants_support import load_base, logits, randomize_adapter, save_tiny_llama

peft = pytest.importorskip("peft")

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("llama"))


def _ours(base_dir, init, **kw):
    cfg = lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=ALL, init_lora_weights=init, **kw)
    return lorakit.add_adapter(load_base(base_dir), cfg)


def _theirs(base_dir, init, **kw):
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=ALL, init_lora_weights=init, **kw)
    return peft.get_peft_model(load_base(base_dir), cfg)


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_3", "olora"])
def test_initial_model_equals_base(base_dir, init):
    ref = logits(load_base(base_dir))
    model = _ours(base_dir, init)
    q = model.model.layers[0].self_attn.q_proj
    assert q.lora_B["default"].weight.abs().sum() > 0  # the adapter is not a no-op by itself...
    torch.testing.assert_close(logits(model), ref, **TOL)  # ...the residual base compensates


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_factors_and_residual_match_peft(base_dir, init):
    ours, theirs = _ours(base_dir, init), _theirs(base_dir, init)
    mine = dict(ours.named_parameters())
    for key, value in theirs.base_model.model.named_parameters():
        torch.testing.assert_close(mine[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_pissa_niter_is_reproducible_and_close_to_exact():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 4, generator=g) @ torch.randn(4, 30, generator=g) + 1e-3 * torch.randn(40, 30, generator=g)
    a1, b1 = pissa_factors(w, 4, 0.5, niter=2)
    a2, b2 = pissa_factors(w, 4, 0.5, niter=2)
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    a, b = pissa_factors(w, 4, 0.5)
    torch.testing.assert_close(b1 @ a1, b @ a, rtol=0, atol=1e-2)


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_3", "olora"])
def test_raw_adapter_reloads_on_original_base(base_dir, tmp_path, init):
    model = _ours(base_dir, init)
    randomize_adapter(model)
    want = logits(model)
    lorakit.save_adapter(model, tmp_path / "raw")
    fresh = lorakit.load_adapter(load_base(base_dir), tmp_path / "raw")
    torch.testing.assert_close(logits(fresh), want, **TOL)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_converted_adapter_applies_to_untouched_base(base_dir, tmp_path, init):
    model = _ours(base_dir, init)
    initial = tmp_path / "initial"
    lorakit.save_adapter(model, initial)
    randomize_adapter(model)  # "training"
    tuned = logits(model)
    lorakit.save_converted_adapter(model, tmp_path / "lora", initial=initial)
    cfg = lorakit.LoraConfig.load(tmp_path / "lora")
    assert (cfg.r, cfg.lora_alpha, cfg.init_lora_weights) == (8, 16, True)
    ours = lorakit.load_adapter(load_base(base_dir), tmp_path / "lora")
    torch.testing.assert_close(logits(ours), tuned, **TOL)
    theirs = peft.PeftModel.from_pretrained(load_base(base_dir), tmp_path / "lora").eval()
    torch.testing.assert_close(logits(theirs), tuned, **TOL)


def test_conversion_from_state_dict_with_rslora_and_patterns(base_dir, tmp_path):
    model = _ours(base_dir, "pissa", use_rslora=True, rank_pattern={"v_proj": 2}, alpha_pattern={"o_proj": 3})
    initial = {k: v.detach().clone() for k, v in lorakit.adapter_state_dict(model).items()}
    randomize_adapter(model)
    tuned = logits(model)
    lorakit.save_converted_adapter(model, tmp_path / "lora", initial=initial)
    ours = lorakit.load_adapter(load_base(base_dir), tmp_path / "lora")
    torch.testing.assert_close(logits(ours), tuned, **TOL)


def test_peft_loads_our_raw_pissa(base_dir, tmp_path):
    model = _ours(base_dir, "pissa")
    randomize_adapter(model)
    want = logits(model)
    lorakit.save_adapter(model, tmp_path / "raw")
    theirs = peft.PeftModel.from_pretrained(load_base(base_dir), tmp_path / "raw").eval()  # reruns PiSSA
    torch.testing.assert_close(logits(theirs), want, **TOL)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_we_load_peft_adapters_raw_and_converted(base_dir, tmp_path, init):
    theirs = _theirs(base_dir, init)
    theirs.peft_config["default"].init_lora_weights = True  # PEFT's recipe for the initial copy
    theirs.save_pretrained(tmp_path / "initial")
    theirs.peft_config["default"].init_lora_weights = init
    randomize_adapter(theirs)
    theirs.eval()
    tuned = logits(theirs)
    theirs.save_pretrained(tmp_path / "raw")
    theirs.save_pretrained(tmp_path / "lora", path_initial_model_for_weight_conversion=str(tmp_path / "initial"))
    raw = lorakit.load_adapter(load_base(base_dir), tmp_path / "raw")
    torch.testing.assert_close(logits(raw), tuned, **TOL)
    converted = lorakit.load_adapter(load_base(base_dir), tmp_path / "lora")
    torch.testing.assert_close(logits(converted), tuned, **TOL)


def test_conversion_refuses_plain_and_dora_adapters(base_dir, tmp_path):
    plain = _ours(base_dir, True)
    with pytest.raises(ValueError, match="only .* adapters are converted"):
        lorakit.save_converted_adapter(plain, tmp_path / "x", initial={})
    dora = _ours(base_dir, "pissa", use_dora=True)
    with pytest.raises(ValueError, match="DoRA"):
        lorakit.save_converted_adapter(dora, tmp_path / "x", initial={})


def test_inits_refuse_non_linear_layers_and_bad_names():
    with pytest.raises(ValueError, match="0: init 'pissa' applies to linear layers only"):
        lorakit.add_adapter(nn.Sequential(nn.Embedding(10, 4)),
                            lorakit.LoraConfig(target_modules=["0"], init_lora_weights="pissa"))
    with pytest.raises(ValueError, match="pissa_niter_<non-negative integer>"):
        lorakit.add_adapter(nn.Sequential(nn.Linear(6, 6)),
                            lorakit.LoraConfig(target_modules=["0"], init_lora_weights="pissa_niter_x"))


# ---- LoftQ --------------------------------------------------------------------------------------
def _nf4_error(w):
    packed, state = nf4_quantize(w, 64, True)
    return torch.linalg.norm(w - nf4_dequantize(packed, state, torch.float32))


def test_loftq_beats_plain_quantization_and_iterations_help():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 64, generator=g) * 0.05 + torch.randn(96, 4, generator=g) @ torch.randn(4, 64, generator=g)
    errors = []
    for num_iter in (1, 5):
        packed, state, a, b = loftq_decompose(w, 8, 2.0, num_iter)
        approx = nf4_dequantize(packed, state, torch.float32) + 2.0 * b @ a
        errors.append(torch.linalg.norm(w - approx))
    assert errors[0] < 0.8 * _nf4_error(w)
    assert errors[1] <= errors[0] * 1.001


def test_loftq_init_quantizes_base_and_starts_near_base(base_dir, tmp_path):
    ref = logits(load_base(base_dir))
    model = _ours(base_dir, "loftq_iter_2")
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q.base_layer, Linear4bit)
    qlora = lorakit.add_adapter(lorakit.quant.quantize(load_base(base_dir), targets=ALL),
                                lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=ALL))
    assert (logits(model) - ref).abs().mean() < (logits(qlora) - ref).abs().mean()
    randomize_adapter(model)
    want = logits(model)
    lorakit.save_adapter(model, tmp_path / "loftq")
    fresh = lorakit.load_adapter(load_base(base_dir), tmp_path / "loftq")  # reruns LoftQ on the base
    torch.testing.assert_close(logits(fresh), want, **TOL)


def test_loftq_needs_the_full_precision_weight(base_dir):
    quantized = lorakit.quant.quantize(load_base(base_dir), targets=["q_proj"])
    with pytest.raises(TypeError, match="q_proj: init 'loftq' needs the full-precision weight"):
        lorakit.add_adapter(quantized, lorakit.LoraConfig(target_modules=["q_proj"], init_lora_weights="loftq"))
