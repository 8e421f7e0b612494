"""Module surgery: add, delete and unload adapters in a user's model, in place.

Each adapted module is replaced by a LoRA layer that holds the original as ``base_layer``;
``modules_to_save`` modules are replaced by a ``ModulesToSave`` wrapper. The model keeps its
class, so ``generate``, HF ``Trainer``, ``state_dict`` and ``torch.compile`` keep working.
The adapters' configs live in ``model._lorakit_configs`` (name -> LoraConfig).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from lorakit.adapter_types import adapter_type_for
from lorakit.config import LoraConfig
from lorakit.errors import NotFoundError
from lorakit.layers import LoraLayer, ModulesToSave
from lorakit.legacy_names import translate_config
from lorakit.targets import find_targets

_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


def check_name(name) -> str:
    """An adapter name: 1+ letters, digits, '_' or '-' (it becomes a ModuleDict key)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"adapter name {name!r} must be letters, digits, '_' or '-'")
    return name


def adapter_configs(model: nn.Module) -> dict[str, LoraConfig]:
    """The adapters added to ``model`` (name -> config), in the order they were added."""
    if not hasattr(model, "_lorakit_configs"):
        model._lorakit_configs = {}
    return model._lorakit_configs


def adapted_modules(model: nn.Module):
    """(name, module) for every LoRA layer and ModulesToSave wrapper in ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (LoraLayer, ModulesToSave))]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` where ``model``'s submodule ``name`` (a dotted path) is, and return the old
    one. The one module replacement of the tree (injection, unloading, quantization, serving)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


def _modules_to_save_names(model: nn.Module, keys: list[str], strict: bool) -> list[str]:
    """Outermost modules named by ``keys``. Loading (``strict=False``) skips entries that match
    nothing: PEFT writes its task defaults (``classifier``, ``score``) for every model."""
    found = []
    for key in keys:
        hits = [n for n, m in model.named_modules() if n and (n == key or n.endswith("." + key))
                and not isinstance(m, LoraLayer) and ".modules_to_save." not in n
                and ".original_module" not in n]
        hits = [n for n in hits if not any(n.startswith(h + ".") for h in hits)]  # outermost only
        if not hits and strict:
            raise ValueError(f"modules_to_save entry {key!r} matched no module")
        found += hits
    return found


def add_adapter(model: nn.Module, config: LoraConfig, name: str = "default",
                adapter_dtype: torch.dtype | None = None, strict: bool = True,
                init: bool = True) -> nn.Module:
    """Inject adapter ``name`` into ``model`` in place and return the model.

    The first adapter added becomes active; later ones stay inactive until ``set_adapter``
    (PEFT's rule). Base weights are frozen; the active adapters train. Adapter weights are
    created in ``adapter_dtype`` (default float32, whatever the base dtype: optimizer updates on
    small low-rank factors need the precision; pass ``torch.bfloat16`` for pure-bf16 training).
    On any error the model is left as it was. ``strict=False`` (used when loading a saved
    adapter) only requires that something matched; ``init=False`` skips weight init.
    """
    configs = adapter_configs(model)
    kind = adapter_type_for(config)
    check_name(name)
    config.__post_init__()  # validated again: a config may have been changed since construction
    if adapter_dtype is not None and not (isinstance(adapter_dtype, torch.dtype)
                                          and adapter_dtype.is_floating_point):
        raise ValueError(f"adapter_dtype must be a floating-point torch.dtype, got {adapter_dtype!r}")
    if name in configs:
        raise ValueError(f"adapter {name!r} already exists; existing adapters: {list(configs)}")
    others = {c.peft_type for c in configs.values()} - {config.peft_type}
    if others:
        raise ValueError(f"the model holds {sorted(others)} adapters; a {config.peft_type} adapter "
                         "cannot be added beside them (one adapter type per model, as in PEFT)")
    config = translate_config(model, config)  # transformers 4 names, with a notice
    targets = find_targets(model, config, strict=strict)
    kind.prepare(model, targets, config)  # e.g. VeRA's projections shared by all target layers
    saved = _modules_to_save_names(model, config.modules_to_save or [], strict)
    try:
        for module_name in targets:
            module = model.get_submodule(module_name)
            training = module.training
            if not isinstance(module, LoraLayer):
                module = kind.make_layer(module, module_name, config)
                replace_module(model, module_name, module)
            module.add(name, config, kind, adapter_dtype, init)
            module.train(training)  # new layers and dropouts follow the model's train/eval mode
        for module_name in saved:
            module = model.get_submodule(module_name)
            if not isinstance(module, ModulesToSave):
                module = ModulesToSave(module, module_name)
                replace_module(model, module_name, module)
            module.add(name)
    except Exception:
        _remove_everywhere(model, name)
        raise
    configs[name] = config
    if len(configs) == 1:
        for _, module in adapted_modules(model):
            module.active_adapters = [name]
    update_trainable(model)
    return model


def _remove_everywhere(model: nn.Module, name: str) -> None:
    for module_name, module in adapted_modules(model):
        module.delete(name)
        if not module.adapter_names:
            replace_module(model, module_name, _unwrapped(module, merge=False))


def _unwrapped(module: nn.Module, merge: bool) -> nn.Module:
    if isinstance(module, ModulesToSave):
        return module.current() if merge else module.original_module
    return module.base_layer


def delete_adapter(model: nn.Module, name: str) -> None:
    configs = adapter_configs(model)
    if name not in configs:
        raise NotFoundError(f"no adapter {name!r}; adapters: {list(configs)}")
    merged = [n for n, m in adapted_modules(model) if name in getattr(m, "merged_adapters", ())]
    if merged:
        raise ValueError(f"adapter {name!r} is merged into {merged[0]} (and {len(merged) - 1} more "
                         "layers); unmerge it before deleting it")
    _remove_everywhere(model, name)
    del configs[name]
    update_trainable(model)


def active_adapters(model: nn.Module) -> list[str]:
    for _, module in adapted_modules(model):
        return list(module.active_adapters)
    return []


# LoRA-FA freezes the randomly initialised factor: A of linear/conv layers, B of embeddings
# (whose A starts at zero).
_LORA_FA_FROZEN = ("lora_A.weight", "lora_embedding_B")


def update_trainable(model: nn.Module) -> None:
    """Freeze everything, then unfreeze the active, trainable adapters' parameters (and the
    biases their ``bias`` setting names)."""
    configs = adapter_configs(model)
    active = [a for a in active_adapters(model) if a in configs and not configs[a].inference_mode]
    for p in model.parameters():
        p.requires_grad_(False)
    for module_name, module in adapted_modules(model):
        for name in active:
            frozen = _LORA_FA_FROZEN if configs[name].lora_fa else ()
            for key, p in module.adapter_params(name).items():
                p.requires_grad_(key not in frozen)
            bias_mode = configs[name].bias
            base = getattr(module, "base_layer", None)
            if bias_mode == "lora_only" and base is not None and getattr(base, "bias", None) is not None:
                base.bias.requires_grad_(True)
    if any(configs[a].bias == "all" for a in active):
        for n, p in model.named_parameters():
            if n.endswith("bias") and p.is_floating_point():
                p.requires_grad_(True)


def unload(model: nn.Module) -> nn.Module:
    """Remove every adapter without merging: the model computes as the base again."""
    return unwrap_all(model, merge=False)


def unwrap_all(model: nn.Module, merge: bool) -> nn.Module:
    """Put every adapted module's original back (with ``merge``: a LoRA layer's base as it is
    now, merged adapters included, and a ``modules_to_save`` wrapper's active copy) and forget
    the adapters' configs."""
    for module_name, module in adapted_modules(model):
        if not merge and isinstance(module, LoraLayer):
            module.unmerge()
        replace_module(model, module_name, _unwrapped(module, merge))
    adapter_configs(model).clear()
    return model
