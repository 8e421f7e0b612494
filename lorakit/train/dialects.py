"""The row layouts of the peers (TRL, OpenAI, ShareGPT, Alpaca, LLaMA-Factory, Axolotl), read
into one conversation form, with every field that changes training honoured or refused.

A conversation is a list of turns ``{"role", "content", "train"}``: ``role`` is one of
``ROLES``, ``content`` a string, ``train`` ``True``/``False`` (this turn's tokens are / are not
trained) or ``None`` (the default: assistant turns train, the others do not).

What is read (the ``chat`` format):

- ``messages`` (OpenAI / TRL conversational) or ``conversations`` (ShareGPT), each turn with
  ``role``/``content`` or ``from``/``value`` keys; ShareGPT speakers ``human``, ``gpt``,
  ``observation`` map to ``user``, ``assistant``, ``tool``.
- ``content`` as a list of parts (OpenAI): the ``text`` parts joined without separator; any
  other part type (images, audio) is refused.
- a top-level ``system`` (ShareGPT in LLaMA-Factory, Axolotl's ``field_system``): the first
  turn, as both tools do; a row that also has a system turn is refused rather than guessed.
- per-turn training flags (Axolotl): ``weight: 0`` masks the turn (``1`` keeps the default),
  ``train`` / ``training: true|false`` trains or masks the turn whatever its role.
- TRL's conversational ``prompt``/``completion`` lists: the conversation is prompt +
  completion, and exactly the completion turns train (an assistant turn inside ``prompt``
  does not), as TRL's completion mask does.

Alpaca rows (the ``instruction`` format) may carry LLaMA-Factory's ``system`` (a string) and
``history`` (``[[query, response], ...]``, earlier turns before this one); see
``instruction_conversation``.

Fields that would change the sample but that lorakit does not implement (``tools``, images,
preference pairs) are refused by name instead of being dropped.
"""

from __future__ import annotations

from lorakit.train.errors import RowError, field_value

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "tool": "tool", "observation": "tool"}
UNSUPPORTED = {
    "tools": "tool definitions", "images": "images", "videos": "videos", "audios": "audio",
    "chosen": "preference pairs (DPO data)", "rejected": "preference pairs (DPO data)",
}


def refuse_unsupported(record: dict, where: str) -> None:
    """A field that would change the sample but is not implemented stops the row by name."""
    for key, what in UNSUPPORTED.items():
        if record.get(key) not in (None, [], ""):
            raise RowError(where, f"field {key!r} ({what}) is not supported by lorakit train; "
                           "remove it, or the row would be trained without it", "unsupported field")


def _content(value, at: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for j, part in enumerate(value):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind != "text" or not isinstance(part.get("text"), str):
                raise RowError(f"{at}: content[{j}]", f"only text parts are supported, got "
                               f"{kind!r}", "unsupported field")
            texts.append(part["text"])
        return "".join(texts)
    raise RowError(at, f"field 'content' must be str or a list of text parts, got "
                   f"{type(value).__name__}", "wrong type")


def _train_flag(turn: dict, at: str) -> bool | None:
    flag = None
    for key in ("train", "training"):
        if key in turn and turn[key] is not None:
            if not isinstance(turn[key], bool):
                raise RowError(at, f"field {key!r} must be true or false, got {turn[key]!r}",
                               "wrong type")
            flag = turn[key]
    if "weight" in turn and turn["weight"] is not None:
        weight = turn["weight"]
        if weight not in (0, 1) or isinstance(weight, bool):
            raise RowError(at, f"field 'weight' must be 0 (do not train this turn) or 1, got "
                           f"{weight!r}; lorakit does not scale the loss per turn", "wrong type")
        if weight == 0:
            if flag:
                raise RowError(at, "weight 0 contradicts train: true", "wrong type")
            flag = False
    return flag


_TURN_UNSUPPORTED = ("tool_calls", "function_call")


def _turn(turn, at: str) -> dict:
    if not isinstance(turn, dict):
        raise RowError(at, f"expected an object, got {type(turn).__name__}", "wrong type")
    for key in _TURN_UNSUPPORTED:
        if turn.get(key):
            raise RowError(at, f"field {key!r} (tool calls) is not supported by lorakit train; "
                           "remove the turn, or the row would be trained without it",
                           "unsupported field")
    if "role" in turn or "content" in turn:
        role = field_value(turn, "role", at)
        if role not in ROLES:
            raise RowError(at, f"unknown role {role!r}; known roles: {', '.join(ROLES)}",
                           "unknown role")
        content = _content(field_value(turn, "content", at, types=(str, list)), at)
    else:
        speaker = field_value(turn, "from", at)
        if speaker not in SHAREGPT_ROLES:
            raise RowError(at, f"unknown speaker {speaker!r}; known: "
                           f"{', '.join(SHAREGPT_ROLES)}", "unknown role")
        role, content = SHAREGPT_ROLES[speaker], field_value(turn, "value", at)
    return {"role": role, "content": content, "train": _train_flag(turn, at)}


def _turns(record: dict, key: str, where: str) -> list[dict]:
    turns = field_value(record, key, where, types=(list,))
    return [_turn(t, f"{where}: {key}[{i}]") for i, t in enumerate(turns)]


def conversation(record: dict, where: str) -> list[dict]:
    """A ``chat`` row (any layout in the module docstring) as turns ``{role, content, train}``."""
    refuse_unsupported(record, where)
    if "prompt" in record and "completion" in record:
        turns = [dict(t, train=False if t["train"] is None else t["train"])
                 for t in _turns(record, "prompt", where)]
        turns += [dict(t, train=True if t["train"] is None else t["train"])
                  for t in _turns(record, "completion", where)]
        key = "completion"
    else:
        key = "messages" if "messages" in record else "conversations"
        turns = _turns(record, key, where)
    system = field_value(record, "system", where, optional=True)
    if system:
        if any(t["role"] == "system" for t in turns):
            raise RowError(where, "row has a top-level 'system' and a system turn; keep one",
                           "wrong type")
        turns = [{"role": "system", "content": system, "train": None}] + turns
    if not any(trained(t) for t in turns):
        raise RowError(where, f"{key} has no assistant turn to train on", "missing field")
    return turns


def trained(turn: dict) -> bool:
    """Whether a turn's tokens are trained (its flag, else: assistant turns only)."""
    return turn["role"] == "assistant" if turn["train"] is None else turn["train"]


def history(record: dict, where: str) -> list[tuple[str, str]]:
    """LLaMA-Factory's ``history``: earlier ``[query, response]`` pairs (may be absent)."""
    value = field_value(record, "history", where, types=(list,), optional=True) or []
    pairs = []
    for i, pair in enumerate(value):
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(isinstance(x, str) for x in pair)):
            raise RowError(f"{where}: history[{i}]", f"expected [query, response] strings, got "
                           f"{pair!r:.60}", "wrong type")
        pairs.append((pair[0], pair[1]))
    return pairs


