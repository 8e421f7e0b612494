"""Several training sources mixed with weights (``data_mix: {source: weight}``).

A weight scales how many examples a source contributes to the training set, deterministically
by the run's seed: source ``i`` with ``n_i`` examples and weight ``w_i`` contributes
``round(w_i * n_i)`` examples: ``floor(w_i)`` full copies, then a seeded sample without
replacement of ``round(frac(w_i) * n_i)`` more (so ``0.5`` keeps a random half, ``2`` doubles a
source, ``1`` keeps it as is). Each source is read and checked on its own (format detection,
bad rows named by file and line); the mixed set then shuffles like any training set.
"""

from __future__ import annotations

import collections
import math

import torch

from lorakit.train.data import TokenizedData

__all__ = ["mix", "take_counts"]


def take_counts(n: int, weight: float) -> tuple[int, int]:
    """(full copies, extra sampled examples) of a source of ``n`` examples at ``weight``."""
    if not (weight > 0 and math.isfinite(weight)):
        raise ValueError(f"data_mix: weights must be finite and > 0, got {weight}")
    copies = math.floor(weight)
    return copies, round((weight - copies) * n)


def mix(parts: list[tuple[TokenizedData, float]], seed: int) -> TokenizedData:
    """One training set from ``(tokenized source, weight)`` pairs (see the module docstring)."""
    if any(data.fmt == "classification" for data, _ in parts):
        raise ValueError("data_mix: classification data cannot be mixed (label ids are per file)")
    examples, skipped, first_skip = [], collections.Counter(), {}
    for index, (data, weight) in enumerate(parts):
        copies, extra = take_counts(len(data.examples), weight)
        g = torch.Generator().manual_seed(seed * 1_000_003 + index)
        picked = torch.randperm(len(data.examples), generator=g)[:extra].sort().values.tolist()
        examples += data.examples * copies + [data.examples[i] for i in picked]
        skipped.update(data.skipped)
        for reason, message in data.first_skip.items():
            first_skip.setdefault(reason, message)
    if not examples:
        raise ValueError("data_mix: the weights leave no training examples")
    formats = list(dict.fromkeys(data.fmt for data, _ in parts))
    source = " + ".join(f"{data.source} x{weight:g}" for data, weight in parts)
    return TokenizedData(examples, "+".join(formats), source, skipped, first_skip=first_skip)
