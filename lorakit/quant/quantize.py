"""Model surgery: replace ``nn.Linear`` layers by ``Linear4bit`` in place, measure the result,
and merge LoRA adapters into 4-bit bases.

Names in ``targets`` and ``skip`` follow PEFT's rule: a name matches a module whose full name
equals it or ends with ``"." + name``; skipping a module skips everything inside it.
"""

from __future__ import annotations

import torch
from torch import nn

from lorakit.inject import replace_module
from lorakit.quant.linear4bit import Linear4bit
from lorakit.quant.nf4 import check_blocksize, nf4_dequantize, quantized_nbytes

METHODS = ("nf4",)


def _matches(name: str, keys) -> bool:
    return any(name == key or name.endswith("." + key) for key in keys)


def _inside(name: str, keys) -> bool:
    """``name`` or one of its parent modules matches ``keys``."""
    parts = name.split(".")
    return any(_matches(".".join(parts[:i]), keys) for i in range(1, len(parts) + 1))


def _output_head_ids(model: nn.Module) -> set[int]:
    """ids of the output head: modules named ``lm_head``, ``get_output_embeddings()``, and for
    a model that has that method but no output embeddings (a Hugging Face classifier such as
    ``...ForSequenceClassification``) its last module when that is an ``nn.Linear``, as
    Hugging Face's own 4-bit loading keeps it."""
    heads = {id(m) for name, m in model.named_modules() if _matches(name, ["lm_head"])}
    get = getattr(model, "get_output_embeddings", None)
    if not callable(get):
        return heads
    head = get()
    if head is None:
        head = list(model.modules())[-1]
        if not isinstance(head, nn.Linear):
            return heads
    return heads | {id(head)}


def _check_names(model: nn.Module, keys, what: str) -> None:
    names = [name for name, _ in model.named_modules()]
    for key in keys:
        if not any(_matches(name, [key]) for name in names):
            raise ValueError(f"{what} {key!r} matches no module of {type(model).__name__}")


def select_layers(model: nn.Module, targets=None, skip=()) -> list[str]:
    """Names of the layers ``quantize`` replaces, in module order.

    ``targets=None`` selects every ``nn.Linear``; otherwise every module matching a target, and
    each must be an ``nn.Linear``. The output head and the modules matching ``skip`` (or inside
    a module that does) are left out. Raises ``ValueError`` naming the target, skip entry or layer that does not fit.
    """
    for name, _ in model.named_modules():
        if name.split(".")[-1].startswith("lora_"):
            raise ValueError(
                f"module {name!r} is a LoRA adapter: quantize the base model before adding adapters"
            )
    _check_names(model, skip, "skip entry")
    if targets is not None:
        _check_names(model, targets, "target")
    heads = _output_head_ids(model)
    selected = []
    for name, module in model.named_modules(remove_duplicate=False):
        if not name or _inside(name, skip):
            continue
        if targets is None:
            if isinstance(module, nn.Linear) and id(module) not in heads:
                selected.append(name)
            continue
        if not _matches(name, targets):
            continue
        if id(module) in heads:
            raise ValueError(f"layer {name!r} is the output head; it stays in full precision")
        if not isinstance(module, nn.Linear):
            raise ValueError(f"layer {name!r} is {type(module).__name__}, not nn.Linear")
        selected.append(name)
    return selected


def quantize(
    model: nn.Module,
    method: str = "nf4",
    *,
    double_quant: bool = True,
    compute_dtype: torch.dtype = torch.bfloat16,
    blocksize: int = 64,
    skip=(),
    targets=None,
) -> nn.Module:
    """Replace the selected ``nn.Linear`` layers (see ``select_layers``) of ``model`` by
    ``Linear4bit`` in place, one layer at a time, and return ``model``.

    The full-precision weights are released as each layer is replaced (a layer registered
    under several names is quantized once and shared). Errors name the layer.
    """
    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}; known: {list(METHODS)}")
    check_blocksize(blocksize)
    done: dict[int, Linear4bit] = {}
    for name in select_layers(model, targets, skip):
        linear = model.get_submodule(name)
        if id(linear) not in done:
            try:
                done[id(linear)] = Linear4bit.from_linear(
                    linear, blocksize, double_quant, compute_dtype
                )
            except (TypeError, ValueError) as err:
                raise type(err)(f"cannot quantize layer {name!r}: {err}") from err
        replace_module(model, name, done[id(linear)])
    return model


