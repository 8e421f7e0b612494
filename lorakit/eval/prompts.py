"""Evaluation prompts rendered exactly as training renders them.

Each row is encoded by the training code (``lorakit.train.data.load_data``, same format
detection, template and tokenization); the prompt of a causal-LM example is its token ids up
to the last trained span (the final assistant turn, or the instruction's output), and the
reference is that turn's text as written in the data file. So the model is asked, token for
token, what it was trained to answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from lorakit.train.data import TokenizedData, load_data
from lorakit.train.dialects import trained
from lorakit.train.formats import IGNORE, chat_messages
from lorakit.train.readers import read_rows


@dataclass
class EvalSet:
    """A tokenized eval file. For generation: ``prompts[k]`` (token ids) and ``references[k]``
    (text); for classification: ``texts`` and ``labels`` (class ids, ``label_names``)."""

    data: TokenizedData
    prompts: list[list[int]] | None = None
    references: list[str] | None = None
    texts: list[str] | None = None
    labels: list[int] | None = None


def last_trained_start(labels: list[int]) -> int:
    """Index of the first token of the last contiguous run of trained labels."""
    end = max((t for t, y in enumerate(labels) if y != IGNORE), default=None)
    if end is None:
        raise ValueError("example has no trained tokens")
    start = end
    while start > 0 and labels[start - 1] != IGNORE:
        start -= 1
    return start


def reference_text(record: dict, fmt: str, where: str) -> str:
    """The answer the model should produce: the last assistant turn, or ``output``."""
    if fmt == "chat":
        return [m for m in chat_messages(record, where) if trained(m)][-1]["content"]
    if fmt == "instruction":
        return str(record.get("output", ""))
    if fmt == "prompt_completion":
        return str(record.get("completion", ""))
    raise ValueError(f"{where}: format {fmt!r} has no reference answer to generate")


def load_eval_set(path: str, tokenizer, *, fmt: str = "auto", template: str = "alpaca",
                  max_seq_len: int = 2048, label_names: list[str] | None = None,
                  limit: int = 0, split: str | None = None) -> EvalSet:
    """Read and tokenize an eval file (the first ``limit`` usable rows when ``limit > 0``);
    a source with several splits needs ``split``."""
    data = load_data(path, tokenizer, fmt=fmt, template=template, completion_only=True,
                     max_seq_len=max_seq_len, label_names=label_names, split=split)
    if limit > 0:
        data.examples = data.examples[:limit]
    records = {row.where: row.record for row in read_rows(path, split)}
    if data.fmt == "classification":
        return EvalSet(data, texts=[records[e.where]["text"] for e in data.examples],
                       labels=[int(e.labels) for e in data.examples])
    if data.fmt == "text":
        return EvalSet(data)
    prompts = [e.input_ids[:last_trained_start(e.labels)] for e in data.examples]
    references = [reference_text(records[e.where], data.fmt, e.where) for e in data.examples]
    return EvalSet(data, prompts=prompts, references=references)
