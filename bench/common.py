"""What every benchmark program shares: the machine description and autograd's saved bytes.

The programs run as ``python bench/NAME.py``, so ``bench/`` is on ``sys.path`` and they import
this module as ``common``.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_line() -> str:
    """``"<cpu>, <n> cores, torch <version>"`` for a table header."""
    return f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}"


def machine_info(**extra) -> dict:
    """The machine as a JSON-ready dict (cpu, cores, torch version, load average) plus ``extra``."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()[0], **extra}


def saved_bytes(loss_fn, model, *args) -> int:
    """Bytes of distinct non-parameter storages autograd keeps for the backward of
    ``loss_fn(*args)`` (deterministic, unlike RSS). Runs the backward and clears the grads."""
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(*args)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(n for ptr, n in seen.items() if ptr not in params)


def write_results(path: Path, payload: dict) -> None:
    """Write a benchmark's JSON result (parent directories created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
