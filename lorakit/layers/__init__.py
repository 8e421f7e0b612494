"""Adapted layers. ``make_layer`` picks plain LoRA's layer class for a base module (other
adapter types bring their own, see ``lorakit.adapter_types``)."""

from __future__ import annotations

from torch import nn

from lorakit.layers.base import LoraFactors, LoraLayer
from lorakit.layers.conv import LoraConv
from lorakit.layers.embedding import LoraEmbedding
from lorakit.layers.hooks import FusedForward, PerRowAdapters, StackedRowAdapters
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


__all__ = ["FusedForward", "LoraConv", "LoraEmbedding", "LoraFactors", "LoraLayer", "LoraLinear", "ModulesToSave",
           "PerRowAdapters", "StackedRowAdapters", "make_layer"]
