"""Helpers of the bad-input tests: snapshots that prove a refused call changed nothing.

``snapshot`` records every tensor of a model's state dict (bytes, dtype, shape), the adapter
configs and the active set; ``assert_unchanged`` compares bit for bit, so a NaN must sit at
the same place with the same payload, and ``-0.0`` differs from ``0.0``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

import lorakit


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes, as a flat uint8 tensor."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def snapshot(model) -> dict:
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "configs": copy.deepcopy(dict(lorakit.adapter_configs(model))),
            "active": lorakit.active_adapters(model),
            "modules": [(n, type(m).__name__) for n, m in model.named_modules()]}


def assert_unchanged(model, before: dict) -> None:
    after = snapshot(model)
    assert after["modules"] == before["modules"], "module tree changed"
    assert list(after["state"]) == list(before["state"]), "state dict keys changed"
    for key, value in after["state"].items():
        assert bit_equal(value, before["state"][key]), f"{key} changed"
    assert after["configs"] == before["configs"], "adapter configs changed"
    assert after["active"] == before["active"], "active adapters changed"


def tree(path: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under ``path`` (directories as b'<dir>')."""
    path = Path(path)
    if not path.exists():
        return {}
    out = {}
    for root, dirs, files in os.walk(path):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), path)] = b"<dir>"
        for f in files:
            full = os.path.join(root, f)
            out[os.path.relpath(full, path)] = Path(full).read_bytes()
    return out
