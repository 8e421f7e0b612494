"""``lorakit inspect ADAPTER [--vs OTHER] [--base MODEL]``: the LoRA paper's section-7 analysis.

Prints one row per adapted layer (rank, alpha, ||dW||_F, effective ranks, similarity to OTHER,
amplification of the base weight when ``--base`` is given) and a mean per module type, writes
``inspect.json`` and, with ``--vs``, a heatmap of the subspace-similarity grids.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from lorakit.analysis.factors import read_adapter
from lorakit.analysis.report import SUBJECTS, inspect_layers, mean_grids

__all__ = ["add_parser", "json_safe", "means_by_type", "run"]

_COLUMNS = [("r", "r", "{:d}"), ("alpha", "alpha", "{:g}"), ("delta_norm", "|dW|_F", "{:.4g}"),
            ("rank", "rank", "{:d}"), ("entropy_rank", "erank", "{:.2f}"),
            ("energy_rank_90", "r90", "{:d}"), ("sim_top", "phi(1,1)", "{:.3f}"),
            ("sim_top_in_other", "phi(1,r')", "{:.3f}"), ("sim_all", "phi(r,r')", "{:.3f}"),
            ("amplification", "amp", "{:.2f}"), ("random_amplification", "amp(rand)", "{:.2f}")]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("inspect", help="per-layer rank / similarity / amplification analysis of an adapter",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("adapter", help="PEFT LoRA adapter directory")
    p.add_argument("--vs", metavar="OTHER", help="second adapter (same base) to compare subspaces with")
    p.add_argument("--base", metavar="MODEL", help="base model (embedded name, local directory or Hub id) for amplification")
    p.add_argument("--subject", choices=SUBJECTS, default="A",
                   help="subspace compared with --vs: A's row space (the paper), or dW's input/output space")
    p.add_argument("--out", default="inspect", help="directory for inspect.json and the heatmap (default: ./inspect)")
    p.set_defaults(func=run)


def _cell(value, fmt: str) -> str:
    if value is None:
        return "-"
    if value == math.inf:
        return "inf"
    if fmt == "{:d}" and not float(value).is_integer():
        return f"{value:.1f}"  # a mean over layers
    return fmt.format(int(value) if fmt == "{:d}" else value)


def _print_table(rows: list[dict]) -> None:
    columns = [c for c in _COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    table = [["module"] + [title for _, title, _ in columns]]
    table += [[row["module"]] + [_cell(row.get(key), fmt) for key, _, fmt in columns] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


def means_by_type(rows: list[dict]) -> list[dict]:
    """Mean of every numeric column per module type (``q_proj``, ...), one row per type."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["module"].rsplit(".", 1)[-1], []).append(row)
    out = []
    for name, items in groups.items():
        mean = {"module": f"mean {name} (x{len(items)})"}
        for key in dict.fromkeys(k for r in items for k in r):
            values = [r[key] for r in items if isinstance(r.get(key), (int, float))
                      and not isinstance(r[key], bool) and r[key] != math.inf]
            if values:
                mean[key] = sum(values) / len(values)
        out.append(mean)
    return out


def json_safe(value):
    """JSON has no inf: an infinite amplification (W has no component in dW's directions) -> null."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return None if isinstance(value, float) and math.isinf(value) else value


def run(args) -> int:
    from lorakit.paths import check_output_dir

    check_output_dir(args.out, "--out")
    _, layers = read_adapter(args.adapter)
    others = read_adapter(args.vs)[1] if args.vs else None
    if others is not None and not {o.module for o in others} & {layer.module for layer in layers}:
        raise ValueError(f"--vs {args.vs}: the two adapters share no adapted module, so their "
                         f"subspaces cannot be compared (e.g. {layers[0].module} vs {others[0].module})")
    weights = None
    if args.base:
        from lorakit.analysis.base import base_weights
        from lorakit.models import load_model

        weights = base_weights(load_model(args.base), [layer.module for layer in layers])
    rows, grids = inspect_layers(layers, others, weights, args.subject)
    _print_table(rows)
    print()
    means = means_by_type(rows)
    _print_table(means)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"adapter": str(args.adapter), "vs": args.vs, "base": args.base, "subject": args.subject,
              "layers": rows, "means": means}
    if grids:
        for row in means:
            if "sim_top_random" in row:
                print(f"random-subspace baseline, {row['module']}: phi(1,1) = {row['sim_top_random']:.4f}, "
                      f"phi(1,r') = {row['sim_top_in_other_random']:.4f}")
        from lorakit.analysis.plots import save_similarity_heatmaps

        means_grid = mean_grids(grids)
        report["mean_grids"] = {k: g.tolist() for k, g in means_grid.items()}
        png = save_similarity_heatmaps(means_grid, out / "subspace_similarity.png",
                                       f"phi(i, j) of {args.subject}: {Path(args.adapter).name} vs "
                                       f"{Path(args.vs).name} (mean over layers)")
        print(f"heatmap: {png}")
    (out / "inspect.json").write_text(json.dumps(json_safe(report), indent=2))
    print(f"report: {out / 'inspect.json'}")
    return 0
