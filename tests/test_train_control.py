"""Stopping a training run from outside (a STOP file): a checkpoint of the step it stopped at,
no final adapter, and a resume that ends where an uninterrupted run ends, bit for bit."""

from __future__ import annotations

from safetensors.torch import load_file

from lorakit.train import train
from lorakit.train.checkpoint import list_checkpoints
from lorakit.train.control import STOP_FILE, request_stop
from lorakit.train.tracking import read_metrics
from tests.test_train_fixtures import make_config, one_thread, tiny_model_dir, tokenizer, toy_data  # noqa: F401
from tests.ui_support import stop_at


def test_stop_file_checkpoints_and_resume_matches_uninterrupted(make_config, tmp_path, monkeypatch, capsys):
    reference = load_file(train(make_config(max_steps=8, output_dir=str(tmp_path / "ref")))
                          / "adapter_model.safetensors")
    cfg = make_config(max_steps=8, save_every=0)
    stop_at(monkeypatch, 3)
    out = train(cfg)
    run_dir = tmp_path / "run"
    assert out == run_dir / "checkpoints" / "step-00000003"
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-00000003"]  # save_every 0: only the stop's
    assert (out / "adapter" / "adapter_config.json").is_file()  # usable before the run ends
    assert not (run_dir / "adapter").exists() and not (run_dir / STOP_FILE).exists()
    assert max(r["step"] for r in read_metrics(run_dir / "metrics.jsonl")) == 3
    assert "stopped on request at step 3" in capsys.readouterr().out
    monkeypatch.undo()
    resumed = train(cfg, resume=True)
    again = load_file(resumed / "adapter_model.safetensors")
    assert reference.keys() == again.keys()
    for key in reference:
        assert reference[key].equal(again[key]), key


def test_stale_stop_file_is_ignored(make_config, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    request_stop(run_dir)  # left over from before this process started
    out = train(make_config(max_steps=2))
    assert out == run_dir / "adapter" and not (run_dir / STOP_FILE).exists()
