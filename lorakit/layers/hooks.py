"""The two per-layer hooks other subsystems set on a ``LoraLayer`` (their precedence is stated
once, in ``LoraLayer.forward``), and the library's per-row implementation.

``layer.fused_forward: FusedForward | None``
    computes the layer's whole output in a faster way while it ``applies``. Set by training's
    fused path (``lorakit.fast.groups.FastLinear``) and by serving's shared-input groups
    (``lorakit.serve.groups.GroupHook``).

``layer.per_row_adapters: PerRowAdapters | None``
    adds, to the base output, each row's own adapter term (row ``b`` uses slot ``slot[b]``,
    -1: base only). Set by ``lorakit.adapter_per_row`` (``StackedRowAdapters``, built per
    call) and by the server's preallocated ``lorakit.serve.slots.SlotPool``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from lorakit.layers.base import LoraLayer


class FusedForward(Protocol):
    def applies(self, layer: "LoraLayer") -> bool:
        """Whether this hook computes ``layer``'s output now (else the generic forward runs)."""

    def __call__(self, layer: "LoraLayer", x: torch.Tensor) -> torch.Tensor:
        """``layer``'s whole output for ``x``: base plus adapters."""


class PerRowAdapters(Protocol):
    slot: torch.Tensor  # [rows] long: the slot of each row, -1 = base only

    def add_to(self, layer: "LoraLayer", x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """``result`` (the base output) plus each row's term: for row ``b`` with slot ``i``,
        ``y[b] += (x[b] @ A_i.T @ B_i.T) * s_i`` (``ops.lora_rows``)."""


def stack_factors(layer, names: list):
    """Stacked, rank-padded factors of a plain-LoRA layer (``LoraFactors``) for ``names``
    (None or a missing adapter -> zeros).

    Returns ``A [S, r_max, ...]``, ``B [S, out, r_max, ...]``, ``scaling [S]`` in the
    adapters' dtype.
    """
    present = [n for n in names if n in layer.r]
    r_max = max([layer.r[n] for n in present], default=1)
    ref_a, ref_b = layer.adapter_factors(present[0]) if present else layer.adapter_factors(None)
    a_stack = ref_a.new_zeros((len(names), r_max) + tuple(ref_a.shape[1:]))
    b_stack = ref_b.new_zeros((len(names), ref_b.shape[0], r_max) + tuple(ref_b.shape[2:]))
    scale = torch.zeros(len(names), dtype=ref_a.dtype, device=ref_a.device)
    for i, name in enumerate(names):
        if name in layer.r:
            a, b = layer.adapter_factors(name)
            a_stack[i, : a.shape[0]] = a.detach()
            b_stack[i, :, : b.shape[1]] = b.detach()
            scale[i] = layer.scaling[name]
    return a_stack, b_stack, scale


@dataclass
class StackedRowAdapters:
    """The library's ``PerRowAdapters``: one mixed-adapter batch, ``names[i]`` the adapter in
    slot ``i``. Stacked factors are built once per layer per batch plan (``stack_factors``)."""

    slot: torch.Tensor
    names: list
    _cache: dict = field(default_factory=dict)

    def weights(self, layer: "LoraLayer"):
        """``(A, B, scaling)`` stacks of ``layer``: with ``slot`` the arguments of ``ops.lora_rows``."""
        key = id(layer)
        if key not in self._cache:
            self._cache[key] = stack_factors(layer, self.names)
        return self._cache[key]

    def add_to(self, layer: "LoraLayer", x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        a, b, s = self.weights(layer)
        return result + layer.row_delta(x, a, b, s, self.slot).to(result.dtype)
