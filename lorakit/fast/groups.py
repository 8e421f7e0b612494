"""Module surgery for the fused LoRA path: group the adapted linear layers that read the same
input, stack their frozen weights, and give each layer a ``fused_forward`` hook
(``lorakit.layers.FusedForward``) that its forward consults.

    y_q, y_k, y_v = q_proj(x), k_proj(x), v_proj(x)      # what the model's code calls
    # with the hook: the first call computes fused_lora_linear(x, [Wq; Wk; Wv], ...) once,
    # returns its q columns and hands k and v their columns when they are called with that x.

Which layers share an input is found by running the model once on a few tokens and recording
the input tensor each adapted layer receives; layers that saw the very same tensor object form
a group (q/k/v, gate/up in Llama-style blocks), every other eligible layer is a group of one.

The stacked weight ``W = cat(W_i)`` becomes the storage of the members' own weights (each
``base_layer.weight`` is a view of its rows), so stacking costs no memory and ``merge``/``unmerge``
keep working on the same numbers. ``unstack`` gives every weight its own storage back.
"""

from __future__ import annotations

import torch
from torch import nn

from lorakit.fast.lora_fn import fused_lora_linear, layout
from lorakit.fast.mask import draw_seed
from lorakit.layers import LoraLayer, LoraLinear


def eligible(layer: nn.Module, adapter: str) -> bool:
    """A plain-LoRA linear layer over a frozen ``nn.Linear``, without a LoRA bias: the
    configurations the fused function computes exactly."""
    if not isinstance(layer, LoraLinear) or layer.fan_in_fan_out or adapter not in layer.r:
        return False
    base = layer.base_layer
    return (type(base) is nn.Linear and not base.weight.requires_grad
            and layer.variants[adapter].plain_lora and layer.lora_B[adapter].bias is None
            and adapter not in layer.merged_adapters)


class FastLinear:
    """A layer's ``fused_forward`` hook (``FusedForward``): its output comes from its group's fused function while the layer
    runs exactly ``adapter``, unmerged, enabled and not in a mixed-adapter batch; otherwise the
    layer's own forward runs."""

    def __init__(self, group: "SharedInputGroup", index: int, adapter: str):
        self.group, self.index, self.adapter = group, index, adapter

    def applies(self, layer: LoraLayer) -> bool:
        return (not layer.disabled and layer.per_row_adapters is None and not layer.merged_adapters
                and layer.active_adapters == [self.adapter])

    def __call__(self, layer: LoraLayer, x: torch.Tensor) -> torch.Tensor:
        return self.group.output(self.index, x)


class SharedInputGroup:
    """Layers that read the same input; one fused call produces all their outputs."""

    def __init__(self, layers: list[LoraLinear], adapter: str):
        self.layers, self.adapter = layers, adapter
        bases = [layer.base_layer for layer in layers]
        self.outs = [b.out_features for b in bases]
        self.weight = _stack([b.weight for b in bases])
        self.bias = _stack([b.bias for b in bases]) if bases[0].bias is not None else None
        self.members = layout(self.outs, [layer.r[adapter] for layer in layers],
                              [layer.scaling[adapter] for layer in layers])
        self.pending: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def output(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Member ``index``'s output for input ``x``: handed over if a sibling already computed
        it for this very ``x``, else computed together with every sibling's."""
        hit = self.pending.pop(index, None)
        if hit is not None and hit[0] is x:
            return hit[1]
        name = self.adapter
        lead = self.layers[index]
        p = _dropout_p(lead, name) if lead.training else 0.0
        y = fused_lora_linear(x, self.weight, self.bias, self.members,
                              [layer.lora_A[name].weight for layer in self.layers],
                              [layer.lora_B[name].weight for layer in self.layers],
                              p, draw_seed() if p > 0 else 0)
        if len(self.layers) == 1:
            return y
        outs = y.split(self.outs, dim=-1)
        self.pending = {j: (x, out) for j, out in enumerate(outs) if j != index}
        return outs[index]

    def unstack(self) -> None:
        """Give each member's base weight (and bias) its own storage again."""
        for layer in self.layers:
            base = layer.base_layer
            base.weight.data = base.weight.data.clone()
            if base.bias is not None:
                base.bias.data = base.bias.data.clone()
        self.pending.clear()


def _stack(params: list[nn.Parameter]) -> torch.Tensor:
    """Concatenate along dim 0 and re-point each parameter at its rows of the result."""
    if len(params) == 1:
        return params[0].data
    stacked = torch.cat([p.data for p in params])
    row = 0
    for p in params:
        n = p.shape[0]
        p.data = stacked[row:row + n]
        row += n
    return stacked


def shared_inputs(model: nn.Module, layers: dict[str, LoraLinear], example: dict) -> list[list[str]]:
    """Names of ``layers`` grouped by the input tensor they received in one forward on
    ``example`` (keyword arguments of ``model``), in call order."""
    seen: list[tuple[torch.Tensor, list[str]]] = []

    def record(name):
        def hook(module, args):
            for tensor, names in seen:
                if tensor is args[0]:
                    names.append(name)
                    return
            seen.append((args[0], [name]))
        return hook

    handles = [layer.register_forward_pre_hook(record(name)) for name, layer in layers.items()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(**example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    grouped = [names for _, names in seen]
    missed = [[n] for n in layers if not any(n in g for g in grouped)]
    return grouped + missed


def install(model: nn.Module, adapter: str, example: dict | None) -> list[SharedInputGroup]:
    """Give every eligible layer a ``fused_forward`` hook (grouped when ``example`` is given)."""
    layers = {n: m for n, m in model.named_modules() if eligible(m, adapter)}
    if example is not None:
        names = shared_inputs(model, layers, example)
    else:
        names = [[n] for n in layers]
    groups = []
    for group_names in names:
        members = [layers[n] for n in group_names]
        if len({(m.base_layer.weight.dtype, m.base_layer.weight.device, m.in_features,
                 m.base_layer.bias is None, _dropout_p(m, adapter)) for m in members}) > 1:
            subgroups = [[m] for m in members]  # cannot share one matmul or one dropout mask
        else:
            subgroups = [members]
        for sub in subgroups:
            group = SharedInputGroup(sub, adapter)
            for i, layer in enumerate(sub):
                layer.fused_forward = FastLinear(group, i, adapter)
            groups.append(group)
    return groups


def uninstall(groups: list[SharedInputGroup]) -> None:
    for group in groups:
        for layer in group.layers:
            layer.fused_forward = None
        group.unstack()


def _dropout_p(layer: LoraLinear, adapter: str) -> float:
    d = layer.lora_dropout[adapter]
    return d.p if isinstance(d, nn.Dropout) else 0.0
