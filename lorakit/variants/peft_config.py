"""``adapter_config.json`` read/write for the adapter types beside LoRA (VeRA, AdaLoRA): PEFT's
field names, unknown keys dropped (with a warning when they switch something on), and a list
of PEFT features each type refuses by name when a file turns them on."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

from lorakit.config import CONFIG_NAME

# Keys PEFT writes that carry no behaviour, or whose PEFT default is truthy although off.
_BOOKKEEPING = ("auto_mapping", "peft_version", "revision", "megatron_core", "qalora_group_size",
                "runtime_config", "loftq_config", "alpha_pattern")


def to_peft_dict(config) -> dict[str, Any]:
    d = dataclasses.asdict(config)
    d["inference_mode"] = True
    return d


def from_peft_dict(cls, d: dict[str, Any], source: str, refused: tuple[str, ...] = ()):
    """``cls(**known keys of d)``; a truthy key in ``refused`` is an error naming it."""
    peft_type = cls.__dataclass_fields__["peft_type"].default
    if d.get("peft_type") != peft_type:
        raise ValueError(f"{source}: peft_type {d.get('peft_type')!r} is not {peft_type!r}")
    for key in refused:
        if d.get(key):
            raise ValueError(f"{source}: {peft_type} with {key}={d[key]!r} is not supported")
    known = {f.name for f in dataclasses.fields(cls)}
    ignored = sorted(k for k in d if k not in known and k not in _BOOKKEEPING and k not in refused and d[k])
    if ignored:
        warnings.warn(f"{source}: ignoring unknown keys {ignored}", stacklevel=3)
    return cls(**{k: v for k, v in d.items() if k in known})


def save(config, directory: str | Path) -> None:
    path = Path(directory) / CONFIG_NAME
    path.write_text(json.dumps(to_peft_dict(config), indent=2, sort_keys=True))


def check(ok: bool, cls_name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{cls_name}: {message}")
