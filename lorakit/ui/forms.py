"""The New-run form, generated from ``TrainConfig`` (the same fields, types, defaults and help
texts as ``lorakit train``'s flags and YAML keys), and the way back: form values -> a validated
``TrainConfig`` -> the YAML the run is started from.
"""

from __future__ import annotations

import typing
from typing import Literal

import yaml

from lorakit.train import config_io
from lorakit.train.config import TrainConfig
from lorakit.ui.runs import RunError

# Settings the dashboard sets itself: where the run goes, and no progress bar in the log file
# (metrics.jsonl carries every number the bar shows).
FIXED = {"output_dir", "overwrite"}
UI_DEFAULTS = {"progress": False}

__all__ = ["FIXED", "UI_DEFAULTS", "config_from_form", "form_fields"]


def _kind(hint) -> tuple[str, list | None]:
    if hint is bool:
        return "bool", None
    if typing.get_origin(hint) is Literal:
        return "choice", list(typing.get_args(hint))
    if hint in (int, float, str):
        return hint.__name__, None
    return "yaml", None  # lists, mappings, unions: typed as YAML, like the command-line flags


def form_fields() -> list[dict]:
    """One entry per setting: ``{section, name, kind, choices, default, help}``; ``section`` is
    None for top-level keys and ``"lora"`` for keys under ``lora:``; ``kind`` is bool, int,
    float, str, choice or yaml (a YAML-typed value, shown as text)."""
    out = []
    for section, spec in config_io.flag_fields():
        name, default = spec.name, spec.default
        if section is None and name in FIXED:
            continue
        kind, choices = _kind(spec.hint)
        if section is None and name in UI_DEFAULTS:
            default = UI_DEFAULTS[name]
        if kind == "yaml":
            default = yaml.safe_dump(default, default_flow_style=True).removesuffix("...\n").strip()
        out.append({"section": section, "name": name, "kind": kind, "choices": choices,
                    "default": default, "help": spec.help})
    return out


def _value(field: dict, raw):
    if field["kind"] == "yaml" and isinstance(raw, str):
        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise RunError(422, f"{field['name']}: not valid YAML ({err})") from None
    return raw


def config_from_form(values: dict, output_dir: str) -> TrainConfig:
    """A ``TrainConfig`` from the form's ``{name: value}`` (LoRA keys flat, as in the flags;
    yaml fields as text). Unknown names and invalid values raise ``RunError(422)`` naming the
    field."""
    if not isinstance(values, dict):
        raise RunError(422, "values must be a mapping of setting -> value")
    fields = {f["name"]: f for f in form_fields()}
    known_top = {f["name"] for f in fields.values() if f["section"] is None}
    top: dict = dict(UI_DEFAULTS)
    lora: dict = {}
    for name, raw in values.items():
        if name not in fields:
            raise RunError(422, f"unknown setting {name!r}; known: {', '.join(fields)}")
        (top if name in known_top else lora)[name] = _value(fields[name], raw)
    top.update(output_dir=output_dir, lora=lora)
    try:
        return config_io.from_dict(top, "form")
    except ValueError as err:
        raise RunError(422, str(err)) from None
