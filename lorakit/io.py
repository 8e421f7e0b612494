"""Adapter files in PEFT's on-disk format, both directions, and in-place hot-swap.

A directory holds ``adapter_config.json`` and ``adapter_model.safetensors``; tensor keys are
``base_model.model.<module path>.<suffix>`` with the adapter name removed (``lora_A.weight``,
``lora_embedding_A``, ``lora_magnitude_vector``; ``modules_to_save`` copies under the module's
own path). This file is the only place that knows the mapping. Weights load through
safetensors only (no pickle).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lorakit.config import LoraConfig, load_config
from lorakit.inject import add_adapter, adapted_modules, adapter_configs, delete_adapter
from lorakit.layers import LoraEmbedding, LoraLayer, ModulesToSave
from lorakit.legacy_names import translate_keys

WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."


def adapter_state_dict(model: nn.Module, name: str = "default") -> dict[str, nn.Parameter]:
    """PEFT key -> live parameter for adapter ``name`` (plus the biases its ``bias`` names)."""
    configs = adapter_configs(model)
    if name not in configs:
        raise KeyError(f"no adapter {name!r}; adapters: {list(configs)}")
    out = {}
    for module_name, module in adapted_modules(model):
        for suffix, param in module.adapter_params(name).items():
            out[f"{PREFIX}{module_name}.{suffix}"] = param
        base = getattr(module, "base_layer", None)
        if configs[name].bias == "lora_only" and name in module.adapter_names \
                and getattr(base, "bias", None) is not None:
            out[f"{PREFIX}{module_name}.base_layer.bias"] = base.bias
    if configs[name].bias == "all":
        for key, param in model.named_parameters():
            if key.endswith("bias") and "lora_" not in key and ".modules_to_save." not in key \
                    and ".original_module." not in key:
                out[PREFIX + key] = param
    return out


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; anything unreadable raises an error that names the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"adapter weights not found: {path}")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error type for corrupt headers
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None


def _weights_path(directory: Path) -> Path:
    path = directory / WEIGHTS_NAME
    if not path.exists() and (directory / "adapter_model.bin").exists():
        raise ValueError(f"{directory}: only adapter_model.bin (pickle) found; lorakit loads "
                         "safetensors only. Re-save it with PEFT's safe_serialization=True.")
    return path


def _check_ranks(model: nn.Module, name: str, config: LoraConfig) -> None:
    for module_name, module in adapted_modules(model):
        if isinstance(module, LoraLayer) and name in module.r and module.r[name] != config.rank_for(module_name):
            raise ValueError(f"adapter {name!r} at {module_name} holds rank {module.r[name]} (hot-swapped, "
                             f"zero-padded) but its config says {config.rank_for(module_name)}; "
                             "it cannot be saved as a PEFT adapter")


def save_adapter(model: nn.Module, directory: str | Path, name: str = "default") -> Path:
    """Write adapter ``name`` as a PEFT adapter directory (atomically: temp files, then rename)."""
    directory = Path(directory)
    config = adapter_configs(model).get(name)
    if config is None:
        raise KeyError(f"no adapter {name!r}; adapters: {list(adapter_configs(model))}")
    if isinstance(config, LoraConfig):
        _check_ranks(model, name, config)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: p.detach().cpu().contiguous().clone() for k, p in adapter_state_dict(model, name).items()}
    if hasattr(config, "export_tensors"):  # other adapter types: shared or pruned tensors
        tensors = config.export_tensors(model, name, tensors)
    if config.base_model_name_or_path is None:
        config.base_model_name_or_path = getattr(getattr(model, "config", None), "_name_or_path", None)
    tmp = directory / f".{WEIGHTS_NAME}.tmp{os.getpid()}"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(directory / WEIGHTS_NAME)
    config.save(directory)
    return directory


def load_adapter(model: nn.Module, directory: str | Path, name: str = "default",
                 is_trainable: bool = False, adapter_dtype: torch.dtype | None = None) -> nn.Module:
    """Add the PEFT adapter in ``directory`` to ``model`` as ``name`` (LoRA, or another
    registered ``peft_type`` such as VeRA or AdaLoRA).

    Loaded adapters are for inference unless ``is_trainable`` (PEFT's rule). A file that does
    not fit the model (missing, unexpected or mis-shaped tensors) raises an error naming the
    tensor and both shapes, and the model is left as it was.
    """
    directory = Path(directory)
    config = load_config(directory)
    config.inference_mode = not is_trainable
    tensors = read_tensors(_weights_path(directory))
    add_adapter(model, config, name, adapter_dtype=adapter_dtype, strict=False, init=False)
    try:
        tensors = translate_keys(model, tensors, str(directory / WEIGHTS_NAME))
        if hasattr(config, "import_tensors"):  # consumes model-level keys (VeRA's projections)
            tensors = config.import_tensors(model, name, tensors)
        _assign(model, name, tensors, directory / WEIGHTS_NAME)
    except Exception:
        delete_adapter(model, name)
        raise
    return model


def _optional_keys(model: nn.Module, name: str) -> dict[str, nn.Parameter]:
    """Keys PEFT writes beyond the adapter itself, which load when present: the full base
    weight of adapted embedding layers (``save_embedding_layers``, for resized vocabularies)
    and, with ``bias="all"``, the biases of a ``modules_to_save`` wrapper's two modules."""
    out = {}
    for module_name, module in adapted_modules(model):
        if isinstance(module, LoraEmbedding):
            out[f"{PREFIX}{module_name}.base_layer.weight"] = module.base_layer.weight
        if isinstance(module, ModulesToSave) and name in module.modules_to_save:
            for sub, mod in (("original_module", module.original_module),
                             ("modules_to_save", module.modules_to_save[name])):
                for pname, p in mod.named_parameters():
                    out[f"{PREFIX}{module_name}.{sub}.{pname}"] = p
    return out


def _assign(model: nn.Module, name: str, tensors: dict, source: Path) -> None:
    optional = _optional_keys(model, name)
    expected = {**adapter_state_dict(model, name), **{k: p for k, p in optional.items() if k in tensors}}
    for key, param in expected.items():
        if key not in tensors:
            raise ValueError(f"{source}: missing tensor {key}")
        if tuple(tensors[key].shape) != tuple(param.shape):
            raise ValueError(f"{source}: tensor {key} has shape {tuple(tensors[key].shape)} "
                             f"but the model expects {tuple(param.shape)}")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise ValueError(f"{source}: {len(unexpected)} tensors match no adapted module of this "
                         f"model (wrong base model?), e.g. {unexpected[:3]}")
    with torch.no_grad():
        for key, param in expected.items():
            param.copy_(tensors[key].to(param.dtype))


def hotswap(model: nn.Module, directory: str | Path, name: str = "default") -> None:
    """Replace adapter ``name``'s weights in place with those in ``directory``.

    The new adapter must target the same modules; a smaller rank is zero-padded into the
    existing tensors (exact: padded rows/columns contribute zeros), a larger one is an error.
    No module is replaced, so a compiled or served model keeps running (a changed scaling is a
    new Python float, which a compiled graph may guard on).
    """
    directory = Path(directory)
    config = LoraConfig.load(directory)
    tensors = read_tensors(_weights_path(directory))
    source = directory / WEIGHTS_NAME
    expected = adapter_state_dict(model, name)
    if set(expected) != set(tensors):
        diff = sorted(set(expected) ^ set(tensors))
        raise ValueError(f"{source}: hot-swap needs the same target modules as adapter {name!r}; "
                         f"differing tensors e.g. {diff[:3]}")
    for key, param in expected.items():
        new = tensors[key]
        if new.dim() != param.dim() or any(n > o for n, o in zip(new.shape, param.shape)):
            raise ValueError(f"{source}: tensor {key} has shape {tuple(new.shape)}, larger than the "
                             f"loaded {tuple(param.shape)}; hot-swap cannot grow a rank")
    with torch.no_grad():
        for key, param in expected.items():
            new = tensors[key]
            param.zero_()
            param[tuple(slice(0, n) for n in new.shape)].copy_(new.to(param.dtype))
    for module_name, module in adapted_modules(model):
        if isinstance(module, LoraLayer) and name in module.r:
            module.lora_alpha[name] = config.alpha_for(module_name)
            module.scaling[name] = config.scaling_for(module_name)
    config.inference_mode = adapter_configs(model)[name].inference_mode
    adapter_configs(model)[name] = config
