"""`lorakit inspect` data for the dashboard's plots: per-layer singular spectra of ``dW`` and,
against a second adapter, the mean subspace-similarity grids (``lorakit.analysis``)."""

from __future__ import annotations

from pathlib import Path

from lorakit.analysis.cli import json_safe, means_by_type
from lorakit.analysis.factors import read_adapter
from lorakit.analysis.report import inspect_layers, mean_grids, update_svd

__all__ = ["inspect_adapter"]


def inspect_adapter(adapter: str | Path, vs: str | Path | None = None, subject: str = "A") -> dict:
    """``{"layers": [row + "singular_values"], "means": [...], "mean_grids": {type: phi grid}}``;
    rows are ``lorakit inspect``'s (``lorakit.analysis.report.describe_layer``), grids only
    with ``vs``. Singular values are those of ``dW = s B A``, largest first."""
    _, layers = read_adapter(adapter)
    others = read_adapter(vs)[1] if vs else None
    rows, grids = inspect_layers(layers, others, None, subject)
    for row, layer in zip(rows, layers):
        row["singular_values"] = update_svd(layer)[1].tolist()
    out = {"adapter": str(adapter), "vs": str(vs) if vs else None, "subject": subject,
           "layers": rows, "means": means_by_type(rows)}
    if grids:
        out["mean_grids"] = {k: g.tolist() for k, g in mean_grids(grids).items()}
    return json_safe(out)
