"""DoRA: the cheap row norm equals the naive one, the layer contract (zero-init == base, merge ==
unmerged, idempotent merge, exact unmerge, save/load), and PEFT parity in both directions."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import lorakit
from lorakit.adapter_types import register_adapter_type
from lorakit.variants.dora import DoraType, _Rescale, dora_row_norm
from tests.variants_support import load_base, logits, randomize_adapter, save_tiny_llama, token_ids

peft = pytest.importorskip("peft")

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("llama"))


def _naive_norm(weight, a, b, s, fan_in_fan_out=False):
    w = weight.float().T if fan_in_fan_out else weight.float()
    return torch.linalg.norm(w + s * b.float() @ a.float(), dim=1)


@pytest.mark.parametrize("fan_in_fan_out", [False, True])
def test_row_norm_equals_naive_fp32(fan_in_fan_out):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 40, generator=g)
    a, b = torch.randn(6, 40, generator=g), torch.randn(48, 6, generator=g)
    stored = w.T.contiguous() if fan_in_fan_out else w
    got = dora_row_norm(stored, a, b, 0.7, fan_in_fan_out)
    torch.testing.assert_close(got, _naive_norm(w, a, b, 0.7), rtol=1e-5, atol=1e-5)


def test_row_norm_bf16_weight_close_to_fp32_reference():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(64, 96, generator=g).bfloat16()
    a, b = 0.1 * torch.randn(8, 96, generator=g), 0.1 * torch.randn(64, 8, generator=g)
    got = dora_row_norm(w, a, b, 2.0)
    torch.testing.assert_close(got, _naive_norm(w, a, b, 2.0), rtol=2e-3, atol=0)


def _dora_model(base_dir, init=True, dropout=0.0, targets=ALL):
    model = load_base(base_dir)
    cfg = lorakit.LoraConfig(r=4, lora_alpha=8, target_modules=targets, use_dora=True,
                             init_lora_weights=init, lora_dropout=dropout)
    return lorakit.add_adapter(model, cfg)


def test_zero_init_equals_base(base_dir):
    ref = logits(load_base(base_dir))
    model = _dora_model(base_dir)
    torch.testing.assert_close(logits(model), ref, rtol=1e-5, atol=1e-5)


def test_magnitude_is_the_peft_key_and_trainable(base_dir):
    model = _dora_model(base_dir)
    sd = lorakit.adapter_state_dict(model)
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"
    assert key in sd and sd[key].shape == (64,) and sd[key].requires_grad


def test_merge_equals_unmerged_idempotent_and_unmerge_restores(base_dir):
    model = _dora_model(base_dir, init=False)
    randomize_adapter(model)
    q = model.model.layers[0].self_attn.q_proj
    w0 = q.base_layer.weight.detach().clone()
    unmerged = logits(model)
    assert not torch.allclose(unmerged, logits(load_base(base_dir)), atol=1e-3)
    lorakit.merge(model)
    merged = logits(model)
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    lorakit.merge(model)  # idempotent
    torch.testing.assert_close(logits(model), merged, rtol=0, atol=0)
    lorakit.unmerge(model)
    torch.testing.assert_close(q.base_layer.weight, w0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logits(model), unmerged, rtol=1e-5, atol=1e-5)


def test_dropout_forward_matches_paper_formula():
    torch.manual_seed(0)
    lin = nn.Linear(16, 12)
    model = nn.Sequential(lin)
    cfg = lorakit.LoraConfig(r=3, lora_alpha=6, target_modules=["0"], use_dora=True, lora_dropout=0.5)
    lorakit.add_adapter(model, cfg)
    randomize_adapter(model, scale=0.3)
    layer = model[0]
    x = torch.randn(5, 16)
    torch.manual_seed(7)
    got = layer(x)
    torch.manual_seed(7)
    dx = layer.lora_dropout["default"](x)
    a, b, m = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.lora_magnitude_vector["default"]
    g = m / _naive_norm(lin.weight, a, b, 2.0)
    # y = W x + bias + (g - 1) * W dropout(x) + g * s * B A dropout(x)
    want = lin(x) + (g - 1) * (dx @ lin.weight.T) + g * 2.0 * (dx @ a.T @ b.T)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_second_active_adapter_is_not_rescaled_by_dora():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 8))
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["0"], init_lora_weights=False), "plain")
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["0"], use_dora=True,
                                                  init_lora_weights=False), "dora")
    x = torch.randn(3, 10)
    layer = model[0]
    with torch.no_grad():
        lorakit.set_adapter(model, "plain")
        only_plain = layer(x) - layer.base_layer(x)
        lorakit.set_adapter(model, "dora")
        only_dora = layer(x)
        lorakit.set_adapter(model, ["plain", "dora"])
        both = layer(x)
    torch.testing.assert_close(both, only_dora + only_plain, rtol=1e-5, atol=1e-5)


def test_gpt2_conv1d_merge_matches_unmerged():
    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(12, 10))  # W stored [in, out]
    lorakit.add_adapter(model, lorakit.LoraConfig(r=3, target_modules=["0"], use_dora=True,
                                                  init_lora_weights=False))
    randomize_adapter(model, scale=0.2)
    x = torch.randn(4, 10)
    with torch.no_grad():
        before = model(x)
        lorakit.merge(model)
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


def test_gradients_reach_magnitude_and_factors_not_norm(base_dir):
    model = _dora_model(base_dir, init=False)
    loss = model(input_ids=token_ids()).logits.float().pow(2).mean()
    loss.backward()
    q = model.model.layers[0].self_attn.q_proj
    for p in (q.lora_magnitude_vector["default"], q.lora_A["default"].weight, q.lora_B["default"].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert q.base_layer.weight.grad is None


def test_unsupported_layers_are_refused_by_name():
    model = nn.Sequential(nn.Embedding(10, 4))
    with pytest.raises(ValueError, match="0: DoRA is implemented for linear layers only"):
        lorakit.add_adapter(model, lorakit.LoraConfig(target_modules=["0"], use_dora=True))
    with pytest.raises(ValueError, match="lora_bias"):
        lorakit.add_adapter(nn.Sequential(nn.Linear(4, 4)),
                            lorakit.LoraConfig(target_modules=["0"], use_dora=True, lora_bias=True))


def test_mixed_batch_refuses_dora(base_dir):
    model = _dora_model(base_dir)
    with pytest.raises(ValueError, match="cannot run in a mixed batch"):
        with lorakit.adapter_per_row(model, ["default", None]):
            pass


def test_save_load_round_trip(base_dir, tmp_path):
    model = _dora_model(base_dir, init=False)
    randomize_adapter(model)
    want = logits(model)
    lorakit.save_adapter(model, tmp_path / "a")
    fresh = lorakit.load_adapter(load_base(base_dir), tmp_path / "a")
    torch.testing.assert_close(logits(fresh), want, rtol=1e-6, atol=1e-6)


def test_peft_loads_our_dora(base_dir, tmp_path):
    model = _dora_model(base_dir, init=False)
    randomize_adapter(model)
    want = logits(model)
    lorakit.save_adapter(model, tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(load_base(base_dir), tmp_path / "ours").eval()
    torch.testing.assert_close(logits(theirs), want, rtol=1e-5, atol=1e-5)


def test_we_load_peft_dora(base_dir, tmp_path):
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=ALL, use_dora=True, init_lora_weights=False)
    theirs = peft.get_peft_model(load_base(base_dir), cfg)
    randomize_adapter(theirs)
    theirs.eval()
    want = logits(theirs)
    theirs.save_pretrained(tmp_path / "peft")
    ours = lorakit.load_adapter(load_base(base_dir), tmp_path / "peft")
    torch.testing.assert_close(logits(ours), want, rtol=1e-5, atol=1e-5)
    # and the merged forms agree too
    merged_theirs = logits(theirs.merge_and_unload())
    torch.testing.assert_close(logits(lorakit.merge_and_unload(ours)), merged_theirs, rtol=1e-5, atol=1e-5)


def test_training_step_matches_peft(base_dir):
    """Same init, same batch, one SGD step: the updated adapters give the same logits."""
    ours = _dora_model(base_dir, init=False)
    randomize_adapter(ours)
    theirs = peft.get_peft_model(load_base(base_dir), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=ALL, use_dora=True, init_lora_weights=False))
    theirs_sd = {k: v for k, v in lorakit.adapter_state_dict(ours).items()}
    peft.set_peft_model_state_dict(theirs, {k: v.detach().clone() for k, v in theirs_sd.items()})
    ids = token_ids()
    for model in (ours, theirs):
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.5)
        model(input_ids=ids).logits.float().logsumexp(-1).mean().backward()
        opt.step()
    theirs.eval()
    torch.testing.assert_close(logits(ours), logits(theirs), rtol=1e-5, atol=1e-5)


def test_adapter_loaded_into_eval_model_runs_without_dropout(base_dir, tmp_path):
    model = _dora_model(base_dir, init=False, dropout=0.5)
    randomize_adapter(model)
    model.eval()
    want = logits(model)
    lorakit.save_adapter(model, tmp_path / "a")
    fresh = lorakit.load_adapter(load_base(base_dir), tmp_path / "a")  # load_base returns an eval model
    assert not any(m.training for m in fresh.modules())
    torch.testing.assert_close(logits(fresh), want, rtol=1e-6, atol=1e-6)
    theirs = peft.PeftModel.from_pretrained(load_base(base_dir), tmp_path / "a").eval()
    torch.testing.assert_close(logits(theirs), want, rtol=1e-5, atol=1e-5)


def test_rescale_keeps_output_and_matches_reference_gradients():
    g0 = torch.Generator().manual_seed(0)
    z = torch.randn(3, 5, 6, generator=g0, requires_grad=True)
    g = (torch.rand(6, generator=g0) + 0.5).requires_grad_()
    bias = torch.randn(6, generator=g0, requires_grad=True)
    grad = torch.randn(3, 5, 6, generator=g0)
    got = torch.autograd.grad(_Rescale.apply(z, g, bias), (z, g, bias), grad)
    want = torch.autograd.grad(g * z + bias, (z, g, bias), grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_saving_the_output_changes_no_gradient():
    """DoraType() keeps the layer output for the backward, DoraType(save_output=False)
    keeps W x + s*B A x: same gradients, including a trainable base bias (bias="all")."""
    grads = []
    for save_output in (True, False):
        register_adapter_type(DoraType(save_output=save_output))
        try:
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 4))
            lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["0", "2"], use_dora=True,
                                                          init_lora_weights=False, bias="all"))
            model(torch.randn(5, 8, generator=torch.Generator().manual_seed(1))).pow(2).sum().backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        finally:
            register_adapter_type(DoraType())
    assert grads[0].keys() == grads[1].keys() and "0.base_layer.bias" in grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6, msg=name)


def test_in_place_edit_of_the_output_is_caught_by_autograd():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(inplace=True))
    lorakit.add_adapter(model, lorakit.LoraConfig(r=2, target_modules=["0"], use_dora=True))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        model(torch.randn(3, 8)).sum().backward()
