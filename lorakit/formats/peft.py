"""PEFT's adapter directory: file names, tensor keys, ``adapter_config.json``, both directions.

A directory holds ``adapter_config.json`` (``json.dumps(config, indent=2, sort_keys=True)``)
and ``adapter_model.safetensors`` (metadata ``{"format": "pt"}``); a pickle
``adapter_model.bin`` is refused. Tensor keys are

    base_model.model.<module path>.<kind>[.<param>]

with the adapter name removed: ``kind`` is the per-adapter container (``lora_A``, ``lora_B``,
``lora_embedding_A``, ``lora_magnitude_vector``, AdaLoRA's ``lora_E``, VeRA's
``vera_lambda_b``...) and ``param`` what follows it (``weight``, ``bias``, or nothing for a
bare parameter). Keys without a kind are whole-module tensors: biases (``bias="all"``),
``modules_to_save`` copies, an embedding's base weight. This module is the only place that
knows these names; ``lorakit.io`` maps a model's modules to and from them.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from lorakit.formats.files import atomic_dir, atomic_file, check_tensors, read_tensors, write_tensors

__all__ = ["CONFIG_NAME", "PREFIX", "WEIGHTS_NAME", "PeftKey", "Factors", "config_fields",
           "group_factors", "pair_tensors", "parse_key", "rank_dim", "read_config_json", "read_weights", "tensor_key",
           "weights_path", "write_adapter", "write_config"]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"
PREFIX = "base_model.model."
METADATA = {"format": "pt"}

# Per-adapter containers PEFT saves, -> the dimension that holds the rank (None: no rank).
KINDS: dict[str, int | None] = {
    "lora_A": 0, "lora_B": 1, "lora_E": 0, "lora_embedding_A": 0, "lora_embedding_B": 1,
    "lora_magnitude_vector": None, "vera_lambda_b": None, "vera_lambda_d": None,
}
# (kind, param) of a low-rank pair -> ("A" | "B", stored as an embedding's bare parameters)
_PAIRS = {("lora_A", "weight"): ("A", False), ("lora_B", "weight"): ("B", False),
          ("lora_embedding_A", ""): ("A", True), ("lora_embedding_B", ""): ("B", True)}

# adapter_config.json keys PEFT writes that change nothing a reader here computes, whatever
# their value: bookkeeping, and settings that matter only together with a switch the reader
# refuses. (``alpha_pattern``: PEFT's AdaLoRA inherits the field and ignores it; for LoRA it
# is a field, read as such.)
BOOKKEEPING = ("auto_mapping", "peft_version", "revision", "megatron_core", "qalora_group_size",
               "loftq_config", "runtime_config", "ensure_weight_tying", "alpha_pattern")


# ---- tensor keys -------------------------------------------------------------------------------
@dataclass(frozen=True)
class PeftKey:
    """A stored tensor key, parsed: ``tensor_key(module, suffix)`` gives it back."""

    module: str   # module path in the model, e.g. model.layers.0.self_attn.q_proj
    kind: str     # a KINDS entry, or "" for a whole-module tensor (bias, modules_to_save copy)
    param: str    # "weight", "bias", "" (a bare parameter); for kind "": the parameter's name

    @property
    def suffix(self) -> str:
        return ".".join(p for p in (self.kind, self.param) if p)


def tensor_key(*path: str) -> str:
    """The stored key of a module path and what follows it, joined by dots:
    ``tensor_key("model.layers.0.self_attn.q_proj", "lora_A.weight")``, or of a model
    parameter saved whole: ``tensor_key("model.norm.bias")``."""
    return PREFIX + ".".join(path)


def parse_key(key: str, prefix: str = PREFIX) -> PeftKey | None:
    """The module, kind and param of a stored key; None for a key outside ``prefix``
    (VeRA's shared ``base_model.vera_A`` / ``vera_B``). The kind is the last part of the key
    that names a PEFT container, so a module path never swallows it. ``prefix=""`` parses
    keys that carry PEFT's suffixes under another root (diffusers' ``unet.<module>...``)."""
    if not key.startswith(prefix):
        return None
    parts = key[len(prefix):].split(".")
    for i in range(len(parts) - 1, 0, -1):
        if parts[i] in KINDS:
            return PeftKey(".".join(parts[:i]), parts[i], ".".join(parts[i + 1:]))
    return PeftKey(".".join(parts[:-1]), "", parts[-1])


def rank_dim(key: str) -> int | None:
    """The dimension of a stored factor that holds the rank (A: rows, B: columns), None for
    tensors without one (biases, magnitudes, whole-module copies)."""
    parsed = parse_key(key)
    if parsed is None or parsed.param not in ("weight", ""):
        return None
    return KINDS.get(parsed.kind)


@dataclass
class Factors:
    """One module's stored low-rank pair: ``A [r, in]`` (conv ``[r, in, *kernel]``; embedding
    ``[r, num_embeddings]``) and ``B [out, r]`` (conv ``[out, r, 1, ...]``; embedding
    ``[dim, r]``), with DoRA's ``magnitude [out]`` when the file holds one."""

    module: str
    a: torch.Tensor
    b: torch.Tensor
    embedding: bool
    magnitude: torch.Tensor | None = None