def instruction_conversation(record: dict, where: str) -> list[dict]:
    """An Alpaca row as a conversation (the chat-template path), as LLaMA-Factory builds it:
    ``system`` first, each ``history`` pair as a user and an assistant turn, then the user turn
    ``instruction`` + blank line + ``input`` and the ``output`` turn. Every assistant turn
    trains (LLaMA-Factory's default ``mask_history: false``)."""
    refuse_unsupported(record, where)
    instruction = field_value(record, "instruction", where)
    extra = field_value(record, "input", where, optional=True)
    system = field_value(record, "system", where, optional=True)
    turns = [{"role": "system", "content": system, "train": None}] if system else []
    for query, response in history(record, where):
        turns += [{"role": "user", "content": query, "train": None},
                  {"role": "assistant", "content": response, "train": None}]
    user = f"{instruction}\n\n{extra}" if extra else instruction
    return turns + [{"role": "user", "content": user, "train": None},
                    {"role": "assistant", "content": field_value(record, "output", where),
                     "train": None}]


COLUMN_TARGETS = ("instruction", "input", "output", "system", "history", "messages",
                  "conversations", "prompt", "completion", "text", "label", "role", "content")
_TURN_LISTS = ("messages", "conversations", "prompt", "completion")


def check_columns(columns: dict[str, str], where: str = "columns") -> None:
    """``columns`` maps lorakit's field names to a data set's (LLaMA-Factory's
    ``dataset_info.json`` ``columns``/``tags``, Axolotl's ``field_*``): ``{"instruction":
    "question"}`` reads ``question`` as ``instruction``; ``role``/``content`` rename keys inside
    each turn."""
    for target, source in columns.items():
        if target not in COLUMN_TARGETS:
            raise ValueError(f"{where}: unknown field {target!r}; the fields a column can map "
                             f"to: {', '.join(COLUMN_TARGETS)}")
        if not isinstance(source, str) or not source:
            raise ValueError(f"{where}: {target} must name a column, got {source!r}")


def map_columns(record: dict, columns: dict[str, str], where: str) -> dict:
    """``record`` with its columns renamed as ``columns`` says (see ``check_columns``); a
    mapped column that the row lacks is an error naming it."""
    if not columns:
        return record
    out = dict(record)
    turn_keys = {t: s for t, s in columns.items() if t in ("role", "content")}
    for target, source in columns.items():
        if target in turn_keys:
            continue
        if source not in record:
            raise RowError(where, f"column {source!r} (mapped to {target!r}) not in row; row has "
                           f"{sorted(record)}", "missing field")
        value = out.pop(source)
        out[target] = value
    if turn_keys:
        for key in _TURN_LISTS:
            if isinstance(out.get(key), list):
                out[key] = [_rename(t, turn_keys) for t in out[key]]
    return out


def _rename(turn, keys: dict[str, str]):
    if not isinstance(turn, dict):
        return turn
    renamed = {k: v for k, v in turn.items() if k not in keys.values()}
    renamed.update({target: turn[source] for target, source in keys.items() if source in turn})
    return renamed
