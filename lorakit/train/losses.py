"""Loss math shared by the training loop, evaluation and tests (pure tensor functions).

Normalisation under gradient accumulation and data parallelism: an optimizer step covers the
micro-batches of every process, and its loss is the mean over *all target tokens of the step*:

    L = sum_{micro-batches m, all processes} sum_{t in targets(m)} loss_t  /  N_step

Each micro-batch's backward uses ``loss_sum(m) * loss_scale(N_step, W)``. DDP averages
gradients over the ``W`` processes, hence the factor ``W``. Every process computes ``N_step``
from the shared plan, so no communication is needed, and 4 micro-batches x 1 equals 1 x 4
(tests/test_train_accumulation.py). Averaging per-micro-batch means instead would weight a
token in a short micro-batch more than one in a long micro-batch.

seq_cls is the same with one target per example.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lorakit.train.formats import IGNORE


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy ``[B, T]``: entry ``t`` is the loss of predicting ``labels[:, t]``
    from ``logits[:, t - 1]``; 0 where ``labels`` is ``IGNORE`` and at ``t = 0``.

    ``logits`` ``[B, T, V]`` (any float dtype; computed in fp32), ``labels`` ``[B, T]``.
    """
    target = labels[:, 1:]
    keep = target != IGNORE
    # Only target rows are upcast and soft-maxed: with completion-only loss that is a fraction
    # of the [B, T, vocab] logits, the largest tensor of a small model's step.
    picked = F.cross_entropy(logits[:, :-1][keep].float(), target[keep], reduction="none")
    loss = torch.zeros(target.shape, dtype=picked.dtype, device=picked.device)
    loss = loss.masked_scatter(keep, picked)
    return F.pad(loss, (1, 0))


def count_targets(labels: torch.Tensor) -> int:
    """Targets in a micro-batch: tokens with a label after position 0 (seq_cls: examples)."""
    if labels.dim() == 1:
        return labels.numel()
    return int((labels[:, 1:] != IGNORE).sum())


def loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed loss of a micro-batch (causal LM logits ``[B, T, V]`` or class logits ``[B, C]``)."""
    if labels.dim() == 1:
        return F.cross_entropy(logits.float(), labels, reduction="sum")
    return token_losses(logits, labels).sum()


def loss_scale(step_targets: int, world_size: int) -> float:
    """Factor turning a micro-batch's summed loss into its share of the step's mean loss."""
    if step_targets <= 0:
        raise ValueError("an optimizer step with no target tokens (all labels masked)")
    return world_size / step_targets


def tokens_per_second(n_tokens: int, seconds: float) -> float:
    """Throughput over input tokens (padding excluded); 0 for an empty interval."""
    return n_tokens / seconds if seconds > 0 else 0.0
