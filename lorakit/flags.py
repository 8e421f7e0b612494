"""Command-line flags generated from a typed dataclass: one ``--field-name`` per field, with the
field's type, default, choices and help, so a flag cannot drift from the setting it sets.

``lorakit train`` (``TrainConfig`` + its ``lora:`` section), ``lorakit serve`` (``ServeConfig``)
and ``lorakit eval`` (``EvalConfig``) build their options with ``add_flags``.

From the annotation: ``bool`` -> ``--x/--no-x``; ``Literal[...]`` -> choices; ``int``, ``float``,
``str`` -> that type; ``dict[str, str]`` / ``dict[str, float]`` -> ``K=V,...`` or a YAML mapping;
anything else (lists, unions) -> a YAML value (``--target-modules "[q_proj, v_proj]"``).

Field metadata that refines it (all optional but ``help``):

    help      the help text
    choices   allowed values (instead of the ``Literal``'s)
    aliases   {other spelling: canonical value}: accepted on the command line, stored canonical
    type      the argparse type (a checking callable such as ``argtypes.positive_int``)
    action    an argparse action instead of a typed value (``"append"``: a repeatable flag)
    metavar   the value's name in ``--help``
    required  the flag must be given
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import yaml

__all__ = ["FieldSpec", "add_flags", "as_flags", "canonical", "field_specs", "mapping_value",
           "setting", "yaml_value"]


def setting(default, help: str, **metadata):
    """A dataclass field with its help text (and the metadata above); list and dict defaults
    become factories, so every instance gets its own copy."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


@dataclass(frozen=True)
class FieldSpec:
    """One dataclass field as the command line, a YAML file and a form see it."""

    name: str
    hint: Any           # the resolved annotation
    default: Any
    help: str
    metadata: dict

    @property
    def choices(self) -> tuple | None:
        if "choices" in self.metadata:
            return tuple(self.metadata["choices"])
        if typing.get_origin(self.hint) is Literal:
            return typing.get_args(self.hint)
        return None


def field_specs(cls, defaults: object | None = None, helps: dict[str, str] | None = None,
                skip: tuple[str, ...] = ()) -> list[FieldSpec]:
    """``cls``'s fields in order, minus ``skip``. Defaults are read from ``defaults`` (an
    instance) when given, else from the fields; help from ``helps``, else the field's
    ``metadata["help"]``, else ``"<Class>.<field>"``."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if defaults is not None:
            default = getattr(defaults, f.name)
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None if f.default is dataclasses.MISSING else f.default
        text = (helps or {}).get(f.name) or f.metadata.get("help") or f"{cls.__name__}.{f.name}"
        out.append(FieldSpec(f.name, hints[f.name], default, text, dict(f.metadata)))
    return out


def canonical(spec: FieldSpec, value):
    """``value`` with an alias of ``spec`` replaced by the canonical spelling."""
    aliases = spec.metadata.get("aliases") or {}
    return aliases.get(value, value) if isinstance(value, str) else value


def yaml_value(text: str):
    """A flag's text read as YAML (``"[a, b]"`` -> a list)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"not valid YAML: {err}") from None


def mapping_value(text: str):
    """``a=b,c=d`` or a YAML mapping."""
    if "=" in text and not text.lstrip().startswith("{"):
        pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
        if all(len(p) == 2 for p in pairs):
            return {k.strip(): v.strip() for k, v in pairs}
    return yaml_value(text)


def _aliased(spec: FieldSpec, convert: Callable) -> Callable:
    def parse(text: str):
        return canonical(spec, convert(text))
    parse.__name__ = getattr(convert, "__name__", "value")  # argparse names it in errors
    return parse


def _plain(hint):
    """``X | None`` -> ``X`` for a plain ``X`` (an unset optional value is the default None)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 2 \
            and type(None) in args:
        other = next(a for a in args if a is not type(None))
        if other in (int, float, str):
            return other
    return hint


def _argument(spec: FieldSpec) -> dict:
    """argparse keywords for ``spec`` (without dest, default and help)."""
    meta, hint = spec.metadata, _plain(spec.hint)
    if "action" in meta:
        return {"action": meta["action"], "metavar": meta.get("metavar", spec.name.upper())}
    kw: dict[str, Any] = {}
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if spec.choices is not None:
        kw["choices"] = spec.choices
        convert = meta.get("type", hint if hint in (int, float) else str)
    elif "type" in meta or hint in (int, float, str):
        convert = meta.get("type", hint)
        kw["metavar"] = meta.get("metavar", spec.name.upper())
    elif hint in (dict[str, str], dict[str, float]):
        convert, kw["metavar"] = mapping_value, meta.get("metavar", "K=V,...")
    else:
        convert, kw["metavar"] = yaml_value, meta.get("metavar", "YAML")
    kw["type"] = _aliased(spec, convert) if meta.get("aliases") else convert
    if meta.get("required"):
        kw["required"] = True
    return kw


def add_flags(parser, specs: list[FieldSpec], dest: Callable[[str], str] = lambda name: name,
              given_only: bool = False) -> None:
    """One ``--field-name`` flag per spec on ``parser`` (a parser or an argument group).

    ``dest(name)`` is where the value lands in the namespace. With ``given_only`` a flag that
    is not given leaves nothing in the namespace (so it can be layered over a YAML file); the
    help then states the field's default itself."""
    for spec in specs:
        kw = _argument(spec)
        text = spec.help
        if given_only:
            kw["default"] = argparse.SUPPRESS
            text = f"{text} (default: {spec.default!r})"
        else:
            kw["default"] = spec.default
            if spec.default not in ("", None, []) and "default" not in text.lower() \
                    and kw.get("action") is not argparse.BooleanOptionalAction:
                text = f"{text} (default: {spec.default})"
        parser.add_argument("--" + spec.name.replace("_", "-"), dest=dest(spec.name), help=text, **kw)


def as_flags(values: dict) -> list[str]:
    """Command-line flags that reproduce ``values`` (``{field name: value}``)."""
    out: list[str] = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (int, float, str)):
            out += [flag, str(value)]
        else:
            out += [flag, yaml.safe_dump(value, default_flow_style=True).strip()]
    return out
