"""The training config: one dataclass -> YAML and flags; errors name the key and the source."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import yaml

from lorakit.config import LoraConfig
from lorakit.train import config_io
from lorakit.train.cli import add_parser, config_from_args
from lorakit.train.config import TrainConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lorakit")
    add_parser(parser.add_subparsers(dest="command"))
    return parser


def test_yaml_round_trip_is_identity():
    cfg = config_io.from_dict({"data": "x.jsonl", "lr": 1e-3, "lora": {"r": 4, "target_modules": ["q_proj"]}})
    assert config_io.from_dict(yaml.safe_load(config_io.to_yaml(cfg))) == cfg


def test_help_documents_every_field_with_its_default(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    defaults = config_io.to_dict(TrainConfig())
    lora_defaults = defaults.pop("lora")
    for name, value in list(defaults.items()) + list(lora_defaults.items()):
        assert f"--{name.replace('_', '-')}" in text, name
        assert f"(default: {value!r})" in text, name


def test_every_lora_field_is_a_flag_except_bookkeeping():
    flags = {spec.name for section, spec in config_io.flag_fields() if section == "lora"}
    fields = {f.name for f in dataclasses.fields(LoraConfig)}
    assert fields - flags == {"task_type", "base_model_name_or_path", "inference_mode", "peft_type"}


def test_flags_override_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: a.jsonl\nlr: 0.1\nlora:\n  r: 4\n  lora_alpha: 8\n")
    args = _parser().parse_args(["train", str(path), "--lr", "0.5", "--r", "2",
                                 "--target-modules", "[q_proj, v_proj]", "--no-completion-only-loss"])
    cfg = config_from_args(args)
    assert (cfg.data, cfg.lr, cfg.completion_only_loss) == (str(tmp_path / "a.jsonl"), 0.5, False)
    assert (cfg.lora.r, cfg.lora.lora_alpha, cfg.lora.target_modules) == (2, 8, ["q_proj", "v_proj"])


@pytest.mark.parametrize("values, message", [
    ({"learnin_rate": 1}, "unknown key 'learnin_rate' (did you mean 'lr'?)"),
    ({"lora": {"rank": 4}}, "lora: unknown key 'rank' (did you mean 'r'?)"),
    ({"lr": "fast"}, "lr must be float, got 'fast'"),
    ({"packing": "yes"}, "packing must be bool, got 'yes'"),
    ({"precision": "fp16"}, "precision must be 'fp32' | 'bf16-mixed' | 'bf16-true'"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"eval_split": 1.5}, "eval_split must be in [0, 1)"),
    ({"lora": {"r": -1}}, "r must be a positive integer"),
    ({"task": "seq_cls", "packing": True}, "packing applies to causal_lm only"),
    ({"early_stopping_patience": 2}, "needs eval data"),
])
def test_invalid_values_name_the_source_and_key(values, message):
    with pytest.raises(ValueError) as err:
        config_io.from_dict(values, "my.yaml")
    assert str(err.value).startswith("my.yaml: ") and message in str(err.value)


def test_unknown_key_in_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: a.jsonl\nepochz: 3\n")
    with pytest.raises(ValueError, match=rf"{path}: unknown key 'epochz'"):
        config_from_args(_parser().parse_args(["train", str(path)]))


def test_resume_refuses_other_settings(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a lorakit run directory"):
        config_from_args(_parser().parse_args(["train", "--resume", str(tmp_path), "--lr", "1"]))
    with pytest.raises(ValueError, match="pass no config file with it"):
        config_from_args(_parser().parse_args(["train", "c.yaml", "--resume", str(tmp_path)]))


def test_as_flags_round_trips_through_the_parser():
    values = {"lr": 0.5, "packing": True, "completion_only_loss": False, "data": "a b.jsonl",
              "lora": {"r": 2, "target_modules": ["q_proj", "v_proj"], "rank_pattern": {"q": 4}}}
    args = _parser().parse_args(["train"] + config_io.as_flags(values))
    assert config_io.flag_values(args) == values


def test_example_configs_are_valid():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    examples = sorted((root / "examples").glob("*.yaml"))
    assert examples
    for path in examples:
        cfg = config_io.from_dict(config_io.load_yaml(path), str(path))
        if cfg.task == "image_classification":  # its images are generated; the file says how
            assert "python -m lorakit.vision.digits data/digits" in path.read_text(), path
            assert Path(cfg.data) == root / "data" / "digits" / "train", path
            continue
        assert Path(cfg.data).exists(), path
