"""Classification metrics over label ids, and the confusion-matrix plot.

- ``accuracy`` / ``macro_f1``: as in ``lorakit.eval.metrics`` (macro-F1 averages over the
  classes present in the references or the predictions);
- ``confusion[i][j]``: how many examples of true class ``i`` were predicted as ``j``
  (rows: truth, columns: prediction; scikit-learn's layout), over all ``len(label_names)``
  classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from lorakit.eval.metrics import accuracy, macro_f1

__all__ = ["confusion_matrix", "classification_report", "plot_confusion"]


def confusion_matrix(predictions: Sequence[int], labels: Sequence[int], n_classes: int) -> list[list[int]]:
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} references")
    out = [[0] * n_classes for _ in range(n_classes)]
    for p, y in zip(predictions, labels):
        out[y][p] += 1
    return out


def classification_report(predictions: Sequence[int], labels: Sequence[int],
                          label_names: Sequence[str]) -> dict:
    """``{"n", "accuracy", "macro_f1", "confusion", "labels"}``."""
    return {"n": len(labels), "accuracy": accuracy(predictions, labels),
            "macro_f1": macro_f1(predictions, labels),
            "confusion": confusion_matrix(predictions, labels, len(label_names)),
            "labels": list(label_names)}


def plot_confusion(confusion: list[list[int]], label_names: Sequence[str], out_path: str | Path,
                   title: str = "") -> Path:
    """The confusion matrix as a PNG (counts in the cells; rows true, columns predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(label_names)
    side = min(12.0, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(n), label_names, rotation=90 if n > 10 else 0)
    ax.set_yticks(range(n), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    peak = max(max(row) for row in confusion) or 1
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if confusion[i][j]:
                    ax.text(j, i, confusion[i][j], ha="center", va="center", fontsize=8,
                            color="white" if confusion[i][j] > peak / 2 else "black")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return Path(out_path)
