"""Adapters in host memory: read a PEFT adapter directory into per-module factors, and keep the
recently used ones in an LRU so a slot can be refilled without touching the disk.

What a served adapter may be: LoRA factors (``lora_A.weight`` / ``lora_B.weight``) on linear
layers of the base model, any rank up to the slot pool's ``max_rank``, with ``use_rslora``,
``rank_pattern`` and ``alpha_pattern`` honoured (scaling is per module). Refused, by name,
because the slot pool has no room for them: DoRA (``use_dora``), ``lora_bias``, ``bias`` other
than "none", ``modules_to_save``, and adapters on embeddings or conv layers. The same adapter
directories serve unchanged in vLLM for the kinds vLLM accepts (see docs/serving.md).
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from lorakit.config import LoraConfig
from lorakit.formats import peft

_KEYS = itertools.count()


@dataclass(eq=False)
class HostAdapter:
    """One adapter's factors, ready to copy into a slot.

    ``modules``: module name -> ``(A [r, in], B [out, r], scaling)`` in the serving dtype.
    ``key`` identifies this loaded copy (a re-load of the same name gets a new key, so running
    sequences keep the weights they started with).
    """

    name: str
    path: Path
    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]]
    key: int = field(default_factory=lambda: next(_KEYS))

    @property
    def max_rank(self) -> int:
        return max(a.shape[0] for a, _, _ in self.modules.values())

    def nbytes(self) -> int:
        return sum(a.numel() * a.element_size() + b.numel() * b.element_size()
                   for a, b, _ in self.modules.values())


def _refuse_unservable(config: LoraConfig, source: Path) -> None:
    reasons = []
    if config.use_dora:
        reasons.append("DoRA (use_dora=true): its magnitude rescaling is not a low-rank term")
    if config.lora_bias:
        reasons.append("lora_bias=true: the slot pool holds no per-adapter bias")
    if config.bias != "none":
        reasons.append(f"bias={config.bias!r}: it trains base-model biases")
    if config.modules_to_save:
        reasons.append(f"modules_to_save={config.modules_to_save}: full module copies per adapter")
    if reasons:
        raise ValueError(f"{source}: adapter cannot be served from LoRA slots: " + "; ".join(reasons)
                         + ". Merge it into a base model (lorakit merge) and serve that instead.")


def _check_key(key: str, layer_shapes: dict, source: Path) -> None:
    parsed = peft.parse_key(key)
    if parsed is None or parsed.kind not in ("lora_A", "lora_B") or parsed.param != "weight":
        raise ValueError(f"{source}: tensor {key} is not a LoRA factor of a linear layer; only "
                         "lora_A.weight / lora_B.weight are served")
    if parsed.module not in layer_shapes:
        raise ValueError(f"{source}: tensor {key} targets {parsed.module!r}, which is not a linear "
                         "layer of the served base model (wrong base model?)")


def load_host_adapter(directory: str | Path, layer_shapes: dict[str, tuple[int, int]],
                      dtype: torch.dtype, name: str = "") -> HostAdapter:
    """Read the PEFT adapter in ``directory`` (``formats.peft``) and check it against the
    served model.

    ``layer_shapes``: module name -> (in, out) of each linear layer the slots cover. Every error
    names the file and the tensor (missing, mis-shaped, non-finite, or a module the base does
    not have).
    """
    directory = Path(directory)
    config = LoraConfig.load(directory)
    _refuse_unservable(config, directory / peft.CONFIG_NAME)
    tensors, source = peft.read_weights(directory)
    for key in tensors:
        _check_key(key, layer_shapes, source)
    factors = peft.group_factors(tensors, source)
    if not factors:
        raise ValueError(f"{source}: holds no LoRA tensors")
    modules = {module: _check_pair(f, layer_shapes[module], config, source, dtype)
               for module, f in factors.items()}
    return HostAdapter(name=name or directory.name, path=directory, modules=modules)


def _check_pair(f: peft.Factors, shape, config: LoraConfig, source: Path, dtype):
    in_f, out_f = shape
    a, b, module = f.a, f.b, f.module
    r = a.shape[0]
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != in_f or b.shape != (out_f, r):
        raise ValueError(f"{source}: {module} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}; "
                         f"the base layer needs A (r, {in_f}) and B ({out_f}, r)")
    scaling = config.scaling_for(module)
    # The slots hold A, B and (in layer groups) B * scaling in ``dtype``: an inf there would
    # reach other requests' rows as inf * 0 = NaN, so what does not fit is refused here.
    for which, t, factor in (("lora_A", a, 1.0), ("lora_B", b, 1.0), ("lora_B * scaling", b, scaling)):
        largest = t.abs().amax().double().item() * abs(factor)
        if not math.isfinite(torch.tensor(largest, dtype=dtype).item()):
            raise ValueError(f"{source}: {module} {which} reaches {largest:.3g}, beyond the range of "
                             f"the serving dtype {str(dtype).removeprefix('torch.')}")
    return a.to(dtype).contiguous(), b.to(dtype).contiguous(), scaling


class HostCache:
    """LRU of loaded adapters keyed by (name, path), at most ``capacity`` of them.

    ``get`` returns the cached copy (a hit) or reads it from disk (a miss). Thread-safe; the
    disk read runs outside the lock, so a slow load does not block hits on other adapters.
    A caller that holds a ``HostAdapter`` keeps it usable even after it is evicted.
    """

    def __init__(self, layer_shapes: dict[str, tuple[int, int]], dtype: torch.dtype, capacity: int = 64):
        if capacity < 1:
            raise ValueError(f"host adapter cache capacity must be >= 1, got {capacity}")
        self.layer_shapes, self.dtype, self.capacity = layer_shapes, dtype, capacity
        self._items: OrderedDict[tuple[str, str], HostAdapter] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, name: str, path: Path, count: Callable[[str], None] | None = None) -> HostAdapter:
        """The adapter ``name`` at ``path``; ``count("hit" | "miss")`` is told which this lookup
        was (a miss: this call reads the files)."""
        key = (name, str(path))
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                if count:
                    count("hit")
                return self._items[key]
            self.misses += 1
        if count:
            count("miss")
        adapter = load_host_adapter(path, self.layer_shapes, self.dtype, name)
        with self._lock:
            if key in self._items:  # another thread loaded it meanwhile: keep one copy
                return self._items[key]
            self._items[key] = adapter
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return adapter

    def drop(self, name: str) -> list[HostAdapter]:
        """Remove every cached copy of ``name``; returns them (their keys leave the slots too)."""
        with self._lock:
            keys = [k for k in self._items if k[0] == name]
            return [self._items.pop(k) for k in keys]

    def __len__(self) -> int:
        return len(self._items)
