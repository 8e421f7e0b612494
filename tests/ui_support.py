"""Shared set-up for the dashboard tests: a runs directory with real runs of the tiny model
(trained in-process, seconds), and helpers to wait for a run and read server-sent events.
No tests here."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from lorakit.train import train
from lorakit.train.config_io import from_dict
from lorakit.train.control import request_stop
from lorakit.train.tracking import MetricsLog
from tests.test_train_fixtures import toy_instruction_rows, write_jsonl


def run_values(model_dir: Path, data: Path, **overrides) -> dict:
    """New-run form values (flat, as the form sends them) for a quick fp32 tiny-model run."""
    values = {"model": str(model_dir), "data": str(data), "precision": "fp32", "batch_size": 4,
              "lr": 0.01, "warmup_ratio": 0.0, "save_every": 0, "max_steps": 6, "r": 8,
              "lora_alpha": 16}
    values.update(overrides)
    return values


def train_run(root: Path, name: str, model_dir: Path, data: Path, **overrides) -> Path:
    """Train a run into ``root/name`` in this process; returns its directory."""
    values = run_values(model_dir, data, **overrides)
    lora = {k: values.pop(k) for k in ("r", "lora_alpha") if k in values}
    cfg = from_dict({**values, "output_dir": str(root / name), "progress": False, "lora": lora}, "test")
    train(cfg)
    return root / name


# The runs, trained once per test session. Keyed by nothing: each test module that imports the
# tiny_model_dir fixture builds its own copy of the (identical, seeded) tiny model.
_TRAINED: dict[str, Path] = {}


def make_runs(root: Path, model_dir: Path) -> dict:
    """``root`` with runs ``a`` (done, r=8), ``b`` (done, r=4) and ``c`` (stopped on request at
    step 2: a checkpoint, no final adapter), and `lorakit eval` reports of a (with the base) and b on
    ``held.jsonl`` in their ``evals/``; returns the (absolute) data files. Made once per session, then
    copied (the test modules change their copies)."""
    if "runs" not in _TRAINED:
        from lorakit.cli import main

        template = root.parent.parent / "trained-runs"
        (template / "runs").mkdir(parents=True)
        data = write_jsonl(template / "toy.jsonl", toy_instruction_rows())
        held = write_jsonl(template / "held.jsonl", toy_instruction_rows(6))
        runs = template / "runs"
        train_run(runs, "a", model_dir, data, max_steps=8)
        train_run(runs, "b", model_dir, data, max_steps=4, r=4, lora_alpha=8, seed=1)
        with pytest.MonkeyPatch.context() as mp:  # c: stopped on request at step 2 of 4
            stop_at(mp, 2)
            train_run(runs, "c", model_dir, data, max_steps=4)
        for run in ("a", "b"):
            assert main(["eval", "--model", str(model_dir), "--adapter", str(runs / run / "adapter"),
                         "--data", str(held), "--max-new-tokens", "4", "--out",
                         str(runs / run / "evals" / "held.json")] + (["--no-base"] if run == "b" else [])) == 0
        _TRAINED["runs"] = template
    template = _TRAINED["runs"]
    shutil.copytree(template / "runs", root)
    return {"data": template / "toy.jsonl", "held": template / "held.jsonl"}  # as the reports name them


def stop_at(monkeypatch, step: int) -> None:
    """Touch STOP when the metrics record of ``step`` is written (a user pressing Stop then)."""
    write = MetricsLog.write

    def write_and_stop(self, record):
        write(self, record)
        if record.get("step") == step and "loss" in record:
            request_stop(self.path.parent)

    monkeypatch.setattr(MetricsLog, "write", write_and_stop)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def sse_events(text: str) -> list:
    """The JSON payloads of a server-sent-events body (``[DONE]`` kept as the string)."""
    out = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            payload = block[len("data: "):]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def answers(events: list) -> dict[str, str]:
    """Column label -> full answer text, from a /api/chat event list."""
    labels = events[0]["columns"]
    text = {label: "" for label in labels}
    for ev in events[1:]:
        if isinstance(ev, dict) and "delta" in ev:
            text[labels[ev["column"]]] += ev["delta"]
    return text
