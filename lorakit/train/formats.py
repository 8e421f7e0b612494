"""Data formats -> token ids and loss labels, with completion-only masking.

Formats (``auto`` picks by the first row's keys, in this order):

- ``chat``: ``messages`` / ``conversations`` (OpenAI, ShareGPT, with per-turn training flags)
  or TRL's conversational ``prompt``/``completion`` lists; read by
  ``lorakit.train.dialects.conversation``. Rendered with the tokenizer's chat template; the
  trained tokens are each trained turn as the template writes it (content and end-of-turn).
- ``prompt_completion``: TRL's standard ``prompt`` and ``completion`` strings; the prompt as
  written, the completion and EOS trained.
- ``instruction``: Alpaca ``instruction``, optional ``input``, ``output``, and LLaMA-Factory's
  optional ``system`` and ``history``. Rendered with ``ALPACA_PROMPT`` /
  ``ALPACA_PROMPT_NO_INPUT`` (``system`` replaces the first paragraph, each ``history`` pair
  comes first as ``ALPACA_TURN`` + response + EOS + blank line), or as a conversation of the
  chat template (``dialects.instruction_conversation``); every response and EOS trains.
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

from lorakit.train import dialects
from lorakit.train.errors import RowError, field_value

IGNORE = -100
FORMATS = ("chat", "prompt_completion", "instruction", "classification", "text")

ALPACA_PREAMBLE = ("Below is an instruction that describes a task, paired with an input that "
                   "provides further context. Write a response that appropriately completes the "
                   "request.\n\n")
ALPACA_PREAMBLE_NO_INPUT = ("Below is an instruction that describes a task. Write a response "
                            "that appropriately completes the request.\n\n")
ALPACA_TURN = "### Instruction:\n{instruction}\n\n### Response:\n"
ALPACA_TURN_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
ALPACA_PROMPT = ALPACA_PREAMBLE + ALPACA_TURN_INPUT
ALPACA_PROMPT_NO_INPUT = ALPACA_PREAMBLE_NO_INPUT + ALPACA_TURN

__all__ = ["ALPACA_PROMPT", "ALPACA_PROMPT_NO_INPUT", "Example", "FORMATS", "IGNORE", "RowError",
           "chat_messages", "detect_format", "encode", "instruction_prompt"]


@dataclass
class Example:
    """One tokenized example. ``labels``: per-token targets (causal_lm) or a class (seq_cls)."""

    input_ids: list[int]
    labels: list[int] | int | str
    where: str


def detect_format(record: dict, where: str) -> str:
    if "messages" in record or "conversations" in record:
        return "chat"
    if "prompt" in record and "completion" in record:
        return "chat" if isinstance(record["prompt"], list) else "prompt_completion"
    if "instruction" in record:
        return "instruction"
    if "text" in record and "label" in record:
        return "classification"
    if "text" in record:
        return "text"
    raise RowError(where, f"cannot tell the data format from keys {sorted(record)}; expected "
                   "messages/conversations (chat), prompt/completion, instruction/output "
                   "(instruction), text/label (classification) or text; map other column names "
                   "with columns: (--columns instruction=question,output=answer)",
                   "unknown format")


def chat_messages(record: dict, where: str) -> list[dict]:
    """The conversation as ``[{role, content, train}]`` (see ``lorakit.train.dialects``)."""
    return dialects.conversation(record, where)


def _render(tokenizer, messages: list[dict], generation_prompt: bool = False) -> str:
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    return tokenizer.apply_chat_template(plain, tokenize=False,
                                         add_generation_prompt=generation_prompt)


def chat_segments(tokenizer, messages: list[dict], where: str) -> list[tuple[str, bool]]:
    """Split the rendered conversation into (text, trained) pieces.

    Trained assistant turn ``i`` is the text that rendering ``messages[: i + 1]`` adds to
    rendering ``messages[:i]`` with the generation prompt. A trained turn of another role
    (Axolotl's ``train: true``) is its content and what the template writes after it (the
    end-of-turn), like an assistant turn. Templates that re-render earlier turns differently
    (not prefix-stable) are refused rather than masked wrongly.
    """
    segments, done = [], ""
    for i, message in enumerate(messages):
        if not dialects.trained(message):
            continue
        if message["role"] == "assistant":
            prompt = _render(tokenizer, messages[:i], True)
        else:
            before = _render(tokenizer, messages[:i]) if i else ""
            turn = _render(tokenizer, messages[: i + 1])[len(before):]
            at = turn.rfind(message["content"]) if message["content"] else -1
            if at < 0:
                raise RowError(where, f"turn {i} ({message['role']}) is marked trained but the "
                               "chat template does not write its content verbatim", "chat template")
            prompt = before + turn[:at]
        through = _render(tokenizer, messages[: i + 1])
        if not (prompt.startswith(done) and through.startswith(prompt)):
            raise RowError(where, "the chat template is not prefix-stable for this conversation, "
                           "so trained tokens cannot be masked exactly", "chat template")
        segments += [(prompt[len(done):], False), (through[len(prompt):], True)]
        done = through
    rest = _render(tokenizer, messages)[len(done):]
    return [s for s in segments if s[0]] + ([(rest, False)] if rest else [])


def instruction_prompt(record: dict, where: str) -> str:
    """The Alpaca prompt of an instruction row (everything before the last response)."""
    return "".join(text for text, _ in alpaca_segments(record, where, "")[:-1])


def alpaca_segments(record: dict, where: str, eos: str) -> list[tuple[str, bool]]:
    """An instruction row in the Alpaca layout (module docstring) as (text, trained) pieces;
    ``eos`` is the tokenizer's EOS text, written after each history response."""
    dialects.refuse_unsupported(record, where)
    instruction = field_value(record, "instruction", where)
    extra = field_value(record, "input", where, optional=True)
    system = field_value(record, "system", where, optional=True)
    preamble = ALPACA_PREAMBLE if extra else ALPACA_PREAMBLE_NO_INPUT
    segments = [((system + "\n\n") if system else preamble, False)]
    for query, response in dialects.history(record, where):
        segments += [(ALPACA_TURN.format(instruction=query), False), (response + eos, True),
                     ("\n\n", False)]
    turn = (ALPACA_TURN_INPUT.format(instruction=instruction, input=extra) if extra
            else ALPACA_TURN.format(instruction=instruction))
    segments.append((turn, False))
    return segments + [(field_value(record, "output", where), True)]


