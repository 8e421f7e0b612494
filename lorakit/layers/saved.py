"""``modules_to_save``: a fully trained copy of a module per adapter (PEFT's
``ModulesToSaveWrapper`` layout: ``original_module`` and ``modules_to_save.<adapter>``)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from lorakit.layers.hooks import StackedRowAdapters


class ModulesToSave(nn.Module):
    def __init__(self, original_module: nn.Module, module_name: str = ""):
        super().__init__()
        self.original_module = original_module
        self.modules_to_save = nn.ModuleDict()
        self.module_name = module_name
        self.active_adapters: list[str] = []
        self.disabled = False
        # a mixed batch (lorakit.adapter_per_row); the server's slot pool never wraps these
        self.per_row_adapters: StackedRowAdapters | None = None

    @property
    def adapter_names(self) -> list[str]:
        return list(self.modules_to_save)

    def add(self, name: str) -> None:
        trained = copy.deepcopy(self.original_module)
        for p in trained.parameters():
            p.requires_grad_(True)
        self.modules_to_save[name] = trained

    def delete(self, name: str) -> None:
        if name in self.modules_to_save:
            del self.modules_to_save[name]
        self.active_adapters = [a for a in self.active_adapters if a != name]

    def adapter_params(self, name: str) -> dict[str, nn.Parameter]:
        """The copy's parameters keyed as the original module's (PEFT drops the
        ``modules_to_save.<adapter>.`` prefix on disk)."""
        if name not in self.modules_to_save:
            return {}
        return dict(self.modules_to_save[name].named_parameters())

    def current(self) -> nn.Module:
        """The module that runs now: the last active adapter's copy, else the original."""
        if not self.disabled:
            for name in reversed(self.active_adapters):
                if name in self.modules_to_save:
                    return self.modules_to_save[name]
        return self.original_module

    def forward(self, x, *args, **kwargs):
        if self.per_row_adapters is None or self.disabled:
            return self.current()(x, *args, **kwargs)
        # Mixed batch: each row takes the output of its adapter's copy (or the original).
        out = self.original_module(x, *args, **kwargs)
        plan = self.per_row_adapters
        for i, name in enumerate(plan.names):
            rows = plan.slot == i
            if name in self.modules_to_save and bool(rows.any()):
                other = self.modules_to_save[name](x, *args, **kwargs)
                mask = rows.view(-1, *([1] * (out.dim() - 1)))
                out = torch.where(mask, other, out)
        return out
