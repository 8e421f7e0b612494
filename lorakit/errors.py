"""lorakit's own exception for a name that does not exist.

``NotFoundError`` (a ``KeyError``, so ``except KeyError`` keeps working) is raised for a name
the caller gave that lorakit cannot find: an adapter, a module of the base model, an embedded
model, a key a file must hold. The ``lorakit`` command turns it into one error line; a plain
``KeyError`` from anywhere else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["NotFoundError"]


class NotFoundError(KeyError):
    def __str__(self) -> str:  # KeyError's str() would quote the message
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()
