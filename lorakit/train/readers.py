"""Read training data files into rows that remember where they came from.

Supported: ``.jsonl`` (one JSON object per line), ``.json`` (an array of objects, or JSON
lines), ``.csv`` (header row), ``.parquet``, a directory written by ``datasets``'
``save_to_disk``, and a Hugging Face Hub data set by name, ``hf:org/name`` or
``hf:org/name:split`` (read with ``datasets`` from the local Hub cache first, so it works
offline once downloaded; online otherwise, unless ``HF_HUB_OFFLINE=1``). A source with
several splits is read at ``split`` (``"train"`` by default; ``None`` accepts a source with
exactly one split and otherwise asks for one). Every row carries ``where`` (``file:line`` for
text formats, ``file row N`` otherwise) so later errors can point at it.
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


def read_rows(path: str | Path, split: str | None = "train") -> list[Row]:
    """All rows of a data source (module docstring); an empty source is an error."""
    if str(path).startswith(HUB_PREFIX):
        rows = _read_hub(str(path), split)
        if not rows:
            raise ValueError(f"{path}: no rows (empty split)")
        return rows
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data not found: {path}")
    if path.is_dir():
        rows = _read_datasets_dir(path, split)
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


def _read_datasets_dir(path: Path, split: str | None) -> list[Row]:
    from datasets import load_from_disk

    try:
        data = load_from_disk(str(path))
    except FileNotFoundError:
        raise ValueError(f"{path}: a directory, but not one written by datasets' save_to_disk") from None
    data, name = choose_split(data, split, str(path))
    where = f"{path}[{name}]" if name else str(path)
    return [Row(f"{where} row {i}", r) for i, r in enumerate(data)]


def choose_split(data, split: str | None, source: str):
    """(the split of a ``Dataset``/``DatasetDict`` to read, its name or None)."""
    from datasets import DatasetDict

    if not isinstance(data, DatasetDict):
        return data, None
    names = list(data)
    if split is None and len(names) == 1:
        split = names[0]
    if split is None:
        raise ValueError(f"{source}: has splits {names}; choose one (--split NAME)")
    if split not in data:
        raise ValueError(f"{source}: no split {split!r}; splits: {names}")
    return data[split], split


HUB_PREFIX = "hf:"


def parse_hub(spec: str) -> tuple[str, str | None]:
    """``hf:org/name[:split]`` -> (repo id, split or None)."""
    body = spec[len(HUB_PREFIX):]
    repo, _, split = body.partition(":")
    if not repo or repo.count("/") > 1 or not all(repo.split("/")):
        raise ValueError(f"{spec}: expected hf:org/name or hf:org/name:split")
    return repo, split or None


def _read_hub(spec: str, split: str | None) -> list[Row]:
    import datasets
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo, named = parse_hub(spec)
    if named and split not in (None, "train", named):
        raise ValueError(f"{spec}: names split {named!r}, but split {split!r} was asked for")
    split = named or split
    try:  # the local Hub cache first: no network, no retries
        source = snapshot_download(repo, repo_type="dataset", local_files_only=True)
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise FileNotFoundError(f"{spec}: data set {repo!r} is not in the local Hub cache "
                                    f"({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set") from None
        source = repo
    data = datasets.load_dataset(source)
    data, name = choose_split(data, split, spec)
    return [Row(f"{HUB_PREFIX}{repo}[{name or 'train'}] row {i}", r) for i, r in enumerate(data)]
