"""Adapter slots: preallocated, stacked LoRA weights on every linear layer of a served model.

For each pooled layer the pool holds

    A [S, r_max, in]    B [S, out, r_max]    scaling [S]

and an engine step sets a per-row slot index (``slot [rows]``, -1 = base only). Every adapted
layer then adds ``ops.lora_rows(x, A, B, scaling, slot)``, i.e. for row ``b`` with slot ``i``

    y[b] += (x[b] @ A[i].T @ B[i].T) * scaling[i]

with one gather and two batched matmuls per layer, whatever the number of distinct adapters.
The pool speaks the ``RowAdapters`` protocol (``.slot`` and ``.weights(layer)``), so the layer
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
from torch import nn

from lorakit.config import LoraConfig
from lorakit.layers import LoraLayer, make_layer
from lorakit.serve.cache import HostAdapter
from lorakit.targets import find_targets


def wrap_linear_layers(model: nn.Module) -> dict[str, LoraLayer]:
    """Wrap every linear layer of ``model`` except the output head in an adapter layer that has
    no adapter of its own (it computes the base until a pool sets ``rows``). Module surgery
    only; returns module name -> adapter layer."""
    if any(isinstance(m, LoraLayer) for m in model.modules()):
        raise ValueError("the served model already holds LoRA layers; serve a plain base model "
                         "(merge_and_unload or unload it first)")
    layers = {}
    for name in find_targets(model, LoraConfig(target_modules="all-linear")):
        base = model.get_submodule(name)
        layer = make_layer(base, name, LoraConfig())
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
        layers[name] = layer
    return layers


class SlotPool:
    """``n_slots`` adapter slots of rank up to ``max_rank`` on every linear layer of ``model``.

    ``layer_shapes`` (module name -> (in, out)) is what an adapter must fit. ``acquire`` /
    ``release`` pin slots for running sequences; an unpinned slot keeps its adapter (a later
    request for it is a hit) until the least recently used one is overwritten.
    """

    def __init__(self, model: nn.Module, n_slots: int, max_rank: int, dtype: torch.dtype | None = None):
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
                torch.zeros(n_slots, layer.out_features, max_rank, **kw),
                torch.zeros(n_slots, **kw),
            )
        self.device = next(iter(self._buffers.values()))[0].device
        self.key_of: list[object | None] = [None] * n_slots  # slot index -> adapter key
        self.rank_of = [0] * n_slots
        self.pins = [0] * n_slots
        self._unpinned: OrderedDict[int, None] = OrderedDict((i, None) for i in range(n_slots))
        self.slot = torch.full((0,), -1, dtype=torch.long)
        self._rank = 0
        self._only: int | None = None  # the single slot of a one-adapter step
        self.hits = self.misses = 0

    # ---- the RowAdapters protocol -----------------------------------------------------------
    def weights(self, layer: LoraLayer):
        """The layer's stacked slot buffers for this step: sliced to the step's largest rank,
        and to the one slot in use when every adapter row uses the same adapter (``lora_rows``
        then runs plain matmuls instead of per-row gathers)."""
        a, b, s = self._buffers[id(layer)]
        pick = slice(None) if self._only is None else slice(self._only, self._only + 1)
        return a[pick, : self._rank], b[pick, :, : self._rank], s[pick]

    def activate(self, slot_per_row: list[int]) -> None:
        """Route the next forward: row ``b`` uses slot ``slot_per_row[b]`` (-1: base). A batch
        with no adapter row runs the plain base (no LoRA work at all)."""
        used = {i for i in slot_per_row if i >= 0}
        plan = self if used else None
        if used:
            self._only = next(iter(used)) if len(used) == 1 else None
            rows = slot_per_row if self._only is None else [0 if i >= 0 else -1 for i in slot_per_row]
            self.slot = torch.tensor(rows, dtype=torch.long, device=self.device)
            self._rank = max(self.rank_of[i] for i in used)
        for layer in self.layers.values():
            layer.rows = plan

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
            if factors is not None:
                a, b, scaling = factors
                a_buf[index, : a.shape[0]].copy_(a)
                b_buf[index, :, : b.shape[1]].copy_(b)
                s_buf[index] = scaling
        self.key_of[index] = adapter.key
        self.rank_of[index] = adapter.max_rank

    @property
    def used(self) -> int:
        return sum(k is not None for k in self.key_of)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for bufs in self._buffers.values() for t in bufs)
