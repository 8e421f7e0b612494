"""Row-level data errors and typed field access (shared by the data readers and formats)."""

from __future__ import annotations


class RowError(ValueError):
    """A data row that cannot be used; the message starts with the row's ``file:line``."""

    def __init__(self, where: str, problem: str, reason: str):
        super().__init__(f"{where}: {problem}")
        self.reason = reason  # short key for skip counts: "missing field", "too long", ...


def field_value(record: dict, key: str, where: str, types=(str,), optional: bool = False):
    """``record[key]`` checked against ``types``; missing (or null) raises unless ``optional``."""
    if key not in record or record[key] is None:
        if optional:
            return None
        raise RowError(where, f"missing field {key!r} (row has {sorted(record)})", "missing field")
    value = record[key]
    if not isinstance(value, types) or isinstance(value, bool):
        names = " or ".join(t.__name__ for t in types)
        raise RowError(where, f"field {key!r} must be {names}, got {type(value).__name__} "
                       f"{value!r:.60}", "wrong type")
    return value
