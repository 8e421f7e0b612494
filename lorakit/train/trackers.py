"""Experiment trackers a run reports to (``report_to:``), each an optional extra.

Every record ``MetricsLog`` writes to ``metrics.jsonl`` also goes, by its ``step``, to:

- ``tensorboard``: event files in ``RUN_DIR/tensorboard`` (``pip install 'lorakit[tensorboard]'``);
  a resumed run purges the events after the checkpoint's step, as ``metrics.jsonl`` does.
- ``wandb``: a Weights & Biases run in ``RUN_DIR/wandb``, project ``$WANDB_PROJECT`` (default
  ``lorakit``), named after the run directory, with the resolved config; ``WANDB_MODE=offline``
  works without an account (``pip install 'lorakit[wandb]'``).
- ``mlflow``: an MLflow run in ``$MLFLOW_TRACKING_URI``, or, when unset, a local file store in
  ``RUN_DIR/mlruns``; experiment ``$MLFLOW_EXPERIMENT_NAME`` (default ``lorakit``), the config
  as parameters (``pip install 'lorakit[mlflow]'``).

A tracker that is asked for and not installed is an error before anything is loaded.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

__all__ = ["TRACKERS", "check_trackers", "open_trackers"]

# name -> (module that must be importable, pip extra)
TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
            "mlflow": ("mlflow", "mlflow")}


def check_trackers(names: list[str]) -> None:
    """Each tracker in ``names`` is known and installed; else a ValueError with the fix."""
    for name in names:
        if name not in TRACKERS:
            raise ValueError(f"report_to: unknown tracker {name!r}; known: {', '.join(TRACKERS)}")
        module, extra = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"report_to: {name} is not installed: pip install 'lorakit[{extra}]'")


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and key == "lora":
            out.update(_flat(value, "lora."))
        else:
            out[prefix + key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


class _TensorBoard:
    def __init__(self, run_dir: Path, config: dict, resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        kw = {"purge_step": resume_step + 1} if resume_step else {}
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), **kw)

    def log(self, record: dict) -> None:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, run_dir: Path, config: dict, resume_step: int | None):
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "lorakit"),
                              dir=str(run_dir), name=run_dir.name, config=_flat(config),
                              reinit="create_new")

    def log(self, record: dict) -> None:
        self.run.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    def __init__(self, run_dir: Path, config: dict, resume_step: int | None):
        import mlflow

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # a local file store: MLflow 3 wants this opt-in for file stores
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (run_dir / "mlruns").resolve().as_uri()
        self.client = mlflow.tracking.MlflowClient(uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "lorakit")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
        for key, value in _flat(config).items():
            self.client.log_param(self.run_id, key, value)

    def log(self, record: dict) -> None:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self.client.log_metric(self.run_id, key, value, step=record["step"])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


_OPEN = {"tensorboard": _TensorBoard, "wandb": _WandB, "mlflow": _MLflow}


def open_trackers(names: list[str], run_dir: str | Path, config: dict,
                  resume_step: int | None = None) -> list:
    """One open tracker per name (each has ``log(record)`` and ``close()``)."""
    check_trackers(names)
    return [_OPEN[name](Path(run_dir), config, resume_step) for name in names]
