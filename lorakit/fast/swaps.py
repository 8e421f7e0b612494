"""Swaps in the fast implementations of Hugging Face model parts, each undone by the returned
function: attention (``attention.py``) through Hugging Face's attention-interface registry, and
RMSNorm modules (``norm.py``) by an instance-level ``forward``.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from lorakit.fast import attention
from lorakit.fast.norm import rms_norm

# RMSNorm classes computing exactly ``weight * (x.float() * rsqrt(mean(x.float()**2) + eps)).to(x.dtype)``
# (Gemma's ``1 + weight`` variant is not among them).
PLAIN_RMSNORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")


def use_short_attention(model: nn.Module) -> Callable[[], None]:
    """Route ``model``'s SDPA attention through ``attention.attention_forward`` (which itself
    falls back to SDPA outside its scope). Models on another attention implementation (eager,
    flex, flash) are left alone. Returns the function that restores the previous setting."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    if previous != "sdpa" or not hasattr(model, "set_attn_implementation"):
        return lambda: None
    AttentionInterface.register(attention.NAME, attention.attention_forward)
    AttentionMaskInterface.register(attention.NAME, sdpa_mask)  # same boolean masks as SDPA
    model.set_attn_implementation(attention.NAME)
    return lambda: model.set_attn_implementation(previous)


def use_fused_rmsnorm(model: nn.Module) -> Callable[[], None]:
    """Give every module of a ``PLAIN_RMSNORMS`` class the fused ``rms_norm`` forward."""
    swapped = [m for m in model.modules() if type(m).__name__ in PLAIN_RMSNORMS]
    for m in swapped:
        m.forward = _rms_forward(m)

    def restore():
        for m in swapped:
            del m.forward  # back to the class's forward
    return restore


def _rms_forward(module: nn.Module):
    def forward(x):
        return rms_norm(x, module.weight, module.variance_epsilon)
    return forward
