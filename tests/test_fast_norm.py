"""Fused RMSNorm against Hugging Face's LlamaRMSNorm."""

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from lorakit.fast.norm import rms_norm


@pytest.mark.parametrize("weight_grad", [False, True])
def test_matches_hf_rmsnorm_fp64(weight_grad):
    g = torch.Generator().manual_seed(0)
    ref = LlamaRMSNorm(16, eps=1e-5).double()
    ref.weight.data = torch.randn(16, generator=g, dtype=torch.float64)
    ref.weight.requires_grad_(weight_grad)
    x = torch.randn(3, 5, 16, generator=g, dtype=torch.float64, requires_grad=True)
    got = rms_norm(x, ref.weight, 1e-5)
    want = ref(x)  # Hugging Face normalises in fp32 even for fp64 inputs
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    gy = torch.randn_like(got)
    wanted = [x, ref.weight] if weight_grad else [x]
    for a, b in zip(torch.autograd.grad(got, wanted, gy), torch.autograd.grad(want, wanted, gy)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_bf16_within_rounding_of_hf():
    g = torch.Generator().manual_seed(1)
    ref = LlamaRMSNorm(64, eps=1e-5).to(torch.bfloat16)
    ref.weight.data = (1 + 0.1 * torch.randn(64, generator=g)).bfloat16()
    ref.weight.requires_grad_(False)
    x = (3 * torch.randn(128, 64, generator=g)).bfloat16().requires_grad_(True)
    got, want = rms_norm(x, ref.weight, 1e-5), ref(x)
    assert got.dtype == torch.bfloat16
    assert ((got.float() - want.float()).abs() <= 2 ** -7 * want.float().abs() + 1e-3).all()
    gy = torch.randn_like(got)
    a, = torch.autograd.grad(got, x, gy)
    b, = torch.autograd.grad(want, x, gy)
    assert (a.float() - b.float()).norm() / b.float().norm() < 1e-2


def test_keeps_bf16_input_not_an_fp32_copy():
    x = torch.randn(8, 32).bfloat16().requires_grad_(True)
    w = torch.ones(32, dtype=torch.bfloat16)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        rms_norm(x, w, 1e-6)
    assert max(t.numel() * t.element_size() for t in saved) == x.numel() * 2
