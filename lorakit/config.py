"""LoraConfig: PEFT's field names and semantics, typed and validated once at construction.

``to_peft_dict`` / ``from_peft_dict`` read and write ``adapter_config.json`` through
``lorakit.formats.peft`` (the one reader: unknown keys dropped, with a warning when set, since
newer PEFT versions add keys), refusing by name known PEFT features that lorakit does not
implement when a file switches them on.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from lorakit.adapter_types import config_class_for
from lorakit.formats.peft import config_fields, read_config_json, write_config

BIAS_MODES = ("none", "all", "lora_only")

# init_lora_weights values handled by the core; variants register more (see lorakit.inits).
_CORE_INITS = (True, False, "gaussian")

# PEFT keys that lorakit understands but does not implement: a file that switches one on is
# refused by name instead of being loaded into a model that would compute something else.
_UNSUPPORTED_WHEN_SET = (
    "layer_replication",
    "megatron_config",
    "use_qalora",
    "trainable_token_indices",
    "target_parameters",
    "alora_invocation_tokens",
    "lora_ga_config",
    "corda_config",
    "eva_config",
    "use_bdlora",
    "arrow_config",
)

StrList = Union[list[str], str, None]


@dataclass
class LoraFields:
    """The fields plain LoRA and AdaLoRA share, with PEFT ``LoraConfig`` semantics (PEFT's
    ``AdaLoraConfig`` is a ``LoraConfig``): declared once here, validated by each config class.
    """

    r: int = 8
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    target_modules: StrList = None
    exclude_modules: StrList = None
    layers_to_transform: Union[list[int], int, None] = None
    layers_pattern: StrList = None
    bias: str = "none"


@dataclass
class LoraConfig(LoraFields):
    """Configuration of one LoRA adapter (PEFT ``LoraConfig`` semantics).

    ``target_modules``: a list matches a module whose full name equals an entry or ends with
    ``"." + entry``; a string is a regex that must ``re.fullmatch`` the full module name;
    ``"all-linear"`` takes every linear layer except the output head; ``None`` uses the
    per-architecture default (q/v projections for Llama-style models).
    Scaling is ``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with ``use_rslora``).
    ``lora_fa`` (LoRA-FA, not a PEFT key) keeps A frozen (B for embeddings) while training.
    """

    lora_bias: bool = False
    modules_to_save: Union[list[str], None] = None
    fan_in_fan_out: bool = False
    init_lora_weights: Union[bool, str] = True
    use_rslora: bool = False
    use_dora: bool = False
    lora_fa: bool = False  # LoRA-FA: the randomly initialised factor stays frozen (lorakit's key)
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)
    task_type: Union[str, None] = None
    base_model_name_or_path: Union[str, None] = None
    inference_mode: bool = False
    peft_type: str = "LORA"

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, (set, tuple)):
            self.target_modules = sorted(self.target_modules)
        if isinstance(self.exclude_modules, (set, tuple)):
            self.exclude_modules = sorted(self.exclude_modules)
        if isinstance(self.modules_to_save, (set, tuple)):
            self.modules_to_save = list(self.modules_to_save)
        if _is_int(self.layers_to_transform):
            self.layers_to_transform = [self.layers_to_transform]
        _validate(self)

    def rank_for(self, module_name: str) -> int:
        return int(_pattern_value(self.rank_pattern, module_name, self.r))

    def alpha_for(self, module_name: str) -> float:
        return float(_pattern_value(self.alpha_pattern, module_name, self.lora_alpha))

    def scaling_for(self, module_name: str) -> float:
        r, alpha = self.rank_for(module_name), self.alpha_for(module_name)
        return alpha / (r ** 0.5) if self.use_rslora else alpha / r

    # ---- adapter_config.json -------------------------------------------------------------
    def to_peft_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["inference_mode"] = True
        if not d["lora_fa"]:  # a training-only switch PEFT does not know: written only when set
            del d["lora_fa"]
        return d

    @classmethod
    def from_peft_dict(cls, d: dict[str, Any], source: str = "adapter config") -> "LoraConfig":
        kwargs = config_fields(d, {f.name for f in dataclasses.fields(cls)}, "LORA", source,
                               refused=_UNSUPPORTED_WHEN_SET)
        kwargs["rank_pattern"] = kwargs.get("rank_pattern") or {}
        kwargs["alpha_pattern"] = kwargs.get("alpha_pattern") or {}
        try:
            return cls(**kwargs)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None

    def save(self, directory: str | Path) -> None:
        write_config(directory, self.to_peft_dict())

    @classmethod
    def load(cls, directory: str | Path) -> "LoraConfig":
        data, path = read_config_json(directory)
        return cls.from_peft_dict(data, source=str(path))


def load_config(directory: str | Path):
    """The config in ``directory/adapter_config.json``, as the class its ``peft_type`` names."""
    data, path = read_config_json(directory)
    config_class = config_class_for(data.get("peft_type", "LORA"), source=str(path))
    return config_class.from_peft_dict(data, source=str(path))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_names(v, allow_str: bool = True) -> bool:
    if isinstance(v, str):
        return allow_str and bool(v)
    return isinstance(v, list) and all(isinstance(x, str) and x for x in v)


def check_field_types(config) -> None:
    """Every dataclass field of ``config`` fits its annotation, else a ValueError naming the
    class and field (``int`` excludes ``bool``; ``float`` takes any finite real number). A
    tuple or set given for a list field is turned into a list first. For the adapter types
    beside LoRA, which add their range checks after it."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value, hint = getattr(config, f.name), hints[f.name]
        if isinstance(value, (tuple, set, frozenset)):
            value = sorted(value) if isinstance(value, (set, frozenset)) else list(value)
            setattr(config, f.name, value)
        if not _fits(value, hint):
            raise ValueError(f"{type(config).__name__}: {f.name} must be {_describe(hint)}, got {value!r}")