def _tokenize(tokenizer, segments: list[tuple[str, bool]], special: bool, eos: bool,
              train_all: bool, where: str) -> Example:
    ids: list[int] = []
    labels: list[int] = []
    merged: list[tuple[str, bool]] = []
    for text, trained in segments:  # neighbours with the same flag tokenize as one text
        if merged and merged[-1][1] == trained:
            merged[-1] = (merged[-1][0] + text, trained)
        elif text:
            merged.append((text, trained))
    for i, (text, trained) in enumerate(merged):
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
        text = field_value(record, "text", where)
        label = field_value(record, "label", where, types=(int, str))
        return Example(tokenizer(text)["input_ids"], label, where)
    if fmt == "text":
        segments = [(field_value(record, "text", where), True)]
        return _tokenize(tokenizer, segments, True, True, True, where)
    if fmt == "prompt_completion":
        segments = [(field_value(record, "prompt", where), False),
                    (field_value(record, "completion", where), True)]
        return _tokenize(tokenizer, segments, True, True, not completion_only, where)
    if fmt == "instruction" and template == "alpaca":
        segments = alpaca_segments(record, where, tokenizer.eos_token)
        return _tokenize(tokenizer, segments, True, True, not completion_only, where)
    if fmt == "chat":
        messages = chat_messages(record, where)
    else:
        messages = dialects.instruction_conversation(record, where)
    if getattr(tokenizer, "chat_template", None) is None:
        raise RowError(where, "chat data needs a tokenizer with a chat template", "chat template")
    segments = chat_segments(tokenizer, messages, where)
    return _tokenize(tokenizer, segments, False, False, not completion_only, where)
