"""DoRA (Liu et al., 2024): weight-decomposed LoRA, an adapter type on ``LoraConfig(use_dora=True)``.

A learnable magnitude ``m`` (one entry per output row, PEFT key ``lora_magnitude_vector``)
rescales the direction of the adapted weight:

    W' = (m / ||W + s*B@A||_row) * (W + s*B@A)          y = W' x + bias

The row norm is treated as a constant (detached), as in the paper's section 4.3 and PEFT. The
forward never forms ``W + s*B@A``: with ``g = m / norm``,

    y = bias + g * (W x + s * B(A x))

which reuses the base layer's output ``W x``. For the gradient of ``g`` autograd keeps the
layer's output ``y`` (``_Rescale``), which the next op usually keeps anyway; PEFT keeps two more
``[tokens, out]`` tensors per layer. The norm comes from ``dora_row_norm``, which expands the
square instead of materialising the ``out x in`` sum (see its docstring).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lorakit import ops
from lorakit.layers import LoraLinear
from lorakit.variants import LoraType


def dora_row_norm(weight: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scaling: float,
                  fan_in_fan_out: bool = False) -> torch.Tensor:
    """``||W + s*B@A||_2`` per output row, fp32 ``[out]``, detached.

    Reference: ``torch.linalg.norm(W + s * B @ A, dim=1)``. Computed as

        ||W_i||^2 + 2s * sum_k B_ik (W A^T)_ik + s^2 * sum_k B_ik (B (A A^T))_ik

    so the cost is one ``[out, in] x [in, r]`` product and ``r x r`` work, with no ``out x in``
    temporary. ``weight`` is ``[out, in]`` (``[in, out]`` with ``fan_in_fan_out``); A ``[r, in]``,
    B ``[out, r]``. ``W A^T`` is computed in the weight's dtype (no fp32 copy of W); the rest
    in fp32.
    """
    with torch.no_grad():
        a_low = A.detach().to(weight.dtype)
        wa = (a_low @ weight).T if fan_in_fan_out else F.linear(a_low, weight).T  # [out, r]
        w_sq = torch.linalg.vector_norm(weight, dim=0 if fan_in_fan_out else 1, dtype=torch.float32) ** 2
        a, b = A.detach().float(), B.detach().float()
        cross = (b * wa.float()).sum(1)
        ba_sq = ((b @ (a @ a.T)) * b).sum(1)
        return (w_sq + (2.0 * scaling) * cross + (scaling * scaling) * ba_sq).clamp_min(0.0).sqrt()


def _weight(layer) -> torch.Tensor:
    """The base weight as a float tensor (a 4-bit base is dequantized)."""
    base = layer.base_layer
    return base.dequantize() if hasattr(base, "dequantize") else base.weight


def _rows(factor: torch.Tensor, fan_in_fan_out: bool) -> torch.Tensor:
    """``[out]`` -> broadcastable over the stored weight (rows, or columns for Conv1D)."""
    return factor.view(1, -1) if fan_in_fan_out else factor.view(-1, 1)


def _is_first_contributor(layer, name: str) -> bool:
    """True when no adapter ran before ``name`` in this forward, so ``result`` is ``W x + bias``."""
    for other in layer.active_adapters:
        if other in layer.variants and other not in layer.merged_adapters:
            return other == name
    return False


class _Rescale(torch.autograd.Function):
    """``y = g * z (+ bias)`` for a per-output-feature ``g`` (fp32 ``[out]``).

    Reference: ``g.to(z.dtype) * z + bias`` under autograd, which keeps ``z`` for the gradient
    of ``g``. This keeps the output ``y`` instead and recovers ``z = (y - bias) / g`` in the
    backward: when the next op keeps ``y`` anyway (an activation's input, attention's values),
    the two share one tensor. A model that edits this output in place (``ReLU(inplace=True)``
    right after the layer) makes the backward raise autograd's in-place error; build the
    type with ``DoraType(save_output=False)`` for such a model.
    """

    @staticmethod
    def forward(ctx, z, g, bias):
        y = z * g.to(z.dtype)
        if bias is not None:
            y = y + bias.to(y.dtype)
        ctx.save_for_backward(y, g, bias)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        y, g, bias = ctx.saved_tensors
        out = g.shape[0]
        grad_z = grad_y * g.to(grad_y.dtype)
        # grad_g = sum_t grad_y * z = (sum_t grad_y * y - bias * sum_t grad_y) / g: products in
        # the activations' dtype, sums in fp32, the division on [out] only.
        grad_y2 = grad_y.reshape(-1, out)
        dot = (grad_y2 * y.reshape(-1, out)).sum(0, dtype=torch.float32)
        grad_bias = grad_y2.sum(0, dtype=torch.float32) if bias is not None else None
        if bias is not None:
            dot = dot - bias.float() * grad_bias
        # A row with g == 0 (magnitude exactly 0) has lost z; its gradient is taken as 0.
        grad_g = torch.where(g != 0, dot / g, 0.0)
        if grad_bias is not None:
            grad_bias = grad_bias.to(bias.dtype) if ctx.needs_input_grad[2] else None
        return grad_z, grad_g, grad_bias


class DoraType(LoraType):
    """DoRA on a linear layer (nn.Linear, Conv1D, 4-bit linear). Not in mixed-adapter batches."""

    name = "dora"
    plain_lora = False

    def __init__(self, save_output: bool = True):
        self.save_output = save_output

    def selects(self, config) -> bool:
        return config.use_dora

    def create(self, layer, adapter: str, config, dtype: torch.dtype, init: bool) -> None:
        if not isinstance(layer, LoraLinear):
            raise ValueError(f"{layer.module_name}: DoRA is implemented for linear layers only, "
                             f"not {type(layer.base_layer).__name__}")
        if config.lora_bias:
            raise ValueError(f"{layer.module_name}: lora_bias=True is not supported with DoRA (as in PEFT)")
        super().create(layer, adapter, config, dtype, init)
        if not hasattr(layer, "lora_magnitude_vector"):
            layer.lora_magnitude_vector = nn.ParameterDict()
            layer.dora_merge_factor = {}  # adapter -> m / norm used at merge time, for exact unmerge
        a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
        # m starts as ||W + s*B@A|| so the adapter's initial output equals plain LoRA's (the base
        # output for the default zero-B init); a loaded file overwrites it.
        norm = dora_row_norm(_weight(layer), a, b, layer.scaling[adapter], layer.fan_in_fan_out)
        layer.lora_magnitude_vector[adapter] = nn.Parameter(norm.to(device=a.device, dtype=a.dtype))

    def forward(self, layer, adapter: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
        s = layer.scaling[adapter]
        weight = _weight(layer)
        norm = dora_row_norm(weight, a, b, s, layer.fan_in_fan_out)
        g = layer.lora_magnitude_vector[adapter].float() / norm
        dropout = layer.lora_dropout[adapter]
        bias = getattr(layer.base_layer, "bias", None)
        if (isinstance(dropout, nn.Identity) or not layer.training) and _is_first_contributor(layer, adapter):
            # result == W x + bias: reuse it instead of a second matmul with W.
            lora = ops.lora_linear(x, a, b, s).to(result.dtype)
            z = (result if bias is None else result - bias) + lora
            if self.save_output and torch.is_grad_enabled():
                return _Rescale.apply(z, g, bias)
            out = g.to(z.dtype) * z
            return out if bias is None else out + bias
        g = g.to(result.dtype)
        # Dropout (the paper applies it to the input of both terms) or other adapters already
        # added to ``result``: the W x term is computed explicitly.
        dx = dropout(x).to(weight.dtype)
        wx = dx @ weight if layer.fan_in_fan_out else F.linear(dx, weight)
        lora = ops.lora_linear(dx, a, b, s).to(result.dtype)
        return result - wx + g * (wx + lora)

    @torch.no_grad()
    def delta_weight(self, layer, adapter: str) -> torch.Tensor:
        """``W' - W`` in the base weight's layout (fp32), for the current base weight ``W``."""
        weight = _weight(layer).detach().float()
        merged = self._merged_weight(layer, adapter, weight)[0]
        return merged - weight

    def _merged_weight(self, layer, adapter: str, weight: torch.Tensor):
        """``(m / ||W + dW||_row) * (W + dW)`` and the factor ``m / norm`` (both fp32)."""
        summed = weight + layer.plain_delta_weight(adapter).to(weight.device)
        norm = torch.linalg.vector_norm(summed, dim=0 if layer.fan_in_fan_out else 1)
        factor = layer.lora_magnitude_vector[adapter].detach().float() / norm
        return _rows(factor, layer.fan_in_fan_out) * summed, factor

    @torch.no_grad()
    def merge(self, layer, adapter: str, safe: bool) -> None:
        weight = layer.base_weight()
        new, factor = self._merged_weight(layer, adapter, weight.data.float())
        if safe and not torch.isfinite(new).all():
            raise ValueError(f"merging DoRA adapter {adapter!r} into {layer.module_name} gives NaN/inf; "
                             "weights unchanged")
        weight.data.copy_(new.to(weight.dtype))
        layer.dora_merge_factor[adapter] = factor

    @torch.no_grad()
    def unmerge(self, layer, adapter: str) -> None:
        weight = layer.base_weight()
        factor = layer.dora_merge_factor.pop(adapter)
        restored = weight.data.float() / _rows(factor, layer.fan_in_fan_out) - layer.plain_delta_weight(adapter)
        weight.data.copy_(restored.to(weight.dtype))


DORA = DoraType()
