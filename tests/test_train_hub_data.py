"""Data sets by Hub name (hf:org/name[:split]) read offline from a Hub cache built here, and
split selection (training reads train; `lorakit eval --split`)."""

from __future__ import annotations

import time

import pytest

from lorakit.cli import main
from lorakit.eval.prompts import load_eval_set
from lorakit.train.data import load_data
from tests.test_train_fixtures import one_thread, tokenizer, write_jsonl  # noqa: F401


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face Hub cache holding the data set org/toy (train: 3 rows, test: 1), laid out
    as huggingface_hub writes it; HF_HUB_OFFLINE on, so nothing may touch the network."""
    from huggingface_hub import constants

    root = tmp_path / "hub"
    snapshot = root / "datasets--org--toy" / "snapshots" / "0123abcd"
    (snapshot / "data").mkdir(parents=True)
    (root / "datasets--org--toy" / "refs").mkdir()
    (root / "datasets--org--toy" / "refs" / "main").write_text("0123abcd")
    write_jsonl(snapshot / "data" / "train.jsonl",
                [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(3)])
    write_jsonl(snapshot / "data" / "test.jsonl", [{"instruction": "qt", "output": "at"}])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    return root


def test_hub_dataset_by_name_offline(hub_cache, tokenizer):
    train = load_data("hf:org/toy", tokenizer)
    direct = load_data(next(hub_cache.rglob("train.jsonl")), tokenizer)
    assert [e.input_ids for e in train.examples] == [e.input_ids for e in direct.examples]
    assert train.examples[0].where == "hf:org/toy[train] row 0"
    test = load_data("hf:org/toy:test", tokenizer)
    assert len(test.examples) == 1 and test.examples[0].where == "hf:org/toy[test] row 0"
    with pytest.raises(ValueError, match=r"hf:org/toy:dev: no split 'dev'; splits: \['train', 'test'\]"):
        load_data("hf:org/toy:dev", tokenizer)


def test_missing_hub_dataset_fails_fast_offline(hub_cache, tokenizer):
    started = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="'org/nope' is not in the local Hub cache"):
        load_data("hf:org/nope", tokenizer)
    assert time.perf_counter() - started < 5
    with pytest.raises(ValueError, match="expected hf:org/name or hf:org/name:split"):
        load_data("hf:", tokenizer)


def test_eval_split_is_chosen_not_guessed(tmp_path, tokenizer, capsys):
    import datasets

    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(4)]
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:3]),
                          "test": datasets.Dataset.from_list(rows[3:])}).save_to_disk(str(saved))
    with pytest.raises(ValueError, match=r"has splits \['train', 'test'\]; choose one \(--split NAME\)"):
        load_eval_set(str(saved), tokenizer)
    evalset = load_eval_set(str(saved), tokenizer, split="test")
    assert evalset.references == ["a3"] and evalset.data.examples[0].where == f"{saved}[test] row 0"
    assert main(["eval", "--data", str(saved), "--out", str(tmp_path / "e.json")]) == 2
    assert "choose one (--split NAME)" in capsys.readouterr().err
    assert len(load_data(str(saved), tokenizer).examples) == 3  # training reads train
