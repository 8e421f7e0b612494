"""What every on-disk format shares: the one atomic writer (of a file, of a directory) and the
one checked reader of safetensors files.

Atomic means a reader never sees a half-written output and a failure leaves nothing behind:
the output is written under a temporary sibling name (``.<name>.tmp<pid>``) and renamed into
place with ``os.replace``; on any error the temporary file or directory is removed and the
error propagates. Weights are safetensors only (no pickle).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

__all__ = ["atomic_dir", "atomic_file", "check_tensors", "read_header", "read_tensors", "write_tensors"]


def _temp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path of ``path`` to write; on success it replaces ``path``
    (one ``os.replace``), on any error it is removed."""
    path = Path(path)
    tmp = _temp_sibling(path)
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (disk full, bad tensor) leaves no temp file


@contextlib.contextmanager
def atomic_dir(out: str | Path, replace: bool = True) -> Iterator[Path]:
    """Yield a new temporary sibling directory of ``out`` to fill; on any error it is removed.

    On success, ``replace=True`` makes it ``out`` (an existing ``out`` is removed first: an
    export replaces the previous one whole); ``replace=False`` moves each file written into
    ``out`` (created if missing) with one ``os.replace`` each, so files of ``out`` that were
    not rewritten stay (an adapter directory keeps its README.md, label map...). A new
    ``out`` appears in one rename either way.
    """
    out = Path(out)
    tmp = _temp_sibling(out)
    tmp.mkdir()
    try:
        yield tmp
        if replace or not out.exists():
            if out.exists():
                shutil.rmtree(out)
            tmp.replace(out)
        else:
            for entry in sorted(tmp.iterdir()):
                entry.replace(out / entry.name)
            tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write ``tensors`` (made contiguous) as a safetensors file, atomically."""
    path = Path(path)
    with atomic_file(path) as tmp:
        save_file({k: t.contiguous() for k, t in tensors.items()}, str(tmp), metadata=metadata)
    return path


def read_tensors(path: str | Path, allow_nonfinite: bool = False, hint: str = "") -> dict[str, torch.Tensor]:
    """Load a safetensors file of adapter tensors; anything unreadable raises an error that
    names the file, and ``check_tensors`` refuses values no adapter holds (``hint`` ends its
    message)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"adapter weights not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path}: not a file")
    try:
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises its own error type for corrupt headers
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    check_tensors(tensors, path, allow_nonfinite, hint)
    return tensors


def read_header(path: str | Path) -> tuple[list[str], dict[str, str]]:
    """The tensor names (in file order) and the metadata of a safetensors file, without
    reading the tensors; a missing or unreadable file raises naming it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"adapter weights not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys()), dict(f.metadata() or {})
    except Exception as err:  # safetensors raises its own error type for corrupt headers
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None


def check_tensors(tensors: dict[str, torch.Tensor], source, allow_nonfinite: bool = False,
                  hint: str = "") -> None:
    """Refuse, naming ``source`` and the tensor, a dtype that is not floating point (int, bool,
    complex: no adapter weight is one) and, unless ``allow_nonfinite``, NaN or inf values (they
    would poison every output they touch). The one check for every reader of adapter files
    (PEFT directories, diffusers and kohya files): ``load_adapter``, ``hotswap``, the server's
    host cache, ``lorakit inspect``; writers run it with ``allow_nonfinite=True``."""
    for key, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise ValueError(f"{source}: tensor {key} has dtype {tensor.dtype}; adapter tensors are "
                             "floating point")
        if not allow_nonfinite and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(f"{source}: tensor {key} holds {bad} NaN/inf value(s) of {tensor.numel()}"
                             + (f"; {hint}" if hint else ""))
