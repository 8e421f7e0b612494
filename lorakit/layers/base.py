"""The adapted layer: wraps an explicit ``base_layer`` and holds named adapters.

State kept per layer: the adapters' parameters (in ModuleDicts/ParameterDicts keyed by adapter
name, PEFT's layout, so ``state_dict`` keys match PEFT's), ``r``/``lora_alpha``/``scaling`` per
name, the variant per name, the active set, the stack of merged adapters (unmerge pops it, so
merge is idempotent and unmerge exact up to float rounding), a ``disabled`` flag, and an
optional per-row plan (``rows``) for mixed-adapter batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.inits import lookup_init
from lorakit.variants import resolve_variant


@dataclass
class RowAdapters:
    """A mixed-adapter batch: row ``b`` uses slot ``slot[b]`` (-1: base only).

    ``names[i]`` is the adapter in slot ``i``. Stacked weights are built once per layer per
    batch plan. The server uses the same protocol with preallocated slot buffers.
    """

    slot: torch.Tensor
    names: list
    _cache: dict = field(default_factory=dict)

    def weights(self, layer: "LoraLayer"):
        key = id(layer)
        if key not in self._cache:
            self._cache[key] = layer.stack_factors(self.names)
        return self._cache[key]

    def add_to(self, layer: "LoraLayer", x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """``result`` (the base output) plus each row's LoRA term. The serving slot pool
        implements the same method with a faster path for its preallocated buffers."""
        a, b, s = self.weights(layer)
        return result + layer.row_delta(x, a, b, s, self.slot).to(result.dtype)


class LoraLayer(nn.Module):
    """Common state and forward of every adapted layer (subclasses: linear, embedding, conv)."""

    zero_init_A = False  # embeddings start with A = 0, B random (PEFT's convention)
    factor_keys = ("lora_A", "lora_B")

    def __init__(self, base_layer: nn.Module, module_name: str = ""):
        super().__init__()
        self.base_layer = base_layer
        self.module_name = module_name
        self.lora_dropout = nn.ModuleDict()
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.variants: dict = {}
        # Run-time weight per adapter (lorakit.set_adapter(..., weights=)); 1.0 when absent.
        # ``scaling`` already includes it, so every path (forward, rows, merge) honours it.
        self.adapter_weights: dict[str, float] = {}
        self._unit_scaling: dict[str, float] = {}
        self.active_adapters: list[str] = []
        self.merged_adapters: list[str] = []
        self.disabled = False
        self.rows: RowAdapters | None = None
        # Optional fused implementation (lorakit.fast): when ``fast.applies(self)`` it computes
        # the whole output (base + adapters) instead of the generic path below.
        self.fast = None

    # ---- adapters -------------------------------------------------------------------------
    @property
    def adapter_names(self) -> list[str]:
        return list(self.r)

    def add(self, name: str, config, dtype: torch.dtype | None = None, init: bool = True) -> None:
        """Create adapter ``name``; ``init=False`` skips the init (weights are loaded next)."""
        r = config.rank_for(self.module_name)
        self.r[name] = r
        self.lora_alpha[name] = config.alpha_for(self.module_name)
        self.scaling[name] = config.scaling_for(self.module_name)
        p = float(config.lora_dropout)
        self.lora_dropout[name] = nn.Dropout(p) if p > 0 else nn.Identity()
        device = self.base_device()
        self.create_factors(name, r, config, device, dtype or torch.float32)
        init_fn = lookup_init(config.init_lora_weights)
        # An init that rewrites the base weight (PiSSA, OLoRA, LoftQ) also runs when loading, as
        # in PEFT: the base gets the same residual and the loaded factors overwrite A/B.
        if init or getattr(init_fn, "rewrites_base", False):
            init_fn(self, name, config)
        variant = resolve_variant(config)
        variant.setup(self, name, config, init)
        self.variants[name] = variant

    def delete(self, name: str) -> None:
        if name in self.merged_adapters:
            raise ValueError(f"{self.module_name}: unmerge adapter {name!r} before deleting it")
        for attr in list(vars(self)["_modules"].values()) + list(vars(self)["_parameters"].values()):
            if isinstance(attr, (nn.ModuleDict, nn.ParameterDict)) and name in attr:
                del attr[name]
        for table in (self.r, self.lora_alpha, self.scaling, self.variants, self.adapter_weights,
                      self._unit_scaling):
            table.pop(name, None)
        self.active_adapters = [a for a in self.active_adapters if a != name]

    def set_weight(self, name: str, weight: float) -> None:
        """Scale adapter ``name``'s contribution: ``scaling = weight * (its configured scaling)``
        (PEFT's ``set_scale``). A merged adapter's weight cannot change (unmerge would then
        subtract something else than merge added)."""
        old = self.adapter_weights.get(name, 1.0)
        if weight == old:
            return
        if name in self.merged_adapters:
            raise ValueError(f"{self.module_name}: adapter {name!r} is merged with weight {old}; "
                             "unmerge it before changing its weight")
        unit = self._unit_scaling.setdefault(name, self.scaling[name])
        self.scaling[name] = unit * weight
        self.adapter_weights[name] = weight

    def configured_scaling(self, name: str) -> float:
        """Adapter ``name``'s scaling without its run-time weight (``alpha / r``, rsLoRA's
        ``alpha / sqrt(r)``, ...)."""
        return self._unit_scaling.get(name, self.scaling[name])

    def base_device(self) -> torch.device:
        for t in list(self.base_layer.parameters()) + list(self.base_layer.buffers()):
            return t.device
        return torch.device("cpu")

    # ---- forward --------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.fast is not None and self.fast.applies(self):
            return self.fast(self, x)
        result = self.base_layer(x, *args, **kwargs)
        if self.disabled:
            return result
        if self.rows is not None:
            return self.rows.add_to(self, x, result)
        for name in self.active_adapters:
            if name in self.variants and name not in self.merged_adapters:
                result = self.variants[name].forward(self, name, x, result)
        return result

    def stack_factors(self, names: list):
        """Stacked, rank-padded factors for ``names`` (None or a missing adapter -> zeros).

        Returns ``A [S, r_max, ...]``, ``B [S, out, r_max, ...]``, ``scaling [S]`` in the
        adapters' dtype.
        """
        present = [n for n in names if n in self.r]
        r_max = max([self.r[n] for n in present], default=1)
        ref_a, ref_b = self.adapter_factors(present[0]) if present else self.adapter_factors(None)
        a_stack = ref_a.new_zeros((len(names), r_max) + tuple(ref_a.shape[1:]))
        b_stack = ref_b.new_zeros((len(names), ref_b.shape[0], r_max) + tuple(ref_b.shape[2:]))
        scale = torch.zeros(len(names), dtype=ref_a.dtype, device=ref_a.device)
        for i, name in enumerate(names):
            if name in self.r:
                a, b = self.adapter_factors(name)
                a_stack[i, : a.shape[0]] = a.detach()
                b_stack[i, :, : b.shape[1]] = b.detach()
                scale[i] = self.scaling[name]
        return a_stack, b_stack, scale

    # ---- merging --------------------------------------------------------------------------
    def base_weight(self) -> torch.nn.Parameter:
        if hasattr(self.base_layer, "dequantize"):
            raise TypeError(
                f"{self.module_name}: cannot merge into a 4-bit base in place; use "
                "lorakit.quant.merge_and_unload_quantized(model, requantize=...)"
            )
        return self.base_layer.weight

    def add_to_base(self, delta: torch.Tensor, adapter: str, safe: bool, sign: float = 1.0) -> None:
        """``W += sign * delta``; with ``safe`` the sum is checked for NaN/inf before it is written."""
        weight = self.base_weight()
        new = weight.data + sign * delta.to(weight.dtype)
        if safe and not torch.isfinite(new).all():
            raise ValueError(
                f"merging adapter {adapter!r} into {self.module_name} gives NaN/inf; weights unchanged"
            )
        weight.data.copy_(new)

    def merge(self, names: list[str], safe: bool = False) -> None:
        for name in names:
            if name in self.variants and name not in self.merged_adapters:
                self.variants[name].merge(self, name, safe)
                self.merged_adapters.append(name)

    @torch.no_grad()
    def check_merge(self, names: list[str]) -> None:
        """Merge ``names`` with the NaN/inf check, then restore the base bit for bit: raises
        as ``merge(safe=True)`` would, and leaves the layer exactly as it was either way.
        Needs a copy of this layer's base parameters only (``lorakit.merge(safe=True)`` runs
        it on every layer before it merges any)."""
        keep = len(self.merged_adapters)
        saved = [(p, p.detach().clone()) for p in self.base_layer.parameters()]
        try:
            self.merge(names, safe=True)
        finally:
            self.unmerge(keep)
            for p, value in saved:
                p.copy_(value)

    def unmerge(self, keep: int = 0) -> None:
        """Unmerge in reverse order of merging until ``keep`` merged adapters remain."""
        while len(self.merged_adapters) > keep:
            name = self.merged_adapters.pop()
            self.variants[name].unmerge(self, name)

    def adapter_params(self, name: str) -> dict[str, nn.Parameter]:
        """Adapter ``name``'s parameters keyed by PEFT's suffix (``lora_A.weight``,
        ``lora_embedding_A``, ``lora_magnitude_vector``, ...): every per-adapter container on
        this layer contributes, so variants that add containers are saved without extra code."""
        out: dict[str, nn.Parameter] = {}
        for cname, container in self.named_children():
            if cname == "base_layer" or not isinstance(container, (nn.ModuleDict, nn.ParameterDict)):
                continue
            if name not in container:
                continue
            item = container[name]
            if isinstance(item, nn.Parameter):
                out[cname] = item
            else:
                out.update({f"{cname}.{p}": t for p, t in item.named_parameters()})
        return out

    # ---- implemented by each layer type ---------------------------------------------------
    def create_factors(self, name, r, config, device, dtype) -> None:
        raise NotImplementedError

    def adapter_factors(self, name):
        """``(A, B)`` parameters of adapter ``name`` (``name=None``: shape templates)."""
        raise NotImplementedError

    def lora_term(self, name: str, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def plain_delta_weight(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def row_delta(self, x, a_stack, b_stack, scale, slot) -> torch.Tensor:
        raise NotImplementedError


def masked_row_delta(term, x: torch.Tensor, slot: torch.Tensor, n_slots: int) -> torch.Tensor:
    """Generic mixed-batch fallback: ``term(i, rows_x)`` for each slot present, scattered back."""
    out = None
    for i in range(n_slots):
        rows = (slot == i).nonzero(as_tuple=True)[0]
        if rows.numel() == 0:
            continue
        part = term(i, x[rows])
        if out is None:
            out = part.new_zeros((x.shape[0],) + tuple(part.shape[1:]))
        out[rows] = part
    return out if out is not None else torch.zeros((), dtype=x.dtype, device=x.device)


def conv_delta(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``W_delta`` of a conv LoRA pair: A a conv in->r (kernel k), B a 1x1 conv r->out."""
    if a.dim() == 3:  # Conv1d
        return F.conv1d(a.permute(1, 0, 2), b).permute(1, 0, 2)
    return F.conv2d(a.permute(1, 0, 2, 3), b).permute(1, 0, 2, 3)
