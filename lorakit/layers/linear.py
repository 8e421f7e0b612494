"""LoRA on a linear map: nn.Linear, GPT-2's Conv1D (``fan_in_fan_out``), or a 4-bit base.

    y = base(x) + s * B(A(dropout(x)))      A: Linear(in -> r), B: Linear(r -> out)
"""

from __future__ import annotations

import torch
from torch import nn

from lorakit import ops
from lorakit.layers.base import LoraLayer


def linear_shape(base: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a linear-like base layer."""
    if type(base).__name__ == "Conv1D" and hasattr(base, "nf"):
        return base.weight.shape[0], base.weight.shape[1]  # Conv1D stores W as [in, out]
    return base.in_features, base.out_features


class LoraLinear(LoraLayer):
    def __init__(self, base_layer: nn.Module, module_name: str = "", fan_in_fan_out: bool = False):
        super().__init__(base_layer, module_name)
        self.in_features, self.out_features = linear_shape(base_layer)
        self.fan_in_fan_out = fan_in_fan_out
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()

    def create_factors(self, name, r, config, device, dtype) -> None:
        kw = dict(device=device, dtype=dtype)
        self.lora_A[name] = nn.Linear(self.in_features, r, bias=False, **kw)
        self.lora_B[name] = nn.Linear(r, self.out_features, bias=bool(config.lora_bias), **kw)
        if config.lora_bias:
            nn.init.zeros_(self.lora_B[name].bias)

    def adapter_factors(self, name):
        if name is None:
            return torch.empty(0, self.in_features), torch.empty(self.out_features, 0)
        return self.lora_A[name].weight, self.lora_B[name].weight

    def lora_term(self, name: str, x: torch.Tensor) -> torch.Tensor:
        b = self.lora_B[name]
        return ops.lora_linear(self.lora_dropout[name](x), self.lora_A[name].weight, b.weight,
                               self.scaling[name], b.bias)

    def plain_delta_weight(self, name: str) -> torch.Tensor:
        """``s * B @ A`` in the base weight's layout (transposed for ``fan_in_fan_out``)."""
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        delta = (b.float() @ a.float()) * self.scaling[name]
        return delta.T if self.fan_in_fan_out else delta

    def add_to_base(self, delta, adapter, safe, sign: float = 1.0) -> None:
        super().add_to_base(delta, adapter, safe, sign)
        bias = self.lora_B[adapter].bias
        if bias is None:
            return
        # lora_bias: B's bias (times s) folds into the base bias; a base without a bias gets
        # one for as long as such an adapter is merged.
        base = self.base_layer
        if base.bias is None:
            base.bias = nn.Parameter(torch.zeros_like(bias, dtype=base.weight.dtype), requires_grad=False)
            self._created_bias = True
        base.bias.data += sign * (bias.detach() * self.scaling[adapter]).to(base.bias.dtype)
        still_merged = [a for a in self.merged_adapters if a != adapter and self.lora_B[a].bias is not None]
        if sign < 0 and getattr(self, "_created_bias", False) and not still_merged:
            base.bias = None
            self._created_bias = False

    def row_delta(self, x, a_stack, b_stack, scale, slot) -> torch.Tensor:
        return ops.lora_rows(x, a_stack, b_stack, scale, slot)
