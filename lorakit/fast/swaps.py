"""Swaps in the fast implementations of Hugging Face model parts, each undone by the returned
function: attention (``attention.py``) through Hugging Face's attention-interface registry.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from lorakit.fast import attention


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
