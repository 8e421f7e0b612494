"""Run outputs that track progress: ``metrics.jsonl``, ``loss.png``, and the trackers of
``report_to`` (``lorakit.train.trackers``: TensorBoard, W&B, MLflow).

``metrics.jsonl`` has one JSON object per line: training records
``{"step", "epoch", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s"}`` and
eval records ``{"step", "eval_loss"}``. ``loss`` is the step's token-weighted mean loss. A
resumed run appends; records of steps after the resumed checkpoint are dropped first, so the
file always describes one run.
"""

from __future__ import annotations

import json
from pathlib import Path


class MetricsLog:
    """Appends records to ``metrics.jsonl`` and to the ``report_to`` trackers."""

    def __init__(self, run_dir: str | Path, resume_step: int | None = None,
                 report_to: list[str] | None = None, config: dict | None = None):
        from lorakit.train.trackers import open_trackers

        self.path = Path(run_dir) / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self._file = open(self.path, "a")
        self._trackers = open_trackers(report_to or [], run_dir, config or {}, resume_step)

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for tracker in self._trackers:
            tracker.log(record)

    def close(self) -> None:
        self._file.close()
        for tracker in self._trackers:
            tracker.close()


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_losses(metrics_path: str | Path, out_path: str | Path) -> Path | None:
    """Plot train and eval loss against step into ``out_path`` (None if nothing to plot)."""
    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only; no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean per target token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return Path(out_path)
