"""Failures and resume: a run that failed before its first step never blocks the corrected
re-run; --resume takes settings that do not change the run and refuses the others by name;
resuming a finished run says so."""

from __future__ import annotations

import pytest
import yaml

from lorakit.cli import main
from lorakit.train import train
from lorakit.train.config_io import to_dict
from lorakit.train.tracking import read_metrics
from tests.test_train_fixtures import (  # noqa: F401
    make_config, one_thread, tiny_model_dir, tokenizer, toy_data)


def test_failed_before_first_step_does_not_block_the_rerun(make_config, tmp_path):
    with pytest.raises(ValueError, match="matched no module"):
        train(make_config(max_steps=1, lora={"target_modules": ["no_such_proj"]}))
    # the run directory is written only once the model and adapter are built: nothing is left
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
    out = train(make_config(max_steps=1))  # corrected, no --overwrite needed
    assert (out / "adapter_model.safetensors").exists()
    with pytest.raises(ValueError, match="already holds a run"):  # a real run still blocks
        train(make_config(max_steps=1))


def _yaml_run(make_config, tmp_path, **overrides):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(to_dict(make_config(**overrides))))
    return path, tmp_path / "run"


def test_resume_accepts_reporting_settings_and_refuses_others_by_name(make_config, tmp_path, capsys):
    path, run_dir = _yaml_run(make_config, tmp_path, max_steps=4, save_every=2)
    assert main(["train", str(path), "--max-steps", "3"]) == 0  # stops at 3, checkpoint at 2
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "--lr", "0.5", "--r", "4"]) == 2
    err = capsys.readouterr().err
    assert "lora.r, lr would change the run being resumed (saved: lora.r=8, lr=0.01)" in err
    assert main(["train", "--resume", str(run_dir), "--max-steps", "2"]) == 2
    assert "max_steps can only grow on resume (saved 3, asked 2)" in capsys.readouterr().err
    assert main(["train", "--resume", str(run_dir)]) == 2
    assert "already finished at step 3" in capsys.readouterr().err
    assert main(["train", "--resume", str(run_dir), "--max-steps", "6", "--log-every", "2",
                 "--no-progress", "--eval-every", "0", "--lr", "0.01"]) == 0  # lr unchanged: fine
    out = capsys.readouterr().out
    assert "resumed from" in out and "completed at step 6" in out
    steps = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    assert steps == [1, 2, 4, 6]  # log_every 2 after the resume at step 2
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (saved["max_steps"], saved["log_every"]) == (6, 2)
    assert main(["train", "--resume", str(run_dir), str(path)]) == 2
    assert "pass no config file" in capsys.readouterr().err


def test_resume_of_a_run_without_checkpoints_says_why(make_config, tmp_path, capsys):
    path, run_dir = _yaml_run(make_config, tmp_path, max_steps=1)
    assert main(["train", str(path)]) == 0
    assert main(["train", "--resume", str(run_dir), "--max-steps", "5"]) == 2
    assert "finished at step 1 without one (save_every 0)" in capsys.readouterr().err
