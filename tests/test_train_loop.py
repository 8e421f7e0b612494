"""The training loop end to end on a tiny model: learning, exact resume, divergence, early
stopping, outputs, classification, full fine-tuning, and failing before training."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from lorakit.train import TrainingDiverged, train
from lorakit.train.checkpoint import list_checkpoints
from lorakit.train.tracking import read_metrics
from tests.test_train_fixtures import (  # noqa: F401
    one_thread, make_config, tiny_model_dir, tokenizer, toy_classification_rows, toy_data,
    toy_instruction_rows, write_jsonl)


def _losses(run_dir):
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def test_loss_decreases_and_outputs_are_written(make_config):
    cfg = make_config(epochs=3, eval_split=0.2, eval_every=6)
    out = train(cfg)
    run_dir = out.parent
    losses = _losses(run_dir)
    assert sum(losses[-3:]) / 3 < 0.2 * sum(losses[:3]) / 3, losses
    evals = [r["eval_loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "eval_loss" in r]
    assert evals[-1] < evals[0]
    assert {p.name for p in out.iterdir()} == {"adapter_config.json", "adapter_model.safetensors", "README.md",
                                               "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}
    card = (out / "README.md").read_text()
    for needle in (str(cfg.model), "| rank r / lora_alpha | 8 / 16", "38 examples", "final train loss"):
        assert needle in card
    assert (run_dir / "loss.png").stat().st_size > 0
    assert "lr: 0.01" in (run_dir / "config.yaml").read_text()


def test_resume_after_a_stop_is_bit_identical(make_config, tmp_path):
    # dropout and packing on: the RNG state and the data position must both be restored
    cfg = make_config(max_steps=8, save_every=4, keep_last=3, packing=True, max_seq_len=96,
                      lora={"lora_dropout": 0.1})
    out = train(cfg)
    reference = load_file(out / "adapter_model.safetensors")
    metrics = read_metrics(out.parent / "metrics.jsonl")
    # Simulate a crash right after the step-4 checkpoint: later outputs are gone.
    shutil.rmtree(out)
    assert [p.name for p in list_checkpoints(out.parent)] == ["step-00000004"]
    resumed = train(cfg, resume=True)
    again = load_file(resumed / "adapter_model.safetensors")
    assert reference.keys() == again.keys()
    for key in reference:
        assert reference[key].equal(again[key]), key
    # metrics.jsonl describes one run: the records of steps 5-8 were replaced, not appended
    resumed_metrics = read_metrics(out.parent / "metrics.jsonl")
    assert [(r["step"], r["loss"]) for r in resumed_metrics] == [(r["step"], r["loss"]) for r in metrics]


def test_keep_last_n_checkpoints_and_layout(make_config):
    cfg = make_config(max_steps=7, save_every=2, keep_last=2)
    out = train(cfg)
    kept = list_checkpoints(out.parent)
    assert [p.name for p in kept] == ["step-00000004", "step-00000006"]
    names = {p.name for p in kept[-1].iterdir()}
    assert names == {"trainable.safetensors", "optimizer.pt", "rng.pt", "state.json", "adapter"}
    state = json.loads((kept[-1] / "state.json").read_text())
    assert state["step"] == 6 and state["progress"]["step_in_epoch"] == 6
    assert not [p for p in (out.parent / "checkpoints").iterdir() if p.name.startswith(".")]


def test_nan_loss_stops_with_a_clear_message_and_keeps_checkpoints(make_config):
    cfg = make_config(max_steps=6, save_every=1, lr=1e30, max_grad_norm=0.0)
    with pytest.raises(TrainingDiverged) as err:
        train(cfg)
    message = str(err.value)
    assert "not finite" in message and "last good checkpoint is" in message
    kept = list_checkpoints(cfg.output_dir)
    assert kept and str(kept[-1]) in message
    step = int(message.split(":")[0].split()[-1])
    assert int(kept[-1].name.split("-")[1]) == step - 1
    assert not (kept[-1].parent.parent / "adapter").exists()


def test_early_stopping_on_eval_loss(make_config, tmp_path):
    # Eval answers are the opposite of training answers: eval loss rises as training learns.
    flipped = [{**r, "output": "no"} for r in toy_instruction_rows(8)]
    eval_path = write_jsonl(tmp_path / "eval.jsonl", flipped)
    cfg = make_config(epochs=20, eval_data=str(eval_path), eval_every=2, early_stopping_patience=2)
    out = train(cfg)
    metrics = read_metrics(out.parent / "metrics.jsonl")
    steps = max(r["step"] for r in metrics)
    assert steps < 20 * 12
    assert "early stopping" in (out / "README.md").read_text()


def test_seq_cls_trains_a_new_head(make_config, tmp_path):
    data = write_jsonl(tmp_path / "cls.jsonl", toy_classification_rows())
    out = train(make_config(task="seq_cls", data=str(data), epochs=4))
    tensors = load_file(out / "adapter_model.safetensors")
    assert any(k.endswith("score.weight") for k in tensors)
    assert tensors[next(k for k in tensors if k.endswith("score.weight"))].shape[0] == 2
    losses = _losses(out.parent)
    assert losses[-1] < losses[0]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and config["modules_to_save"] == ["score"]


def test_full_fine_tuning_writes_a_model(make_config):
    out = train(make_config(full=True, max_steps=3, lr=1e-3))
    assert out.name == "model" and (out / "config.json").exists()
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()


def test_missing_model_path_fails_before_any_output(make_config, tmp_path):
    cfg = make_config(model=str(tmp_path / "no-such-model"))
    with pytest.raises(FileNotFoundError, match="model path not found"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_bad_data_fails_before_any_output(make_config, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "x", "output": "y"}, {"instruction": "z"}])
    with pytest.raises(ValueError, match=rf"{bad}:2: missing field 'output'"):
        train(make_config(data=str(bad)))
    assert not (tmp_path / "run").exists()


def test_existing_run_dir_needs_resume_or_overwrite(make_config):
    train(make_config(max_steps=1))
    with pytest.raises(ValueError, match="already holds a run"):
        train(make_config(max_steps=1))
    train(make_config(max_steps=1, overwrite=True))


def test_qlora_nf4_base_trains(make_config):
    out = train(make_config(quantize="nf4", max_steps=6, precision="bf16-true"))
    losses = _losses(out.parent)
    assert losses[-1] < losses[0]
    from lorakit.quant import Linear4bit
    from lorakit.train.build import build_model

    model = build_model(make_config(quantize="nf4"), 0, 0)
    assert any(isinstance(m, Linear4bit) for m in model.modules())


def test_loraplus_runs(make_config):
    out = train(make_config(loraplus_lr_ratio=16, max_steps=4, lr=1e-3))
    losses = _losses(out.parent)
    assert len(losses) == 4 and losses[-1] < losses[0]


def test_gradient_checkpointing_gives_the_same_adapter(make_config, tmp_path):
    from lorakit.train.build import build_model

    assert build_model(make_config(gradient_checkpointing=True), 0, 0).is_activation_checkpointing
    plain = train(make_config(max_steps=3, output_dir=str(tmp_path / "a")))
    checkpointed = train(make_config(max_steps=3, gradient_checkpointing=True,
                                     output_dir=str(tmp_path / "b")))
    a = load_file(plain / "adapter_model.safetensors")
    b = load_file(checkpointed / "adapter_model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
