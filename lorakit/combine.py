"""``combine``: a new LoRA adapter from a weighted combination of existing ones.

Every method except ``cat`` works on the full updates ``dW_i = s_i * B_i @ A_i`` (DoRA: the
adapted weight minus the base weight) and factors the result back by SVD:

    method            update                             rank of the new adapter (default)
    cat               sum_i w_i dW_i, factors stacked     sum of the ranks, exact, no SVD
    linear            sum_i w_i dW_i                      sum of the ranks: exact for LoRA inputs
    svd               sum_i w_i dW_i                      max of the ranks: truncated
    ties, dare_linear, dare_ties, magnitude_prune
                      lorakit.combine_math.RULES[method]         max of the ranks: truncated

``rank=`` overrides the default. The new adapter has ``lora_alpha = r`` (scaling 1) and targets
exactly the modules any input adapter targets. The relative Frobenius error of the truncation is
returned per module. PEFT's ``linear`` instead averages the A's and the B's separately, which
adds cross terms ``B_i @ A_j`` (see docs/variants.md); lorakit never combines factors that way.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from lorakit.config import LoraConfig
from lorakit.errors import NotFoundError
from lorakit.inject import adapted_modules, adapter_configs, add_adapter
from lorakit.layers import LoraEmbedding, LoraLayer
from lorakit.combine_math import RULES, factored_svd, svd_factor

METHODS = ("cat", "linear", "svd", "ties", "dare_linear", "dare_ties", "magnitude_prune")
_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


@dataclass
class CombineReport:
    """What ``combine`` built: the adapter's name, method and rank, and per module the relative
    Frobenius error ``||dW - dW_new|| / ||dW||`` of the stored factors (0 when exact)."""

    name: str
    method: str
    rank: int
    errors: dict[str, float] = field(default_factory=dict)

    @property
    def max_error(self) -> float:
        return max(self.errors.values(), default=0.0)


def combine(model: nn.Module, adapters: list[str], weights: list[float] | None = None,
            method: str = "linear", name: str = "combined", density: float | None = None,
            rank: int | None = None, majority_sign_method: str = "total", seed: int = 0) -> CombineReport:
    """Add adapter ``name`` to ``model``: the ``method`` combination of ``adapters`` with
    ``weights`` (default 1 each); see the module docstring. ``density`` (fraction kept) is
    required by the pruning methods; ``seed`` makes DARE's random masks reproducible. The new
    adapter is added inactive (``set_adapter`` to use it); the inputs are left unchanged.
    """
    configs = _check(model, adapters, weights, method, name, density, rank, majority_sign_method)
    weights = [1.0] * len(adapters) if weights is None else [float(w) for w in weights]
    layers = [(n, m) for n, m in adapted_modules(model)
              if isinstance(m, LoraLayer) and any(a in m.r for a in adapters)]
    sums = [sum(m.r[a] for a in adapters if a in m.r) for _, m in layers]
    maxes = [max(m.r[a] for a in adapters if a in m.r) for _, m in layers]
    target = rank or (max(sums) if method in ("cat", "linear") else max(maxes))
    generator = torch.Generator(device=layers[0][1].base_device()).manual_seed(seed)
    factors, report = {}, CombineReport(name, method, target)
    for module_name, layer in layers:
        present = [(a, w) for a, w in zip(adapters, weights) if a in layer.r]
        b, a, error = _combine_layer(layer, present, method, target, density, majority_sign_method, generator)
        factors[module_name] = (b, a)
        report.errors[module_name] = error
    first = configs[adapters[0]]
    config = dataclasses.replace(
        first, r=target, lora_alpha=target, use_rslora=False, use_dora=False, lora_fa=False,
        target_modules=[n for n, _ in layers], exclude_modules=None, layers_to_transform=None,
        layers_pattern=None, rank_pattern={}, alpha_pattern={}, init_lora_weights=True,
        modules_to_save=None, bias="none")
    dtype = layers[0][1].adapter_factors(adapters[0])[0].dtype
    add_adapter(model, config, name, adapter_dtype=dtype, init=False)
    with torch.no_grad():
        for module_name, layer in layers:
            _write(layer, name, *factors[module_name])
    return report


def _check(model, adapters, weights, method, name, density, rank, majority_sign_method) -> dict[str, LoraConfig]:
    configs = adapter_configs(model)
    if method not in METHODS:
        raise ValueError(f"unknown combine method {method!r}; known: {list(METHODS)}")
    if isinstance(adapters, str) or not isinstance(adapters, (list, tuple)):
        raise ValueError(f"adapters must be a list of adapter names, got {adapters!r}")
    if not adapters:
        raise ValueError("combine needs at least one adapter")
    if len(set(adapters)) != len(adapters):
        raise ValueError(f"adapters {list(adapters)} name an adapter twice; give it one weight instead")
    for a in adapters:
        if a not in configs:
            raise NotFoundError(f"no adapter {a!r}; adapters: {list(configs)}")
        if configs[a].peft_type != "LORA" or configs[a].modules_to_save or configs[a].lora_bias:
            raise ValueError(f"adapter {a!r}: combine takes LoRA adapters without modules_to_save "
                             "or lora_bias")
    if weights is not None and len(weights) != len(adapters):
        raise ValueError(f"{len(weights)} weights for {len(adapters)} adapters")
    for w in weights or []:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ValueError(f"weights must be finite numbers, got {w!r}")
    if majority_sign_method not in ("total", "frequency"):
        raise ValueError(f"majority_sign_method must be 'total' or 'frequency', got {majority_sign_method!r}")
    if not isinstance(name, str) or name in configs or not _NAME.match(name):
        raise ValueError(f"adapter name {name!r} is taken or not letters, digits, '_', '-'")
    needs_density = method in RULES and RULES[method][1]
    if needs_density and (not isinstance(density, (int, float)) or isinstance(density, bool)
                          or not 0.0 < density <= 1.0):
        raise ValueError(f"method {method!r} needs density in (0, 1], got {density!r}")
    if rank is not None and (method == "cat" or isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank={rank!r}: cat keeps every factor; other methods need rank >= 1")
    for _, m in adapted_modules(model):
        merged = [a for a in getattr(m, "merged_adapters", []) if a in adapters]
        if merged:
            raise ValueError(f"{m.module_name}: unmerge adapters {merged} before combining them")
    return configs


def _mats(layer: LoraLayer, adapter: str):
    """``(B [out, r], A [r, in_flat])`` with ``s * B @ A`` the update as an out x in matrix."""
    a, b = layer.adapter_factors(adapter)
    return b.detach().float().reshape(b.shape[0], -1), a.detach().float().reshape(a.shape[0], -1)


def _dense(layer: LoraLayer, adapter: str) -> torch.Tensor:
    """The adapter's full update as an ``[out, in_flat]`` matrix (the orientation of ``_mats``)."""
    delta = layer.variants[adapter].delta_weight(layer, adapter).float()
    if isinstance(layer, LoraEmbedding) or getattr(layer, "fan_in_fan_out", False):
        delta = delta.T
    return delta.reshape(delta.shape[0], -1)


