"""Adapter slots: preallocated, stacked LoRA weights on every linear layer of a served model.

For each pooled layer the pool holds

    A [S, r_max, in]    Bt [S, r_max, out]  (B transposed)    scaling [S]

and an engine step sets a per-row slot index (``slot [rows]``, -1 = base only). Every adapted
layer then adds ``ops.lora_rows(x, A, B, scaling, slot)``, i.e. for row ``b`` with slot ``i``

    y[b] += (x[b] @ A[i].T @ B[i].T) * scaling[i]

whatever the number of distinct adapters: for decode steps in bf16 through the C++ kernels of
``serve/kernels.py`` (each row reads its own slot's factors in place), otherwise one gather and
two batched matmuls per layer. B is stored transposed so that the kernel's expand step streams
contiguous rows of it.
The pool is a layer's ``per_row_adapters`` hook (``lorakit.layers.PerRowAdapters``), so the layer
code is the library's, unchanged.

Adapters live outside the model: the model's module tree is fixed when the pool is built (every
linear layer except the output head is wrapped once, with no adapter of its own), and serving
an adapter means copying its factors into a slot. Any adapter whose targets are linear layers of
the base fits; a layer an adapter does not target gets scaling 0 (and zeroed factors) in that
slot. A rank below ``r_max`` is zero-padded, which adds exact zeros; each step slices the
buffers to the largest rank in use so small adapters do not pay for ``r_max``.

"Adapter key" (which adapter, a ``HostAdapter.key``) and "slot index" (where it sits now) are
kept apart: a slot is reused for another adapter once no running sequence holds it.

Only the engine thread calls the pool; it is not thread-safe by itself.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.config import LoraConfig
from lorakit.inject import replace_module
from lorakit.layers import LoraLayer, make_layer
from lorakit.serve import kernels
from lorakit.serve.cache import HostAdapter
from lorakit.serve.groups import build_groups
from lorakit.targets import find_targets


def wrap_linear_layers(model: nn.Module) -> dict[str, LoraLayer]:
    """Wrap every linear layer of ``model`` except the output head in an adapter layer that has
    no adapter of its own (it computes the base until a pool sets ``per_row_adapters``). Module surgery
    only; returns module name -> adapter layer."""
    if any(isinstance(m, LoraLayer) for m in model.modules()):
        raise ValueError("the served model already holds LoRA layers; serve a plain base model "
                         "(merge_and_unload or unload it first)")
    layers = {}
    for name in find_targets(model, LoraConfig(target_modules="all-linear")):
        base = model.get_submodule(name)
        layer = make_layer(base, name, LoraConfig())
        replace_module(model, name, layer)
        layers[name] = layer
    return layers


class SlotPool:
    """``n_slots`` adapter slots of rank up to ``max_rank`` on every linear layer of ``model``.

    ``layer_shapes`` (module name -> (in, out)) is what an adapter must fit. ``acquire`` /
    ``release`` pin slots for running sequences; an unpinned slot keeps its adapter (a later
    request for it is a hit) until the least recently used one is overwritten.
    """

    def __init__(self, model: nn.Module, n_slots: int, max_rank: int, dtype: torch.dtype | None = None,
                 group: bool = True):
        if n_slots < 1 or max_rank < 1:
            raise ValueError(f"slot pool needs n_slots >= 1 and max_rank >= 1, got {n_slots}, {max_rank}")
        self.n_slots, self.max_rank = n_slots, max_rank
        self.layers = wrap_linear_layers(model)
        self.layer_shapes = {n: (l.in_features, l.out_features) for n, l in self.layers.items()}
        self._buffers: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for layer in self.layers.values():
            weight = layer.base_layer.weight
            kw = dict(dtype=dtype or weight.dtype, device=weight.device)
            self._buffers[id(layer)] = (
                torch.zeros(n_slots, max_rank, layer.in_features, **kw),
                torch.zeros(n_slots, max_rank, layer.out_features, **kw),
                torch.zeros(n_slots, **kw),
            )
        self.device = next(iter(self._buffers.values()))[0].device
        self._dtype = next(iter(self._buffers.values()))[0].dtype
        self._by_id = {id(layer): layer for layer in self.layers.values()}
        # s_buf as Python floats (per layer, per slot): the one-adapter path passes the scaling
        # as add_'s alpha without reading a tensor element on the hot path
        self._scale = {key: [0.0] * n_slots for key in self._by_id}
        self._targets: list[set[int]] = [set() for _ in range(n_slots)]  # layers a slot's adapter adapts
        self._safe = self._base_rows = None
        self.key_of: list[object | None] = [None] * n_slots  # slot index -> adapter key
        self.rank_of = [0] * n_slots
        self.pins = [0] * n_slots
        self._unpinned: OrderedDict[int, None] = OrderedDict((i, None) for i in range(n_slots))
        self.slot = torch.full((0,), -1, dtype=torch.long)
        self._rank = 0
        self._only: int | None = None  # the single slot of a one-adapter step
        self.hits = self.misses = 0
        # C++ per-row kernels for bf16 decode steps that mix adapters (serve/kernels.py)
        self._kernels = kernels.load() if self._dtype == torch.bfloat16 and self.device.type == "cpu" else None
        # layers sharing an input run as one matmul with the step's adapter inside (serve/groups.py)
        self.groups = build_groups(self, model, self.layers, self._dtype) if group else []

    # ---- what the groups read ---------------------------------------------------------------
    def buffers(self, layer: LoraLayer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The layer's slot buffers ``A [S, r_max, in]``, ``Bt [S, r_max, out]``, ``scaling [S]``."""
        return self._buffers[id(layer)]

    def scale_of(self, layer: LoraLayer, slot: int) -> float:
        return self._scale[id(layer)][slot]

    @property
    def only(self) -> int | None:
        """The slot every adapter row of this step uses, or None (no adapter, or several)."""
        return self._only

    @property
    def base_rows(self) -> torch.Tensor | None:
        """``[n]`` long: the base-only rows of the step; None if every row has an adapter.
        Their LoRA term is computed with some slot's factors and then set to exactly 0 with
        ``index_fill_`` (multiplying by 0 would turn an overflowed inf into NaN and let one
        adapter poison another request's row; a broadcast ``masked_fill`` was 2-8x slower)."""
        return self._base_rows

    # ---- the PerRowAdapters hook -------------------------------------------------------------
    def weights(self, layer: LoraLayer):
        """The layer's stacked slot buffers sliced to the step's largest rank: with ``.slot``
        the arguments of the reference ``ops.lora_rows`` (what ``add_to`` computes faster)."""
        a, b, s = self._buffers[id(layer)]
        return a[:, : self._rank], b[:, : self._rank].transpose(1, 2), s

    def add_to(self, layer: LoraLayer, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """``result`` plus each row's LoRA term: ``ops.lora_rows`` semantics (tested equal),
        with the per-step work (which slots, which rows are base-only) done once in
        ``activate`` instead of in each of the ~200 layers, and the scaling applied inside the
        final add. One adapter for the batch: two plain matmuls; several: the C++ per-row
        kernels (bf16, no autograd), else one gather of each row's factors and two batched
        matmuls."""
        a, b, s = self._buffers[id(layer)]
        r = self._rank
        in_place = not (torch.is_grad_enabled() and (result.requires_grad or x.requires_grad))
        if self._only is not None:
            h = torch.matmul(F.linear(x.to(a.dtype), a[self._only, :r]), b[self._only, :r])
            if self._base_rows is not None:  # base-only rows in the batch get no update
                h = h.reshape(self.slot.shape[0], -1, h.shape[-1]).index_fill_(0, self._base_rows, 0).reshape(h.shape)
            scale = self._scale[id(layer)][self._only]
            return result.add_(h, alpha=scale) if in_place else result + h.to(result.dtype) * scale
        rows = self.slot.shape[0]
        if self._kernels is not None and in_place and x.dtype == a.dtype == result.dtype:
            # no autograd: every token row reads its own slot's factors in place (C++ kernels)
            tokens = x.numel() // (rows * x.shape[-1])
            slot = self.slot if tokens == 1 else self.slot.repeat_interleave(tokens)
            h = self._kernels.shrink(x.reshape(-1, x.shape[-1]), a, slot, r)
            self._kernels.expand_add(result.view(-1, result.shape[-1]), h, b, slot, s, r)
            return result
        h = x.reshape(rows, -1, x.shape[-1]).to(a.dtype)
        h = torch.bmm(h, a[:, :r].index_select(0, self._safe).transpose(1, 2))
        h = torch.bmm(h, b[:, :r].index_select(0, self._safe))
        h = h * s.index_select(0, self._safe).to(h.dtype)[:, None, None]
        if self._base_rows is not None:
            h = h.index_fill_(0, self._base_rows, 0)
        h = h.reshape(result.shape)
        return result.add_(h) if in_place else result + h.to(result.dtype)

    def activate(self, slot_per_row: list[int]) -> None:
        """Route the next forward: row ``b`` uses slot ``slot_per_row[b]`` (-1: base). A batch
        with no adapter row runs the plain base (no LoRA work at all), and so does every layer
        that none of the step's adapters targets."""
        used = {i for i in slot_per_row if i >= 0}
        active: set[int] = set()
        self._only = None
        if used:
            self._only = next(iter(used)) if len(used) == 1 else None
            self.slot = torch.tensor(slot_per_row, dtype=torch.long, device=self.device)
            self._safe = self.slot.clamp(min=0)
            self._base_rows = (self.slot < 0).nonzero().flatten() if min(slot_per_row) < 0 else None
            self._rank = max(self.rank_of[i] for i in used)
            for i in used:
                active |= self._targets[i]
        for key, layer in self._by_id.items():
            layer.per_row_adapters = self if key in active else None

    # ---- slot bookkeeping -------------------------------------------------------------------
    def acquire(self, adapter: HostAdapter) -> int | None:
        """Pin a slot holding ``adapter`` (copying it in if needed); None if every slot is
        pinned by running sequences."""
        if adapter.max_rank > self.max_rank:
            raise ValueError(f"adapter {adapter.name!r} has rank {adapter.max_rank} but the slot "
                             f"pool holds ranks up to {self.max_rank} (--max-rank)")
        if adapter.key in self.key_of:
            index = self.key_of.index(adapter.key)
            self.hits += 1
        elif self._unpinned:
            index = next(iter(self._unpinned))  # least recently used
            self.write(index, adapter)
            self.misses += 1
        else:
            return None
        self.pins[index] += 1
        self._unpinned.pop(index, None)
        return index

    def release(self, index: int) -> None:
        self.pins[index] -= 1
        if self.pins[index] == 0:
            self._unpinned[index] = None  # most recently used goes last

    def forget(self, key: object) -> None:
        """Drop an unloaded adapter's slot content once nothing runs on it (a pinned slot is
        left to its running sequences and is forgotten when reused)."""
        if key in self.key_of:
            index = self.key_of.index(key)
            if self.pins[index] == 0:
                self.key_of[index] = None
                self._unpinned.move_to_end(index, last=False)  # reuse it first

    def write(self, index: int, adapter: HostAdapter) -> None:
        """Copy ``adapter``'s factors into slot ``index`` on every layer (zeros elsewhere)."""
        for name, layer in self.layers.items():
            a_buf, b_buf, s_buf = self._buffers[id(layer)]
            a_buf[index].zero_()
            b_buf[index].zero_()
            s_buf[index] = 0.0
            factors = adapter.modules.get(name)
            self._scale[id(layer)][index] = 0.0
            self._targets[index].discard(id(layer))
            if factors is not None:
                a, b, scaling = factors
                a_buf[index, : a.shape[0]].copy_(a)
                b_buf[index, : b.shape[1]].copy_(b.t())
                s_buf[index] = scaling
                self._scale[id(layer)][index] = float(scaling)
                self._targets[index].add(id(layer))
        self.key_of[index] = adapter.key
        self.rank_of[index] = adapter.max_rank
        for group in self.groups:
            if group.region == index:
                group.region = None  # its copy of the slot's factors is stale

    @property
    def used(self) -> int:
        return sum(k is not None for k in self.key_of)

    def nbytes(self) -> int:
        extra = sum(g.b_blk.nbytes + (g.ext.shape[0] - g.width) * g.ext.shape[1] * g.ext.element_size()
                    for g in self.groups)
        return extra + sum(t.numel() * t.element_size() for bufs in self._buffers.values() for t in bufs)
