"""The task/method table (``lorakit.train.tasks``): one spelling stored, the other accepted from
YAML, flags, the UI form and ``lorakit eval``; each task and method runs its own runner."""

from __future__ import annotations

import argparse
import typing

import pytest

from lorakit.eval.config import EvalConfig
from lorakit.flags import add_flags, field_specs
from lorakit.train import tasks, train
from lorakit.train.cli import add_parser, config_from_args
from lorakit.train.config import TrainConfig
from lorakit.train.config_io import from_dict, to_dict


def _train_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(["train"] + argv)


def test_the_table_is_what_the_config_accepts():
    hints = typing.get_type_hints(TrainConfig)
    assert typing.get_args(hints["task"]) == tuple(tasks.TASKS)
    assert typing.get_args(hints["method"]) == tuple(tasks.METHODS)
    assert all(set(t.methods) <= set(tasks.METHODS) for t in tasks.TASKS.values())
    assert all("-" not in name for name in tasks.TASKS)  # the canonical spelling: underscores


@pytest.mark.parametrize("given, stored", [
    ("text-to-image", "text_to_image"), ("text_to_image", "text_to_image"),
    ("image-classification", "image_classification"), ("image_classification", "image_classification"),
    ("causal-lm", "causal_lm"), ("seq-cls", "seq_cls"), ("unconditional", "unconditional")])
def test_either_spelling_is_accepted_and_stored_canonical(given, stored):
    assert TrainConfig(task=given).task == stored
    assert from_dict({"task": given}).task == stored                      # YAML
    assert config_from_args(_train_args(["--task", given])).task == stored  # flags
    assert to_dict(from_dict({"task": given}))["task"] == stored            # config.yaml


def test_the_ui_form_and_eval_accept_both_spellings():
    from lorakit.ui.forms import config_from_form

    assert config_from_form({"task": "text-to-image"}, "runs/x").task == "text_to_image"
    parser = argparse.ArgumentParser()
    add_flags(parser, field_specs(EvalConfig))
    assert parser.parse_args(["--data", "d", "--task", "image-classification"]).task == "image_classification"


def test_unknown_tasks_and_methods_that_do_not_fit_are_named():
    with pytest.raises(ValueError, match="task must be one of causal_lm, seq_cls, image_classification"):
        TrainConfig(task="text2image")
    with pytest.raises(ValueError, match="my.yaml: task must be 'causal_lm'"):
        from_dict({"task": "text2image"}, "my.yaml")
    with pytest.raises(ValueError, match="method 'dpo' does not apply to task 'image_classification'"):
        TrainConfig(task="image_classification", method="dpo")
    with pytest.raises(SystemExit):
        _train_args(["--task", "text2image"])


@pytest.mark.parametrize("settings, runner", [
    ({"task": "causal_lm"}, "lorakit.train.loop.train_sft"),
    ({"task": "seq_cls"}, "lorakit.train.loop.train_sft"),
    ({"task": "causal_lm", "method": "dpo"}, "lorakit.preference.loop.train_preference"),
    ({"task": "causal_lm", "method": "reward"}, "lorakit.preference.loop.train_preference"),
    ({"task": "image-classification"}, "lorakit.vision.train.train_images"),
    ({"task": "text-to-image"}, "lorakit.diffusion.train.train_diffusion"),
    ({"task": "unconditional"}, "lorakit.diffusion.train.train_diffusion")])
def test_each_task_and_method_runs_its_runner(monkeypatch, settings, runner):
    calls = []
    monkeypatch.setattr(runner, lambda cfg, *args: calls.append(cfg.task) or "out")
    assert train(TrainConfig(**settings)) == "out"
    assert calls == [tasks.canonical_task(settings["task"])]


@pytest.mark.parametrize("settings, what", [({"method": "dpo"}, "method 'dpo'"),
                                            ({"task": "text-to-image"}, "task 'text_to_image'")])
def test_resume_is_refused_for_runs_without_checkpoints(settings, what):
    with pytest.raises(ValueError, match=f"{what} writes none"):
        train(TrainConfig(**settings), resume=True)
