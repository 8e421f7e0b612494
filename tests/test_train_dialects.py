"""The peers' row layouts (TRL, OpenAI, ShareGPT, LLaMA-Factory, Axolotl) train exactly what
those tools train: each test decodes the tokenized, masked example and compares; TRL's own
preprocessing is run where it is installed. Column mapping, unknown roles, non-UTF-8 bytes."""

from __future__ import annotations

import pytest

from lorakit.train.data import load_data
from lorakit.train.formats import ALPACA_PREAMBLE_NO_INPUT, IGNORE
from tests.test_train_data import _trained_text
from tests.test_train_fixtures import one_thread, tiny_model_dir, tokenizer, write_jsonl  # noqa: F401

USER_ASSISTANT = [{"role": "user", "content": "Capital of France?"},
                  {"role": "assistant", "content": "Paris."}]


def _load(tmp_path, tokenizer, rows, **kw):
    return load_data(write_jsonl(tmp_path / "d.jsonl", rows), tokenizer, **kw)


def _trl_examples(rows, tiny_model_dir, tokenizer, tmp_path):
    """(input_ids, labels) per row, from TRL's SFTTrainer dataset preparation."""
    trl = pytest.importorskip("trl", reason="TRL not installed: pip install 'lorakit[dev]'")
    import datasets
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    args = trl.SFTConfig(output_dir=str(tmp_path / "trl"), report_to=[], max_length=None, bf16=False,
                         use_cpu=True)
    trainer = trl.SFTTrainer(model=model, args=args, processing_class=tokenizer,
                             train_dataset=datasets.Dataset.from_list(rows))
    return [(r["input_ids"], r["labels"]) for r in trainer.train_dataset]


def test_trl_prompt_completion_strings_and_lists_match_trl(tmp_path, tokenizer, tiny_model_dir):
    strings = [{"prompt": "The sky is", "completion": " blue."},
               {"prompt": "Two plus two is", "completion": " four."}]
    chats = [{"prompt": [{"role": "system", "content": "Be brief."}, *USER_ASSISTANT,
                         {"role": "user", "content": "And Italy?"}],
              "completion": [{"role": "assistant", "content": "Rome."}]}]
    for rows in (strings, chats):
        ours = _load(tmp_path, tokenizer, rows)
        assert ours.fmt == ("prompt_completion" if rows is strings else "chat")
        theirs = _trl_examples(rows, tiny_model_dir, tokenizer, tmp_path)
        assert len(theirs) == len(ours.examples)
        for example, (ids, labels) in zip(ours.examples, theirs):
            assert (example.input_ids, example.labels) == (ids, labels)
    # the assistant turn inside a conversational prompt is context, not a target
    assert _trained_text(tokenizer, ours.examples[0]) == ["Rome.<|im_end|>\n"]


def test_openai_content_parts_equal_plain_strings(tmp_path, tokenizer):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Capital of "},
                                          {"type": "text", "text": "France?"}]},
             {"role": "assistant", "content": [{"type": "text", "text": "Paris."}]}]
    a = _load(tmp_path, tokenizer, [{"messages": USER_ASSISTANT}]).examples[0]
    b = _load(tmp_path, tokenizer, [{"messages": parts}]).examples[0]
    c = _load(tmp_path, tokenizer, [{"conversations": USER_ASSISTANT}]).examples[0]
    assert (a.input_ids, a.labels) == (b.input_ids, b.labels) == (c.input_ids, c.labels)
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
             USER_ASSISTANT[1]]
    with pytest.raises(ValueError, match=r"d.jsonl:1: messages\[0\]: content\[0\]: only text parts "
                                         r"are supported, got 'image_url'"):
        _load(tmp_path, tokenizer, [{"messages": image}])


