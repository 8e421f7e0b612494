"""A model's adapters to and from PEFT adapter directories, and in-place hot-swap.

This is the model side: it walks a model's adapted modules (``LoraLayer.adapter_params``) to
name each live parameter by its stored key, and checks loaded tensors against them (missing,
unexpected, shape). What the files hold (names, keys, ``adapter_config.json``, atomic
writes, the value checks) is ``lorakit.formats.peft``'s: this module calls it and knows no
file format itself.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lorakit.adapter_types import adapter_type_for
from lorakit.config import LoraConfig, load_config
from lorakit.errors import NotFoundError
from lorakit.formats import peft
from lorakit.inject import add_adapter, adapted_modules, adapter_configs, delete_adapter
from lorakit.layers import LoraEmbedding, LoraLayer, ModulesToSave
from lorakit.paths import check_output_dir
from lorakit.legacy_names import translate_keys

_NONFINITE_HINT = "lorakit.load_adapter(..., allow_nonfinite=True) loads it anyway"


def adapter_state_dict(model: nn.Module, name: str = "default") -> dict[str, nn.Parameter]:
    """PEFT key -> live parameter for adapter ``name`` (plus the biases its ``bias`` names)."""
    configs = adapter_configs(model)
    if name not in configs:
        raise NotFoundError(f"no adapter {name!r}; adapters: {list(configs)}")
    out = {}
    for module_name, module in adapted_modules(model):
        for suffix, param in module.adapter_params(name).items():
            out[peft.tensor_key(module_name, suffix)] = param
        base = getattr(module, "base_layer", None)
        if configs[name].bias == "lora_only" and name in module.adapter_names \
                and getattr(base, "bias", None) is not None:
            out[peft.tensor_key(module_name, "base_layer.bias")] = base.bias
    if configs[name].bias == "all":
        for key, param in model.named_parameters():
            if key.endswith("bias") and "lora_" not in key and ".modules_to_save." not in key \
                    and ".original_module." not in key:
                out[peft.tensor_key(key)] = param
    return out


def save_adapter(model: nn.Module, directory: str | Path, name: str = "default") -> Path:
    """Write adapter ``name`` as a PEFT adapter directory (``formats.peft.write_adapter``:
    atomic; tensor dtypes and, for LoRA, every layer's rank against the config checked first)."""
    directory = Path(directory)
    config = adapter_configs(model).get(name)
    if config is None:
        raise NotFoundError(f"no adapter {name!r}; adapters: {list(adapter_configs(model))}")
    check_output_dir(directory, "adapter directory")
    tensors = {k: p.detach().cpu().contiguous().clone() for k, p in adapter_state_dict(model, name).items()}
    tensors = adapter_type_for(config).export_tensors(model, name, config, tensors)  # shared or pruned
    if config.base_model_name_or_path is None:
        config.base_model_name_or_path = getattr(getattr(model, "config", None), "_name_or_path", None)
    rank_for = config.rank_for if isinstance(config, LoraConfig) else None
    return peft.write_adapter(directory, tensors, config.to_peft_dict(), rank_for)


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
    tensors, source = peft.read_weights(directory, allow_nonfinite, _NONFINITE_HINT)
    return load_adapter_tensors(model, config, tensors, name, source, adapter_dtype,
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
            out[peft.tensor_key(module_name, "base_layer.weight")] = module.base_layer.weight
        if isinstance(module, ModulesToSave) and name in module.modules_to_save:
            for sub, mod in (("original_module", module.original_module),
                             ("modules_to_save", module.modules_to_save[name])):
                for pname, p in mod.named_parameters():
                    out[peft.tensor_key(module_name, sub, pname)] = p
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


def _check_swap_shape(key: str, new: tuple, old: tuple, source: Path) -> None:
    """A hot-swapped tensor matches the loaded one except for a rank that may be smaller."""
    rank = peft.rank_dim(key)
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
    tensors, source = peft.read_weights(directory, allow_nonfinite, _NONFINITE_HINT)
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
