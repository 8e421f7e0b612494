"""AdaLoRA (Zhang et al., 2023): LoRA in SVD form whose rank is reallocated during training. A
separate adapter type (``peft_type`` ADALORA) with PEFT's semantics and file layout.

    y = base(x) + (dropout(x) @ (A * E).T @ B.T) * scaling / (ranknum + 1e-5)

A ``[r, in]`` (right singular vectors), E ``[r, 1]`` (singular values, starts at 0), B
``[out, r]``; ``scaling = lora_alpha`` (or r when alpha is 0) and ``ranknum = init_r`` for the
adapter's lifetime. ``AdaLoraController`` (lorakit.variants.adalora_alloc) scores each
(A row, E, B column) triplet and zeroes E entries down to a shrinking budget; the kept
triplets end up in ``rank_pattern`` (``"<module>.lora_E" -> [bool] * init_r``). A saved file
holds only the kept triplets, and loading builds each layer at its kept rank.
On disk (PEFT's keys, no ``.weight``): ``<module>.lora_A``, ``.lora_E``, ``.lora_B``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Union

import torch
from torch import nn

from lorakit.adapter_types import AdapterType
from lorakit.config import LoraFields, check_field_types
from lorakit.formats import peft
from lorakit.layers.base import LoraLayer
from lorakit.layers.linear import linear_shape
from lorakit.targets import is_linear_like
from lorakit.variants import peft_config as pc

_EPS = 1e-5  # PEFT's ranknum + 1e-5


@dataclass
class AdaLoraConfig(LoraFields):
    """PEFT's ``AdaLoraConfig`` fields that change behaviour (defaults as PEFT's): the ones it
    shares with LoRA (``LoraFields``) and these.

    ``init_r``: starting rank of every layer; ``target_r``: average rank at the end (budget
    ``target_r * layers``); ``tinit`` warm-up steps, ``tfinal`` final steps at a fixed
    allocation, ``deltaT`` steps between reallocations, ``beta1``/``beta2`` EMA factors of the
    sensitivity and its uncertainty, ``orth_reg_weight`` weight of the orthogonality penalty,
    ``total_step`` (required). ``r`` is unused (PEFT keeps it for LoRA compatibility).
    """

    target_r: int = 8
    init_r: int = 12
    tinit: int = 0
    tfinal: int = 0
    deltaT: int = 1
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.5
    total_step: Union[int, None] = None
    rank_pattern: Union[dict, None] = None
    fan_in_fan_out: bool = False
    modules_to_save: Union[list[str], None] = None
    init_lora_weights: bool = True
    task_type: Union[str, None] = None
    base_model_name_or_path: Union[str, None] = None
    inference_mode: bool = False
    peft_type: str = "ADALORA"

    lora_fa: ClassVar = False
    _REFUSED: ClassVar = ("use_dora", "loftq_config", "lora_bias", "use_qalora", "layer_replication")

    def __post_init__(self) -> None:
        if isinstance(self.layers_to_transform, int) and not isinstance(self.layers_to_transform, bool):
            self.layers_to_transform = [self.layers_to_transform]
        check_field_types(self)
        ok = self.total_step is not None and self.total_step > 0
        pc.check(ok, "AdaLoraConfig", f"total_step must be a positive integer, got {self.total_step!r}")
        pc.check(self.tinit < self.total_step - self.tfinal, "AdaLoraConfig",
                 f"tinit={self.tinit} must be below total_step - tfinal = {self.total_step - self.tfinal}")
        pc.check(0 < self.target_r <= self.init_r, "AdaLoraConfig",
                 f"need 0 < target_r <= init_r, got {self.target_r} and {self.init_r}")
        pc.check(self.orth_reg_weight >= 0, "AdaLoraConfig", f"orth_reg_weight must be >= 0, got {self.orth_reg_weight}")
        pc.check(0 < self.beta1 < 1 and 0 < self.beta2 < 1, "AdaLoraConfig", "beta1 and beta2 must be in (0, 1)")
        pc.check(self.bias in ("none", "all", "lora_only"), "AdaLoraConfig", f"bias {self.bias!r} is not known")

    def kept(self, module_name: str) -> list[bool] | None:
        """The kept-triplet mask of ``module_name`` from ``rank_pattern`` (None: all kept)."""
        return (self.rank_pattern or {}).get(f"{module_name}.lora_E")

    # ---- adapter_config.json --------------------------------------------------------------
    def to_peft_dict(self) -> dict:
        return pc.to_peft_dict(self)

    @classmethod
    def from_peft_dict(cls, d: dict, source: str = "adapter config") -> "AdaLoraConfig":
        return pc.from_peft_dict(cls, d, source, refused=cls._REFUSED)

    def save(self, directory) -> None:
        pc.save(self, directory)


class SVDLinear(LoraLayer):
    """A linear base layer (nn.Linear, Conv1D, 4-bit) with AdaLoRA adapters."""

    def __init__(self, base_layer: nn.Module, module_name: str = "", fan_in_fan_out: bool = False):
        super().__init__(base_layer, module_name)
        self.in_features, self.out_features = linear_shape(base_layer)
        self.fan_in_fan_out = fan_in_fan_out
        self.lora_A = nn.ParameterDict()
        self.lora_E = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.ranknum: dict[str, float] = {}

    def delete(self, name: str) -> None:
        super().delete(name)
        self.ranknum.pop(name, None)


class AdaLoraType(AdapterType):
    """AdaLoRA's adapter type: ``AdaLoraConfig``, ``SVDLinear`` layers; a saved file holds only
    the triplets ``rank_pattern`` keeps."""

    name = "adalora"
    peft_type = "ADALORA"
    config_class = AdaLoraConfig

    def make_layer(self, module: nn.Module, module_name: str, config: AdaLoraConfig) -> SVDLinear:
        if not is_linear_like(module):
            raise ValueError(f"{module_name}: AdaLoRA adapts linear layers only, not {type(module).__name__}")
        conv1d = type(module).__name__ == "Conv1D"
        return SVDLinear(module, module_name, fan_in_fan_out=config.fan_in_fan_out or conv1d)

    def create(self, layer: SVDLinear, adapter: str, config: AdaLoraConfig, dtype: torch.dtype, init: bool) -> None:
        kept = config.kept(layer.module_name)
        r = config.init_r if kept is None else sum(bool(k) for k in kept)
        kw = dict(device=layer.base_device(), dtype=dtype)
        layer.record(adapter, r, config.lora_alpha, config.lora_alpha if config.lora_alpha > 0 else float(r),
                     config.lora_dropout)
        layer.ranknum[adapter] = float(config.init_r)
        a, e, b = torch.randn(r, layer.in_features, **kw), torch.randn(r, 1, **kw), torch.randn(layer.out_features, r, **kw)
        if config.init_lora_weights:  # PEFT: E = 0 (a no-op start), A and B ~ N(0, 0.02)
            e.zero_()
            a.normal_(0.0, 0.02)
            b.normal_(0.0, 0.02)
        layer.lora_A[adapter], layer.lora_E[adapter], layer.lora_B[adapter] = nn.Parameter(a), nn.Parameter(e), nn.Parameter(b)

    def export_tensors(self, model: nn.Module, adapter: str, config: AdaLoraConfig, tensors: dict) -> dict:
        """Keep only the triplets ``rank_pattern`` keeps (PEFT saves a pruned adapter)."""
        for key, mask in (config.rank_pattern or {}).items():
            module = key.removesuffix(".lora_E")
            keep = torch.tensor(mask, dtype=torch.bool)
            for suffix in ("lora_A", "lora_E", "lora_B"):
                full, dim = peft.tensor_key(module, suffix), peft.KINDS[suffix]
                if full in tensors and tensors[full].shape[dim] == keep.numel():
                    tensors[full] = tensors[full].index_select(dim, keep.nonzero().view(-1)).contiguous()
        return tensors

    def forward(self, layer: SVDLinear, adapter: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        a, e, b = layer.lora_A[adapter], layer.lora_E[adapter], layer.lora_B[adapter]
        h = layer.lora_dropout[adapter](x.to(a.dtype))
        update = (h @ (a * e).T @ b.T) * (layer.scaling[adapter] / (layer.ranknum[adapter] + _EPS))
        return result + update.to(result.dtype)

    def delta_weight(self, layer: SVDLinear, adapter: str) -> torch.Tensor:
        a, e, b = (t.detach().float() for t in (layer.lora_A[adapter], layer.lora_E[adapter], layer.lora_B[adapter]))
        delta = b @ (a * e) * (layer.scaling[adapter] / (layer.ranknum[adapter] + _EPS))
        return delta.T if layer.fan_in_fan_out else delta


ADALORA = AdaLoraType()
