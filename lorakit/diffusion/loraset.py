"""Format-neutral LoRA factors of a multi-component model: the middle of every conversion.

    kohya file  <->  LoraSet  <->  diffusers file          models  ->  LoraSet  ->  models

A ``LoraSet`` maps ``"<component>.<module path>"`` (``"unet.down_blocks.0.attentions.0.proj_in"``,
``"text_encoder.text_model.encoder.layers.0.self_attn.q_proj"``) to a ``ModuleLora``:

    down       A  [r, in]      (conv: [r, in, kh, kw])
    up         B  [out, r]     (conv: [out, r, 1, 1])
    alpha      dW = alpha / r * B @ A  (kohya's and diffusers' convention)
    magnitude  DoRA's magnitude [out], or None

Tensors keep their dtype (an fp16 file converts to an fp16 file). ``components`` is a dict
``{"unet": unet, "text_encoder": text_encoder, ...}`` of the models the keys refer to.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import torch
from torch import nn

from lorakit.config import LoraConfig
from lorakit.inject import adapter_configs, adapted_modules, delete_adapter
from lorakit.formats import peft
from lorakit.io import load_adapter_tensors
from lorakit.layers import LoraConv, LoraLayer, LoraLinear
from lorakit.targets import suggest


@dataclass
class ModuleLora:
    """One module's LoRA factors (shapes in the module docstring)."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float
    magnitude: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


LoraSet = dict[str, ModuleLora]


def _flattened_clip(model: nn.Module) -> bool:
    # transformers v5 dropped CLIPTextModel's ``text_model`` level; files (kohya's
    # ``lora_te_text_model_...``, older diffusers ones) keep it, as diffusers' loader expects.
    return type(model).__name__.startswith("CLIPTextModel") and not hasattr(model, "text_model")


def file_path(model: nn.Module, module: str) -> str:
    """The module path as LoRA files spell it (``text_model.`` restored on a v5 CLIP encoder)."""
    return f"text_model.{module}" if _flattened_clip(model) else module


def model_path(model: nn.Module, module: str) -> str:
    """Inverse of ``file_path``: a file's module path as ``model`` names it."""
    return module.removeprefix("text_model.") if _flattened_clip(model) else module


def split_key(key: str) -> tuple[str, str]:
    """``"unet.down_blocks.0.x"`` -> ``("unet", "down_blocks.0.x")``."""
    component, _, module = key.partition(".")
    return component, module


def lora_set_from_models(components: dict[str, nn.Module], name: str = "default") -> LoraSet:
    """Adapter ``name`` of every component as a LoraSet (the file formats' common input).

    Plain LoRA and DoRA on linear and conv layers only: the formats have no place for
    ``modules_to_save``, trained biases or other adapter types, so those raise.
    """
    out: LoraSet = {}
    for component, model in components.items():
        config = adapter_configs(model).get(name)
        if config is None:
            continue
        if not isinstance(config, LoraConfig) or config.modules_to_save or config.bias != "none" \
                or config.lora_bias:
            raise ValueError(f"adapter {name!r} of {component} uses modules_to_save, biases or a "
                             "non-LoRA type; kohya and diffusers LoRA files cannot hold it")
        for module_name, layer in adapted_modules(model):
            if not isinstance(layer, LoraLayer) or name not in layer.r:
                continue
            kind = layer.variants[name].name
            if not isinstance(layer, (LoraLinear, LoraConv)) or kind not in ("lora", "dora") \
                    or getattr(layer, "fan_in_fan_out", False):
                raise ValueError(f"{component}.{module_name}: a {type(layer).__name__} ({kind}) "
                                 "adapter has no kohya/diffusers form (Linear/Conv LoRA or DoRA only)")
            a, b = layer.adapter_factors(name)
            mag = layer.lora_magnitude_vector[name] if kind == "dora" else None
            r = layer.r[name]
            out[f"{component}.{file_path(model, module_name)}"] = ModuleLora(
                down=a.detach().cpu().clone(), up=b.detach().cpu().clone(),
                alpha=layer.configured_scaling(name) * r,
                magnitude=None if mag is None else mag.detach().cpu().clone())
    if not out:
        raise KeyError(f"no component holds adapter {name!r}; components: {list(components)}")
    return out


def _most_common(values: dict[str, float]):
    return collections.Counter(values.values()).most_common(1)[0][0]


def config_for(modules: dict[str, ModuleLora]) -> LoraConfig:
    """The LoraConfig of one component's modules (module path -> factors): the most common
    rank and alpha as ``r``/``lora_alpha``, the rest as exact-name patterns (diffusers' rule)."""
    ranks = {m: f.rank for m, f in modules.items()}
    alphas = {m: float(f.alpha) for m, f in modules.items()}
    r, alpha = _most_common(ranks), _most_common(alphas)
    return LoraConfig(
        r=r, lora_alpha=alpha, target_modules=sorted(modules),
        rank_pattern={m: v for m, v in ranks.items() if v != r},
        alpha_pattern={m: v for m, v in alphas.items() if v != alpha},
        use_dora=any(f.magnitude is not None for f in modules.values()))


def _check_modules(model: nn.Module, component: str, modules: dict, source) -> None:
    known = {n for n, _ in model.named_modules()}
    for module in modules:
        if module not in known:
            raise ValueError(f"{source}: {component}.{module} matches no module of this "
                             f"{type(model).__name__} (another architecture?); {suggest(model, module)}")


def apply_lora_set(components: dict[str, nn.Module], lora_set: LoraSet, name: str = "default",
                   source="LoRA file", is_trainable: bool = False) -> None:
    """Add ``lora_set`` to the components as adapter ``name`` (one per component that it
    touches). Errors name ``source`` and the offending key; on any error no component changes."""
    grouped: dict[str, dict[str, ModuleLora]] = {}
    for key, factors in lora_set.items():
        component, module = split_key(key)
        if component not in components:
            raise ValueError(f"{source}: {key} is for component {component!r}, which was not "
                             f"given; components: {list(components)}")
        grouped.setdefault(component, {})[model_path(components[component], module)] = factors
    for component, modules in grouped.items():
        _check_modules(components[component], component, modules, source)
    done = []
    try:
        for component, modules in grouped.items():
            config = config_for(modules)
            config.inference_mode = not is_trainable
            tensors = {}
            for module, f in modules.items():
                tensors.update(peft.pair_tensors(peft.tensor_key(module), f.down, f.up, f.magnitude))
            load_adapter_tensors(components[component], config, tensors, name, source)
            done.append(component)
    except Exception:
        for component in done:
            delete_adapter(components[component], name)
        raise


__all__ = ["LoraSet", "ModuleLora", "apply_lora_set", "config_for", "file_path", "lora_set_from_models",
           "model_path", "split_key"]
