"""``adapter_config.json`` for the adapter types beside LoRA (VeRA, AdaLoRA): PEFT's field
names, read and written by the same rule as LoRA's (``lorakit.formats.peft.config_fields``:
unknown keys dropped, with a warning when set), and a list of PEFT features each type refuses
by name when a file turns them on."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from lorakit.formats.peft import config_fields, write_config


def to_peft_dict(config) -> dict[str, Any]:
    d = dataclasses.asdict(config)
    d["inference_mode"] = True
    return d


def from_peft_dict(cls, d: dict[str, Any], source: str, refused: tuple[str, ...] = ()):
    """``cls(**known keys of d)``; a truthy key in ``refused`` is an error naming it."""
    peft_type = cls.__dataclass_fields__["peft_type"].default
    return cls(**config_fields(d, {f.name for f in dataclasses.fields(cls)}, peft_type, source, refused))


def save(config, directory: str | Path) -> None:
    write_config(directory, to_peft_dict(config))


def check(ok: bool, cls_name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{cls_name}: {message}")
