"""Cross-entropy through the output head in chunks, over the target tokens only.

Reference (what ``linear_cross_entropy_sum`` equals, up to bf16 rounding of the logits that the
plain path has too):

    logits = (h @ W.T).float()                                    # [M, V]
    loss   = F.cross_entropy(logits, targets, reduction="sum")

The plain path keeps ``[M, V]`` logits (and their fp32 copies and gradient) for the backward
pass: with a 49k vocabulary and 1,024 tokens that is 200 MB per fp32 copy. Here the head runs
on ``chunk`` rows at a time, and since the loss is the last thing computed, each chunk's
gradient with respect to ``h`` (and ``W`` if it trains) is computed right away from the
softmax and kept; nothing vocabulary-sized outlives its chunk, and the backward pass only
scales the stored gradient. For a causal LM only positions with a label go through the head
(``causal_lm_loss_sum``), so masked prompt tokens cost no head matmul at all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100  # the label of a position that is not a target (Hugging Face's convention)
LOSS_CHUNK = 256  # output-head rows per chunk: the default of every chunked loss (FastConfig too)

# Model types whose causal-LM head is exactly ``logits = lm_head(final hidden state)`` (no
# logit scaling or soft-capping), so the head can be applied here instead of by the model.
PLAIN_HEAD_MODELS = ("llama", "mistral", "qwen2", "qwen3", "gpt2")


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``h @ W.T`` against ``targets``, gradient computed chunk by chunk
    in the forward pass."""

    @staticmethod
    def forward(ctx, h, weight, targets, chunk, grad_enabled):
        # under torch.no_grad (evaluation) nothing is differentiated: skip the gradient matmuls
        need_h, need_w = ctx.needs_input_grad[0] and grad_enabled, ctx.needs_input_grad[1] and grad_enabled
        acc = torch.promote_types(h.dtype, torch.float32)  # fp32 for bf16 logits, fp64 stays
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=acc) if need_w else None
        total = torch.zeros((), dtype=acc, device=h.device)
        for start in range(0, h.shape[0], chunk):
            h_c, t_c = h[start:start + chunk], targets[start:start + chunk]
            logp = torch.log_softmax((h_c @ weight.T).to(acc), dim=-1)  # [c, V]
            total -= logp.gather(1, t_c[:, None]).sum()
            if need_h or need_w:
                # d loss / d logits = softmax - onehot(target)
                g = logp.exp_()
                g[torch.arange(g.shape[0], device=g.device), t_c] -= 1.0
                g = g.to(h.dtype)
                if need_h:
                    torch.mm(g, weight, out=grad_h[start:start + chunk])
                if need_w:
                    grad_w += g.T @ h_c
        ctx.save_for_backward(*(t for t in (grad_h, grad_w) if t is not None))
        ctx.has, ctx.w_dtype = (need_h, need_w), weight.dtype
        return total

    @staticmethod
    def backward(ctx, g):
        saved = list(ctx.saved_tensors)
        grad_h = saved.pop(0) * g if ctx.has[0] else None
        grad_w = (saved.pop(0) * g).to(ctx.w_dtype) if ctx.has[1] else None
        return grad_h, grad_w, None, None, None


def linear_cross_entropy_sum(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                             chunk: int = LOSS_CHUNK) -> torch.Tensor:
    """``F.cross_entropy((h @ weight.T).float(), targets, reduction="sum")`` without keeping
    the logits. h ``[M, d]``; weight ``[V, d]``; targets ``[M]`` (all valid class indices).
    Returns an fp32 scalar (fp64 for fp64 inputs)."""
    if h.shape[0] != targets.shape[0]:
        raise ValueError(f"linear_cross_entropy_sum: {h.shape[0]} hidden rows but {targets.shape[0]} targets")
    return LinearCrossEntropy.apply(h, weight, targets, chunk, torch.is_grad_enabled())


def supports_chunked_loss(model: nn.Module) -> bool:
    """True when ``causal_lm_loss_sum`` computes exactly what ``model(...).logits`` would give."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return (getattr(model.config, "model_type", None) in PLAIN_HEAD_MODELS
            and type(head) is nn.Linear and head.bias is None and hasattr(model, "get_decoder"))


def causal_lm_loss_sum(model: nn.Module, labels: torch.Tensor, chunk: int = LOSS_CHUNK, **inputs) -> torch.Tensor:
    """Summed next-token loss of a causal LM batch, the same number as
    ``F.cross_entropy(logits[:, :-1], labels[:, 1:], ignore_index=-100, reduction="sum")``
    with ``logits = model(**inputs).logits``; only labelled positions reach the head.

    labels ``[B, T]`` (-100: not a target); ``inputs``: the model's keyword arguments
    (``input_ids``, ``attention_mask`` / ``position_ids``).
    """
    if not supports_chunked_loss(model):
        raise ValueError(f"{type(model).__name__}: the chunked loss needs a plain linear output "
                         f"head on one of {PLAIN_HEAD_MODELS}; use the model's logits instead")
    hidden = model.get_decoder()(**{**inputs, "use_cache": False}).last_hidden_state  # [B, T, d]
    target = labels[:, 1:]
    keep = target != IGNORE
    h = hidden[:, :-1][keep]  # [M, d], only positions that predict a label
    return linear_cross_entropy_sum(h, model.get_output_embeddings().weight, target[keep], chunk)
