"""A lorakit adapter as llama.cpp LoRA tensors, with every layer's true scaling folded into B.

llama.cpp applies a pair as ``y += (scale * alpha / rank) * B @ (A @ x)`` with one ``alpha``
per file and ``rank`` read from B. lorakit's layer ``l`` adds ``s_l * B_l @ A_l @ x`` with
``s_l`` = ``alpha_l / r_l`` (``alpha_l / sqrt(r_l)`` with rsLoRA; ``rank_pattern`` /
``alpha_pattern`` vary both). Writing ``B'_l = B_l * s_l * r_l / alpha`` makes llama.cpp's
product exactly lorakit's for every layer (for a plain LoRA adapter the factor is 1 and B is
written unchanged, as llama.cpp's own converter would).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lorakit.formats.gguf import GGUFTensor, gguf_name, permute_qk
from lorakit.inject import adapted_modules, adapter_configs
from lorakit.layers import LoraEmbedding, LoraLayer, ModulesToSave
from lorakit.layers.linear import LoraLinear
from lorakit.variants import PLAIN

__all__ = ["LoraExport", "fold_factor", "lora_tensors", "refusals"]


@dataclass
class LoraExport:
    """What :func:`lora_tensors` produced: the tensors, the file's alpha, and per layer the
    factor folded into B (``{gguf name: factor}``, only where it is not 1)."""

    tensors: list[GGUFTensor]
    alpha: float
    folded: dict[str, float] = field(default_factory=dict)


def fold_factor(scaling: float, rank: int, alpha: float) -> float:
    """Factor for B so that llama.cpp's ``alpha / rank`` scaling equals ``scaling``."""
    return scaling * rank / alpha


def refusals(model: nn.Module, name: str = "default") -> list[str]:
    """Why adapter ``name`` cannot be a llama.cpp LoRA file, one line per reason (empty: it can).

    llama.cpp's adapter holds plain ``A``/``B`` pairs on linear weights only: no DoRA
    magnitudes, no trained embeddings or ``modules_to_save`` copies, no trained biases, and no
    pair on ``lm_head`` when the base ties it to the embedding (the GGUF has no separate output
    matrix for the pair to attach to). Each of these merges fine: ``--to gguf``.
    """
    config = adapter_configs(model)[name]
    out = []
    if getattr(config, "peft_type", "LORA") != "LORA":
        out.append(f"peft_type {config.peft_type} (not a plain LoRA adapter)")
    if config.modules_to_save:
        out.append(f"modules_to_save {config.modules_to_save} (full trained copies of modules)")
    if config.bias != "none" or getattr(config, "lora_bias", False):
        out.append(f"trained biases (bias={config.bias!r}, lora_bias={config.lora_bias})")
    tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
    for module_name, module in adapted_modules(model):
        if isinstance(module, ModulesToSave) or name not in getattr(module, "r", {}):
            continue
        variant = module.variants[name]
        if variant is not PLAIN:
            out.append(f"{module_name}: {variant.name} adapter (e.g. DoRA magnitudes)")
        elif isinstance(module, LoraEmbedding):
            out.append(f"{module_name}: LoRA on an embedding (trained embeddings)")
        elif not isinstance(module, LoraLinear) or module.fan_in_fan_out:
            out.append(f"{module_name}: {type(module).__name__} is not a plain linear layer")
        elif tied and module_name.split(".")[-1] == "lm_head":
            out.append(f"{module_name}: lm_head adapter on a base with tied embeddings")
    return out


def lora_tensors(model: nn.Module, arch: str, outtype_type: str, name: str = "default") -> LoraExport:
    """llama.cpp LoRA tensors of adapter ``name`` on a Llama ``model`` (fp32 data, PyTorch
    layout: ``lora_a [r, in]``, ``lora_b [out, r]``), q/k rows of B permuted for llama.cpp,
    every layer's scaling folded into B. Raises ``ValueError`` listing :func:`refusals`."""
    reasons = refusals(model, name)
    if reasons:
        raise ValueError("llama.cpp's LoRA format cannot hold this adapter: " + "; ".join(reasons)
                         + ". A merged export (--to gguf / --to hf) can.")
    config = adapter_configs(model)[name]
    hf = model.config
    alpha = float(config.lora_alpha)
    if alpha <= 0:
        raise ValueError(f"lora_alpha={alpha}: llama.cpp reads alpha <= 0 as 'no scaling'")
    heads = {"q_proj": hf.num_attention_heads, "k_proj": hf.num_key_value_heads}
    out = LoraExport(tensors=[], alpha=alpha)
    for module_name, module in adapted_modules(model):
        if not isinstance(module, LoraLayer) or name not in module.r:
            continue
        target = gguf_name(module_name, arch, hf.num_hidden_layers)
        a = module.lora_A[name].weight.detach().float()
        b = module.lora_B[name].weight.detach().float()
        factor = fold_factor(module.scaling[name], module.r[name], alpha)
        if abs(factor - 1.0) > 1e-12:
            b = b * factor
            out.folded[target] = factor
        leaf = module_name.split(".")[-1]
        if leaf in heads:
            b = permute_qk(b, heads[leaf])
        out.tensors.append(GGUFTensor(f"{target}.weight.lora_a", a.numpy(), outtype_type))
        out.tensors.append(GGUFTensor(f"{target}.weight.lora_b", b.numpy(), outtype_type))
    if not out.tensors:
        raise ValueError(f"adapter {name!r} has no LoRA pairs on linear layers")
    return out
