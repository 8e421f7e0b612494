"""LoRA on nn.Conv1d / nn.Conv2d (PEFT's layout): A is a conv in -> r with the base kernel,
stride, padding and dilation; B is a 1x1 conv r -> out.

    y = base(x) + s * B(A(dropout(x)))
"""

from __future__ import annotations

import torch
from torch import nn

from lorakit.layers.base import LoraLayer, conv_delta, masked_row_delta


def _own_forward(module: nn.Module) -> bool:
    return type(module).forward not in (nn.Conv1d.forward, nn.Conv2d.forward)


class LoraConv(LoraLayer):
    def __init__(self, base_layer: nn.Module, module_name: str = ""):
        if base_layer.groups != 1:
            raise ValueError(f"{module_name}: LoRA on grouped convolutions (groups={base_layer.groups}) is not supported")
        if type(base_layer) not in (nn.Conv1d, nn.Conv2d) and _own_forward(base_layer) \
                and any(k != 1 for k in base_layer.kernel_size):
            # e.g. TF "same" padding applied in forward: lora_A would see the unpadded input.
            raise ValueError(f"{module_name}: {type(base_layer).__name__} has its own forward (padding "
                             "or weight changes LoRA's A conv would not see); only its 1x1 "
                             "convolutions can be adapted")
        super().__init__(base_layer, module_name)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()

    def _conv(self, cin, cout, kernel, stride, padding, dilation, bias, **kw):
        cls = type(self.base_layer) if type(self.base_layer) in (nn.Conv1d, nn.Conv2d) else nn.Conv2d
        return cls(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias, **kw)

    def create_factors(self, name, r, config, device, dtype) -> None:
        base = self.base_layer
        kw = dict(device=device, dtype=dtype)
        ones = (1,) * len(base.kernel_size)
        self.lora_A[name] = self._conv(base.in_channels, r, base.kernel_size, base.stride,
                                       base.padding, base.dilation, False, **kw)
        self.lora_B[name] = self._conv(r, base.out_channels, ones, ones, 0, 1, bool(config.lora_bias), **kw)
        if config.lora_bias:
            nn.init.zeros_(self.lora_B[name].bias)

    def adapter_factors(self, name):
        if name is None:
            base = self.base_layer
            ones = (1,) * len(base.kernel_size)
            return (torch.empty((0, base.in_channels) + tuple(base.kernel_size)),
                    torch.empty((base.out_channels, 0) + ones))
        return self.lora_A[name].weight, self.lora_B[name].weight

    def lora_term(self, name: str, x: torch.Tensor) -> torch.Tensor:
        a, b = self.lora_A[name], self.lora_B[name]
        return b(a(self.lora_dropout[name](x.to(a.weight.dtype)))) * self.scaling[name]

    def plain_delta_weight(self, name: str) -> torch.Tensor:
        a, b = self.lora_A[name].weight.float(), self.lora_B[name].weight.float()
        return conv_delta(a, b) * self.scaling[name]

    def row_delta(self, x, a_stack, b_stack, scale, slot) -> torch.Tensor:
        base = self.base_layer
        conv = nn.functional.conv1d if isinstance(base, nn.Conv1d) else nn.functional.conv2d

        def term(i, xs):
            h = conv(xs.to(a_stack.dtype), a_stack[i], None, base.stride, base.padding, base.dilation)
            return conv(h, b_stack[i]) * scale[i]

        return masked_row_delta(term, x, slot, a_stack.shape[0])
