"""data_mix: several sources (files, Hub names) mixed with weights, deterministic by seed."""

from __future__ import annotations

import pytest

from lorakit.train import build
from lorakit.train.mix import take_counts
from lorakit.train.preview import preview
from tests.test_train_fixtures import (  # noqa: F401
    make_config, one_thread, tiny_model_dir, tokenizer, toy_data, write_jsonl)


def test_take_counts():
    assert take_counts(10, 1) == (1, 0) and take_counts(10, 0.5) == (0, 5)
    assert take_counts(10, 2.3) == (2, 3) and take_counts(3, 0.1) == (0, 0)
    with pytest.raises(ValueError, match="weights must be finite and > 0"):
        take_counts(3, float("inf"))


def test_mix_weights_scale_each_source(make_config, tmp_path, tokenizer):
    chat = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": f"c{i}"}, {"role": "assistant", "content": "x"}]}
        for i in range(10)])
    alpaca = write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": f"a{i}", "output": "y"} for i in range(8)])
    cfg = make_config(data="", data_mix={str(chat): 0.5, str(alpaca): 2})
    train, _ = build.load_training_data(cfg, tokenizer)
    wheres = [e.where for e in train.examples]
    from_chat = [w for w in wheres if "chat.jsonl" in w]
    assert len(from_chat) == 5 and len(set(from_chat)) == 5  # a seeded half, no repeats
    assert len(wheres) - len(from_chat) == 16  # every alpaca row twice
    assert train.fmt == "chat+instruction"
    again, _ = build.load_training_data(cfg, tokenizer)
    assert [e.where for e in again.examples] == wheres  # same seed, same mix
    other, _ = build.load_training_data(make_config(data="", data_mix=cfg.data_mix, seed=1), tokenizer)
    assert [w for w in (e.where for e in other.examples) if "chat" in w] != from_chat
    assert preview(cfg, n=1)["stats"]["kept"] == 21


def test_mix_config_errors(make_config, tmp_path):
    with pytest.raises(ValueError, match="give data or data_mix, not both"):
        make_config(data_mix={"a.jsonl": 1})
    with pytest.raises(ValueError, match="data_mix weights must be > 0"):
        make_config(data="", data_mix={"a.jsonl": 0})
    with pytest.raises(ValueError, match=r"data_mix must be .*, got \{'a.jsonl': 'lots'\}"):
        make_config(data="", data_mix={"a.jsonl": "lots"})
    with pytest.raises(FileNotFoundError, match="data_mix not found: .*nope.jsonl"):
        build.check_inputs(make_config(data="", data_mix={str(tmp_path / "nope.jsonl"): 1}))


def test_mix_from_yaml_and_flags(tmp_path, tiny_model_dir, capsys):
    import json

    from lorakit.cli import main

    write_jsonl(tmp_path / "a.jsonl", [{"text": "aa"}] * 4)
    write_jsonl(tmp_path / "b.jsonl", [{"text": "bb"}] * 4)
    (tmp_path / "c.yaml").write_text(f"model: {tiny_model_dir}\ndata_mix:\n  a.jsonl: 1\n  b.jsonl: 1e-0\n")
    assert main(["data", "preview", str(tmp_path / "c.yaml"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stats"]["kept"] == 8
    flags = f"{tmp_path / 'a.jsonl'}=0.5,{tmp_path / 'b.jsonl'}=1"
    assert main(["data", "preview", "--model", str(tiny_model_dir), "--data-mix", flags, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stats"]["kept"] == 6
