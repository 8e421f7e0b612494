"""The reference model, without a second copy of the weights, and its cached log-probs.

- No reference adapter: the reference is the base model, i.e. the same network with the
  adapter disabled (``lorakit.disabled``), as TRL does for a new PEFT adapter.
- A reference adapter (``ref_adapter``, e.g. an SFT run's adapter): it is loaded twice, frozen
  as ``"reference"`` and trainable as ``"default"`` (the policy starts as a copy of it). This
  is TRL's documented "load the adapter twice" set-up (``ref_adapter_name``); the trained
  adapter is a complete adapter over the base, like the SFT adapter it replaces.
- ``precompute_ref``: the reference log-probs of every training (and eval) example are
  computed once before training and kept in ``reference_logps.safetensors`` in the run
  directory, keyed by a fingerprint of the data, the base model and the reference adapter, so
  a later run on the same inputs reads them back instead of recomputing.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

REFERENCE = "reference"
CACHE_NAME = "reference_logps.safetensors"


@contextmanager
def reference_mode(model: nn.Module, has_ref_adapter: bool):
    """Inside the block ``model`` computes the reference: the base (adapter disabled), or the
    frozen ``"reference"`` adapter alone. Nothing else changes (requires_grad stays)."""
    import lorakit
    from lorakit.inject import adapted_modules

    if not has_ref_adapter:
        with lorakit.disabled(model):
            yield
        return
    modules = [m for _, m in adapted_modules(model)]
    saved = [list(m.active_adapters) for m in modules]
    for m in modules:
        m.active_adapters = [REFERENCE] if REFERENCE in m.adapter_names else []
    try:
        yield
    finally:
        for m, names in zip(modules, saved):
            m.active_adapters = names


def load_reference_adapter(model: nn.Module, directory: str) -> None:
    """Load ``directory`` as the frozen reference and as the trainable policy ``"default"``
    (replacing a fresh ``"default"``). A file that does not fit the base raises here, before
    any training, naming the tensor and both shapes."""
    import lorakit
    from lorakit.inject import adapter_configs

    path = Path(directory)
    if not path.is_dir():
        raise FileNotFoundError(f"ref_adapter not found: {directory}")
    try:
        lorakit.load_adapter(model, path, name=REFERENCE)
    except (ValueError, KeyError, RuntimeError) as err:
        raise ValueError(f"ref_adapter {directory} does not fit the base model: {err}") from None
    if "default" in adapter_configs(model):
        lorakit.delete_adapter(model, "default")
    lorakit.load_adapter(model, path, name="default", is_trainable=True)
    lorakit.set_adapter(model, "default")


def fingerprint(token_rows: list[list[int]], model_name: str, ref_adapter: str) -> str:
    """Hash of what the reference log-probs depend on: tokens, base model, reference weights."""
    h = hashlib.sha256(json.dumps([model_name, token_rows]).encode())
    if ref_adapter:
        for name in sorted(p.name for p in Path(ref_adapter).iterdir() if p.is_file()):
            h.update(name.encode() + (Path(ref_adapter) / name).read_bytes())
    return h.hexdigest()[:32]


def save_cache(run_dir: Path, key: str, tensors: dict[str, torch.Tensor]) -> Path:
    """Write the reference log-probs (name -> ``[N]`` fp32) with ``key`` in the metadata."""
    path = Path(run_dir) / CACHE_NAME
    save_file({k: v.contiguous().float() for k, v in tensors.items()}, str(path),
              metadata={"format": "pt", "fingerprint": key})
    return path


def load_cache(run_dir: Path, key: str) -> dict[str, torch.Tensor] | None:
    """The cached log-probs if the cache exists and was written for ``key``; else None."""
    path = Path(run_dir) / CACHE_NAME
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        if (f.metadata() or {}).get("fingerprint") != key:
            return None
        return {k: f.get_tensor(k) for k in f.keys()}


__all__ = ["CACHE_NAME", "REFERENCE", "fingerprint", "load_cache", "load_reference_adapter",
           "reference_mode", "save_cache"]
