"""LoRA variants, by registration: the adapted layer's forward looks its variant up in a table.

A variant decides how one adapter contributes to a layer's output and how it merges. Plain
LoRA is the default; DoRA and others register a predicate on the config that selects them.
"""

from __future__ import annotations

from typing import Callable

import torch


class Variant:
    """Plain LoRA: ``y = base(x) + s * B(A(dropout(x)))``; merge adds ``s * B @ A`` to W."""

    name = "lora"
    supports_rows = True  # can run in a mixed-adapter batch through stacked slots

    def setup(self, layer, adapter: str, config, init: bool) -> None:
        """Create any extra per-adapter state after A/B exist (``init``: they were initialised,
        not about to be loaded)."""

    def forward(self, layer, adapter: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        return result + layer.lora_term(adapter, x).to(result.dtype)

    def delta_weight(self, layer, adapter: str) -> torch.Tensor:
        return layer.plain_delta_weight(adapter)

    def merge(self, layer, adapter: str, safe: bool) -> None:
        layer.add_to_base(self.delta_weight(layer, adapter), adapter, safe)

    def unmerge(self, layer, adapter: str) -> None:
        layer.add_to_base(self.delta_weight(layer, adapter), adapter, safe=False, sign=-1.0)


PLAIN = Variant()
# (name, predicate over LoraConfig, variant); the first predicate that holds wins.
_REGISTRY: list[tuple[str, Callable[[object], bool], Variant]] = []


def register_variant(name: str, when: Callable[[object], bool], variant: Variant) -> None:
    _REGISTRY[:] = [entry for entry in _REGISTRY if entry[0] != name]
    _REGISTRY.append((name, when, variant))


def resolve_variant(config) -> Variant:
    for _, when, variant in _REGISTRY:
        if when(config):
            return variant
    if getattr(config, "use_dora", False):
        raise ValueError("use_dora=True but no DoRA variant is registered in this build")
    return PLAIN
