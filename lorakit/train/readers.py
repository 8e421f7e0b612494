"""Read training data files into rows that remember where they came from.

Supported: ``.jsonl`` (one JSON object per line), ``.json`` (an array of objects, or JSON
lines), ``.csv`` (header row), ``.parquet``, and a directory written by ``datasets``'
``save_to_disk`` (a ``DatasetDict`` must have a ``train`` split). Every row carries ``where``
(``file:line`` for text formats, ``file row N`` otherwise) so later errors can point at it.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass
class Row:
    where: str
    record: dict


def read_rows(path: str | Path) -> list[Row]:
    """All rows of a data file or saved ``datasets`` directory; an empty source is an error."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data not found: {path}")
    if path.is_dir():
        rows = _read_datasets_dir(path)
    elif path.suffix == ".jsonl":
        rows = _read_json_lines(path, read_text(path))
    elif path.suffix == ".json":
        rows = _read_json(path)
    elif path.suffix == ".csv":
        rows = _read_csv(path)
    elif path.suffix == ".parquet":
        rows = _read_parquet(path)
    else:
        raise ValueError(f"{path}: unknown data file type {path.suffix!r}; "
                         f"known: {', '.join(SUFFIXES)} or a saved datasets directory")
    if not rows:
        raise ValueError(f"{path}: no rows (empty file)")
    return rows


def read_text(path: Path) -> str:
    """The file as UTF-8 text; a byte that is not UTF-8 is an error naming file, line, column."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise ValueError(f"{path}:{line}: byte 0x{data[err.start]:02x} at column {column} is not "
                         "UTF-8 text; re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
                         ) from None


def _object(where: str, value) -> Row:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return Row(where, value)


def _read_json_lines(path: Path, text: str) -> list[Row]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: invalid JSON ({err.msg})") from None
        rows.append(_object(f"{path}:{number}", value))
    return rows


def _read_json(path: Path) -> list[Row]:
    text = read_text(path)
    if not text.strip():
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return _read_json_lines(path, text)  # a .json file holding JSON lines
    if not isinstance(value, list):
        raise ValueError(f"{path}: expected a JSON array of objects, got {type(value).__name__}")
    return [_object(f"{path} item {i}", v) for i, v in enumerate(value)]


def _read_csv(path: Path) -> list[Row]:
    with io.StringIO(read_text(path), newline="") as f:
        reader = csv.DictReader(f)
        rows = []
        for record in reader:
            if None in record:
                raise ValueError(f"{path}:{reader.line_num}: more fields than the header has")
            # line_num is the physical line the row ended on (rows may span lines).
            rows.append(Row(f"{path}:{reader.line_num}", dict(record)))
    return rows


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return [Row(f"{path} row {i}", r) for i, r in enumerate(table.to_pylist())]


def _read_datasets_dir(path: Path) -> list[Row]:
    from datasets import DatasetDict, load_from_disk

    try:
        data = load_from_disk(str(path))
    except FileNotFoundError:
        raise ValueError(f"{path}: a directory, but not one written by datasets' save_to_disk") from None
    if isinstance(data, DatasetDict):
        if "train" not in data:
            raise ValueError(f"{path}: a DatasetDict without a 'train' split; splits: {list(data)}")
        data = data["train"]
    return [Row(f"{path} row {i}", r) for i, r in enumerate(data)]