def test_sharegpt_top_level_system_is_the_first_turn(tmp_path, tokenizer):
    share = {"system": "Be brief.", "conversations": [{"from": "human", "value": "Capital of France?"},
                                                      {"from": "gpt", "value": "Paris."}]}
    ours = _load(tmp_path, tokenizer, [share]).examples[0]
    expected = tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."}, *USER_ASSISTANT],
                                             tokenize=False)
    assert tokenizer.decode(ours.input_ids) == expected
    assert _trained_text(tokenizer, ours) == ["Paris.<|im_end|>\n"]
    both = dict(share, conversations=[{"from": "system", "value": "x"}] + share["conversations"])
    with pytest.raises(ValueError, match="top-level 'system' and a system turn"):
        _load(tmp_path, tokenizer, [both])


def test_axolotl_per_turn_weight_and_train_flags(tmp_path, tokenizer):
    """Axolotl chat_template: a turn's training flag overrides roles_to_train; the trained span
    of a turn is its content and end-of-turn."""
    turns = [{"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello!", "weight": 0},
             {"role": "user", "content": "Name a color", "train": True},
             {"role": "assistant", "content": "Red."},
             {"role": "user", "content": "Another?"},
             {"role": "assistant", "content": "Blue.", "training": False},
             {"role": "user", "content": "Last one"},
             {"role": "assistant", "content": "Green."}]
    example = _load(tmp_path, tokenizer, [{"messages": turns}]).examples[0]
    plain = [{"role": t["role"], "content": t["content"]} for t in turns]
    assert tokenizer.decode(example.input_ids) == tokenizer.apply_chat_template(plain, tokenize=False)
    assert _trained_text(tokenizer, example) == ["Name a color<|im_end|>\n", "Red.<|im_end|>\n",
                                                 "Green.<|im_end|>\n"]
    sharegpt = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!", "weight": 0},
                {"from": "human", "value": "Again"}, {"from": "gpt", "value": "Hi again."}]
    example = _load(tmp_path, tokenizer, [{"conversations": sharegpt}]).examples[0]
    assert _trained_text(tokenizer, example) == ["Hi again.<|im_end|>\n"]
    bad = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "x", "weight": 0.5}]
    with pytest.raises(ValueError, match=r"conversations\[1\]: field 'weight' must be 0"):
        _load(tmp_path, tokenizer, [{"conversations": bad}])
    masked = [USER_ASSISTANT[0], dict(USER_ASSISTANT[1], train=False)]
    with pytest.raises(ValueError, match="no assistant turn to train on"):
        _load(tmp_path, tokenizer, [{"messages": masked}])


def test_alpaca_system_and_history_llamafactory(tmp_path, tokenizer):
    row = {"instruction": "And Italy?", "output": "Rome.", "system": "Answer with a city.",
           "history": [["Capital of France?", "Paris."]]}
    chat = _load(tmp_path, tokenizer, [row], template="chat").examples[0]
    messages = [{"role": "system", "content": "Answer with a city."}, *USER_ASSISTANT,
                {"role": "user", "content": "And Italy?"}, {"role": "assistant", "content": "Rome."}]
    assert tokenizer.decode(chat.input_ids) == tokenizer.apply_chat_template(messages, tokenize=False)
    assert _trained_text(tokenizer, chat) == ["Paris.<|im_end|>\n", "Rome.<|im_end|>\n"]
    alpaca = _load(tmp_path, tokenizer, [row]).examples[0]
    eos = tokenizer.eos_token
    assert tokenizer.decode(alpaca.input_ids) == (
        "Answer with a city.\n\n### Instruction:\nCapital of France?\n\n### Response:\nParis." + eos
        + "\n\n### Instruction:\nAnd Italy?\n\n### Response:\nRome." + eos)
    assert _trained_text(tokenizer, alpaca) == ["Paris." + eos, "Rome." + eos]
    plain = _load(tmp_path, tokenizer, [{"instruction": "Hi", "output": "Yo",
                                         "history": [["a", "b"]]}]).examples[0]
    assert tokenizer.decode(plain.input_ids).startswith(ALPACA_PREAMBLE_NO_INPUT + "### Instruction:\na\n")
    with pytest.raises(ValueError, match=r"d.jsonl:1: history\[0\]: expected \[query, response\]"):
        _load(tmp_path, tokenizer, [{"instruction": "a", "output": "b", "history": ["x"]}])


