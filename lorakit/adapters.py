"""Which adapters run: activate, disable, mix per row, merge and unmerge (all explicit calls).

This module sits above ``lorakit.inject`` (module surgery), which never imports it."""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn

from lorakit.errors import NotFoundError
from lorakit.inject import adapted_modules, adapter_configs, unwrap_all, update_trainable
from lorakit.layers import LoraLayer, StackedRowAdapters


def _check_names(model: nn.Module, names: list[str]) -> None:
    configs = adapter_configs(model)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"adapter names are strings, got {name!r}")
        if name not in configs:
            raise NotFoundError(f"no adapter {name!r}; adapters: {list(configs)}")


def _set_weights(model: nn.Module, names: list[str], weights) -> None:
    """Give each named adapter its run-time weight (``None``: 1.0 each, as diffusers'
    ``set_adapters`` without ``adapter_weights``). Checked before any layer changes."""
    if weights is None:
        weights = [1.0] * len(names)
    weights = [float(w) for w in ([weights] if isinstance(weights, (int, float)) else weights)]
    if len(weights) != len(names):
        raise ValueError(f"{len(names)} adapters {names} but {len(weights)} weights {weights}")
    if not all(math.isfinite(w) for w in weights):
        raise ValueError(f"adapter weights must be finite numbers, got {weights}")
    layers = _lora_layers(model)
    for m in layers:
        for name, w in zip(names, weights):
            if name in m.merged_adapters and w != m.adapter_weights.get(name, 1.0):
                raise ValueError(f"adapter {name!r} is merged with weight "
                                 f"{m.adapter_weights.get(name, 1.0)}; unmerge it first")
    for m in layers:
        for name, w in zip(names, weights):
            if name in m.r:
                m.set_weight(name, w)


def set_adapter(model: nn.Module, names: str | list[str], weights=None) -> None:
    """Make ``names`` (one name or a list) the active adapters, and trainable.

    Active adapters are summed, adapter ``i`` scaled by ``weights[i]`` (default 1.0 each;
    negative weights subtract: ``y = base(x) + sum_i w_i * s_i * B_i A_i x``), at run time,
    without merging: the same as diffusers' ``set_adapters(names, adapter_weights=weights)``.
    """
    if not isinstance(names, (str, list, tuple)):
        raise TypeError(f"set_adapter takes an adapter name or a list of names, got {names!r}")
    names = [names] if isinstance(names, str) else list(names)
    _check_names(model, names)
    _set_weights(model, names, weights)
    for _, module in adapted_modules(model):
        module.active_adapters = list(names)
    update_trainable(model)


def _lora_layers(model: nn.Module) -> list[LoraLayer]:
    return [m for _, m in adapted_modules(model) if isinstance(m, LoraLayer)]


@contextmanager
def disabled(model: nn.Module):
    """Run the base model: adapters are bypassed inside the block (merged ones are unmerged on
    entry and merged again on exit)."""
    modules = [m for _, m in adapted_modules(model)]
    remerge = [(m, list(m.merged_adapters)) for m in _lora_layers(model) if m.merged_adapters]
    for m, _ in remerge:
        m.unmerge()
    for m in modules:
        m.disabled = True
    try:
        yield model
    finally:
        for m in modules:
            m.disabled = False
        for m, names in remerge:
            m.merge(names)


@contextmanager
def adapter_per_row(model: nn.Module, names: list[str | None]):
    """One forward computes row ``b`` of the batch with adapter ``names[b]`` (None: base).

    Every layer does the base matmul once for the whole batch and the LoRA part through
    stacked, rank-padded factors of the adapters present (``ops.lora_rows``). Inference only:
    dropout is not applied. Adapters must be unmerged.
    """
    if not isinstance(names, (list, tuple)):
        raise TypeError(f"adapter_per_row takes a list of adapter names (None: base), one per row, "
                        f"got {names!r}")
    _check_names(model, [n for n in names if n is not None])
    layers = _lora_layers(model)
    if any(layer.merged_adapters for layer in layers):
        raise ValueError("adapter_per_row needs unmerged adapters; call lorakit.unmerge(model) first")
    slots = list(dict.fromkeys(n for n in names if n is not None))
    for layer in layers:
        for name in slots:
            if name in layer.variants and not layer.variants[name].plain_lora:
                raise ValueError(f"adapter {name!r} ({layer.variants[name].name}) cannot run in a mixed batch")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    slot = torch.tensor([slots.index(n) if n is not None else -1 for n in names], device=device)
    plan = StackedRowAdapters(slot=slot, names=slots)
    modules = [m for _, m in adapted_modules(model)]
    for m in modules:
        m.per_row_adapters = plan
    try:
        yield model
    finally:
        for m in modules:
            m.per_row_adapters = None


def merge(model: nn.Module, adapter_names: list[str] | None = None, safe: bool = False,
          weights=None) -> None:
    """Fold the given (default: active) adapters into the base weights. Idempotent; with
    ``safe=True`` a NaN/inf result raises and every weight is left bit for bit as it was (each
    layer's merge is tried and undone exactly first, one layer at a time, so the check costs
    two extra merges' compute but only one layer's weight copy).

    ``weights`` (one per adapter) sets the adapters' run-time weights first, so the merged
    model equals the unmerged one under ``set_adapter(model, adapter_names, weights)``;
    ``unmerge`` subtracts exactly what was added. Without ``weights`` each adapter merges with
    the weight it runs with.
    """
    layers = _lora_layers(model)
    if adapter_names is None:
        adapter_names = next((list(m.active_adapters) for m in layers), [])
    if isinstance(adapter_names, str):
        adapter_names = [adapter_names]
    if not isinstance(adapter_names, (list, tuple)):
        raise TypeError(f"adapter_names must be a list of adapter names, got {adapter_names!r}")
    _check_names(model, adapter_names)
    old_weights = [(m, dict(m.adapter_weights)) for m in layers]
    if weights is not None:
        _set_weights(model, list(adapter_names), weights)
    before = [len(m.merged_adapters) for m in layers]
    try:
        if safe:
            for m in layers:
                m.check_merge(adapter_names)
        for m in layers:
            m.merge(adapter_names, safe=safe)
    except Exception:
        for m, keep in zip(layers, before):
            m.unmerge(keep)
        for m, old in old_weights:  # a refused merge leaves the run-time weights as they were
            for name in adapter_names:
                if name in m.r:
                    m.set_weight(name, old.get(name, 1.0))
        raise


def merge_and_unload(model: nn.Module, safe: bool = False) -> nn.Module:
    """Merge the active adapters into the base weights and remove all LoRA layers."""
    merge(model, safe=safe)
    return unwrap_all(model, merge=True)


def unmerge(model: nn.Module) -> None:
    """Subtract every merged adapter again (reverse order)."""
    for m in _lora_layers(model):
        m.unmerge()


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts. A quantized layer's packed weight (a buffer, see
    ``lorakit.quant``) counts as the ``out x in`` numbers it stands for, so a QLoRA model's
    total is the base model's, not its bytes."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    total += sum(m.in_features * m.out_features for m in model.modules()
                 if hasattr(m, "quant_state") and hasattr(m, "dequantize"))
    return trainable, total


def print_trainable_parameters(model: nn.Module) -> None:
    trainable, total = trainable_parameters(model)
    print(f"trainable params: {trainable:,} || all params: {total:,} || "
          f"trainable%: {100 * trainable / max(total, 1):.4f}")