def quantized_linear_stats(model: nn.Module) -> dict:
    """Sizes of the ``Linear4bit`` layers of ``model``.

    ``bits_per_param`` counts the data that grows with the weights (packed codes, absmax,
    nested absmax) per quantized parameter; ``constant_bytes`` are the per-layer code books and
    offsets. Biases stay in full precision and are not counted.
    """
    layers = params = data = constant = 0
    for module in model.modules():
        if isinstance(module, Linear4bit):
            d, c = quantized_nbytes(module.weight, module.quant_state)
            layers, params = layers + 1, params + module.quant_state.numel
            data, constant = data + d, constant + c
    return {
        "layers": layers,
        "params": params,
        "data_bytes": data,
        "constant_bytes": constant,
        "bits_per_param": 8 * data / params if params else 0.0,
    }


def _dequantized_linear(layer: Linear4bit) -> nn.Linear:
    """An fp32 ``nn.Linear`` holding ``layer``'s decoded weight and bias (frozen)."""
    weight = nf4_dequantize(layer.weight, layer.quant_state, torch.float32)
    linear = nn.Linear(layer.in_features, layer.out_features, layer.bias is not None, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    if layer.bias is not None:
        linear.bias = nn.Parameter(layer.bias.detach().float(), requires_grad=False)
    return linear


def merge_and_unload_quantized(
    model: nn.Module, requantize: bool = False, safe: bool = True
) -> tuple[nn.Module, dict]:
    """Merge the active adapters into every base (4-bit ones included) and remove the LoRA
    layers, in place. Returns ``(model, report)``.

    A ``Linear4bit`` base is decoded to fp32, the adapter delta is added there (by the core's
    merge, so every variant merges as usual), and the result is cast to the weight's original
    dtype (``quant_state.dtype``). It stays an ``nn.Linear``, or with ``requantize=True`` is
    quantized again with the layer's blocksize, double quantization and compute dtype.

    ``report``: ``layers`` (4-bit bases merged), ``requantized``, and the error that
    re-quantization added to the merged weights, ``max_abs_error`` / ``mean_abs_error``
    (0.0 without re-quantization) plus ``per_layer`` ``{name: (max, mean)}``.
    """
    from lorakit.adapters import merge_and_unload
    from lorakit.inject import adapted_modules

    originals: dict[str, Linear4bit] = {}
    wrappers = {}
    for name, module in adapted_modules(model):
        base = getattr(module, "base_layer", None)
        if isinstance(base, Linear4bit):
            module.base_layer = _dequantized_linear(base)
            originals[name], wrappers[name] = base, module
    try:
        merge_and_unload(model, safe=safe)
    except Exception:
        # a failed (safe) merge leaves the adapters unmerged: restore the 4-bit bases
        for name, module in wrappers.items():
            module.base_layer = originals[name]
        raise

    per_layer, total_abs, total_n = {}, 0.0, 0
    for name, original in originals.items():
        merged = model.get_submodule(name)
        merged.to(original.quant_state.dtype)
        if not requantize:
            continue
        layer = Linear4bit.from_linear(
            merged, original.blocksize, original.double_quant, original.compute_dtype
        )
        decoded = nf4_dequantize(layer.weight, layer.quant_state, torch.float32)
        error = (decoded - merged.weight.float()).abs()
        per_layer[name] = (error.max().item(), error.mean().item())
        total_abs, total_n = total_abs + error.sum().item(), total_n + error.numel()
        replace_module(model, name, layer)
    report = {
        "layers": len(originals),
        "requantized": requantize,
        "max_abs_error": max((m for m, _ in per_layer.values()), default=0.0),
        "mean_abs_error": total_abs / total_n if total_n else 0.0,
        "per_layer": per_layer,
    }
    return model, report
