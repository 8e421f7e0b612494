"""Shared set-up for the dashboard tests: a runs directory with real runs of the tiny model
(trained in-process, seconds), and helpers to wait for a run and read server-sent events.
No tests here."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from lorakit.train import train
from lorakit.train.schema import from_dict
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


_TRAINED: dict[Path, Path] = {}  # model dir -> runs trained once per test session


def make_runs(root: Path, model_dir: Path) -> dict:
    """``root`` with runs ``a`` (done, r=8), ``b`` (done, r=4) and ``c`` (stopped: a checkpoint
    at step 2, no final adapter); returns paths of the data files. The runs are trained once
    per session and copied (the test modules change their copies)."""
    data = write_jsonl(root.parent / "toy.jsonl", toy_instruction_rows())
    held = write_jsonl(root.parent / "held.jsonl", toy_instruction_rows(6))
    if model_dir not in _TRAINED:
        template = root.parent / "trained-runs"
        template.mkdir()
        train_run(template, "a", model_dir, data, max_steps=8)
        train_run(template, "b", model_dir, data, max_steps=4, r=4, lora_alpha=8, seed=1)
        c = train_run(template, "c", model_dir, data, max_steps=4, save_every=2)
        shutil.rmtree(c / "adapter")  # as if stopped after the step-2 checkpoint
        _TRAINED[model_dir] = template
    shutil.copytree(_TRAINED[model_dir], root)
    return {"data": data, "held": held}


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
