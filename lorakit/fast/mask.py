"""Dropout masks that are regenerated from a seed instead of being kept for the backward pass.

    drop = dropped(shape, p, seed)           # bool [*shape], True with probability p_eff
    x_dropped = x.masked_fill(drop, 0) / (1 - p_eff)   # nn.Dropout(p) with this mask

The same ``(shape, p, seed)`` always gives the same mask, so a fused LoRA function can draw it
in the forward pass and draw it again in the backward pass: nothing of size ``[tokens, in]``
is kept between the two.

Random bits come from 64-bit integers of a seeded ``torch.Generator`` (one draw yields four
16-bit lanes, several times cheaper on CPU than ``bernoulli_``). An element is dropped when its
lane falls below ``round(p * 65536)``, so the drop probability is that count over 65536
(``effective_p``; 0.05 becomes 0.0500031). Masks therefore differ from PEFT's for the same
``torch.manual_seed``; they have the same distribution up to that rounding.
"""

from __future__ import annotations

import math

import torch

_LANES = 65536


def effective_p(p: float) -> float:
    """The drop probability the 16-bit threshold actually realises for a requested ``p``."""
    return round(p * _LANES) / _LANES


def dropped(shape: tuple[int, ...], p: float, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean mask of ``shape``, True (drop) with probability ``effective_p(p)``."""
    numel = math.prod(shape)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    words = torch.randint(-(2**63), 2**63 - 1, ((numel + 3) // 4,), dtype=torch.int64,
                          device=device, generator=gen)
    lanes = words.view(torch.int16)[:numel].view(shape)
    # int16 lanes are uniform over [-32768, 32767]: drop the lowest round(p * 65536) values.
    return lanes < round(p * _LANES) - _LANES // 2


def draw_seed() -> int:
    """A mask seed from torch's global CPU generator: reproducible under ``torch.manual_seed``
    and restored by ``torch.utils.checkpoint`` when a checkpointed forward is recomputed."""
    return int(torch.randint(0, 2**62, (1,)).item())
