"""VeRA (Kopiczko et al., 2024): one pair of frozen random matrices shared by every adapted
layer, and two trained scaling vectors per layer. A separate adapter type (``peft_type`` VERA).

    y = base(x) + lambda_b * (B_s @ (lambda_d * (A_s @ dropout(x))))

``A_s = vera_A[:, :in]`` and ``B_s = vera_B[:out, :]`` are slices of the shared projections
``vera_A [r, max_in]``, ``vera_B [max_out, r]`` (max over the targeted layers), drawn from
``torch.Generator().manual_seed(projection_prng_key)`` exactly as PEFT draws them, so a
file written without projections (``save_projection=False``) rebuilds the same ones.
``lambda_b [out]`` starts at 0 (the adapter starts as a no-op) and ``lambda_d [r]`` at
``d_initial``. On disk (PEFT's keys): ``<module>.vera_lambda_b``, ``<module>.vera_lambda_d``,
and ``base_model.vera_A`` / ``base_model.vera_B`` for the projections.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import ClassVar, Union

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.adapter_types import AdapterType
from lorakit.config import check_field_types
from lorakit.errors import NotFoundError
from lorakit.layers.base import LoraLayer
from lorakit.layers.linear import linear_shape
from lorakit.targets import is_linear_like
from lorakit.variants import peft_config as pc

PROJECTION_KEYS = ("base_model.vera_A", "base_model.vera_B")


@dataclass
class VeraConfig:
    """PEFT's ``VeraConfig`` fields and defaults (``target_modules`` matched as for LoRA)."""

    r: int = 256
    target_modules: Union[list[str], str, None] = None
    projection_prng_key: int = 0
    save_projection: bool = True
    vera_dropout: float = 0.0
    d_initial: float = 0.1
    fan_in_fan_out: bool = False
    bias: str = "none"
    modules_to_save: Union[list[str], None] = None
    init_weights: bool = True
    layers_to_transform: Union[list[int], int, None] = None
    layers_pattern: Union[list[str], str, None] = None
    task_type: Union[str, None] = None
    base_model_name_or_path: Union[str, None] = None
    inference_mode: bool = False
    peft_type: str = "VERA"

    exclude_modules: ClassVar = None  # read by target matching; VeRA has no such key
    lora_fa: ClassVar = False

    def __post_init__(self) -> None:
        if isinstance(self.layers_to_transform, int) and not isinstance(self.layers_to_transform, bool):
            self.layers_to_transform = [self.layers_to_transform]
        check_field_types(self)
        pc.check(isinstance(self.r, int) and self.r > 0, "VeraConfig", f"r must be a positive integer, got {self.r!r}")
        pc.check(self.bias in ("none", "all"), "VeraConfig",
                 f"bias must be 'none' or 'all' ('vera_only' is not supported), got {self.bias!r}")
        pc.check(0.0 <= float(self.vera_dropout) < 1.0, "VeraConfig",
                 f"vera_dropout must be in [0, 1), got {self.vera_dropout!r}")

    # ---- adapter_config.json --------------------------------------------------------------
    def to_peft_dict(self) -> dict:
        return pc.to_peft_dict(self)

    @classmethod
    def from_peft_dict(cls, d: dict, source: str = "adapter config") -> "VeraConfig":
        return pc.from_peft_dict(cls, d, source)

    def save(self, directory) -> None:
        pc.save(self, directory)


