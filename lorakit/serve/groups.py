"""Serving fast path: linear layers that read the same input (q/k/v, gate/up) run as one matmul,
and the step's adapter rides along in it.

A decode step of 32 rows multiplies each weight by a [32, in] block: every matmul is small, and
on a 2-core CPU one costs 20-40 us of dispatch before any arithmetic. With one LoRA adapter on
all 7 linear layers of a Llama block, the per-layer path (base matmul, ``x @ A.T``, ``@ B.T``,
add) is 28 ops per block; a group does it in 2 plus a split:

    W_ext = [W_1; ...; W_m; A_1; ...; A_m]        # [sum(out) + m * r_max, in], the members'
                                                 # base weights are views of its first rows
    y_ext = x @ W_ext.T                           # base outputs and every member's x @ A_j.T
    y     = y_ext[:, :O] + h @ B_blk.T            # h = y_ext[:, O:]; B_blk block-diagonal, scaled

The A rows and ``B_blk`` hold the adapter of the step's single slot (the "region"); they are
copied from the slot buffers when that slot changes (once per adapter switch, ~2 ms for an r=16
all-linear adapter, not per step). A step that mixes adapters runs the group's stacked base
matmul and then the pool's per-row LoRA (``SlotPool.add_to``) for each targeted member.
Members are found as ``lorakit.fast.groups`` does for training: the layers that received the
very same input tensor in one forward.

The group computes the same sums as the per-layer path in another order (tested against it:
tests/test_serve_units.py); only frozen ``nn.Linear`` layers without bias, in the pool's dtype,
are grouped, and only without autograd (serving runs under ``inference_mode``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.fast.groups import shared_inputs
from lorakit.layers import LoraLayer
from lorakit.serve import packed


class SlotGroup:
    """Layers of one served model that share an input; ``layer.fused_forward`` of each member points
    at its ``GroupHook``."""

    def __init__(self, pool, layers: list[LoraLayer]):
        self.pool, self.layers = pool, layers
        self.outs = [layer.out_features for layer in layers]
        self.width = sum(self.outs)
        rank, m = pool.max_rank, len(layers)
        weights = [layer.base_layer.weight for layer in layers]
        ext = torch.cat([w.data for w in weights] + [weights[0].new_zeros(m * rank, weights[0].shape[1])])
        row = 0
        for w in weights:  # the members' weights become views of the stacked rows: no extra copy
            w.data = ext[row: row + w.shape[0]]
            row += w.shape[0]
        self.ext = ext
        # the stacked base rows prepacked for oneDNN (bf16 only; None: F.linear on them)
        self.packed = packed.pack(ext[: self.width])
        self.b_blk = weights[0].new_zeros(self.width, m * rank)
        self.region: int | None = None  # slot whose factors the A rows / b_blk hold
        self.pending: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for i, layer in enumerate(layers):
            layer.fused_forward = GroupHook(self, i)

    def load_region(self, slot: int) -> None:
        """Copy slot ``slot``'s factors (zeros for members its adapter does not target)."""
        rank, pool = self.pool.max_rank, self.pool
        col = 0
        for j, layer in enumerate(self.layers):
            a, b, _ = pool.buffers(layer)
            rows = slice(self.width + j * rank, self.width + (j + 1) * rank)
            cols = slice(j * rank, (j + 1) * rank)
            self.ext[rows].copy_(a[slot])
            # the scaling goes into the copy (one rounding of B * s, as the per-layer path rounds
            # h * s): the step then needs no element-wise multiply per group
            self.b_blk[col: col + self.outs[j], cols].copy_(b[slot].t().float() * pool.scale_of(layer, slot))
            col += self.outs[j]
        self.region = slot

    def output(self, index: int, x: torch.Tensor) -> torch.Tensor:
        hit = self.pending.pop(index, None)
        if hit is not None and hit[0] is x:
            return hit[1]
        y = self._compute(x)
        if len(self.layers) == 1:
            return y
        outs = y.split(self.outs, dim=-1)
        self.pending = {j: (x, out) for j, out in enumerate(outs) if j != index}
        return outs[index]

    def _base(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T`` for the stacked base rows ``W`` (prepacked where available)."""
        return F.linear(x, self.ext[: self.width]) if self.packed is None else self.packed(x)

    def _compute(self, x: torch.Tensor) -> torch.Tensor:
        targeted = [layer.per_row_adapters is not None for layer in self.layers]
        pool = self.pool
        if not any(targeted):
            return self._base(x)
        if pool.only is not None:
            if self.region != pool.only:
                self.load_region(pool.only)
            if self.packed is None:  # one GEMM over base and A rows
                y_ext = F.linear(x, self.ext)
                flat = y_ext.reshape(-1, y_ext.shape[-1])
                base, h = flat[:, : self.width], flat[:, self.width:]
            else:  # the packed base rows, then the (small, often switched) A rows on their own
                base = self.packed(x).reshape(-1, self.width)
                h = F.linear(x, self.ext[self.width:]).reshape(-1, self.ext.shape[0] - self.width)
            if pool.base_rows is not None:  # base-only rows of the batch get no update (exact 0)
                h = h.reshape(pool.slot.shape[0], -1, h.shape[-1]).index_fill_(0, pool.base_rows, 0).reshape(h.shape)
            y = torch.addmm(base, h, self.b_blk.t())
            return y.reshape(*x.shape[:-1], self.width)
        y = self._base(x)
        if len(self.layers) == 1:
            return pool.add_to(self.layers[0], x, y)
        outs = y.split(self.outs, dim=-1)
        for layer, out, on in zip(self.layers, outs, targeted):
            if on:
                pool.add_to(layer, x, out)  # in place into the view of y
        return y


class GroupHook:
    """A member's ``fused_forward`` hook (``FusedForward``): the group computes the layer's output while serving runs
    without autograd; otherwise (a test taking gradients) the layer's own forward runs."""

    def __init__(self, group: SlotGroup, index: int):
        self.group, self.index = group, index

    def applies(self, layer: LoraLayer) -> bool:
        return not torch.is_grad_enabled() and not layer.disabled

    def __call__(self, layer: LoraLayer, x: torch.Tensor) -> torch.Tensor:
        return self.group.output(self.index, x)


def build_groups(pool, model: nn.Module, layers: dict[str, LoraLayer], dtype: torch.dtype) -> list[SlotGroup]:
    """Group the pool's layers that share an input (one forward on three tokens finds them),
    and prepack the output head's weight (``packed.pack_output_head``; bf16 only), the step's
    widest GEMM, which the pool does not wrap."""
    packed.pack_output_head(model)

    def groupable(layer: LoraLayer) -> bool:
        base = layer.base_layer
        return type(base) is nn.Linear and base.bias is None and base.weight.dtype == dtype

    candidates = {name: layer for name, layer in layers.items() if groupable(layer)}
    if not candidates:
        return []
    device = next(iter(candidates.values())).base_layer.weight.device
    example = {"input_ids": torch.tensor([[1, 2, 3]], device=device)}
    try:
        shared = shared_inputs(model, candidates, example)
    except Exception:  # a model that cannot run on bare input ids: every layer on its own path
        return []
    groups = []
    for names in shared:
        members = [candidates[n] for n in names]
        if len({(m.in_features, m.base_layer.weight.device) for m in members}) > 1:
            groups += [SlotGroup(pool, [m]) for m in members]
        else:
            groups.append(SlotGroup(pool, members))
    return groups
