"""Training data: read a source, tokenize every row, check it, and hold out an eval split.

A row that is bad (missing field, wrong type) or longer than ``max_seq_len`` stops loading with
an error naming its ``file:line``, or, with ``on_bad_row="skip"``, is dropped and counted by
reason (``TokenizedData.skipped``). Nothing is truncated silently.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import torch

from lorakit.train import dialects
from lorakit.train.formats import Example, RowError, detect_format, encode
from lorakit.train.readers import read_rows


@dataclass
class TokenizedData:
    examples: list[Example]
    fmt: str
    source: str
    skipped: collections.Counter = field(default_factory=collections.Counter)
    first_skip: dict[str, str] = field(default_factory=dict)  # reason -> first such row's error
    label_names: list[str] | None = None  # seq_cls: class id -> name

    def n_tokens(self) -> int:
        return sum(len(e.input_ids) for e in self.examples)


def load_data(path: str, tokenizer, *, fmt: str = "auto", template: str = "alpaca",
              completion_only: bool = True, max_seq_len: int = 1024, skip_bad: bool = False,
              label_names: list[str] | None = None,
              columns: dict[str, str] | None = None,
              split: str | None = "train") -> TokenizedData:
    """Read and tokenize ``path``. ``label_names`` fixes the class ids of string labels (pass
    the training set's names when loading its eval file); ``columns`` renames a data set's
    columns to lorakit's field names (``dialects.map_columns``); ``split`` picks the split of a
    source that has several (``readers.read_rows``)."""
    rows = read_rows(path, split)
    columns = columns or {}
    dialects.check_columns(columns)
    if fmt == "auto":
        first = dialects.map_columns(rows[0].record, columns, rows[0].where)
        fmt = detect_format(first, rows[0].where)
    data = TokenizedData([], fmt, str(path))
    for row in rows:
        try:
            record = dialects.map_columns(row.record, columns, row.where)
            example = encode(record, fmt, tokenizer, template, completion_only, row.where)
            if len(example.input_ids) > max_seq_len:
                raise RowError(row.where, f"{len(example.input_ids)} tokens, longer than "
                               f"max_seq_len={max_seq_len} (raise max_seq_len, or skip such rows "
                               "with on_bad_row=skip)", "too long")
            if isinstance(example.labels, list) and all(t < 0 for t in example.labels):
                raise RowError(row.where, "no tokens to train on (empty completion?)", "no targets")
        except RowError as err:
            if not skip_bad:
                raise
            data.skipped[err.reason] += 1
            data.first_skip.setdefault(err.reason, str(err))
            continue
        data.examples.append(example)
    if not data.examples:
        raise ValueError(f"{path}: every row was skipped ({dict(data.skipped)})")
    if fmt == "classification":
        data.label_names = _assign_label_ids(data.examples, label_names)
    return data


def _assign_label_ids(examples: list[Example], names: list[str] | None) -> list[str]:
    """Integer labels are class ids; string labels map to ids in sorted order (or ``names``)."""
    kinds = {type(e.labels) for e in examples}
    if len(kinds) > 1:
        first = next(e for e in examples if isinstance(e.labels, str))
        raise ValueError(f"{first.where}: labels mix integers and strings; use one kind")
    if kinds == {int}:
        if min(e.labels for e in examples) < 0:
            bad = next(e for e in examples if e.labels < 0)
            raise ValueError(f"{bad.where}: label {bad.labels} is negative")
        return names or [str(i) for i in range(max(e.labels for e in examples) + 1)]
    names = names or sorted({e.labels for e in examples})
    index = {name: i for i, name in enumerate(names)}
    for e in examples:
        if e.labels not in index:
            raise ValueError(f"{e.where}: label {e.labels!r} not among the training labels {names}")
        e.labels = index[e.labels]
    return names


def holdout(n: int, fraction: float, seed: int, source: str, what: str = "examples") -> set[int]:
    """The indices of ``round(fraction * n)`` held-out items (at least 1), chosen by ``seed``;
    an error naming ``source`` when that leaves no training ``what``."""
    n_eval = max(1, round(fraction * n))
    if n_eval >= n:
        raise ValueError(f"{source}: eval_split={fraction} leaves no training {what} (n={n})")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return set(order[:n_eval])


def split_eval(data: TokenizedData, fraction: float, seed: int) -> tuple[TokenizedData, TokenizedData]:
    """Hold out ``round(fraction * n)`` examples (at least 1), chosen by ``seed``."""
    held = holdout(len(data.examples), fraction, seed, data.source)
    train = [e for i, e in enumerate(data.examples) if i not in held]
    evals = [e for i, e in enumerate(data.examples) if i in held]
    return (TokenizedData(train, data.fmt, data.source, data.skipped, data.label_names),
            TokenizedData(evals, data.fmt, data.source + " (eval split)", label_names=data.label_names))