def _kaiming(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """PEFT's ``_kaiming_init``: uniform(+-sqrt(3) * sqrt(2) / sqrt(fan_in)), fan_in = shape[1]."""
    bound = math.sqrt(3.0) * math.sqrt(2.0) / math.sqrt(shape[1])
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


class VeraProjections(nn.Module):
    """The frozen shared pair, held by every VeRA layer of one adapter (buffers, not saved in
    the model's state_dict; ``VeraType.export_tensors`` writes them to the adapter file)."""

    def __init__(self, r: int, max_in: int, max_out: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("vera_A", _kaiming((r, max_in), g), persistent=False)
        self.register_buffer("vera_B", _kaiming((max_out, r), g), persistent=False)


def _projections(model: nn.Module, name: str) -> VeraProjections:
    for module in model.modules():
        if isinstance(module, VeraLinear) and name in module.vera_projection:
            return module.vera_projection[name]
    raise NotFoundError(f"no VeRA adapter {name!r} in the model")


class VeraLinear(LoraLayer):
    """A linear base layer (nn.Linear, Conv1D, 4-bit) with VeRA adapters."""

    def __init__(self, base_layer: nn.Module, module_name: str = "", fan_in_fan_out: bool = False):
        super().__init__(base_layer, module_name)
        self.in_features, self.out_features = linear_shape(base_layer)
        self.fan_in_fan_out = fan_in_fan_out
        self.vera_lambda_b = nn.ParameterDict()
        self.vera_lambda_d = nn.ParameterDict()
        self.vera_projection = nn.ModuleDict()

    def sliced(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        proj = self.vera_projection[name]
        return proj.vera_A[:, : self.in_features], proj.vera_B[: self.out_features, :]


class VeraType(AdapterType):
    """VeRA's adapter type: ``VeraConfig``, ``VeraLinear`` layers, the shared projections
    (drawn in ``prepare``, written and read as model-level tensors)."""

    name = "vera"
    peft_type = "VERA"
    config_class = VeraConfig

    def prepare(self, model: nn.Module, targets: list[str], config: VeraConfig) -> None:
        """Draw the shared projections, sized for the largest targeted layer."""
        shapes = []
        for name in targets:
            module = model.get_submodule(name)
            module = module.base_layer if isinstance(module, LoraLayer) else module
            if not is_linear_like(module):
                raise ValueError(f"{name}: VeRA adapts linear layers only, not {type(module).__name__}")
            shapes.append(linear_shape(module))
        max_in, max_out = max(s[0] for s in shapes), max(s[1] for s in shapes)
        config._projections = VeraProjections(config.r, max_in, max_out, config.projection_prng_key)

    def make_layer(self, module: nn.Module, module_name: str, config: VeraConfig) -> VeraLinear:
        conv1d = type(module).__name__ == "Conv1D"
        return VeraLinear(module, module_name, fan_in_fan_out=config.fan_in_fan_out or conv1d)

    def create(self, layer: VeraLinear, adapter: str, config: VeraConfig, dtype: torch.dtype, init: bool) -> None:
        device = layer.base_device()
        layer.record(adapter, config.r, 1.0, 1.0, config.vera_dropout)
        layer.vera_projection[adapter] = config._projections.to(device)
        # PEFT's init: lambda_b = 0 (no-op start), lambda_d = d_initial; without init_weights
        # lambda_b = 1 and lambda_d ~ N(0, 1) so the adapter changes the output (tests).
        lambda_b = torch.ones(layer.out_features, device=device, dtype=dtype)
        lambda_d = torch.randn(config.r, device=device, dtype=dtype)
        if config.init_weights:
            lambda_b.zero_()
            lambda_d.fill_(config.d_initial)
        layer.vera_lambda_b[adapter] = nn.Parameter(lambda_b)
        layer.vera_lambda_d[adapter] = nn.Parameter(lambda_d)

    def export_tensors(self, model: nn.Module, adapter: str, config: VeraConfig, tensors: dict) -> dict:
        if config.save_projection:
            proj = _projections(model, adapter)
            tensors[PROJECTION_KEYS[0]] = proj.vera_A.detach().cpu().clone()
            tensors[PROJECTION_KEYS[1]] = proj.vera_B.detach().cpu().clone()
        return tensors

    def import_tensors(self, model: nn.Module, adapter: str, config: VeraConfig, tensors: dict) -> dict:
        tensors = dict(tensors)
        found = [tensors.pop(k, None) for k in PROJECTION_KEYS]
        if any(t is None for t in found):
            if config.save_projection:
                raise ValueError(f"adapter {adapter!r}: save_projection is set but {PROJECTION_KEYS} are missing")
            warnings.warn(f"adapter {adapter!r}: VeRA projections rebuilt from projection_prng_key="
                          f"{config.projection_prng_key} (not in the file)", stacklevel=3)
            return tensors
        proj = _projections(model, adapter)
        with torch.no_grad():
            for key, buf, new in zip(PROJECTION_KEYS, (proj.vera_A, proj.vera_B), found):
                if tuple(new.shape) != tuple(buf.shape):
                    raise ValueError(f"tensor {key} has shape {tuple(new.shape)} but the model's targeted "
                                     f"layers need {tuple(buf.shape)}")
                buf.copy_(new.to(buf.dtype))
        return tensors

    def forward(self, layer: VeraLinear, adapter: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        lambda_b, lambda_d = layer.vera_lambda_b[adapter], layer.vera_lambda_d[adapter]
        a, b = layer.sliced(adapter)
        h = layer.lora_dropout[adapter](x.to(lambda_d.dtype))
        update = lambda_b * F.linear(lambda_d * F.linear(h, a.to(h.dtype)), b.to(h.dtype))
        return result + update.to(result.dtype)

    def delta_weight(self, layer: VeraLinear, adapter: str) -> torch.Tensor:
        """``(lambda_b * B_s) @ (lambda_d * A_s)`` in the base weight's layout (fp32)."""
        a, b = layer.sliced(adapter)
        lambda_b = layer.vera_lambda_b[adapter].detach().float()
        lambda_d = layer.vera_lambda_d[adapter].detach().float()
        delta = (lambda_b[:, None] * b.float()) @ (lambda_d[:, None] * a.float())
        return delta.T if layer.fan_in_fan_out else delta


VERA = VeraType()
