"""LoRA+ (Hayou et al., 2024): B learns ``loraplus_lr_ratio`` times faster than A.

The parameter groups follow the paper's code and PEFT's ``create_loraplus_optimizer``:

    group          members                                                lr                    weight decay
    A              lora_A and every other trainable >= 2-D parameter      lr                    weight_decay
    embedding      all LoRA parameters of adapted embedding layers        loraplus_lr_embedding weight_decay
    B              lora_B, and 1-D parameters (DoRA magnitude, ...)       lr * ratio            weight_decay
    B, no decay    the same, for biases and normalisation weights         lr * ratio            0

Embedding adapters get their own small learning rate (1e-6 by default, as in the paper's code)
instead of the A/B split: their A starts at zero and B is random, the reverse of linear layers.
"""

from __future__ import annotations

import torch
from torch import nn

from lorakit.layers import LoraEmbedding


def _no_decay(module: nn.Module, param_name: str) -> bool:
    """Biases and normalisation weights. (PEFT, through transformers, exempts nn.LayerNorm only;
    RMSNorm weights are exempt here too.)"""
    return "bias" in param_name or "norm" in type(module).__name__.lower()


def loraplus_groups(model: nn.Module, lr: float, loraplus_lr_ratio: float = 16.0,
                    loraplus_lr_embedding: float = 1e-6, weight_decay: float = 0.0) -> list[dict]:
    """The four LoRA+ parameter groups (see the module docstring) over the trainable parameters."""
    if loraplus_lr_ratio < 1:
        raise ValueError(f"loraplus_lr_ratio must be >= 1 (B learns faster than A), got {loraplus_lr_ratio}")
    embedding = {id(p) for m in model.modules() if isinstance(m, LoraEmbedding)
                 for n, p in m.named_parameters() if not n.startswith("base_layer.")}
    groups = {"A": [], "embedding": [], "B": [], "B_no_decay": []}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full = f".{module_name}.{param_name}."
            if id(param) in embedding:
                groups["embedding"].append(param)
            elif ".lora_B." in full or param.ndim == 1:
                groups["B_no_decay" if _no_decay(module, param_name) else "B"].append(param)
            else:
                groups["A"].append(param)
    return [
        {"params": groups["A"], "lr": lr, "weight_decay": weight_decay},
        {"params": groups["embedding"], "lr": loraplus_lr_embedding, "weight_decay": weight_decay},
        {"params": groups["B"], "lr": lr * loraplus_lr_ratio, "weight_decay": weight_decay},
        {"params": groups["B_no_decay"], "lr": lr * loraplus_lr_ratio, "weight_decay": 0.0},
    ]


def loraplus_optimizer(model: nn.Module, lr: float, loraplus_lr_ratio: float = 16.0,
                       optimizer_cls: type[torch.optim.Optimizer] = torch.optim.AdamW,
                       loraplus_lr_embedding: float = 1e-6, weight_decay: float = 0.0,
                       **optimizer_kwargs) -> torch.optim.Optimizer:
    """An optimizer over ``model``'s trainable parameters with LoRA+ learning rates.

    ``optimizer_kwargs`` (betas, eps, ...) go to ``optimizer_cls``; empty groups are kept so the
    group order is always A, embedding, B, B-no-decay.
    """
    groups = loraplus_groups(model, lr, loraplus_lr_ratio, loraplus_lr_embedding, weight_decay)
    return optimizer_cls(groups, lr=lr, **optimizer_kwargs)
