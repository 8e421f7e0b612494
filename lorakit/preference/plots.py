"""``rewards.png``: the implicit rewards and their accuracy over training (from metrics.jsonl)."""

from __future__ import annotations

from pathlib import Path

from lorakit.train.tracking import read_metrics

_SERIES = ("rewards/chosen", "rewards/rejected", "rewards/margins")


def plot_rewards(metrics_path: str | Path, out_path: str | Path) -> Path | None:
    """Plot rewards/chosen, rewards/rejected, rewards/margins (left axis) and
    rewards/accuracies (right axis) against step; None when the log has none of them."""
    records = [r for r in read_metrics(metrics_path) if "loss" in r]
    present = [k for k in _SERIES + ("rewards/accuracies",) if any(k in r for r in records)]
    if not present:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only; no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in (k for k in present if k in _SERIES):
        points = [(r["step"], r[key]) for r in records if key in r]
        ax.plot(*zip(*points), label=key, linewidth=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("reward")
    ax.grid(alpha=0.3)
    if "rewards/accuracies" in present:
        right = ax.twinx()
        points = [(r["step"], r["rewards/accuracies"]) for r in records if "rewards/accuracies" in r]
        right.plot(*zip(*points), color="gray", linestyle=":", label="rewards/accuracies")
        right.set_ylabel("accuracy")
        right.set_ylim(-0.05, 1.05)
        right.legend(loc="lower right")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return Path(out_path)


__all__ = ["plot_rewards"]
