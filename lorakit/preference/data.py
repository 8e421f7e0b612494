"""Preference data: rows -> tokenized (prompt, chosen, rejected) pairs or unpaired KTO rows.

Row shapes read (TRL's preference and unpaired formats and their common variants):

- explicit prompt: ``{"prompt", "chosen", "rejected"}``, all strings, or ``prompt`` a message
  list and ``chosen``/``rejected`` message lists holding the assistant turn(s);
- implicit prompt: ``{"chosen", "rejected"}`` only. Message lists (UltraFeedback-style, each
  holding the whole conversation) share their leading messages: those are the prompt. Strings
  (Anthropic HH, ``"\\n\\nHuman: ... \\n\\nAssistant: ..."``) share a prefix: the prompt ends
  after the last ``"\\n\\nAssistant:"`` inside it (else where TRL's ``extract_prompt`` ends it).
  A row with a ``prompt`` string whose ``chosen`` is a full conversation (UltraFeedback
  binarized) is read the same way, from the messages;
- unpaired (KTO): ``{"prompt", "completion", "label"}``, ``label`` true = desirable. Paired rows
  given to KTO become one desirable and one undesirable row (TRL's ``unpair_preference_dataset``).

Masking is lorakit's (``lorakit.train.formats``): prompt and completion are tokenized as separate
segments, so the prompt tokenizes exactly as at inference and only completion tokens are
scored. Strings get EOS appended unless they end with it (as TRL does); conversations are
rendered with the chat template, and the completion is what the full conversation adds to the
prompt rendered with the generation prompt (its end-of-turn tokens included).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from lorakit.train.formats import Example, RowError, _tokenize
from lorakit.train.readers import read_rows

_HH_ASSISTANT = "\n\nAssistant:"


@dataclass
class Pair:
    """One preference pair: two examples with the same prompt tokens (labels mask the prompt)."""

    chosen: Example
    rejected: Example
    where: str

    @property
    def length(self) -> int:
        return max(len(self.chosen.input_ids), len(self.rejected.input_ids))


@dataclass
class Unpaired:
    """One KTO row: a completion, where its prompt ends, and whether it is desirable."""

    example: Example
    prompt_len: int
    desirable: bool
    where: str

    @property
    def length(self) -> int:
        return len(self.example.input_ids)


@dataclass
class PreferenceData:
    items: list            # list[Pair] or list[Unpaired]
    source: str
    fmt: str               # "paired" or "unpaired"
    skipped: collections.Counter = field(default_factory=collections.Counter)


def _is_messages(value) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m for m in value)


def _need(record: dict, key: str, where: str):
    if record.get(key) is None:
        raise RowError(where, f"missing field {key!r} (row has {sorted(record)}); a preference "
                       "row needs chosen and rejected (and prompt, or a prompt shared by both)",
                       "missing field")
    value = record[key]
    if not (isinstance(value, str) or _is_messages(value)):
        raise RowError(where, f"field {key!r} must be a string or a list of {{role, content}} "
                       f"messages, got {type(value).__name__} {value!r:.60}", "wrong type")
    return value


def _common_prefix(a, b) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def split_prompt(record: dict, where: str) -> tuple:
    """``(prompt, chosen, rejected)`` of a paired row, the prompt taken from the shared part when
    the row does not give it apart (see the module docstring)."""
    chosen, rejected = _need(record, "chosen", where), _need(record, "rejected", where)
    if type(chosen) is not type(rejected):
        raise RowError(where, "chosen and rejected must both be strings or both message lists",
                       "wrong type")
    if chosen == rejected:
        raise RowError(where, "chosen and rejected are identical: the pair carries no preference",
                       "identical pair")
    prompt = record.get("prompt")
    if isinstance(chosen, list) and chosen[0].get("role") != "assistant":
        n = _common_prefix(chosen, rejected)
        return chosen[:n], chosen[n:], rejected[n:]
    if prompt is not None:
        if isinstance(prompt, str) != isinstance(chosen, str) or not (
                isinstance(prompt, str) or _is_messages(prompt)):
            raise RowError(where, "prompt must be a string with string completions, or a message "
                           "list with message-list completions", "wrong type")
        return prompt, chosen, rejected
    n = _common_prefix(chosen, rejected)
    head = chosen[:n]
    cut = head.rfind(_HH_ASSISTANT)
    if cut >= 0:
        n = cut + len(_HH_ASSISTANT)
    elif n and n < len(chosen) and chosen[n - 1] == " ":
        n -= 1  # TRL: the space before the first differing word belongs to the completion
    return chosen[:n], chosen[n:], rejected[n:]


def encode_completion(tokenizer, prompt, completion, where: str) -> tuple[Example, int]:
    """Tokenize ``prompt + completion`` with only the completion trained; returns the example
    and the number of prompt tokens."""
    if isinstance(prompt, str):
        if not completion:
            raise RowError(where, "empty completion", "no targets")
        eos = not completion.endswith(tokenizer.eos_token)
        example = _tokenize(tokenizer, [(prompt, False), (completion, True)], True, eos, False, where)
        return example, len(tokenizer(prompt)["input_ids"]) if prompt else 0
    if getattr(tokenizer, "chat_template", None) is None:
        raise RowError(where, "conversational rows need a tokenizer with a chat template", "chat template")
    for i, m in enumerate(prompt + completion):
        if not isinstance(m.get("content"), str):
            raise RowError(f"{where}: message {i}", "content must be a string", "wrong type")
    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    if not full.startswith(head) or len(full) == len(head):
        raise RowError(where, "the chat template does not render the prompt as a prefix of the "
                       "conversation, so the completion cannot be masked exactly", "chat template")
    example = _tokenize(tokenizer, [(head, False), (full[len(head):], True)], False, False, False, where)
    return example, len(tokenizer(head, add_special_tokens=False)["input_ids"])


def _pair(record: dict, tokenizer, where: str) -> Pair:
    prompt, chosen, rejected = split_prompt(record, where)
    c, _ = encode_completion(tokenizer, prompt, chosen, where)
    r, _ = encode_completion(tokenizer, prompt, rejected, where)
    if c.input_ids == r.input_ids:
        raise RowError(where, "chosen and rejected tokenize identically", "identical pair")
    return Pair(c, r, where)


def _unpaired(record: dict, tokenizer, where: str) -> list[Unpaired]:
    if "completion" not in record:
        pair_prompt, chosen, rejected = split_prompt(record, where)
        pieces = [(pair_prompt, chosen, True), (pair_prompt, rejected, False)]
    else:
        prompt = _need(record, "prompt", where)
        completion = _need(record, "completion", where)
        label = record.get("label")
        if not isinstance(label, bool):
            raise RowError(where, f"field 'label' must be true (desirable) or false, got {label!r}",
                           "wrong type")
        pieces = [(prompt, completion, label)]
    out = []
    for prompt, completion, label in pieces:
        example, n_prompt = encode_completion(tokenizer, prompt, completion, where)
        out.append(Unpaired(example, n_prompt, label, where))
    return out


def load_preferences(path: str, tokenizer, *, unpaired: bool = False, max_seq_len: int = 1024,
                     skip_bad: bool = False) -> PreferenceData:
    """Read and tokenize a preference file; a bad or too long row raises ``RowError`` naming its
    ``file:line`` (or is counted in ``skipped`` with ``skip_bad``)."""
    data = PreferenceData([], str(path), "unpaired" if unpaired else "paired")
    for row in read_rows(path):
        try:
            items = _unpaired(row.record, tokenizer, row.where) if unpaired else \
                [_pair(row.record, tokenizer, row.where)]
            for item in items:
                if item.length > max_seq_len:
                    raise RowError(row.where, f"{item.length} tokens, longer than max_seq_len="
                                   f"{max_seq_len} (raise max_seq_len, or skip such rows with "
                                   "on_bad_row=skip)", "too long")
        except RowError as err:
            if not skip_bad:
                raise
            data.skipped[err.reason] += 1
            continue
        data.items += items
    if not data.items:
        raise ValueError(f"{path}: every row was skipped ({dict(data.skipped)})")
    return data


def is_preference_row(record: dict) -> bool:
    """Whether a row looks like preference data (for format detection by other commands)."""
    return ("chosen" in record and "rejected" in record) or ("completion" in record and "label" in record)


__all__ = ["Pair", "PreferenceData", "Unpaired", "encode_completion", "is_preference_row",
           "load_preferences", "split_prompt"]
