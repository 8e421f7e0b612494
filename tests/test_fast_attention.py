"""Short-sequence attention against the plain reference and against the model's SDPA path."""

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lorakit.fast import attention
from lorakit.fast.attention import causal_bias, grouped_attention, mask_bias
from lorakit.fast.swaps import use_short_attention


def reference(q, k, v, bias, scale):
    """softmax(q @ repeat(k).T * scale + bias) @ repeat(v), grouped-query heads."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    return torch.softmax(q @ k.transpose(-1, -2) * scale + bias, dim=-1) @ v


@pytest.mark.parametrize("padded", [False, True])
def test_matches_reference_outputs_and_gradients(padded):
    g = torch.Generator().manual_seed(0)
    b, h, kv, s, d = 2, 6, 2, 7, 8
    q = torch.randn(b, h, s, d, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(b, kv, s, d, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(b, kv, s, d, generator=g, dtype=torch.float64, requires_grad=True)
    if padded:  # row 1 starts with 2 padding tokens
        keep = torch.ones(b, 1, s, s, dtype=torch.bool).tril()
        keep[1, :, :, :2] = False
        bias = mask_bias(keep, torch.float64)
    else:
        bias = causal_bias(s, torch.float64, "cpu")
    got = grouped_attention(q, k, v, bias, 0.3)
    want = reference(q, k, v, bias, 0.3)
    rows = slice(None) if not padded else slice(2, None)  # fully masked rows are unused
    torch.testing.assert_close(got[..., rows, :], want[..., rows, :])
    gout = torch.randn_like(got)
    gout[1, :, :2] = 0
    for a, b_ in zip(torch.autograd.grad(got, [q, k, v], gout), torch.autograd.grad(want, [q, k, v], gout)):
        torch.testing.assert_close(a, b_)


def tiny_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=6,
                      num_key_value_heads=2, vocab_size=80)
    return LlamaForCausalLM(cfg).double()


@pytest.mark.parametrize("batch", ["causal", "padded", "packed"])
def test_model_matches_sdpa(batch):
    ref = tiny_llama()
    model = copy.deepcopy(ref)
    restore = use_short_attention(model)
    assert model.config._attn_implementation == attention.NAME
    ids = torch.randint(0, 80, (2, 10))
    kw = {"input_ids": ids}
    if batch == "padded":
        kw["attention_mask"] = torch.ones_like(ids)
        kw["attention_mask"][1, 7:] = 0
    if batch == "packed":  # two examples in row 0: positions restart, no cross attention
        kw["position_ids"] = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4, 5], list(range(10))])
    out = model(**kw).logits
    want = ref(**kw).logits
    valid = kw.get("attention_mask", torch.ones_like(ids)).bool()
    torch.testing.assert_close(out[valid], want[valid])
    out[valid].sum().backward()
    want[valid].sum().backward()
    for (n, p), (_, p_ref) in zip(model.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, msg=n)
    restore()
    assert model.config._attn_implementation == "sdpa"


def test_long_sequences_and_attention_dropout_use_sdpa(monkeypatch):
    model = tiny_llama()
    use_short_attention(model)
    calls = []
    monkeypatch.setattr(attention.GroupedAttention, "apply", lambda *a: calls.append(1))
    monkeypatch.setattr(attention, "MAX_LEN", 8)
    model(input_ids=torch.randint(0, 80, (1, 9)))  # longer than MAX_LEN
    assert calls == []
