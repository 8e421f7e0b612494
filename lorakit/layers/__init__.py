"""Adapted layers. ``make_layer`` picks the LoRA layer class for a base module."""

from __future__ import annotations

from torch import nn

from lorakit.layers.base import LoraLayer, RowAdapters
from lorakit.layers.conv import LoraConv
from lorakit.layers.embedding import LoraEmbedding
from lorakit.layers.linear import LoraLinear
from lorakit.layers.saved import ModulesToSave


def make_layer(module: nn.Module, module_name: str, config) -> LoraLayer:
    if isinstance(module, nn.Embedding):
        return LoraEmbedding(module, module_name)
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return LoraConv(module, module_name)
    # GPT-2's Conv1D stores W as [in, out]: PEFT sets fan_in_fan_out for it automatically.
    is_conv1d = type(module).__name__ == "Conv1D"
    return LoraLinear(module, module_name, fan_in_fan_out=config.fan_in_fan_out or is_conv1d)


__all__ = ["LoraLayer", "LoraLinear", "LoraEmbedding", "LoraConv", "ModulesToSave", "RowAdapters", "make_layer"]
