"""The shipped examples/*.yaml run from a directory other than the repository root (their
paths are relative to the file): two optimizer steps each, on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorakit.cli import main
from tests.test_train_fixtures import one_thread, tiny_model_dir, tokenizer  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.mark.parametrize("config", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs_from_another_directory(config, tmp_path, monkeypatch, tiny_model_dir, capsys):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    assert main(["train", str(config), "--dry-run", "-n", "1", "--color", "never"]) == 0
    assert "--- stats ---" in capsys.readouterr().out
    code = main(["train", str(config), "--model", str(tiny_model_dir), "--max-steps", "2",
                 "--output-dir", str(run_dir), "--no-progress", "--eval-every", "0"])
    assert code == 0, capsys.readouterr().err
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
    assert list(tmp_path.iterdir()) == [run_dir]  # nothing written next to the working directory