def test_unknown_roles_and_unsupported_fields_are_refused(tmp_path, tokenizer):
    bad = [{"role": "bot", "content": "x"}]
    with pytest.raises(ValueError, match=r"d.jsonl:1: messages\[0\]: unknown role 'bot'; known roles: "
                                         r"system, user, assistant, tool"):
        _load(tmp_path, tokenizer, [{"messages": bad}])
    with pytest.raises(ValueError, match=r"conversations\[0\]: unknown speaker 'robot'; known: human"):
        _load(tmp_path, tokenizer, [{"conversations": [{"from": "robot", "value": "x"}]}])
    with pytest.raises(ValueError, match=r"field 'tools' \(tool definitions\) is not supported"):
        _load(tmp_path, tokenizer, [{"messages": USER_ASSISTANT, "tools": [{"name": "f"}]}])
    call = {"role": "assistant", "content": "", "tool_calls": [{"id": "1", "type": "function"}]}
    with pytest.raises(ValueError, match=r"messages\[1\]: field 'tool_calls' \(tool calls\) is not supported"):
        _load(tmp_path, tokenizer, [{"messages": [USER_ASSISTANT[0], call]}])


def test_column_mapping(tmp_path, tokenizer):
    rows = [{"question": "Say hi.", "answer": "Hi there"}]
    mapped = _load(tmp_path, tokenizer, rows, columns={"instruction": "question", "output": "answer"})
    direct = _load(tmp_path, tokenizer, [{"instruction": "Say hi.", "output": "Hi there"}])
    assert mapped.fmt == "instruction"
    assert mapped.examples[0].input_ids == direct.examples[0].input_ids
    turns = [{"speaker": "user", "text": "Capital of France?"}, {"speaker": "assistant", "text": "Paris."}]
    chat = _load(tmp_path, tokenizer, [{"dialog": turns}],
                 columns={"messages": "dialog", "role": "speaker", "content": "text"}).examples[0]
    assert _trained_text(tokenizer, chat) == ["Paris.<|im_end|>\n"]
    with pytest.raises(ValueError, match=r"d.jsonl:1: column 'answer' \(mapped to 'output'\) not in row"):
        _load(tmp_path, tokenizer, [{"question": "q"}], columns={"instruction": "question", "output": "answer"})
    with pytest.raises(ValueError, match="columns: unknown field 'reply'"):
        _load(tmp_path, tokenizer, rows, columns={"reply": "answer"})


@pytest.mark.parametrize("name", ["d.jsonl", "d.json", "d.csv"])
def test_non_utf8_byte_names_file_and_line(tmp_path, tokenizer, name):
    path = tmp_path / name
    good = '{"text": "ok"}\n' if name != "d.csv" else "text\nok\n"
    path.write_bytes(good.encode() + b'{"text": "caf\xe9"}\n' if name != "d.csv"
                     else good.encode() + b"caf\xe9\n")
    with pytest.raises(ValueError, match=rf"{path}:\d: byte 0xe9 at column \d+ is not UTF-8 text"):
        load_data(path, tokenizer)


def test_columns_flag_and_yaml_block(tmp_path, tokenizer, tiny_model_dir, capsys):
    from lorakit.cli import main

    data = write_jsonl(tmp_path / "q.jsonl", [{"question": "Say hi.", "answer": "Hi there"}])
    common = ["data", "preview", "--model", str(tiny_model_dir), "--data", str(data), "--json"]
    assert main(common + ["--columns", "instruction=question,output=answer"]) == 0
    import json

    first = json.loads(capsys.readouterr().out)["examples"][0]
    assert [s["text"] for s in first["segments"] if s["trained"]] == ["Hi there" + tokenizer.eos_token]
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {tiny_model_dir}\ndata: {data}\ncolumns:\n  instruction: question\n"
                      "  output: answer\n")
    assert main(["data", "preview", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"][0] == first
