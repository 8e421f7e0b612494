"""report_to: TensorBoard, W&B (offline) and MLflow (local file store) receive every metric of
a run; each is read back with its own reader and compared with metrics.jsonl."""

from __future__ import annotations

import glob
import json
import struct

import pytest

from lorakit.train import train
from lorakit.train.tracking import read_metrics
from tests.test_train_fixtures import (  # noqa: F401
    make_config, one_thread, tiny_model_dir, tokenizer, toy_data)


def _wandb_history(path: str) -> list[dict]:
    """History rows of an offline W&B run file (its LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, buf, rows = open(path, "rb").read(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        buf, pos = buf + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            buf = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                             for i in record.history.item})
    return rows


def test_every_tracker_gets_every_metric(make_config, tmp_path, monkeypatch):
    for module in ("tensorboard", "wandb", "mlflow"):
        pytest.importorskip(module, reason=f"{module} not installed: pip install 'lorakit[{module}]'")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = make_config(max_steps=3, report_to=["tensorboard", "wandb", "mlflow"], eval_split=0.1)
    run_dir = train(cfg).parent
    losses = {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}
    eval_loss = [r["eval_loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "eval_loss" in r]
    assert sorted(losses) == [1, 2, 3] and len(eval_loss) == 1

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert {e.step: e.value for e in events.Scalars("loss")} == pytest.approx(losses)

    (path,) = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    history = _wandb_history(path)
    assert {r["_step"]: r["loss"] for r in history if "loss" in r} == pytest.approx(losses)
    assert [r["eval_loss"] for r in history if "eval_loss" in r] == pytest.approx(eval_loss)

    import mlflow

    client = mlflow.tracking.MlflowClient((run_dir / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("lorakit").experiment_id])
    assert {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")} == pytest.approx(losses)
    assert run.data.params["lr"] == str(cfg.lr) and run.data.params["lora.r"] == "8"
    assert run.info.status == "FINISHED"


def test_missing_tracker_is_an_error_before_loading(make_config, monkeypatch):
    from lorakit.train import trackers

    monkeypatch.setitem(trackers.TRACKERS, "wandb", ("no_such_module_for_lorakit", "wandb"))
    with pytest.raises(ValueError, match=r"report_to: wandb is not installed: pip install 'lorakit\[wandb\]'"):
        train(make_config(report_to=["wandb"]))
