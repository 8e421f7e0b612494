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

from lorakit.adapter_types import adapter_type_for
from lorakit.config import CONFIG_NAME, LoraConfig, load_config
from lorakit.errors import NotFoundError
from lorakit.inject import add_adapter, adapted_modules, adapter_configs, delete_adapter
from lorakit.layers import LoraEmbedding, LoraLayer, ModulesToSave
from lorakit.paths import check_output_dir
from lorakit.legacy_names import translate_keys

WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
_NONFINITE_HINT = "lorakit.load_adapter(..., allow_nonfinite=True) loads it anyway"


def adapter_state_dict(model: nn.Module, name: str = "default") -> dict[str, nn.Parameter]:
    """PEFT key -> live parameter for adapter ``name`` (plus the biases its ``bias`` names)."""
    configs = adapter_configs(model)
    if name not in configs:
        raise NotFoundError(f"no adapter {name!r}; adapters: {list(configs)}")
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


def read_tensors(path: str | Path, allow_nonfinite: bool = False, hint: str = "") -> dict[str, torch.Tensor]:
    """Load a safetensors file of adapter tensors; anything unreadable raises an error that
    names the file, and ``check_tensors`` refuses values no adapter holds (``hint`` ends its
    message)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"adapter weights not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path}: not a file")
    try:
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises its own error type for corrupt headers
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    check_tensors(tensors, path, allow_nonfinite, hint)
    return tensors


def check_tensors(tensors: dict[str, torch.Tensor], source, allow_nonfinite: bool = False,
                  hint: str = "") -> None:
    """Refuse, naming ``source`` and the tensor, a dtype that is not floating point (int, bool,
    complex: no adapter weight is one) and, unless ``allow_nonfinite``, NaN or inf values (they
    would poison every output they touch). The one check for every reader of adapter files:
    ``load_adapter``, ``hotswap``, the server's host cache, ``lorakit inspect``."""
    for key, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise ValueError(f"{source}: tensor {key} has dtype {tensor.dtype}; adapter tensors are "
                             "floating point")
        if not allow_nonfinite and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(f"{source}: tensor {key} holds {bad} NaN/inf value(s) of {tensor.numel()}"
                             + (f"; {hint}" if hint else ""))


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
        raise NotFoundError(f"no adapter {name!r}; adapters: {list(adapter_configs(model))}")
    if isinstance(config, LoraConfig):
        _check_ranks(model, name, config)
    check_output_dir(directory, "adapter directory")
    for file_name in (WEIGHTS_NAME, CONFIG_NAME):
        if (directory / file_name).is_dir():
            raise ValueError(f"{directory / file_name} is a directory; cannot write the adapter there")
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: p.detach().cpu().contiguous().clone() for k, p in adapter_state_dict(model, name).items()}
    tensors = adapter_type_for(config).export_tensors(model, name, config, tensors)  # shared or pruned
    if config.base_model_name_or_path is None:
        config.base_model_name_or_path = getattr(getattr(model, "config", None), "_name_or_path", None)
    tmp = directory / f".{WEIGHTS_NAME}.tmp{os.getpid()}"
    try:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        tmp.replace(directory / WEIGHTS_NAME)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (disk full) leaves no temp file behind
    config.save(directory)
    return directory


def load_adapter(model: nn.Module, directory: str | Path, name: str = "default",
                 is_trainable: bool = False, adapter_dtype: torch.dtype | None = None,
                 allow_nonfinite: bool = False) -> nn.Module:
    """Add the PEFT adapter in ``directory`` to ``model`` as ``name`` (LoRA, or another
    registered ``peft_type`` such as VeRA or AdaLoRA).

    Loaded adapters are for inference unless ``is_trainable`` (PEFT's rule). A file that does
    not fit the model (missing, unexpected or mis-shaped tensors) raises an error naming the
    tensor and both shapes, and the model is left as it was. A tensor that is not floating
    point is refused, and so is one holding NaN/inf unless ``allow_nonfinite`` (e.g. to
    inspect a diverged run's adapter).
    """
    directory = Path(directory)
    config = load_config(directory)
    config.inference_mode = not is_trainable
    tensors = read_tensors(_weights_path(directory), allow_nonfinite, _NONFINITE_HINT)
    return load_adapter_tensors(model, config, tensors, name, directory / WEIGHTS_NAME, adapter_dtype,
                                config_source=directory)


