"""Prepacked bf16 weights for the serving GEMMs (oneDNN's blocked layout, as Inductor's CPU
weight prepacking uses).

A decode step multiplies every weight by a small block of rows (``[32, 576] @ [576, 3104]``
for SmolLM2's gate/up at batch 32). ``F.linear`` on a plain ``[out, in]`` bf16 weight makes
oneDNN reorder the weight into its blocked layout on every call; a weight reordered once
(``torch.ops.mkldnn._reorder_linear_weight``) and multiplied with
``torch.ops.mkldnn._linear_pointwise`` skips that (measured ~15% faster per layer GEMM and up
to ~1.7x on the 49152-wide output head, single thread, bench/serve.py's shapes).

Semantics: ``PackedWeight(w)(x) == F.linear(x, w)`` for ``x [..., in]`` (the same oneDNN bf16
kernel with fp32 accumulation; tests/test_serve_packed.py checks it). The packed copy is taken
when it is built: the served model's base weights are frozen, and a change to ``w`` after that
is not seen (a second copy of the weights, in bf16, lives as long as the pool).

Only bf16 CPU weights are packed, only where oneDNN has bf16 kernels for this CPU, and never
with ``LORAKIT_PACKED=0``; everywhere else ``pack`` returns None and callers keep ``F.linear``
(fp32 serving always does: its greedy parity tests run the reference GEMMs).
"""

from __future__ import annotations

import functools
import logging
import os

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PackedWeight", "available", "pack", "pack_output_head"]

log = logging.getLogger("lorakit.serve")


@functools.cache
def _supported() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def available(weight: torch.Tensor) -> bool:
    """Whether ``pack(weight)`` packs: a 2-D bf16 CPU weight, oneDNN bf16 support, and
    ``LORAKIT_PACKED`` not ``0``."""
    return (os.environ.get("LORAKIT_PACKED", "1") != "0" and weight.dim() == 2
            and weight.dtype == torch.bfloat16 and weight.device.type == "cpu" and _supported())


class PackedWeight:
    """A frozen ``[out, in]`` weight in oneDNN's layout; calling it on ``x [..., in]`` gives
    ``F.linear(x, weight)``."""

    def __init__(self, weight: torch.Tensor):
        self.out_features, self.in_features = weight.shape
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")


def pack(weight: torch.Tensor) -> PackedWeight | None:
    """``PackedWeight(weight)`` where ``available(weight)``, else None (also when oneDNN
    refuses the weight: the caller's ``F.linear`` is always correct)."""
    if not available(weight):
        return None
    try:
        return PackedWeight(weight)
    except RuntimeError as err:
        log.warning("lorakit serve: weight %s not prepacked (%s); using F.linear", tuple(weight.shape), err)
        return None


def pack_output_head(model: nn.Module) -> bool:
    """Give ``model``'s output head (``get_output_embeddings()``, a bias-free ``nn.Linear``) a
    packed copy of its weight, used while autograd is off; returns whether it did. The module
    and its (possibly tied) weight stay as they are."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not nn.Linear or head.bias is not None:
        return False
    packed = pack(head.weight)
    if packed is None:
        return False
    head.forward = _PackedForward(head, packed)
    return True


class _PackedForward:
    """An ``nn.Linear``'s instance-level forward: the packed GEMM without autograd, the
    module's own forward otherwise."""

    def __init__(self, module: nn.Linear, packed: PackedWeight):
        self.module, self.packed = module, packed

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.dtype != torch.bfloat16:
            return F.linear(x, self.module.weight)
        return self.packed(x)