def pair_tensors(key: str, a: torch.Tensor, b: torch.Tensor,
                 magnitude: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The stored tensors of one module's linear or conv LoRA pair (and DoRA magnitude) under
    ``key`` (``tensor_key(module)``, or another root's module key): the inverse of
    ``group_factors``."""
    out = {f"{key}.lora_A.weight": a, f"{key}.lora_B.weight": b}
    if magnitude is not None:
        out[f"{key}.lora_magnitude_vector"] = magnitude
    return out


def group_factors(tensors: dict[str, torch.Tensor], source, prefix: str = PREFIX) -> dict[str, Factors]:
    """Per module, in file order, its LoRA pair (``lora_A.weight`` / ``lora_B.weight`` or
    ``lora_embedding_A`` / ``lora_embedding_B``) and DoRA magnitude, keyed by the module
    path after ``prefix`` (see ``parse_key``). One factor of a pair without the other raises
    naming ``source`` and the missing key. Tensors that are no pair (biases,
    ``modules_to_save`` copies, AdaLoRA's bare ``lora_A``/``lora_E``) are left out."""
    pairs: dict[str, dict] = {}
    for key, tensor in tensors.items():
        parsed = parse_key(key, prefix)
        if parsed is not None and (parsed.kind, parsed.param) in _PAIRS:
            which, embedding = _PAIRS[(parsed.kind, parsed.param)]
            pairs.setdefault(parsed.module, {"embedding": embedding})[which] = tensor
    out = {}
    for module, pair in pairs.items():
        for which in ("A", "B"):
            if which not in pair:
                suffix = f"lora_embedding_{which}" if pair["embedding"] else f"lora_{which}.weight"
                raise ValueError(f"{source}: missing tensor {prefix}{module}.{suffix}")
        out[module] = Factors(module, pair["A"], pair["B"], pair["embedding"],
                              tensors.get(f"{prefix}{module}.lora_magnitude_vector"))
    return out


# ---- adapter_config.json -------------------------------------------------------------------------
def read_config_json(directory: str | Path) -> tuple[dict, Path]:
    """The JSON object in ``directory/adapter_config.json`` and its path; a missing file, a
    file given for the directory, text that is not UTF-8 JSON or JSON that is not an object
    raises an error naming the path."""
    path = Path(directory) / CONFIG_NAME
    if Path(directory).is_file():
        raise ValueError(f"{directory} is a file; an adapter is a directory holding {CONFIG_NAME}")
    if not path.exists():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}")
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: holds a JSON {type(data).__name__}; an adapter config is a JSON "
                         "object of settings")
    return data, path


def config_fields(d: dict[str, Any], fields: set[str], peft_type: str, source,
                  refused: tuple[str, ...] = ()) -> dict[str, Any]:
    """The entries of a config dict that a config class with ``fields`` takes: the one rule
    for every adapter type.

    ``peft_type`` (missing: ``"LORA"``) must be the class's. A key in ``refused`` (a PEFT
    feature the type does not implement) raises naming it when the file switches it on. Any
    other key the class does not know is dropped; a warning names those that are set
    (truthy), since they may switch on something newer PEFT versions compute: an unset one,
    or one of ``BOOKKEEPING``, changes nothing.
    """
    found = d.get("peft_type", "LORA")
    if found != peft_type:
        raise ValueError(f"{source}: peft_type {found!r} is not {peft_type!r}")
    for key in refused:
        if d.get(key):
            raise ValueError(f"{source}: unsupported PEFT feature {key}={d[key]!r} for peft_type {peft_type}")
    ignored = sorted(k for k, v in d.items()
                     if k not in fields and k not in refused and k not in BOOKKEEPING and v)
    if ignored:
        warnings.warn(f"{source}: ignoring unknown keys {ignored}", stacklevel=3)
    return {k: v for k, v in d.items() if k in fields}


def write_config(directory: str | Path, d: dict[str, Any]) -> Path:
    """``directory/adapter_config.json`` as PEFT writes it (indented, keys sorted), atomically."""
    path = Path(directory) / CONFIG_NAME
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(d, indent=2, sort_keys=True))
    return path


