"""The LoRA term, as plain functions. Every adapted layer computes its update through these.

Reference semantics (what any faster implementation must reproduce, see tests/test_ops.py):

    lora_linear(x, A, B, s)      == (x @ A.T @ B.T) * s            x [..., in], A [r, in], B [out, r]
    lora_rows(x, As, Bs, s, idx) == row b uses adapter slot idx[b] (idx -1: no update)
                                     x [rows, T, in], As [S, r, in], Bs [S, out, r], s [S]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lora_linear(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scaling: float,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """``(x @ A.T @ B.T) * s (+ bias * s)``, computed in the adapter's dtype."""
    x = x.to(A.dtype) if not torch.is_autocast_enabled(x.device.type) else x
    return F.linear(F.linear(x, A), B, bias) * scaling


def gather_slots(slot: torch.Tensor, scaling: torch.Tensor):
    """Per-row scaling ``[rows]`` and a clamped slot index; rows with slot -1 get scaling 0."""
    safe = slot.clamp(min=0)
    scale = torch.where(slot >= 0, scaling[safe], torch.zeros((), dtype=scaling.dtype, device=scaling.device))
    return safe, scale


def lora_rows(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scaling: torch.Tensor,
              slot: torch.Tensor) -> torch.Tensor:
    """Mixed-adapter LoRA term: each row of ``x`` uses its own adapter slot (BGMV-style).

    x ``[rows, T, in]`` (or ``[rows, in]``); A ``[S, r_max, in]``; B ``[S, out, r_max]``;
    scaling ``[S]``; slot ``[rows]`` (long, -1 = base only). Ranks smaller than ``r_max`` are
    zero-padded, which adds exact zeros. Returns ``[rows, T, out]`` (or ``[rows, out]``).
    Cost: one gather of ``rows`` small matrices and two batched matmuls, whatever the number
    of distinct adapters.
    """
    if x.shape[0] != slot.shape[0]:
        raise ValueError(f"mixed-adapter batch: input has {x.shape[0]} rows but {slot.shape[0]} adapters were given")
    squeeze = x.dim() == 2
    h = x.unsqueeze(1) if squeeze else x.reshape(x.shape[0], -1, x.shape[-1])
    safe, scale = gather_slots(slot, scaling)
    h = h.to(A.dtype)
    if A.shape[0] == 1:  # one adapter for every row: plain matmuls, no per-row copies of A and B
        h = F.linear(F.linear(h, A[0]), B[0]) * scale.to(h.dtype)[:, None, None]
    else:  # index_select copies whole slices; A[safe] goes element by element (~3x slower on CPU)
        h = torch.bmm(h, A.index_select(0, safe).transpose(1, 2))
        h = torch.bmm(h, B.index_select(0, safe).transpose(1, 2)) * scale.to(h.dtype)[:, None, None]
    h = _zero_base_rows(h, slot)
    if squeeze:
        return h.squeeze(1)
    return h.reshape(*x.shape[:-1], B.shape[1])


def lora_embedding_rows(ids: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scaling: torch.Tensor,
                        slot: torch.Tensor) -> torch.Tensor:
    """Embedding LoRA per row: ``out[b, t] = B[s_b] @ A[s_b][:, ids[b, t]] * scaling[s_b]``.

    ids ``[rows, T]``; A ``[S, r_max, num_embeddings]``; B ``[S, dim, r_max]``.
    """
    safe, scale = gather_slots(slot, scaling)
    a_rows = A.transpose(1, 2)[safe[:, None], ids]  # [rows, T, r_max]
    out = torch.bmm(a_rows, B[safe].transpose(1, 2))
    return _zero_base_rows(out * scale.to(out.dtype)[:, None, None], slot)


def _zero_base_rows(h: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """Base rows (slot -1) get an exact 0: their scale-0 product with a borrowed slot is NaN
    where that slot's adapter overflows (inf * 0), which would poison the base rows."""
    base = (slot < 0).nonzero().flatten()
    return h.index_fill(0, base, 0.0) if base.numel() else h
