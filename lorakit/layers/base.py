"""The adapted layer: wraps an explicit ``base_layer`` and holds named adapters.

State kept per layer: the adapters' parameters (in ModuleDicts/ParameterDicts keyed by adapter
name, PEFT's layout, so ``state_dict`` keys match PEFT's), ``r``/``lora_alpha``/``scaling`` per
name, each adapter's type (``variants``: a ``lorakit.adapter_types.AdapterType``), the active
set, the stack of merged adapters (unmerge pops it, so merge is idempotent and unmerge exact up
to float rounding), a ``disabled`` flag, and the two hooks other subsystems set
(``fused_forward``, ``per_row_adapters``; see ``LoraLayer.forward`` and ``layers/hooks.py``).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.layers.hooks import FusedForward, PerRowAdapters


class LoraLayer(nn.Module):
    """Common state, forward and merging of every adapted layer. The layer classes of plain
    LoRA (linear, embedding, conv) add the factor pair (``LoraFactors``); VeRA's and AdaLoRA's
    hold their own parameters, which only their adapter type reads."""

    zero_init_A = False  # embeddings start with A = 0, B random (PEFT's convention)

    def __init__(self, base_layer: nn.Module, module_name: str = ""):
        super().__init__()
        self.base_layer = base_layer
        self.module_name = module_name
        self.lora_dropout = nn.ModuleDict()
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.variants: dict = {}  # adapter name -> its AdapterType (plain LoRA, DoRA, VeRA, ...)
        # Run-time weight per adapter (lorakit.set_adapter(..., weights=)); 1.0 when absent.
        # ``scaling`` already includes it, so every path (forward, rows, merge) honours it.
        self.adapter_weights: dict[str, float] = {}
        self._unit_scaling: dict[str, float] = {}
        self.active_adapters: list[str] = []
        self.merged_adapters: list[str] = []
        self.disabled = False
        self.fused_forward: FusedForward | None = None
        self.per_row_adapters: PerRowAdapters | None = None

    # ---- adapters -------------------------------------------------------------------------
    @property
    def adapter_names(self) -> list[str]:
        return list(self.r)

    def add(self, name: str, config, kind, dtype: torch.dtype | None = None, init: bool = True) -> None:
        """Create adapter ``name`` of adapter type ``kind`` (``adapter_type_for(config)``);
        ``init=False`` skips the init (weights are loaded next)."""
        held = sorted({k.peft_type for k in self.variants.values()} - {kind.peft_type})
        if held:
            raise ValueError(f"{self.module_name} holds {held} adapters; cannot add a {kind.peft_type} adapter")
        kind.create(self, name, config, dtype or torch.float32, init)
        self.variants[name] = kind

    def record(self, name: str, r: int, alpha: float, scaling: float, dropout: float) -> None:
        """The settings every adapter type has: rank, alpha, scaling and input dropout."""
        self.r[name], self.lora_alpha[name], self.scaling[name] = r, alpha, scaling
        p = float(dropout)
        self.lora_dropout[name] = nn.Dropout(p) if p > 0 else nn.Identity()

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
        """``y = base(x) + sum over active, unmerged adapters a of term_a(x)``, where plain
        LoRA's term is ``s_a * B_a(A_a(dropout(x)))`` and each adapter's type
        (``variants[a].forward``) adds its own.

        Precedence, the one place it is stated (hooks are None unless a subsystem sets them):

        1. ``fused_forward`` (``FusedForward``: training's fused path in ``lorakit.fast``,
           serving's shared-input groups): when ``fused_forward.applies(self)`` it returns the
           whole output, the base included; it declines while the layer is in a state it does
           not compute (disabled, merged, other adapters, mixed batch).
        2. ``disabled``: the base output only.
        3. ``per_row_adapters`` (``PerRowAdapters``: ``lorakit.adapter_per_row``, serving's
           slot pool): row ``b`` gets its own slot's term instead of the active adapters'.
        4. Otherwise the active adapters, in order; merged ones are already in the base.
        """
        if self.fused_forward is not None and self.fused_forward.applies(self):
            return self.fused_forward(self, x)
        result = self.base_layer(x, *args, **kwargs)
        if self.disabled:
            return result
        if self.per_row_adapters is not None:
            return self.per_row_adapters.add_to(self, x, result)
        for name in self.active_adapters:
            if name in self.variants and name not in self.merged_adapters:
                result = self.variants[name].forward(self, name, x, result)
        return result

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
        this layer contributes, so adapter types that add containers are saved without extra code."""
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


class LoraFactors(Protocol):
    """What the plain-LoRA layer classes (linear, embedding, conv) add to ``LoraLayer``: one
    factor pair per adapter, which plain LoRA, DoRA, the inits, stacked rows and combine read."""

    def create_factors(self, name: str, r: int, config, device: torch.device, dtype: torch.dtype) -> None:
        """Create adapter ``name``'s A and B (values are written by the init or a file)."""

    def adapter_factors(self, name: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)`` parameters of adapter ``name`` (``name=None``: shape templates)."""

    def lora_term(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """``s * B(A(dropout(x)))`` of adapter ``name``."""

    def plain_delta_weight(self, name: str) -> torch.Tensor:
        """``s * B @ A`` in the base weight's layout (fp32)."""

    def row_delta(self, x, a_stack, b_stack, scale, slot) -> torch.Tensor:
        """Each row's term from stacked factors (``ops.lora_rows`` semantics)."""


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
