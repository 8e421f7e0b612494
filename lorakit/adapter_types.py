"""Adapter types by registration: one protocol, one table.

An adapter type (plain LoRA, DoRA, VeRA, AdaLoRA) is one ``AdapterType`` object: its typed
config class and PEFT ``peft_type``, the layer class it needs, how one adapter computes and
merges inside that layer, and the model-level tensors it adds to or takes from a file. Every
consumer asks this table instead of probing configs or layers:

    kind = adapter_type_for(config)         # add_adapter, save_adapter, load_adapter
    config_class_for("VERA")                # reading adapter_config.json

It is consulted when an adapter is built, saved or read, never per forward: a layer keeps each
adapter's type in ``layer.variants[name]`` and its forward calls that object directly. The
built-in types are registered in one place, ``lorakit.builtin_types``, before the first lookup
or registration; ``docs/architecture.md`` walks through adding a type.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from lorakit.layers.base import LoraLayer


class AdapterType(ABC):
    """What one kind of adapter is. Subclasses set the class attributes and implement the
    abstract methods; the others have the defaults a type without model-level state needs.

    Per layer, ``layer`` is the adapted layer (``LoraLayer`` subclass made by ``make_layer``)
    and ``adapter`` the adapter's name in it.
    """

    name: ClassVar[str]            # short name: "lora", "dora", "vera", "adalora"
    peft_type: ClassVar[str]       # PEFT's peft_type in adapter_config.json
    config_class: ClassVar[type]   # typed config: from_peft_dict(d, source), to_peft_dict(), save(dir)
    # True when the adapter's term is plain LoRA's ``s * B(A(dropout(x)))`` over the layer's
    # ``adapter_factors``: then stacked per-row slots (mixed batches, serving), training's fused
    # path and ``combine``'s factored shortcut compute it without calling ``forward``.
    plain_lora: ClassVar[bool] = False

    def selects(self, config) -> bool:
        """Whether this type computes ``config`` (several types may share a config class:
        plain LoRA and DoRA both take a ``LoraConfig``)."""
        return True

    @abstractmethod
    def make_layer(self, module: nn.Module, module_name: str, config) -> "LoraLayer":
        """The adapted layer that wraps ``module`` (the first adapter on it creates it)."""

    def prepare(self, model: nn.Module, targets: list[str], config) -> None:
        """Model-level state built once before the layers (VeRA: the shared projections)."""

    @abstractmethod
    def create(self, layer: "LoraLayer", adapter: str, config, dtype: torch.dtype, init: bool) -> None:
        """Create ``adapter``'s parameters on ``layer`` and record its settings with
        ``layer.record``; ``init=False``: the weights are loaded next."""

    @abstractmethod
    def forward(self, layer: "LoraLayer", adapter: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """``result`` (the base output plus earlier adapters' terms) plus this adapter's term."""

    @abstractmethod
    def delta_weight(self, layer: "LoraLayer", adapter: str) -> torch.Tensor:
        """``W' - W`` in the base weight's layout (fp32): what ``merge`` adds."""

    def merge(self, layer: "LoraLayer", adapter: str, safe: bool) -> None:
        layer.add_to_base(self.delta_weight(layer, adapter), adapter, safe)

    def unmerge(self, layer: "LoraLayer", adapter: str) -> None:
        layer.add_to_base(self.delta_weight(layer, adapter), adapter, safe=False, sign=-1.0)

    def export_tensors(self, model: nn.Module, adapter: str, config, tensors: dict[str, torch.Tensor]) -> dict:
        """The file's tensors from the layers' ``tensors`` (PEFT keys): add model-level ones
        (VeRA's projections) or drop pruned parts (AdaLoRA)."""
        return tensors

    def import_tensors(self, model: nn.Module, adapter: str, config, tensors: dict[str, torch.Tensor]) -> dict:
        """Consume the model-level tensors of a file; return the per-layer rest."""
        return tensors


_TYPES: dict[str, AdapterType] = {}  # name -> type, in registration order
_LOCK = threading.RLock()
_builtins_registered = False


def _table() -> dict[str, AdapterType]:
    global _builtins_registered
    with _LOCK:
        if not _builtins_registered:
            _builtins_registered = True
            # Imported here: the built-ins import the layer and config modules, which import
            # this one.
            from lorakit.builtin_types import BUILTINS

            for kind in BUILTINS:
                _TYPES.setdefault(kind.name, kind)
    return _TYPES


def register_adapter_type(kind: AdapterType) -> None:
    """Add ``kind`` to the table, replacing the entry of the same ``name``."""
    if not isinstance(kind, AdapterType):
        raise TypeError(f"register_adapter_type takes an AdapterType instance, got {kind!r}")
    _table()[kind.name] = kind


def registered_types() -> list[AdapterType]:
    return list(_table().values())


def adapter_type_for(config: Any) -> AdapterType:
    """The one registered type whose ``config_class`` is ``type(config)`` and that selects it."""
    kinds = [k for k in _table().values() if type(config) is k.config_class]
    if not kinds:
        known = sorted({k.config_class.__name__ for k in _table().values()})
        raise TypeError(f"config must be a LoraConfig (or another registered adapter config: {known}), "
                        f"got {type(config).__name__}")
    chosen = [k for k in kinds if k.selects(config)]
    if len(chosen) != 1:
        what = "no" if not chosen else f"{len(chosen)} ({[k.name for k in chosen]})"
        flags = " with use_dora=True" if getattr(config, "use_dora", False) else ""
        raise ValueError(f"{what} registered adapter type takes this {type(config).__name__}{flags}; "
                         f"registered for it: {[k.name for k in kinds]}")
    return chosen[0]


def config_class_for(peft_type: str, source: str = "adapter config") -> type:
    """The config class registered for PEFT's ``peft_type``, else a ValueError naming the known ones."""
    classes = {k.peft_type: k.config_class for k in _table().values()}
    if peft_type not in classes:
        raise ValueError(f"{source}: peft_type {peft_type!r} is not supported; known: {sorted(classes)}")
    return classes[peft_type]


__all__ = ["AdapterType", "adapter_type_for", "config_class_for", "register_adapter_type", "registered_types"]
