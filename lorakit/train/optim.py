"""AdamW over the trainable parameters (LoRA+ groups when asked) and the learning-rate schedule.

The schedule is a pure function of the step, so the scheduler's whole state is the step count
that every checkpoint stores:

    warmup (step < W):  lr = peak * (step + 1) / W
    after warmup, progress p = (step - W) / max(1, total - W):
        cosine:   lr = peak * 0.5 * (1 + cos(pi * p))
        linear:   lr = peak * (1 - p)
        constant: lr = peak
"""

from __future__ import annotations

import math

import torch
from torch import nn

SCHEDULES = ("cosine", "linear", "constant")


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based)."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {kind!r}; known: {list(SCHEDULES)}")
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "linear":
        return 1.0 - progress
    return 1.0


def param_groups(model: nn.Module, lr: float, weight_decay: float,
                 loraplus_ratio: float = 0.0) -> list[dict]:
    """Trainable parameters as AdamW groups; each group's ``base_lr`` is its peak rate.

    With ``loraplus_ratio > 0``: the LoRA+ groups of ``lorakit.loraplus`` (B factors at
    ``lr * loraplus_ratio``, A factors and other matrices at ``lr``, embedding adapters at their
    own small rate).
    """
    from lorakit.loraplus import loraplus_groups

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    if loraplus_ratio > 0:
        groups = loraplus_groups(model, lr, loraplus_ratio, weight_decay=weight_decay)
    else:
        groups = [{"params": params, "lr": lr, "weight_decay": weight_decay}]
    return [{**g, "base_lr": g["lr"]} for g in groups]


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Set every group's lr to ``base_lr * factor``; return the first group's lr."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return optimizer.param_groups[0]["lr"]
