"""The adapter types lorakit ships, in the one place that lists them. ``lorakit.adapter_types``
registers them before its first lookup or registration (so a later ``register_adapter_type``
of the same name replaces the built-in)."""

from __future__ import annotations

from lorakit.variants import PLAIN
from lorakit.variants.adalora import ADALORA
from lorakit.variants.dora import DORA
from lorakit.variants.vera import VERA

BUILTINS = (PLAIN, DORA, VERA, ADALORA)
