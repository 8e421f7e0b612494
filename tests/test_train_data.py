"""Data: readers, formats, completion-only masking, and bad-input errors naming file and line."""

from __future__ import annotations

import csv
import json

import pytest

from lorakit.train.data import load_data, split_eval
from lorakit.train.formats import ALPACA_PROMPT_NO_INPUT, IGNORE
from tests.test_train_fixtures import one_thread, tokenizer, toy_instruction_rows, write_jsonl  # noqa: F401

CHAT = {"messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Capital of France?"},
                     {"role": "assistant", "content": "Paris."},
                     {"role": "user", "content": "And Italy?"},
                     {"role": "assistant", "content": "Rome."}]}


def _trained_text(tokenizer, example) -> list[str]:
    """Decoded runs of consecutive trained tokens."""
    runs, current = [], []
    for token, label in zip(example.input_ids, example.labels):
        if label != IGNORE:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return runs + ([tokenizer.decode(current)] if current else [])


def test_instruction_masks_exactly_the_prompt_tokens(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "Say hi.", "output": "Hi there"}])
    example = load_data(path, tokenizer).examples[0]
    prompt = tokenizer(ALPACA_PROMPT_NO_INPUT.format(instruction="Say hi."))["input_ids"]
    completion = tokenizer("Hi there", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert example.input_ids == prompt + completion
    assert example.labels == [IGNORE] * len(prompt) + completion


def test_completion_only_off_trains_every_token_but_the_first(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "Say hi.", "output": "Hi"}])
    example = load_data(path, tokenizer, completion_only=False).examples[0]
    assert example.labels == [IGNORE] + example.input_ids[1:]


def test_chat_trains_only_assistant_turns(tmp_path, tokenizer):
    example = load_data(write_jsonl(tmp_path / "c.jsonl", [CHAT]), tokenizer).examples[0]
    assert tokenizer.decode(example.input_ids) == tokenizer.apply_chat_template(CHAT["messages"], tokenize=False)
    assert _trained_text(tokenizer, example) == ["Paris.<|im_end|>\n", "Rome.<|im_end|>\n"]


def test_sharegpt_equals_messages(tmp_path, tokenizer):
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    share = {"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in CHAT["messages"]]}
    a = load_data(write_jsonl(tmp_path / "a.jsonl", [CHAT]), tokenizer).examples[0]
    b = load_data(write_jsonl(tmp_path / "b.jsonl", [share]), tokenizer).examples[0]
    assert (a.input_ids, a.labels) == (b.input_ids, b.labels)


def test_instruction_with_chat_template(tmp_path, tokenizer):
    rows = [{"instruction": "Translate", "input": "chat", "output": "Katze"}]
    example = load_data(write_jsonl(tmp_path / "d.jsonl", rows), tokenizer, template="chat").examples[0]
    assert "<|im_start|>user\nTranslate\n\nchat<|im_end|>" in tokenizer.decode(example.input_ids)
    assert _trained_text(tokenizer, example) == ["Katze<|im_end|>\n"]


def test_text_and_classification_formats(tmp_path, tokenizer):
    text = load_data(write_jsonl(tmp_path / "t.jsonl", [{"text": "hello world"}]), tokenizer)
    assert text.fmt == "text" and text.examples[0].input_ids[-1] == tokenizer.eos_token_id
    rows = [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}]
    cls = load_data(write_jsonl(tmp_path / "c.jsonl", rows), tokenizer)
    assert cls.fmt == "classification" and cls.label_names == ["neg", "pos"]
    assert [e.labels for e in cls.examples] == [1, 0]


def test_all_file_types_read_the_same(tmp_path, tokenizer):
    rows = toy_instruction_rows(5)
    jsonl = load_data(write_jsonl(tmp_path / "d.jsonl", rows), tokenizer)
    (tmp_path / "d.json").write_text(json.dumps(rows))
    with open(tmp_path / "d.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["instruction", "output"])
        writer.writeheader()
        writer.writerows(rows)
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    for name in ("d.json", "d.csv", "d.parquet", "saved"):
        other = load_data(tmp_path / name, tokenizer)
        assert [e.input_ids for e in other.examples] == [e.input_ids for e in jsonl.examples], name


@pytest.mark.parametrize("rows, message", [
    ([{"instruction": "a", "output": "b"}, {"instruction": "c"}], ":2: missing field 'output'"),
    ([{"instruction": "a", "output": 3}], ":1: field 'output' must be str, got int"),
    ([{"messages": [{"role": "user", "content": "hi"}]}], ":1: messages has no assistant turn"),
    ([{"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}],
     ":1: messages[0]: missing field 'content'"),
    ([{"instruction": "a", "output": "word " * 200}], ":1: 2"),
    ([{"question": "a"}], ":1: cannot tell the data format"),
])
def test_bad_rows_name_file_and_line(tmp_path, tokenizer, rows, message):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError) as err:
        load_data(path, tokenizer, max_seq_len=128)
    assert f"{path}{message}" in str(err.value)


def test_too_long_message_says_what_to_do(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "long.jsonl", [{"text": "word " * 300}])
    with pytest.raises(ValueError, match=r"long.jsonl:1: 30\d tokens, longer than max_seq_len=64"):
        load_data(path, tokenizer, max_seq_len=64)


def test_invalid_json_and_empty_file(tmp_path, tokenizer):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(ValueError, match=rf"{bad}:2: invalid JSON"):
        load_data(bad, tokenizer)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match=rf"{empty}: no rows \(empty file\)"):
        load_data(empty, tokenizer)
    with pytest.raises(FileNotFoundError, match="data not found"):
        load_data(tmp_path / "missing.jsonl", tokenizer)


def test_skip_bad_rows_counts_them(tmp_path, tokenizer):
    rows = toy_instruction_rows(4) + [{"instruction": "x"}, {"instruction": "y", "output": 1},
                                      {"instruction": "z", "output": "w " * 200}]
    data = load_data(write_jsonl(tmp_path / "d.jsonl", rows), tokenizer, max_seq_len=100, skip_bad=True)
    assert len(data.examples) == 4
    assert dict(data.skipped) == {"missing field": 1, "wrong type": 1, "too long": 1}


def test_eval_split_is_seeded_and_disjoint(tmp_path, tokenizer):
    data = load_data(write_jsonl(tmp_path / "d.jsonl", toy_instruction_rows(20)), tokenizer)
    train, held = split_eval(data, 0.25, seed=3)
    assert (len(train.examples), len(held.examples)) == (15, 5)
    again = split_eval(data, 0.25, seed=3)[1]
    assert [e.where for e in held.examples] == [e.where for e in again.examples]
    assert not {e.where for e in train.examples} & {e.where for e in held.examples}