# ---- adapter_model.safetensors -------------------------------------------------------------------
def weights_path(directory: str | Path) -> Path:
    """``directory/adapter_model.safetensors``; a directory holding only PEFT's pickle file is
    refused (lorakit loads no pickle)."""
    directory = Path(directory)
    path = directory / WEIGHTS_NAME
    if not path.exists() and (directory / PICKLE_NAME).exists():
        raise ValueError(f"{directory}: no {WEIGHTS_NAME}, only {PICKLE_NAME} (pickle) found; lorakit "
                         "loads safetensors only. Re-save it with PEFT's safe_serialization=True.")
    return path


def read_weights(directory: str | Path, allow_nonfinite: bool = False,
                 hint: str = "") -> tuple[dict[str, torch.Tensor], Path]:
    """The checked tensors of ``directory``'s weights file (``files.read_tensors``) and its path."""
    path = weights_path(directory)
    return read_tensors(path, allow_nonfinite, hint), path


def _check_ranks(tensors: dict[str, torch.Tensor], rank_for: Callable[[str], int], source) -> None:
    for key, tensor in tensors.items():
        dim = rank_dim(key)
        if dim is None or tensor.dim() <= dim:
            continue
        module = parse_key(key).module
        want = rank_for(module)
        if tensor.shape[dim] != want:
            raise ValueError(f"{source}: tensor {key} holds rank {tensor.shape[dim]} at {module} but "
                             f"the adapter config says {want} (a hot-swapped adapter keeps its "
                             "zero-padded rank); it cannot be saved as a PEFT adapter")


def write_adapter(directory: str | Path, tensors: dict[str, torch.Tensor], config: dict[str, Any],
                  rank_for: Callable[[str], int] | None = None) -> Path:
    """Write a PEFT adapter directory: ``tensors`` (stored keys -> tensors) and ``config``
    (the ``adapter_config.json`` dict), atomically (``files.atomic_dir``: both files appear
    together; other files already in the directory stay).

    Checked before anything is written: neither file's path is a directory, every tensor is
    floating point (NaN/inf are written: a diverged run's adapter may be inspected), and with
    ``rank_for`` (module -> configured rank) every factor's rank is the configured one.
    """
    directory = Path(directory)
    for file_name in (WEIGHTS_NAME, CONFIG_NAME):
        if (directory / file_name).is_dir():
            raise ValueError(f"{directory / file_name} is a directory; cannot write the adapter there")
    check_tensors(tensors, directory, allow_nonfinite=True)
    if rank_for is not None:
        _check_ranks(tensors, rank_for, directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(directory, replace=False) as tmp:
        write_tensors(tmp / WEIGHTS_NAME, tensors, METADATA)
        write_config(tmp, config)
    return directory
