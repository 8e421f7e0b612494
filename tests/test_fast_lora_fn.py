"""The fused LoRA function against its plain reference, with the same dropout mask."""

import pytest
import torch

from lorakit.fast.lora_fn import fused_lora_linear, layout
from lorakit.fast.mask import draw_seed, drop_positions, keep_multiplier

OUTS, RANKS, SCALES = [12, 4, 4], [3, 2, 3], [0.5, 2.0, 1.0]


def make(dtype, outs=OUTS, ranks=RANKS, bias=False, a_grad=True, x_grad=True, w_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    n_in = 16
    x = torch.randn(2, 5, n_in, generator=g).to(dtype).requires_grad_(x_grad)
    w = torch.randn(sum(outs), n_in, generator=g).to(dtype).requires_grad_(w_grad)
    b = torch.randn(sum(outs), generator=g).to(dtype) if bias else None
    a = [torch.randn(r, n_in, generator=g).requires_grad_(a_grad) for r in ranks]  # fp32 masters
    bb = [torch.randn(o, r, generator=g).requires_grad_(True) for o, r in zip(outs, ranks)]
    return x, w, b, a, bb


def reference(x, w, b, a, bb, scales, outs, p, seed):
    """``x @ W.T + b`` plus ``(dropout(x) @ A.T @ B.T) * s`` per member, plain autograd ops."""
    x2 = x.reshape(-1, x.shape[-1])
    if p > 0:
        keep = keep_multiplier(drop_positions(x2.numel(), p, seed), tuple(x2.shape), x.dtype)
        xd = x2 * keep / (1 - p)
    else:
        xd = x2
    parts = []
    for w_i, b_i, a_i, bb_i, s in zip(w.split(outs), (b.split(outs) if b is not None else [None] * len(outs)),
                                      a, bb, scales):
        y = x2 @ w_i.T + (b_i if b_i is not None else 0)
        parts.append(y + (xd @ a_i.to(x.dtype).T @ bb_i.to(x.dtype).T) * s)
    return torch.cat(parts, -1).view(*x.shape[:-1], -1)


def grads(y, tensors, g):
    wanted = [t for t in tensors if t is not None and t.requires_grad]
    return torch.autograd.grad(y, wanted, g)


@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("members", [1, 3])
@pytest.mark.parametrize("bias", [False, True])
def test_outputs_and_gradients_match_reference_fp64(p, members, bias):
    outs, ranks, scales = OUTS[:members], RANKS[:members], SCALES[:members]
    x, w, b, a, bb = make(torch.float64, outs, ranks, bias=bias, w_grad=True)
    seed = 123
    y = fused_lora_linear(x, w, b, layout(outs, ranks, scales), a, bb, p, seed)
    ref = reference(x, w, b, a, bb, scales, outs, p, seed)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)
    for got, want in zip(grads(y, [x, w, *a, *bb], g), grads(ref, [x, w, *a, *bb], g)):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_bf16_activations_with_fp32_masters_within_bf16_tolerance():
    x, w, b, a, bb = make(torch.bfloat16)
    seed = draw_seed()
    y = fused_lora_linear(x, w, b, layout(OUTS, RANKS, SCALES), a, bb, 0.1, seed)
    assert y.dtype == torch.bfloat16
    x64 = x.detach().double().requires_grad_(True)
    a64 = [t.detach().double().requires_grad_(True) for t in a]
    b64 = [t.detach().double().requires_grad_(True) for t in bb]
    ref = reference(x64, w.double(), None, a64, b64, SCALES, OUTS, 0.1, seed)
    scale = ref.abs().max()
    assert (y.double() - ref).abs().max() / scale < 2e-2
    g = torch.randn_like(ref)
    for got, want, t in zip(grads(y, [x, *a, *bb], g.bfloat16()), grads(ref, [x64, *a64, *b64], g), [x, *a, *bb]):
        assert got.dtype == t.dtype  # adapter gradients come back in the masters' fp32
        assert (got.double() - want).norm() / want.norm() < 2e-2


def test_frozen_a_and_input_without_grad_get_no_gradient():
    """lora_fa (A frozen) and a first layer whose input needs no gradient: only B trains."""
    x, w, b, a, bb = make(torch.float64, a_grad=False, x_grad=False)
    y = fused_lora_linear(x, w, b, layout(OUTS, RANKS, SCALES), a, bb, 0.2, 7)
    g = torch.randn_like(y)
    y.backward(g)
    assert x.grad is None and w.grad is None and all(t.grad is None for t in a)
    ref = reference(x, w, b, a, bb, SCALES, OUTS, 0.2, 7)
    for got, want in zip([t.grad for t in bb], grads(ref, bb, g)):
        torch.testing.assert_close(got, want)


def test_mask_is_regenerated_not_stored():
    """The dropped copy of x and its mask are not among the tensors saved for backward: only x
    itself, the frozen weight, the rank-sized h, the factors and the int32 drop positions."""
    x, w, b, a, bb = make(torch.float32)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fused_lora_linear(x, w, b, layout(OUTS, RANKS, SCALES), a, bb, 0.5, 3)
    big = [t for t in saved if t.numel() >= x.numel()]
    assert len(big) == 2 and any(t is x for t in big) and any(t is w for t in big)
    positions = [t for t in saved if t.dtype == torch.int32]
    assert len(positions) == 1 and positions[0].numel() < x.numel()


def test_wrong_number_of_factors_names_counts():
    x, w, b, a, bb = make(torch.float32)
    with pytest.raises(ValueError, match="3 members but 2 A"):
        fused_lora_linear(x, w, b, layout(OUTS, RANKS, SCALES), a[:2], bb, 0.0, 0)
