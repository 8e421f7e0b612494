"""``Linear4bit``: a frozen linear layer whose weight is stored as NF4.

It is a quantized base layer in the sense the LoRA layers rely on: it has ``in_features``,
``out_features``, ``forward(x)`` and ``dequantize() -> Tensor [out, in]``.

Plain-PyTorch semantics of the forward, with ``W = nf4_dequantize(weight, state)``:

    y = (x.to(compute_dtype) @ W.to(compute_dtype).T + bias).to(x.dtype)

The backward dequantizes W again (``grad_x = grad_y @ W``) instead of keeping the dequantized
weight alive between forward and backward, as bitsandbytes' 4-bit matmul does; W gets no
gradient. The state dict uses bitsandbytes' key layout (see ``lorakit.quant.state``), so
checkpoints move between ``bnb.nn.Linear4bit`` and this module.
"""

from __future__ import annotations

import torch
from torch import nn

from lorakit.errors import NotFoundError
from lorakit.quant.nf4 import QuantState, nf4_dequantize, nf4_quantize, zeros_state
from lorakit.quant.state import JSON_KEY, quant_state_from_dict, quant_state_to_dict


class _NF4Linear(torch.autograd.Function):
    """``y = x @ nf4_dequantize(packed, state, dtype).T + bias``; saves only the packed weight."""

    @staticmethod
    def forward(ctx, x, packed, bias, state: QuantState, dtype: torch.dtype):
        ctx.save_for_backward(packed)
        ctx.state, ctx.dtype = state, dtype
        return nn.functional.linear(x, nf4_dequantize(packed, state, dtype), bias)

    @staticmethod
    def backward(ctx, grad_y):
        (packed,) = ctx.saved_tensors
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_y @ nf4_dequantize(packed, ctx.state, ctx.dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_y.reshape(-1, grad_y.shape[-1]).sum(0)
        return grad_x, None, grad_bias, None, None


class Linear4bit(nn.Module):
    """Frozen NF4 linear layer: packed weight buffer ``weight`` ((n+1)//2, 1) uint8, its
    ``quant_state`` and an optional full-precision ``bias`` (out_features,).

    ``Linear4bit(in, out)`` holds an all-zero weight, ready for ``load_state_dict`` (including
    a state dict written by ``bnb.nn.Linear4bit``); ``Linear4bit.from_linear(linear)``
    quantizes an ``nn.Linear``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        compute_dtype: torch.dtype = torch.bfloat16,
        blocksize: int = 64,
        double_quant: bool = True,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype = compute_dtype
        packed, state = zeros_state(
            (out_features, in_features), blocksize, double_quant, compute_dtype, device
        )
        self.register_buffer("weight", packed)
        self.quant_state = state
        self.bias = None
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        blocksize: int = 64,
        double_quant: bool = True,
        compute_dtype: torch.dtype = torch.bfloat16,
    ) -> Linear4bit:
        """Quantize ``linear.weight`` to NF4 (on its device); the bias is copied as is."""
        packed, state = nf4_quantize(linear.weight.detach(), blocksize, double_quant)
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=compute_dtype,
            blocksize=blocksize,
            double_quant=double_quant,
            device=packed.device,
        )
        layer.weight, layer.quant_state = packed, state
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return layer

    @property
    def blocksize(self) -> int:
        return self.quant_state.blocksize

    @property
    def double_quant(self) -> bool:
        return self.quant_state.nested

    def dequantize(self) -> torch.Tensor:
        """The weight as a ``[out_features, in_features]`` tensor in ``compute_dtype``."""
        return nf4_dequantize(self.weight, self.quant_state, self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype
        bias = None if self.bias is None else self.bias.to(dtype)
        y = _NF4Linear.apply(x.to(dtype), self.weight, bias, self.quant_state, dtype)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, blocksize={self.blocksize}, "
            f"double_quant={self.double_quant}, compute_dtype={self.compute_dtype}"
        )

    def _apply(self, fn, recurse=True):
        # The quant state is not a buffer: a dtype cast such as model.half() must not touch
        # the fp32 scales. It follows the packed weight's device instead.
        super()._apply(fn, recurse)
        self.quant_state = self.quant_state.to(self.weight.device)
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name, tensor in quant_state_to_dict(self.quant_state).items():
            destination[f"{prefix}weight.{name}"] = tensor if keep_vars else tensor.detach()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        weight_key, state = prefix + "weight", None
        if weight_key in state_dict:
            state = self._read_quant_state(state_dict, weight_key)
        # The weight.* entries are consumed here; nn.Module would report them as unexpected.
        own = {k: v for k, v in state_dict.items() if not k.startswith(weight_key + ".")}
        super()._load_from_state_dict(
            own, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if state is not None:
            self.quant_state = state.to(self.weight.device)

    def _read_quant_state(self, state_dict, weight_key: str) -> QuantState:
        """Validate ``<prefix>weight`` and its ``weight.*`` entries; errors name the key."""
        packed = state_dict[weight_key]
        if packed.dtype != torch.uint8:
            raise ValueError(
                f"{weight_key!r} is {packed.dtype} {tuple(packed.shape)}, not a packed uint8 NF4 "
                "weight; quantize a full-precision layer with Linear4bit.from_linear"
            )
        head = weight_key + "."
        entries = {k[len(head) :]: v for k, v in state_dict.items() if k.startswith(head)}
        if not entries:
            raise NotFoundError(f"missing quant-state key {head + JSON_KEY!r}")
        state = quant_state_from_dict(entries, head)
        if state.shape != (self.out_features, self.in_features):
            raise ValueError(
                f"inconsistent quant-state key {head + JSON_KEY!r}: shape {tuple(state.shape)}, "
                f"layer is ({self.out_features}, {self.in_features})"
            )
        return state
