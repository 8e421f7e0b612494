"""Initialisation of adapter weights, by registration.

An init function takes ``(layer, adapter_name, config)`` after the layer has created the
adapter's ``A``/``B`` parameters, and writes them in place. Variants (PiSSA, OLoRA, LoftQ, ...)
register their own; ``init_lora_weights`` names which one runs.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

InitFn = Callable[[nn.Module, str, object], None]
_INITS: dict[object, InitFn] = {}
# prefix -> init, for parameterised names such as "pissa_niter_4"
_PREFIX_INITS: dict[str, InitFn] = {}


def register_init(name, fn: InitFn, prefix: bool = False) -> None:
    (_PREFIX_INITS if prefix else _INITS)[name] = fn


def is_known_init(name) -> bool:
    return lookup_init(name) is not None


def lookup_init(name) -> InitFn | None:
    if isinstance(name, bool) or name in _INITS:
        return _INITS.get(name)
    if isinstance(name, str):
        for prefix, fn in _PREFIX_INITS.items():
            if name.startswith(prefix):
                return fn
    return None


def _kaiming_zero(layer, name, config) -> None:
    """PEFT's default: A ~ kaiming_uniform(a=sqrt(5)), B = 0, so the adapter starts as a no-op."""
    a, b = layer.adapter_factors(name)
    with torch.no_grad():
        if layer.zero_init_A:  # embeddings: A zero, B normal (PEFT's convention)
            nn.init.zeros_(a)
            nn.init.normal_(b)
        else:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            nn.init.zeros_(b)


def _gaussian(layer, name, config) -> None:
    a, b = layer.adapter_factors(name)
    with torch.no_grad():
        if layer.zero_init_A:
            nn.init.zeros_(a)
            nn.init.normal_(b)
        else:
            nn.init.normal_(a, std=1.0 / layer.r[name])
            nn.init.zeros_(b)


def _nonzero(layer, name, config) -> None:
    """``init_lora_weights=False``: both factors random, so the adapter changes the output (tests)."""
    a, b = layer.adapter_factors(name)
    with torch.no_grad():
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        nn.init.kaiming_uniform_(b, a=math.sqrt(5))


register_init(True, _kaiming_zero)
register_init("gaussian", _gaussian)
register_init(False, _nonzero)