def _fits(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        return any(_fits(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if hint is float:
        return _is_real(value)
    if hint is int:
        return _is_int(value)
    if hint is type(None):
        return value is None
    return isinstance(value, origin or hint)


def _describe(hint) -> str:
    if typing.get_origin(hint) is Union:
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))


def _validate(c: "LoraConfig") -> None:
    """Every field's type and range; the first violation raises a ValueError naming the field."""
    from lorakit.inits import is_known_init

    _check(_is_int(c.r) and c.r > 0, f"r must be a positive integer, got {c.r!r}")
    _check(_is_real(c.lora_alpha) and c.lora_alpha > 0,
           f"lora_alpha must be a positive number, got {c.lora_alpha!r}")
    _check(_is_real(c.lora_dropout) and 0.0 <= c.lora_dropout < 1.0,
           f"lora_dropout must be a number in [0, 1), got {c.lora_dropout!r}")
    for key in ("target_modules", "exclude_modules"):
        value = getattr(c, key)
        _check(value is None or _is_names(value),
               f"{key} must be a list of module names, a regex string or None, got {value!r}")
        if isinstance(value, str) and value != "all-linear":
            _check_regex(key, value)
    _check(c.layers_to_transform is None or (isinstance(c.layers_to_transform, list) and all(
        _is_int(i) and i >= 0 for i in c.layers_to_transform) and c.layers_to_transform),
        f"layers_to_transform must be a layer index or a non-empty list of indices >= 0, "
        f"got {c.layers_to_transform!r}")
    _check(c.layers_pattern is None or _is_names(c.layers_pattern),
           f"layers_pattern must be a name, a list of names or None, got {c.layers_pattern!r}")
    _check(c.modules_to_save is None or _is_names(c.modules_to_save, allow_str=False),
           f"modules_to_save must be a list of module names or None, got {c.modules_to_save!r}")
    _check(c.bias in BIAS_MODES, f"bias must be one of {BIAS_MODES}, got {c.bias!r}")
    for key in ("lora_bias", "fan_in_fan_out", "use_rslora", "use_dora", "lora_fa", "inference_mode"):
        _check(isinstance(getattr(c, key), bool), f"{key} must be true or false, got {getattr(c, key)!r}")
    _check(isinstance(c.init_lora_weights, (bool, str)) and is_known_init(c.init_lora_weights),
           f"unknown init_lora_weights {c.init_lora_weights!r}")
    for key in ("task_type", "base_model_name_or_path"):
        _check(getattr(c, key) is None or isinstance(getattr(c, key), str),
               f"{key} must be a string or None, got {getattr(c, key)!r}")
    _check(c.peft_type == "LORA", f"peft_type must be 'LORA', got {c.peft_type!r}")
    for key, ok_value, what in (("rank_pattern", lambda v: _is_int(v) and v > 0, "a positive integer"),
                                ("alpha_pattern", lambda v: _is_real(v) and v > 0, "a positive number")):
        pattern = getattr(c, key)
        _check(isinstance(pattern, dict), f"{key} must be a mapping of regex -> value, got {pattern!r}")
        for k, value in pattern.items():
            _check(isinstance(k, str), f"{key} key {k!r} must be a string (a regex)")
            _check_regex(f"{key} key", k)
            _check(ok_value(value), f"{key}[{k!r}] must be {what}, got {value!r}")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(f"LoraConfig: {message}")


def _check_regex(what: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(f"LoraConfig: {what} {pattern!r} is not a valid regex ({err})") from None


def _pattern_value(pattern: dict, module_name: str, default):
    """PEFT's rule: the first key with ``re.match(rf"(.*\\.)?({key})$", module_name)`` wins."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", module_name):
            return value
    return default
