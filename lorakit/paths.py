"""Checks on the paths a command reads and writes, run before any work: a directory that
cannot be written, a path below a regular file, an output file that is a directory, or a
model directory without model files is refused with an error that names it, and nothing is
created.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["check_output_dir", "check_output_file", "check_model_dir"]


def _nearest_existing(path: Path) -> Path:
    for candidate in [path, *path.parents]:
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(".")


def _not_empty(path, what: str) -> None:
    # Path("") is the current directory: an empty setting would write there unannounced.
    if isinstance(path, str) and not path.strip():
        raise ValueError(f"{what} is empty")


def check_output_dir(path: str | Path, what: str = "output directory") -> Path:
    """``path`` is a directory this process can create files in, or can be created.

    Walks up to the nearest existing ancestor: it must be a directory (not a regular file),
    and a probe file is created in it and removed again, so read-only file systems and missing
    permissions are found even where ``os.access`` says yes (root). Creates nothing.
    """
    _not_empty(path, what)
    path = Path(path)
    existing = _nearest_existing(path)
    if not existing.is_dir():
        kind = "a regular file" if existing.is_file() else "not a directory"
        where = "" if existing == path else f" (below {existing}, which is {kind})"
        raise ValueError(f"{what} {path} cannot be created{where}" if where
                         else f"{what} {path} is {kind}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".lorakit-write-check-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"{what} {path} is not writable ({existing}: {err.strerror or err})") from None
    return path


def check_output_file(path: str | Path, what: str = "output file") -> Path:
    """``path`` can be written as a file: not an existing directory, its directory writable."""
    _not_empty(path, what)
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory")
    check_output_dir(path.parent if str(path.parent) else Path("."), f"directory of {what}")
    return path


def check_model_dir(path: str | Path) -> Path:
    """A local model path is a directory holding a Hugging Face ``config.json``."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"model path {path} is a file, not a model directory")
    if not (path / "config.json").is_file():
        listing = sorted(p.name for p in path.iterdir())[:8]
        contents = f"it holds {listing}" if listing else "it is empty"
        raise ValueError(f"model directory {path} has no model files (no config.json; {contents})")
    return path