@torch.no_grad()
def _combine_layer(layer, present, method, rank, density, sign_method, generator):
    """``(B, A, relative error)`` of one layer's combined update."""
    plain = all(layer.variants[a].plain_lora for a, _ in present)
    if method == "cat":
        if not plain:
            raise ValueError(f"{layer.module_name}: cat stacks LoRA factors; DoRA adapters have "
                             "no such factors (use linear or svd)")
        bs, as_ = zip(*[_mats(layer, a) for a, _ in present])
        scaled = [w * layer.scaling[a] * m for (a, w), m in zip(present, as_)]
        b, a = torch.cat(bs, dim=1), torch.cat(scaled, dim=0)
        pad = rank - b.shape[1]
        return (torch.cat([b, b.new_zeros(b.shape[0], pad)], 1),
                torch.cat([a, a.new_zeros(pad, a.shape[1])], 0), 0.0)
    if method in ("linear", "svd") and plain:
        # sum_i w_i s_i B_i A_i = [B_1 .. B_n] @ [w_1 s_1 A_1; ..; w_n s_n A_n]: factored SVD.
        bs, as_ = zip(*[_mats(layer, a) for a, _ in present])
        scaled = [w * layer.scaling[a] * m for (a, w), m in zip(present, as_)]
        return factored_svd(torch.cat(bs, dim=1), torch.cat(scaled, dim=0), rank)
    rule = RULES[method][0]
    deltas = [_dense(layer, a) for a, _ in present]
    combined = rule(deltas, [w for _, w in present], density=density,
                    majority_sign_method=sign_method, generator=generator)
    return svd_factor(combined, rank)


def _write(layer: LoraLayer, name: str, b: torch.Tensor, a: torch.Tensor) -> None:
    fa, fb = layer.adapter_factors(name)
    fa.copy_(a.reshape(fa.shape).to(fa.dtype))
    fb.copy_(b.reshape(fb.shape).to(fb.dtype))
