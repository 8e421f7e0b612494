"""Which adapters a server knows: name -> adapter directory, with names and paths validated.

Adapters come from three places: ``--adapter NAME=PATH`` (the operator's, any path), the
sub-directories of ``--adapters DIR`` (each one holding ``adapter_config.json`` is an adapter
named after it, found at start-up or on first request), and ``POST /v1/adapters`` (network
input: the path must resolve, symlinks followed, to a directory inside ``DIR``). A name removed
(``DELETE``) stays removed, even if ``DIR`` holds it, until it is added again.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from lorakit.formats.peft import CONFIG_NAME

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


class RegistryError(Exception):
    """An invalid request to the registry; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def check_name(name: str, reserved: str = "") -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise RegistryError(400, f"adapter name {name!r} must be 1-128 letters, digits, '_', '-' or '.', "
                                 "starting with a letter or digit")
    if name == reserved:
        raise RegistryError(400, f"adapter name {name!r} is the base model's name")
    return name


class AdapterRegistry:
    """Name -> directory. ``root``: the adapters directory (None: loading over the API is off)."""

    def __init__(self, root: str | Path | None = None, base_name: str = ""):
        self.root = Path(root).resolve() if root else None
        if self.root is not None and not self.root.is_dir():
            raise FileNotFoundError(f"adapters directory not found: {root}")
        self.base_name = base_name
        self._paths: dict[str, Path] = {}
        self._removed: set[str] = set()  # not found in root again until add()ed
        self._lock = threading.Lock()
        if self.root is not None:
            for sub in sorted(self.root.iterdir()):
                self.lookup(sub.name)

    def add(self, name: str, path: str | Path | None = None, trusted: bool = False) -> Path:
        """Register ``name``. ``path`` defaults to ``root/name``; an untrusted path must lie
        inside ``root``. Raises RegistryError (400/403/404/409) naming the problem."""
        check_name(name, self.base_name)
        resolved = self._resolve(name, path, trusted)
        if not (resolved / CONFIG_NAME).is_file():
            raise RegistryError(404, f"no {CONFIG_NAME} in adapter directory {path or name!r}")
        with self._lock:
            if name in self._paths:
                raise RegistryError(409, f"adapter {name!r} is already loaded; DELETE /v1/adapters/{name} first")
            self._paths[name] = resolved
            self._removed.discard(name)
        return resolved

    def _resolve(self, name: str, path, trusted: bool) -> Path:
        if trusted:
            return Path(path).resolve()
        if self.root is None:
            raise RegistryError(403, "loading adapters over the API needs the server to be started "
                                     "with --adapters DIR")
        if path is not None and not isinstance(path, str):
            raise RegistryError(400, "adapter path must be a string")
        if path is not None and "\x00" in path:
            raise RegistryError(400, f"adapter path {path!r} holds a NUL byte")
        try:
            resolved = (self.root / (path or name)).resolve()
            if not resolved.is_relative_to(self.root):
                raise RegistryError(403, f"adapter path {path!r} is outside the adapters directory")
            (resolved / CONFIG_NAME).is_file()
        except OSError as err:  # e.g. a name too long for the file system
            raise RegistryError(400, f"adapter path {repr(path)[:200]} cannot be used: {err.strerror}") from None
        return resolved

    def remove(self, name: str, sticky: bool = True) -> Path:
        """Forget ``name``. ``sticky``: it is not found in ``root`` again until ``add`` (a
        DELETE); else it may be (undoing an ``add`` whose files then failed to load)."""
        with self._lock:
            if name not in self._paths:
                raise RegistryError(404, f"no adapter {name!r}; loaded adapters: {sorted(self._paths)}")
            if sticky:
                self._removed.add(name)
            return self._paths.pop(name)

    def lookup(self, name: str) -> Path | None:
        """The directory of adapter ``name``; an unregistered name that is a sub-directory of
        ``root`` holding an adapter is registered on the way."""
        with self._lock:
            if name in self._paths:
                return self._paths[name]
            if name in self._removed:
                return None
        if self.root is None or not NAME.match(name) or name == self.base_name:
            return None
        candidate = (self.root / name).resolve()
        if not candidate.is_relative_to(self.root) or not (candidate / CONFIG_NAME).is_file():
            return None
        with self._lock:
            return None if name in self._removed else self._paths.setdefault(name, candidate)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._paths)
