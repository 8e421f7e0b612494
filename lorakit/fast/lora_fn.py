"""One fused autograd function for a frozen linear map plus the LoRA adapters that read its input.

A *group* is one or more adapted linear layers that receive the same input ``x`` (q/k/v of an
attention block, gate/up of an MLP, or a single layer). Their frozen weights are stacked into
one ``W [sum(out_i), in]`` and the function computes, for member ``i`` with output columns
``o_i : o_i + out_i``, in plain PyTorch:

    keep = keep_multiplier(drop_positions(x.numel(), p, seed), x.shape, x.dtype)   # lorakit.fast.mask
    xd   = x * keep / (1 - p)                                  # one mask, shared by the group
    y    = x @ W.T + bias                                   # [..., sum(out_i)]
    y[..., o_i : o_i + out_i] += (xd @ A_i.T @ B_i.T) * s_i

which for a group of one is ``base(x) + lora_linear(dropout(x), A, B, s)`` (``lorakit.ops``).

What it saves for the backward pass: ``x`` (a reference, usually alive anyway), the rank-sized
``h = xd @ A.T`` ``[N, sum(r_i)]`` and the dropped positions (int32, ``4 p`` bytes per element
of ``x``). The dropped copy of ``x`` and the multiplier mask are rebuilt in the backward pass,
never stored, so dropout keeps nothing of size ``[tokens, in]``. All matmuls
run in ``x``'s dtype (bf16 on CPU); adapter factors may be kept in fp32 (master weights) and are
cast on the fly, their gradients returned in their own dtype.

The frozen weight's gradient is computed only when it requires one (``needs_input_grad``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lorakit.fast.mask import drop_positions, keep_multiplier


@dataclass(frozen=True)
class Member:
    """Where one adapter of a group sits: output columns ``[out_offset, out_offset + out)``,
    rank rows ``[rank_offset, rank_offset + r)`` of the stacked ``A``, scaling ``s``."""

    out_offset: int
    out: int
    rank_offset: int
    r: int
    scaling: float


def layout(outs: list[int], ranks: list[int], scalings: list[float]) -> tuple[Member, ...]:
    """Consecutive placement of members with the given output sizes, ranks and scalings."""
    members, o, ro = [], 0, 0
    for out, r, s in zip(outs, ranks, scalings):
        members.append(Member(o, out, ro, r, float(s)))
        o, ro = o + out, ro + r
    return tuple(members)


class FusedLoraLinear(torch.autograd.Function):
    """``fused_lora_linear``'s autograd function; see the module docstring for the semantics."""

    @staticmethod
    def forward(ctx, x, weight, bias, p, seed, members, *factors):
        k = len(members)
        a_list, b_list = factors[:k], factors[k:]
        x2 = x.reshape(-1, x.shape[-1])
        dtype = x.dtype
        a = torch.cat([t.to(dtype) for t in a_list])  # [sum r_i, in]
        y = F.linear(x2, weight, bias)  # [N, sum out_i]
        pos = drop_positions(x2.numel(), p, seed, x.device).int() if p > 0 else None
        h = (x2 * keep_multiplier(pos, x2.shape, dtype, x.device) if p > 0 else x2) @ a.T  # [N, sum r_i]
        inv_keep = 1.0 / (1.0 - p)
        for m, b in zip(members, b_list):
            cols = y if k == 1 else y[:, m.out_offset:m.out_offset + m.out]
            cols.addmm_(h[:, m.rank_offset:m.rank_offset + m.r], b.to(dtype).T, alpha=m.scaling * inv_keep)
        ctx.save_for_backward(x, weight, h, pos, *factors)
        ctx.members, ctx.inv_keep, ctx.has_bias = members, inv_keep, bias is not None
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, gy):
        x, weight, h, pos, *factors = ctx.saved_tensors
        members, k = ctx.members, len(ctx.members)
        a_list, b_list = factors[:k], factors[k:]
        x2 = x.reshape(-1, x.shape[-1])
        gy2 = gy.reshape(-1, gy.shape[-1]).to(x.dtype)
        dtype = x.dtype
        keep = keep_multiplier(pos, x2.shape, dtype, x.device) if pos is not None else None

        gh_parts, grad_b = [], []
        for m, b in zip(members, b_list):
            g_cols = gy2 if k == 1 else gy2[:, m.out_offset:m.out_offset + m.out]
            alpha = m.scaling * ctx.inv_keep
            gh_parts.append(g_cols @ (b.to(dtype) * alpha))  # [N, r_i]
            h_m = h[:, m.rank_offset:m.rank_offset + m.r]
            grad_b.append((g_cols.T @ h_m).mul_(alpha).to(b.dtype) if b.requires_grad else None)
        gh = torch.cat(gh_parts, dim=1) if k > 1 else gh_parts[0]  # [N, sum r_i]

        grad_a = [None] * k
        if any(t.requires_grad for t in a_list):
            xd = x2 * keep if keep is not None else x2
            da = gh.T @ xd  # [sum r_i, in]
            grad_a = [da[m.rank_offset:m.rank_offset + m.r].to(t.dtype) if t.requires_grad else None
                      for m, t in zip(members, a_list)]

        grad_x = None
        if ctx.needs_input_grad[0]:
            a = torch.cat([t.to(dtype) for t in a_list])
            grad_x = gh @ a  # the LoRA path's share, [N, in]
            if keep is not None:
                grad_x.mul_(keep)
            grad_x.addmm_(gy2, weight)  # + the frozen path's share, accumulated by the GEMM
            grad_x = grad_x.view(x.shape)
        grad_w = (gy2.T @ x2).to(weight.dtype) if ctx.needs_input_grad[1] else None
        grad_bias = gy2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return (grad_x, grad_w, grad_bias, None, None, None, *grad_a, *grad_b)


def fused_lora_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      members: tuple[Member, ...], a_list: list[torch.Tensor],
                      b_list: list[torch.Tensor], p: float = 0.0, seed: int = 0) -> torch.Tensor:
    """Frozen ``x @ weight.T + bias`` plus every member's LoRA term, in one autograd node.

    x ``[..., in]``; weight ``[sum out_i, in]``; ``a_list[i]`` ``[r_i, in]``; ``b_list[i]``
    ``[out_i, r_i]``; returns ``[..., sum out_i]`` in ``x``'s dtype. ``p`` is the dropout
    probability on the LoRA path (0 in eval mode), ``seed`` fixes its mask.
    """
    if len(a_list) != len(members) or len(b_list) != len(members):
        raise ValueError(f"fused_lora_linear: {len(members)} members but {len(a_list)} A and "
                         f"{len(b_list)} B factors")
    return FusedLoraLinear.apply(x, weight, bias, p, seed, members, *a_list, *b_list)
