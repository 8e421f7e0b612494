"""`lorakit data preview` / `train --dry-run` and lorakit.train.preview.preview(): the examples
as the model sees them, without loading weights."""

from __future__ import annotations

import json

import pytest
import yaml

from lorakit.cli import main
from lorakit.train.config_io import to_dict
from lorakit.train.preview import preview
from tests.test_train_fixtures import (  # noqa: F401
    make_config, one_thread, tiny_model_dir, tokenizer, toy_data, write_jsonl)


@pytest.fixture
def no_weights(monkeypatch):
    """Loading any model's weights fails the test."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("preview loaded model weights")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr("lorakit.models.load_model", refuse)


def test_preview_segments_are_the_loss_mask(make_config, tmp_path, no_weights):
    rows = [{"messages": [{"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": f"answer {i}"}]} for i in range(6)]
    rows.append({"messages": [{"role": "user", "content": "long " * 300},
                              {"role": "assistant", "content": "x"}]})
    rows.append({"messages": [{"role": "user", "content": "no answer"}]})
    cfg = make_config(data=str(write_jsonl(tmp_path / "c.jsonl", rows)), max_seq_len=64)
    result = preview(cfg, n=2)
    json.dumps(result)  # JSON-able
    assert len(result["examples"]) == 2
    first = result["examples"][0]
    assert "".join(s["text"] for s in first["segments"]) == first["text"]
    assert [s["text"] for s in first["segments"] if s["trained"]] == ["answer 0<|im_end|>\n"]
    assert first["text"].endswith("<|im_start|>assistant\nanswer 0<|im_end|>\n")
    stats = result["stats"]
    assert (stats["rows"], stats["kept"], stats["dropped"], stats["truncated"]) == (8, 6, 2, 0)
    assert stats["dropped_by_reason"] == {"too long": 1, "missing field": 1}
    assert "c.jsonl:7" in stats["first_dropped"]["too long"]
    assert "c.jsonl:7" in stats["would_stop"]  # on_bad_row: error would stop at row 7
    assert stats["tokens_max"] <= 64 and stats["tokens_min"] <= stats["tokens_mean"]
    assert stats["trained_tokens_total"] == sum(
        e["n_trained"] for e in preview(cfg, n=10)["examples"])


def test_preview_instruction_and_classification(make_config, tmp_path, tokenizer, no_weights):
    result = preview(make_config(), n=1)
    ex = result["examples"][0]
    assert [s["text"] for s in ex["segments"] if s["trained"]] == ["yes" + tokenizer.eos_token]
    assert ex["n_trained"] == len(tokenizer("yes", add_special_tokens=False)["input_ids"]) + 1
    assert result["stats"]["would_stop"] is None and result["stats"]["optimizer_steps"] == 12
    rows = [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}]
    cls = make_config(data=str(write_jsonl(tmp_path / "l.jsonl", rows)), task="seq_cls")
    ex = preview(cls, n=2)["examples"]
    assert [(e["text"], e["label"], e["n_trained"]) for e in ex] == [("good", "pos", 0), ("bad", "neg", 0)]


def test_cli_preview_and_dry_run(make_config, tmp_path, capsys, no_weights):
    cfg = make_config(output_dir=str(tmp_path / "never"))
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    assert main(["data", "preview", str(path), "-n", "1", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "[[yes<|im_end|>]]" in out or "[[yes" in out
    assert "48 rows, 48 kept, 0 dropped, 0 truncated" in out
    assert main(["train", str(path), "--dry-run", "--json", "-n", "3"]) == 0
    assert len(json.loads(capsys.readouterr().out)["examples"]) == 3
    long_rows = write_jsonl(tmp_path / "long.jsonl", [{"instruction": "hi", "output": "ok"},
                                                      {"instruction": "hi " * 99, "output": "ok"}])
    assert main(["train", str(path), "--dry-run", "--data", str(long_rows),
                 "--max-seq-len", "64"]) == 1  # training would stop at the long row
    out = capsys.readouterr().out
    assert "lorakit train would stop here (on_bad_row: error)" in out and "long.jsonl:2" in out
    assert main(["train", str(path), "--dry-run", "--max-seq-len", "8"]) == 2  # every row too long
    assert "every row was skipped ({'too long': 48})" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()  # a dry run writes nothing
