"""Plain LoRA as an adapter type; DoRA, VeRA and AdaLoRA (the modules beside this one) are the
other built-in entries of ``lorakit.adapter_types`` (registered in ``lorakit.builtin_types``).
"""

from __future__ import annotations

import torch
from torch import nn

from lorakit.adapter_types import AdapterType
from lorakit.config import LoraConfig
from lorakit.inits import lookup_init
from lorakit.layers import LoraFactors, make_layer


class LoraType(AdapterType):
    """Plain LoRA: ``y = base(x) + s * B(A(dropout(x)))``; merge adds ``s * B @ A`` to W.

    Works on every layer class ``lorakit.layers.make_layer`` picks (linear, Conv1D, 4-bit
    linear, embedding, conv); the layer provides the factor pair (``LoraFactors``).
    """

    name = "lora"
    peft_type = "LORA"
    config_class = LoraConfig
    plain_lora = True

    def selects(self, config: LoraConfig) -> bool:
        return not config.use_dora

    def make_layer(self, module: nn.Module, module_name: str, config: LoraConfig):
        return make_layer(module, module_name, config)

    def create(self, layer: LoraFactors, adapter: str, config: LoraConfig, dtype: torch.dtype,
               init: bool) -> None:
        n = layer.module_name
        r = config.rank_for(n)
        layer.record(adapter, r, config.alpha_for(n), config.scaling_for(n), config.lora_dropout)
        layer.create_factors(adapter, r, config, layer.base_device(), dtype)
        init_fn = lookup_init(config.init_lora_weights)
        # An init that rewrites the base weight (PiSSA, OLoRA, LoftQ) also runs when loading, as
        # in PEFT: the base gets the same residual and the loaded factors overwrite A/B.
        if init or getattr(init_fn, "rewrites_base", False):
            init_fn(layer, adapter, config)

    def forward(self, layer: LoraFactors, adapter: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        return result + layer.lora_term(adapter, x).to(result.dtype)

    def delta_weight(self, layer: LoraFactors, adapter: str) -> torch.Tensor:
        return layer.plain_delta_weight(adapter)


PLAIN = LoraType()

__all__ = ["LoraType", "PLAIN"]
