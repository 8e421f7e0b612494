"""Module names that transformers 5 renamed, accepted in configs and adapter files.

transformers 5 renamed modules of several architectures (ViT: ``encoder.layer.N.attention.
attention.query`` -> ``layers.N.attention.q_proj``, ``intermediate.dense`` -> ``mlp.fc1``, ...)
and ships, per model, the renamings that load old checkpoints
(``transformers.conversion_mapping``). lorakit applies the same renamings to

- ``target_modules`` / ``modules_to_save`` entries that match no module of the model: a leaf
  name is mapped through the renamings' leaves (``query`` -> ``q_proj``; ``dense`` -> every
  module the three ``*.dense`` renamings produce, as ``dense`` matched all three before), a
  dotted name through the renamings themselves; regex targets are left alone;
- the tensor keys of an adapter file (``...attention.attention.query.lora_A.weight`` ->
  ``...attention.q_proj.lora_A.weight``),

and says so with a ``LegacyNameWarning``. Models without a conversion mapping (or without
transformers) are untouched.
"""

from __future__ import annotations

import dataclasses
import re
import warnings

from torch import nn

from lorakit.formats.peft import PREFIX as _PREFIX

__all__ = ["LegacyNameWarning", "translate_config", "translate_keys"]

_LITERAL = re.compile(r"^[A-Za-z0-9_]+(\\?\.[A-Za-z0-9_]+)*$")  # dotted names, dots maybe escaped


class LegacyNameWarning(UserWarning):
    """A transformers 4 module name was translated to its transformers 5 name."""


def _renamings(model: nn.Module) -> list:
    """The model's plain renamings (no tensor-splitting converters), in transformers' order."""
    if not hasattr(getattr(model, "config", None), "model_type"):
        return []
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming
    except ImportError:
        return []
    return [t for t in get_model_conversion_mapping(model) if type(t) is WeightRenaming]


def _rename(renamings: list, key: str) -> str:
    for t in renamings:
        key, _ = t.rename_source_key(key)
    return key


def _leaf_map(renamings: list) -> dict[str, list[str]]:
    """Old leaf name -> new leaf names, from renamings between literal dotted names."""
    out: dict[str, list[str]] = {}
    for t in renamings:
        for src in t.source_patterns:
            for tgt in t.target_patterns:
                if _LITERAL.match(src) and _LITERAL.match(tgt) and not src.endswith("."):
                    old = src.replace("\\.", ".").rsplit(".", 1)[-1]
                    new = tgt.replace("\\.", ".").rsplit(".", 1)[-1]
                    if old != new and new not in out.setdefault(old, []):
                        out[old].append(new)
    return out


def _matches_any(names: list[str], key: str) -> bool:
    return any(n == key or n.endswith("." + key) for n in names)


def _translate_names(model: nn.Module, entries, renamings: list, names: list[str]):
    """``entries`` with each unmatched, translatable name replaced; (new list, {old: new})."""
    leaves = _leaf_map(renamings)
    out, changed = [], {}
    for entry in entries:
        if _matches_any(names, entry):
            out.append(entry)
            continue
        if "." in entry:
            new = [_rename(renamings, entry)]
        else:
            new = leaves.get(entry, [entry])
        new = [n for n in new if _matches_any(names, n)]
        if not new:
            out.append(entry)  # left for the usual "matched no module" error
            continue
        changed[entry] = new
        out += [n for n in new if n not in out]
    return out, changed


def translate_config(model: nn.Module, config):
    """``config`` with transformers 4 names in ``target_modules`` / ``modules_to_save``
    replaced by the model's transformers 5 names (a new config; the same one if none)."""
    names = [n for n, _ in model.named_modules() if n]
    entries = [e for f in ("target_modules", "modules_to_save")
               if isinstance(getattr(config, f, None), (list, tuple)) for e in getattr(config, f)]
    if all(_matches_any(names, e) for e in entries):
        return config  # the usual case: no need to build transformers' table
    renamings = _renamings(model)
    if not renamings:
        return config
    updates, notes = {}, {}
    for field in ("target_modules", "modules_to_save"):
        value = getattr(config, field, None)
        if isinstance(value, (list, tuple)) and value:
            new, changed = _translate_names(model, list(value), renamings, names)
            if changed:
                updates[field], notes[field] = new, changed
    if not updates:
        return config
    what = "; ".join(f"{field} {old!r} -> {new}" for field, ch in notes.items()
                     for old, new in ch.items())
    warnings.warn(f"transformers 4 module names translated to this model's transformers 5 names "
                  f"({type(model).__name__}): {what}", LegacyNameWarning, stacklevel=3)
    return dataclasses.replace(config, **updates)


def translate_keys(model: nn.Module, tensors: dict, source: str = "adapter") -> dict:
    """Adapter tensors with PEFT keys written under transformers 4 module paths renamed to
    the model's transformers 5 paths (the same dict if nothing changes)."""
    names = {n for n, _ in model.named_modules() if n}

    def known(inner: str) -> bool:  # ``<module>.weight`` or ``<module>.lora_A.weight``
        parts = inner.split(".")
        return any(".".join(parts[:i]) in names for i in (len(parts) - 1, len(parts) - 2))

    inners = {key: key[len(_PREFIX):] if key.startswith(_PREFIX) else key for key in tensors}
    if all(known(inner) for inner in inners.values()):
        return tensors
    renamings = _renamings(model)
    if not renamings:
        return tensors
    out, renamed = {}, 0
    for key, value in tensors.items():
        inner = inners[key]
        new = inner if known(inner) else _rename(renamings, inner)
        new = (_PREFIX + new) if key.startswith(_PREFIX) else new
        renamed += new != key
        out[new] = value
    if not renamed:
        return tensors
    if len(out) != len(tensors):
        raise ValueError(f"{source}: renaming transformers 4 keys would merge tensors; "
                         "the file mixes old and new module names")
    warnings.warn(f"{source}: {renamed} tensor keys written under transformers 4 module names "
                  f"were renamed to {type(model).__name__}'s transformers 5 names",
                  LegacyNameWarning, stacklevel=3)
    return out
