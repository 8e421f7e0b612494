"""Attention for short training sequences on CPU: dense matmuls, one softmax pass, recompute.

Plain reference (grouped-query heads: query head ``h`` reads key/value head ``h // G``):

    s = (q @ repeat(k).transpose(-1, -2)) * scale + bias     # bias: 0 or -inf-like, [S, S]
    o = softmax(s, dim=-1) @ repeat(v)

PyTorch's CPU flash-attention kernel is built for long sequences; at a few hundred tokens its
backward pass costs several times the FLOPs it does (measured: 2x slower than dense math for
4 x 256 tokens, 9 heads of 64). Here the scores are one batched GEMM that also adds the mask
(``baddbmm``), the softmax is one pass in bf16 with fp32 accumulation, and the backward pass
recomputes the probabilities from ``q`` and ``k`` instead of keeping ``[B, H, S, S]`` of
them, so it saves less than the flash kernel does (``q``, ``k``, ``v``, no output, no lse).
The G query heads that share a key/value head are stacked into one matrix (``[G*S, D]``), so
keys and values are never repeated. Scores are rounded to bf16 before the softmax (as in
Hugging Face's eager attention); the flash kernel keeps them in fp32.

``attention_forward`` is the Hugging Face attention-interface function that uses this for
sequences up to ``max_len`` tokens and falls back to the model's SDPA path otherwise.
"""

from __future__ import annotations

import torch


class GroupedAttention(torch.autograd.Function):
    """``q [B*KV, G*S, D]``, ``k``/``v`` ``[B*KV, S, D]``, ``bias`` broadcastable to
    ``[B*KV, G*S, S]``; returns ``o [B*KV, G*S, D]``."""

    @staticmethod
    def forward(ctx, q, k, v, bias, scale):
        p = torch.softmax(torch.baddbmm(bias, q, k.transpose(1, 2), alpha=scale), dim=-1)
        ctx.save_for_backward(q, k, v, bias)
        ctx.scale = scale
        return torch.bmm(p, v)

    @staticmethod
    def backward(ctx, go):
        q, k, v, bias = ctx.saved_tensors
        scale = ctx.scale
        go = go.contiguous()
        p = torch.softmax(torch.baddbmm(bias, q, k.transpose(1, 2), alpha=scale), dim=-1)
        dv = torch.bmm(p.transpose(1, 2), go)
        ds = torch._softmax_backward_data(torch.bmm(go, v.transpose(1, 2)), p, -1, p.dtype)
        dq = torch.bmm(ds, k).mul_(scale)
        dk = torch.bmm(ds.transpose(1, 2), q).mul_(scale)
        return dq, dk, dv, None, None


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                      scale: float) -> torch.Tensor:
    """Attention of ``q [B, H, S, D]`` over ``k``/``v`` ``[B, KV, S, D]`` (``H = G * KV``) with an
    additive ``bias`` ``[B or 1, 1, S, S]``; returns ``[B, H, S, D]``."""
    b, h, s, d = q.shape
    kv = k.shape[1]
    g = h // kv
    qg = q.reshape(b * kv, g * s, d)
    bg = _group_bias(bias, b, kv, g)
    o = GroupedAttention.apply(qg, k.reshape(b * kv, s, d), v.reshape(b * kv, s, d), bg, scale)
    return o.view(b, h, s, d)


def _group_bias(bias: torch.Tensor, b: int, kv: int, g: int) -> torch.Tensor:
    """``[B or 1, 1, S, S]`` -> ``[B*KV or 1, G*S, S]``: every stacked query head sees its row's mask."""
    nb, _, s, t = bias.shape
    stacked = bias[:, :, None].expand(nb, 1, g, s, t).reshape(nb, g * s, t)
    if nb == 1:
        return stacked
    return stacked[:, None].expand(nb, kv, g * s, t).reshape(nb * kv, g * s, t)


def causal_bias(s: int, dtype: torch.dtype, device) -> torch.Tensor:
    """``[1, 1, S, S]``: 0 on and below the diagonal, the dtype's lowest value above it."""
    upper = torch.ones(s, s, dtype=torch.bool, device=device).triu(1)
    return torch.zeros(1, 1, s, s, dtype=dtype, device=device).masked_fill(upper, torch.finfo(dtype).min)


def mask_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Hugging Face's boolean SDPA mask (True: attend) as an additive bias. Rows that attend to
    nothing (padding queries) get a uniform distribution instead of NaN; their outputs are
    never used."""
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


# ---- Hugging Face glue -------------------------------------------------------------------------
NAME = "lorakit_short"
MAX_LEN = 1024  # longer sequences go to SDPA (its kernel skips the masked half of long causal rows)


class _BiasCache:
    """The grouped bias of the last mask seen: every layer of one forward gets the same mask."""

    def __init__(self):
        self.key, self.mask, self.bias = None, None, None

    def get(self, mask, s, dtype, device, b, kv, g):
        key = (s, dtype, b, kv, g, None if mask is None else (mask.data_ptr(), mask._version, mask.shape))
        if self.key != key or (mask is not None and self.mask is not mask):
            full = causal_bias(s, dtype, device) if mask is None else mask_bias(mask, dtype)
            self.key, self.mask, self.bias = key, mask, _group_bias(full, b, kv, g)
        return self.bias


_CACHE = _BiasCache()


def attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                      scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """Hugging Face attention interface: ``grouped_attention`` for self-attention over at most
    ``MAX_LEN`` tokens without attention dropout, soft-capping, sliding windows or position
    bias; the model's SDPA path otherwise. Returns ``([B, S, H, D], None)``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    s = query.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    plain = (dropout == 0.0 and key.shape[2] == s and 1 < s <= MAX_LEN and (causal or attention_mask is not None)
             and not any(kwargs.get(k) for k in ("softcap", "position_bias", "sliding_window", "output_attentions")))
    if not plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    b, h, _, d = query.shape
    kv = key.shape[1]
    bias = _CACHE.get(attention_mask, s, query.dtype, query.device, b, kv, h // kv)
    qg = query.reshape(b * kv, h // kv * s, d)
    o = GroupedAttention.apply(qg, key.reshape(b * kv, s, d), value.reshape(b * kv, s, d), bias,
                               scaling if scaling is not None else d ** -0.5)
    return o.view(b, h, s, d).transpose(1, 2), None
