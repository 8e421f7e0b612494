"""Data formats -> token ids and loss labels, with completion-only masking.

Formats (``auto`` picks by the first row's keys, in this order):

- ``chat``: ``messages: [{role, content}, ...]`` or ShareGPT ``conversations: [{from, value}]``
  (``human`` -> user, ``gpt`` -> assistant). Rendered with the tokenizer's chat template; the
  trained tokens are each assistant turn as the template writes it (content and end-of-turn).
- ``instruction``: Alpaca ``instruction``, optional ``input``, ``output``. Rendered with
  ``ALPACA_PROMPT`` / ``ALPACA_PROMPT_NO_INPUT`` (or as one user turn of the chat template);
  the trained tokens are ``output`` followed by EOS.
- ``text``: ``text``; every token trains (followed by EOS).
- ``classification``: ``text`` and ``label`` (int id or string name), for ``seq_cls``.

An example is a list of segments ``(text, trained)``, each tokenized on its own and
concatenated, so a prompt tokenizes exactly as it will at inference time and the mask is exact:
``labels[t] = input_ids[t]`` on trained segments, ``IGNORE`` elsewhere. ``labels[0]`` is always
``IGNORE`` (nothing predicts the first token), which also keeps packed examples from being
trained to predict across a boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE = -100
FORMATS = ("chat", "instruction", "classification", "text")

ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system"}


class RowError(ValueError):
    """A data row that cannot be used; the message starts with the row's ``file:line``."""

    def __init__(self, where: str, problem: str, reason: str):
        super().__init__(f"{where}: {problem}")
        self.reason = reason  # short key for skip counts: "missing field", "too long", ...


@dataclass
class Example:
    """One tokenized example. ``labels``: per-token targets (causal_lm) or a class (seq_cls)."""

    input_ids: list[int]
    labels: list[int] | int | str
    where: str


def detect_format(record: dict, where: str) -> str:
    if "messages" in record or "conversations" in record:
        return "chat"
    if "instruction" in record:
        return "instruction"
    if "text" in record and "label" in record:
        return "classification"
    if "text" in record:
        return "text"
    raise RowError(where, f"cannot tell the data format from keys {sorted(record)}; expected "
                   "messages/conversations (chat), instruction/output (instruction), text/label "
                   "(classification) or text", "unknown format")


def _field(record: dict, key: str, where: str, types=(str,), optional: bool = False):
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


def chat_messages(record: dict, where: str) -> list[dict]:
    """The conversation as ``[{role, content}]`` (ShareGPT rows converted)."""
    key, role_key, text_key = (("messages", "role", "content") if "messages" in record
                               else ("conversations", "from", "value"))
    turns = _field(record, key, where, types=(list,))
    messages = []
    for i, turn in enumerate(turns):
        at = f"{where}: {key}[{i}]"
        if not isinstance(turn, dict):
            raise RowError(at, f"expected an object, got {type(turn).__name__}", "wrong type")
        role = _field(turn, role_key, at)
        if key == "conversations":
            if role not in _SHAREGPT_ROLES:
                raise RowError(at, f"unknown speaker {role!r}; known: {sorted(_SHAREGPT_ROLES)}",
                               "wrong type")
            role = _SHAREGPT_ROLES[role]
        messages.append({"role": role, "content": _field(turn, text_key, at)})
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError(where, f"{key} has no assistant turn to train on", "missing field")
    return messages


def _render(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=generation_prompt)


def chat_segments(tokenizer, messages: list[dict], where: str) -> list[tuple[str, bool]]:
    """Split the rendered conversation into (text, is_assistant_turn) pieces.

    Assistant turn ``i`` is the text that rendering ``messages[: i + 1]`` adds to rendering
    ``messages[:i]`` with the generation prompt. Templates that re-render earlier turns
    differently (not prefix-stable) are refused rather than masked wrongly.
    """
    segments, done = [], ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt, through = _render(tokenizer, messages[:i], True), _render(tokenizer, messages[: i + 1])
        if not (prompt.startswith(done) and through.startswith(prompt)):
            raise RowError(where, "the chat template is not prefix-stable for this conversation, "
                           "so assistant tokens cannot be masked exactly", "chat template")
        segments += [(prompt[len(done):], False), (through[len(prompt):], True)]
        done = through
    rest = _render(tokenizer, messages)[len(done):]
    return segments + ([(rest, False)] if rest else [])


def instruction_prompt(record: dict, where: str) -> str:
    """The Alpaca prompt of an instruction row (everything before the response)."""
    instruction = _field(record, "instruction", where)
    extra = _field(record, "input", where, optional=True)
    if extra:
        return ALPACA_PROMPT.format(instruction=instruction, input=extra)
    return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)


def instruction_messages(record: dict, where: str) -> list[dict]:
    """An instruction row as one user turn (instruction, blank line, input) and the answer."""
    instruction = _field(record, "instruction", where)
    extra = _field(record, "input", where, optional=True)
    user = f"{instruction}\n\n{extra}" if extra else instruction
    return [{"role": "user", "content": user},
            {"role": "assistant", "content": _field(record, "output", where)}]


def _tokenize(tokenizer, segments: list[tuple[str, bool]], special: bool, eos: bool,
              train_all: bool, where: str) -> Example:
    ids: list[int] = []
    labels: list[int] = []
    for i, (text, trained) in enumerate(segments):
        piece = tokenizer(text, add_special_tokens=special and i == 0)["input_ids"]
        ids += piece
        labels += piece if (trained or train_all) else [IGNORE] * len(piece)
    if eos:
        ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id)
    if labels:
        labels[0] = IGNORE
    return Example(ids, labels, where)


def encode(record: dict, fmt: str, tokenizer, template: str, completion_only: bool,
           where: str) -> Example:
    """Tokenize one row of format ``fmt``; a bad row raises ``RowError``."""
    if fmt == "classification":
        text = _field(record, "text", where)
        label = _field(record, "label", where, types=(int, str))
        return Example(tokenizer(text)["input_ids"], label, where)
    if fmt == "text":
        segments = [(_field(record, "text", where), True)]
        return _tokenize(tokenizer, segments, True, True, True, where)
    if fmt == "instruction" and template == "alpaca":
        segments = [(instruction_prompt(record, where), False),
                    (_field(record, "output", where), True)]
        return _tokenize(tokenizer, segments, True, True, not completion_only, where)
    messages = chat_messages(record, where) if fmt == "chat" else instruction_messages(record, where)
    if getattr(tokenizer, "chat_template", None) is None:
        raise RowError(where, "chat data needs a tokenizer with a chat template", "chat template")
    segments = chat_segments(tokenizer, messages, where)
    return _tokenize(tokenizer, segments, False, False, not completion_only, where)