def load_adapter_tensors(model: nn.Module, config, tensors: dict[str, torch.Tensor], name: str,
                         source, adapter_dtype: torch.dtype | None = None,
                         config_source=None) -> nn.Module:
    """Add adapter ``name`` from a config and PEFT-keyed tensors (``base_model.model.<module>.
    lora_A.weight``, ...) already checked by ``check_tensors``; tensor errors name ``source``,
    config errors ``config_source`` (default ``source``); on any error the model is left as it
    was. The other formats (``lorakit.formats``) convert to these keys and load through here."""
    try:
        add_adapter(model, config, name, adapter_dtype=adapter_dtype, strict=False, init=False)
    except ValueError as err:
        raise ValueError(f"{config_source or source}: {err}") from None
    try:
        tensors = translate_keys(model, tensors, str(source))
        tensors = adapter_type_for(config).import_tensors(model, name, config, tensors)  # model-level keys
        _assign(model, name, tensors, source)
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


def _rank_dim(key: str) -> int | None:
    """The rank dimension of a stored factor (A: rows, B: columns), None for other tensors."""
    if ".lora_A." in key or key.endswith(".lora_embedding_A"):
        return 0
    if ".lora_B." in key or key.endswith(".lora_B") or key.endswith(".lora_embedding_B"):
        return 1
    return None


def _check_swap_shape(key: str, new: tuple, old: tuple, source: Path) -> None:
    """A hot-swapped tensor matches the loaded one except for a rank that may be smaller."""
    rank = _rank_dim(key)
    ok = len(new) == len(old) and all(n == o or (i == rank and n <= o)
                                      for i, (n, o) in enumerate(zip(new, old)))
    if not ok:
        grow = " (hot-swap cannot grow a rank)" if len(new) == len(old) and rank is not None \
            and new[rank] > old[rank] else ""
        raise ValueError(f"{source}: tensor {key} has shape {new} but the loaded adapter holds {old}"
                         f"{grow}; only the rank may be smaller")


def hotswap(model: nn.Module, directory: str | Path, name: str = "default",
            allow_nonfinite: bool = False) -> None:
    """Replace adapter ``name``'s weights in place with those in ``directory``.

    The new adapter must target the same modules; a smaller rank is zero-padded into the
    existing tensors (exact: padded rows/columns contribute zeros), a larger one is an error.
    No module is replaced, so a compiled or served model keeps running (a changed scaling is a
    new Python float, which a compiled graph may guard on). Tensors are checked as in
    ``load_adapter``; on any error the adapter is left as it was.
    """
    directory = Path(directory)
    config = LoraConfig.load(directory)
    tensors = read_tensors(_weights_path(directory), allow_nonfinite, _NONFINITE_HINT)
    source = directory / WEIGHTS_NAME
    expected = adapter_state_dict(model, name)
    if set(expected) != set(tensors):
        diff = sorted(set(expected) ^ set(tensors))
        raise ValueError(f"{source}: hot-swap needs the same target modules as adapter {name!r}; "
                         f"differing tensors e.g. {diff[:3]}")
    if any(name in m.merged_adapters for _, m in adapted_modules(model) if isinstance(m, LoraLayer)):
        raise ValueError(f"adapter {name!r} is merged; unmerge it before hot-swapping its weights")
    for key, param in expected.items():
        _check_swap_shape(key, tuple(tensors[key].shape), tuple(param.shape), source)
    with torch.no_grad():
        for key, param in expected.items():
            new = tensors[key]
            param.zero_()
            param[tuple(slice(0, n) for n in new.shape)].copy_(new.to(param.dtype))
    for module_name, module in adapted_modules(model):
        if isinstance(module, LoraLayer) and name in module.r:
            module.lora_alpha[name] = config.alpha_for(module_name)
            weight = module.adapter_weights.pop(name, 1.0)  # the run-time weight survives the swap
            module._unit_scaling.pop(name, None)
            module.scaling[name] = config.scaling_for(module_name)
            module.set_weight(name, weight)
    config.inference_mode = adapter_configs(model)[name].inference_mode
    adapter_configs(model)[name] = config
