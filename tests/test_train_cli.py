"""`lorakit train` through the top-level command: config file, flags, resume, clean errors."""

from __future__ import annotations

import yaml

from lorakit.cli import main
from lorakit.train.config_io import to_dict
from tests.test_train_fixtures import (  # noqa: F401
    make_config, one_thread, tiny_model_dir, tokenizer, toy_data)


def test_train_from_yaml_then_resume(make_config, tmp_path, capsys):
    cfg = make_config(max_steps=4, save_every=2)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    assert main(["train", str(path), "--max-steps", "3"]) == 0
    run_dir = tmp_path / "run"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["max_steps"] == 3
    card = (run_dir / "adapter" / "README.md").read_text()
    assert "--max-steps 3" in card
    assert main(["train", "--resume", str(run_dir), "--max-steps", "4"]) == 0
    assert "resumed from" in capsys.readouterr().out


def test_invalid_value_exits_2_before_training(tmp_path, capsys):
    code = main(["train", "--data", "x.jsonl", "--lr", "-1", "--output-dir", str(tmp_path / "r")])
    assert code == 2
    assert "lorakit train: error: flags: config: lr must be > 0, got -1.0" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_missing_data_file_exits_2(make_config, tmp_path, capsys):
    cfg = make_config()
    code = main(["train", "--model", cfg.model, "--data", str(tmp_path / "none.jsonl"),
                 "--output-dir", str(tmp_path / "r")])
    assert code == 2 and "data not found" in capsys.readouterr().err
    assert main(["train", "--output-dir", str(tmp_path / "r")]) == 2
    assert "data is required" in capsys.readouterr().err


def test_resume_without_checkpoint_is_clear(make_config, tmp_path, capsys):
    cfg = make_config(max_steps=1)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    assert main(["train", str(path)]) == 0
    assert main(["train", "--resume", str(tmp_path / "run")]) == 2
    assert "already finished at step 1" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "run"), "--max-steps", "2"]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err
