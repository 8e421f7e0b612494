"""One micro-batch of preference training: the forward passes a method needs and its ``Terms``.

    paired methods   policy log-probs of [chosen; rejected] in one forward (+ the reference's,
                     under no_grad, unless cached) -> dpo / ipo / simpo / orpo losses
    kto              policy log-probs of the completions, and of the mismatched KL rows and
                     the reference's of both under no_grad -> kto loss
    reward           1-logit head scores of [chosen; rejected] in one forward -> Bradley-Terry
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lorakit.preference import losses
from lorakit.preference.logps import collate_pairs, collate_unpaired, completion_logps, sequence_scores
from lorakit.preference.reference import reference_mode

METHODS = ("dpo", "ipo", "orpo", "simpo", "kto", "reward")
NEEDS_REFERENCE = ("dpo", "ipo", "kto")


@dataclass
class StepContext:
    """What computing a micro-batch needs besides the data."""

    model: nn.Module
    method: str
    beta: float = 0.1
    simpo_gamma: float = 0.5
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    has_ref_adapter: bool = False  # reference = the frozen "reference" adapter, else the base
    chunked: bool = False           # completion log-probs through the chunked head (lorakit.fast)
    pad_id: int = 0
    device: torch.device = torch.device("cpu")
    autocast: bool = False


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def logps(ctx: StepContext, batch: dict, reference: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Completion log-probs of ``batch`` under the policy, or the reference (no_grad)."""
    with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.autocast):
        if not reference:
            return completion_logps(ctx.model, batch, ctx.chunked)
        with torch.no_grad(), reference_mode(ctx.model, ctx.has_ref_adapter):
            return completion_logps(ctx.model, batch, ctx.chunked)


def reference_pair_logps(ctx: StepContext, pairs: list) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) reference log-probs ``[B]`` of ``pairs`` (for the cache)."""
    ref, _ = logps(ctx, _to(collate_pairs(pairs, ctx.pad_id), ctx.device), reference=True)
    return ref.chunk(2)


def pair_terms(ctx: StepContext, pairs: list, cached_ref: tuple | None = None) -> losses.Terms:
    """``Terms`` of a micro-batch of ``Pair``s; ``cached_ref``: precomputed (chosen, rejected)
    reference log-probs."""
    batch = _to(collate_pairs(pairs, ctx.pad_id), ctx.device)
    n = len(pairs)
    if ctx.method == "reward":
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.autocast):
            scores = sequence_scores(ctx.model, batch)
        return losses.bradley_terry_loss(scores[:n], scores[n:])
    policy, tokens = logps(ctx, batch)
    pc, pr, tc, tr = policy[:n], policy[n:], tokens[:n], tokens[n:]
    if ctx.method == "simpo":
        return losses.simpo_loss(pc, pr, tc, tr, ctx.beta, ctx.simpo_gamma)
    if ctx.method == "orpo":
        return losses.orpo_loss(pc, pr, tc, tr, -pc.sum(), ctx.beta)
    if cached_ref is None:
        ref, _ = logps(ctx, batch, reference=True)
        rc, rr = ref[:n], ref[n:]
    else:
        rc, rr = (t.to(ctx.device) for t in cached_ref)
    if ctx.method == "dpo":
        return losses.dpo_loss(pc, pr, rc, rr, ctx.beta)
    if ctx.method == "ipo":
        return losses.ipo_loss(pc, pr, rc, rr, tc, tr, ctx.beta)
    raise ValueError(f"unknown paired method {ctx.method!r}; known: {METHODS}")


def kto_terms(ctx: StepContext, items: list) -> losses.Terms:
    """``Terms`` of a micro-batch of ``Unpaired`` rows (KTO)."""
    batch, kl_batch, desirable = collate_unpaired(items, ctx.pad_id)
    batch, kl_batch = _to(batch, ctx.device), _to(kl_batch, ctx.device)
    policy, _ = logps(ctx, batch)
    ref, _ = logps(ctx, batch, reference=True)
    with torch.no_grad():
        kl_policy, _ = logps(ctx, kl_batch)
    kl_ref, _ = logps(ctx, kl_batch, reference=True)
    kl = losses.kto_kl(kl_policy, kl_ref)
    return losses.kto_loss(policy, ref, desirable.to(ctx.device), kl, ctx.beta,
                           ctx.desirable_weight, ctx.undesirable_weight)


__all__ = ["METHODS", "NEEDS_REFERENCE", "StepContext", "kto_terms", "pair_terms",
           "reference_pair_logps"]
