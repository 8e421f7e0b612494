"""Which modules of a model to adapt (PEFT's matching rules), with errors that suggest names."""

from __future__ import annotations

import difflib
import re

from torch import nn

from lorakit.config import LoraConfig

# Per-architecture defaults for target_modules=None (PEFT's table, the common entries).
DEFAULT_TARGETS = {
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "gemma2": ["q_proj", "v_proj"],
    "phi3": ["qkv_proj"],
    "opt": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value"],
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
}
_LAYER_PATTERNS = ["layers", "h", "block", "blocks", "layer"]


def is_linear_like(module: nn.Module) -> bool:
    """nn.Linear, GPT-2's Conv1D, or a quantized linear base (anything with ``dequantize``);
    an already adapted layer counts as its base."""
    module = getattr(module, "base_layer", module)
    if isinstance(module, nn.Linear):
        return True
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        return True
    return hasattr(module, "dequantize") and hasattr(module, "in_features")


def adaptable(module: nn.Module) -> bool:
    module = getattr(module, "base_layer", module)
    return is_linear_like(module) or isinstance(module, (nn.Embedding, nn.Conv1d, nn.Conv2d))


def _output_head_names(model: nn.Module) -> set[str]:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return {n for n, m in model.named_modules() if head is not None and m is head}


def _matches(name: str, spec) -> bool:
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == key or name.endswith("." + key) for key in spec)


def _layer_index(name: str, config) -> int | None:
    """The index of the numbered layer ``name`` sits in (``...layers.3.``), else None."""
    patterns = config.layers_pattern or _LAYER_PATTERNS
    patterns = [patterns] if isinstance(patterns, str) else patterns
    for pattern in patterns:
        m = re.match(rf".*\.{pattern}\.(\d+)\.", name + ".")
        if m:
            return int(m.group(1))
    return None


def _filter_layers(chosen: list[str], config) -> list[str]:
    """``chosen`` restricted to ``layers_to_transform``; an index that no targeted module sits
    in is an error naming it and the indices that exist."""
    if config.layers_to_transform is None:
        return chosen
    index = {n: _layer_index(n, config) for n in chosen}
    present = sorted({i for i in index.values() if i is not None})
    pattern = config.layers_pattern or _LAYER_PATTERNS
    if not present:
        raise ValueError(f"layers_to_transform={config.layers_to_transform} is set but no targeted "
                         f"module sits in a numbered layer matching layers_pattern={pattern!r}")
    missing = sorted(set(config.layers_to_transform) - set(present))
    if missing:
        raise ValueError(f"layers_to_transform: layer(s) {missing} do not exist; the targeted modules "
                         f"sit in layers {present[0]}..{present[-1]}")
    return [n for n in chosen if index[n] in config.layers_to_transform]


def default_targets(model: nn.Module) -> list[str]:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in DEFAULT_TARGETS:
        raise ValueError(
            f"target_modules is required: no default for model type {model_type!r} "
            f"(defaults exist for {sorted(DEFAULT_TARGETS)})"
        )
    return DEFAULT_TARGETS[model_type]


def find_targets(model: nn.Module, config: LoraConfig, strict: bool = True) -> list[str]:
    """Full names of the modules ``config`` targets, in model order.

    ``strict``: every entry of a list ``target_modules`` must match something (loading a
    saved adapter uses ``strict=False``: only an empty overall match is an error).
    """
    names = dict(candidate_modules(model))
    skip = set(config.modules_to_save or [])
    spec = config.target_modules
    if spec is None:
        spec = default_targets(model)
    if spec == "all-linear":
        heads = _output_head_names(model)
        chosen = [n for n, m in names.items() if is_linear_like(m) and n not in heads
                  and n.rsplit(".", 1)[-1] not in skip]
    else:
        chosen = [n for n in names if _matches(n, spec)]
        if strict and not isinstance(spec, str):
            for key in spec:
                if not any(n == key or n.endswith("." + key) for n in chosen):
                    raise ValueError(f"target module {key!r} matched no module; {suggest(model, key)}")
    # PEFT's rule: a module in modules_to_save is trained in full, never LoRA-adapted (PEFT's
    # saved configs list it in target_modules when "all-linear" resolved to it).
    chosen = [n for n in chosen if not _matches(n, list(skip))]
    if config.exclude_modules:
        chosen = [n for n in chosen if not _matches(n, config.exclude_modules)]
    if chosen:
        chosen = _filter_layers(chosen, config)
    if not chosen:
        raise ValueError(f"target_modules={config.target_modules!r} matched no module; "
                         f"{suggest(model, str(spec))}")
    for n in chosen:
        if not adaptable(names[n]):
            raise ValueError(
                f"module {n!r} is a {type(names[n]).__name__}; LoRA supports Linear, Conv1D, "
                "Embedding, Conv1d, Conv2d and 4-bit linear layers"
            )
    return chosen


def candidate_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every module that may be a target: everything except the root and the
    modules inside an adapter wrapper (a LoRA layer's ``base_layer`` and factors, a
    ``modules_to_save`` wrapper's copies). An adapted layer itself stays a candidate, so a
    second adapter joins it (PEFT's rule) instead of being injected into its ``base_layer``."""
    from lorakit.layers import LoraLayer, ModulesToSave

    out, wrappers = [], []
    for name, module in model.named_modules():
        if not name or any(name.startswith(w) for w in wrappers):
            continue
        out.append((name, module))
        if isinstance(module, (LoraLayer, ModulesToSave)):
            wrappers.append(name + ".")
    return out


def suggest(model: nn.Module, key: str, limit: int = 5) -> str:
    """A hint listing the adaptable module names closest to ``key``."""
    full = [n for n, m in candidate_modules(model) if adaptable(m)]
    leaves = sorted({n.rsplit(".", 1)[-1] for n in full})
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], leaves, n=limit, cutoff=0.5)
    if close:
        return f"close module names: {close}"
    return f"adaptable module names: {leaves[:20]}"
