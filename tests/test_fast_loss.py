"""Chunked linear cross-entropy against F.cross_entropy on full logits."""

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import lorakit
from lorakit.fast import enable_fast_training
from lorakit.fast.loss import causal_lm_loss_sum, linear_cross_entropy_sum, supports_chunked_loss


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
@pytest.mark.parametrize("weight_grad", [False, True])
def test_matches_full_logits_cross_entropy(chunk, weight_grad):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(37, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, generator=g, dtype=torch.float64, requires_grad=weight_grad)
    t = torch.randint(0, 50, (37,), generator=g)
    got = linear_cross_entropy_sum(h, w, t, chunk)
    want = F.cross_entropy(h @ w.T, t, reduction="sum")
    assert got.dtype == torch.float64
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    wanted = [h, w] if weight_grad else [h]
    for a, b in zip(torch.autograd.grad(got * 3, wanted), torch.autograd.grad(want * 3, wanted)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_bf16_close_to_fp32_reference():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(64, 32, generator=g).bfloat16().requires_grad_(True)
    w = (torch.randn(300, 32, generator=g) * 0.2).bfloat16()
    t = torch.randint(0, 300, (64,), generator=g)
    got = linear_cross_entropy_sum(h, w, t, 16)
    got.backward()
    h32 = h.detach().float().requires_grad_(True)
    want = F.cross_entropy((h32 @ w.float().T), t, reduction="sum")
    want.backward()
    assert abs(got.item() - want.item()) / want.item() < 5e-3
    assert (h.grad.float() - h32.grad).norm() / h32.grad.norm() < 2e-2


def tiny_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=90)
    return LlamaForCausalLM(cfg).double()


def test_causal_lm_loss_sum_matches_model_logits_with_masked_labels():
    model = tiny_llama()
    ids = torch.randint(0, 90, (3, 11))
    labels = ids.clone()
    labels[0, :5] = -100  # a prompt
    labels[2, 8:] = -100  # padding
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0
    got = causal_lm_loss_sum(model, labels, chunk=4, input_ids=ids, attention_mask=mask)
    logits = model(input_ids=ids, attention_mask=mask).logits
    want = F.cross_entropy(logits[:, :-1].reshape(-1, 90), labels[:, 1:].reshape(-1), reduction="sum")
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)


def test_fast_handle_loss_trains_the_same_adapter_gradients():
    model = tiny_llama()
    lorakit.add_adapter(model, lorakit.LoraConfig(r=4, target_modules="all-linear", init_lora_weights="gaussian"))
    ids = torch.randint(0, 90, (2, 9))
    logits = model(input_ids=ids).logits
    F.cross_entropy(logits[:, :-1].reshape(-1, 90), ids[:, 1:].reshape(-1), reduction="sum").backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    fast = enable_fast_training(model)
    assert fast.chunked_loss
    fast.loss_sum(ids, input_ids=ids).backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, want[n], rtol=1e-5, atol=1e-7)


def test_models_with_other_heads_are_refused_by_name():
    model = tiny_llama()
    model.config.model_type = "gemma2"  # soft-capped logits: not a plain head
    assert not supports_chunked_loss(model)
    with pytest.raises(ValueError, match="LlamaForCausalLM: the chunked loss needs"):
        causal_lm_loss_sum(model, torch.zeros(1, 4, dtype=torch.long), input_ids=torch.zeros(1, 4, dtype=torch.long))


def test_gpt2_head_supported():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=80)).double().eval()
    ids = torch.randint(0, 80, (2, 7))
    got = causal_lm_loss_sum(model, ids, chunk=5, input_ids=ids)
    want = F.cross_entropy(model(input_ids=ids).logits[:, :-1].reshape(-1, 80), ids[:, 1:].reshape(-1),
                           reduction="sum")
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)


def test_no_gradient_work_under_no_grad(monkeypatch):
    """Evaluation runs the loss under torch.no_grad: only the forward matmul per chunk."""
    h = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(10, 4, dtype=torch.float64)
    t = torch.randint(0, 10, (8,))
    calls = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda *a, **k: calls.append(1) or real_mm(*a, **k))
    with torch.no_grad():
        got = linear_cross_entropy_sum(h, w, t, chunk=4)
    assert calls == []  # torch.mm computes the input gradient; the forward uses h @ W.T
    torch.testing.assert_close(got, F.cross_entropy(h @ w.T, t, reduction="sum"))
