"""``lorakit eval --model M [--adapter DIR] --data FILE``: score a model, or base vs adapter.

Causal LM data (chat / instruction / text): loss and perplexity on the reference tokens, then
batched greedy generation scored by exact match, normalised exact match and any ``--scorer``.
Classification data (``--task seq_cls``): accuracy and macro-F1. Preference data
(prompt/chosen/rejected): preference accuracy (``lorakit.preference.evaluate``). With ``--adapter`` the base
model and the base with the adapter are evaluated on the same prompts and shown side by
side. Everything goes to ``eval.json`` (``--out``), per-example predictions included.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

from lorakit.eval.config import EvalConfig
from lorakit.flags import add_flags, field_specs

_TEXT_KEYS = ("exact_match", "normalized_exact_match", "accuracy", "macro_f1")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a model or an adapter (loss, exact match, accuracy)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(p, field_specs(EvalConfig))
    p.set_defaults(func=run)


def load_for_eval(cfg: EvalConfig):
    """(base model, tokenizer, evalset) as the settings describe; the adapter is not loaded yet."""
    import torch

    from lorakit.eval.prompts import load_eval_set
    from lorakit.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    label_names = cfg.label_names.split(",") if cfg.label_names else None
    evalset = load_eval_set(cfg.data, tokenizer, fmt=cfg.format, template=cfg.instruction_template,
                            max_seq_len=cfg.max_seq_len, label_names=label_names, limit=cfg.limit,
                            split=cfg.split)
    if (cfg.task == "seq_cls") != (evalset.labels is not None):
        raise ValueError(f"{cfg.data}: {evalset.data.fmt} data does not fit --task {cfg.task}")
    num_labels = len(evalset.data.label_names) if evalset.data.label_names else None
    model = load_model(cfg.model, dtype=getattr(torch, cfg.dtype), task=cfg.task, num_labels=num_labels)
    if cfg.quantize == "nf4":
        from lorakit.quant import quantize

        quantize(model)
    return model, tokenizer, evalset


def run(namespace: argparse.Namespace) -> int:
    import lorakit
    from lorakit.eval.evaluate import EvalOptions, evaluate
    from lorakit.eval.metrics import load_scorer
    from lorakit.paths import check_output_file

    cfg = EvalConfig(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(EvalConfig)})
    check_output_file(cfg.out, "--out")
    if cfg.adapter:
        lorakit.config.load_config(cfg.adapter)  # a bad adapter path fails before the model loads

    if cfg.task == "image_classification":
        from lorakit.vision.evaluate import run_eval

        return run_eval(cfg)
    from lorakit.vision.checks import image_input_reason

    reason = image_input_reason(cfg.model, [cfg.data])
    if reason:
        raise ValueError(f"{reason}; evaluate it with --task image_classification")

    from lorakit.preference.data import is_preference_row
    from lorakit.train.readers import read_rows

    if is_preference_row(read_rows(cfg.data, cfg.split)[0].record):
        from lorakit.preference.evaluate import run_eval

        return run_eval(cfg)
    scorers = {}
    for spec in cfg.scorer:
        name = spec.rpartition(":")[2]
        if name in scorers or name in ("exact_match", "normalized_exact_match"):
            raise ValueError(f"--scorer {spec}: a metric named {name!r} already exists; rename the function")
        scorers[name] = load_scorer(spec)
    options = EvalOptions(batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens, loss=cfg.loss,
                          generate=cfg.generate, scorers=scorers)
    model, tokenizer, evalset = load_for_eval(cfg)
    results, examples = {}, {}
    # The base is scored before the adapter is loaded: PiSSA/OLoRA/LoftQ adapters rewrite the
    # base weights when they load, so "adapter disabled" would not be the original model.
    if cfg.base or not cfg.adapter:
        results["base"], examples["base"] = evaluate(model, tokenizer, evalset, options)
    if cfg.adapter:
        lorakit.load_adapter(model, cfg.adapter)
        results["adapter"], examples["adapter"] = evaluate(model, tokenizer, evalset, options)
    report = {"model": cfg.model, "adapter": cfg.adapter, "data": cfg.data, "format": evalset.data.fmt,
              "task": cfg.task, "dtype": cfg.dtype, "quantize": cfg.quantize,
              "instruction_template": cfg.instruction_template, "max_new_tokens": cfg.max_new_tokens,
              "results": results, "examples": examples}
    return write_report(cfg.out, report)


def write_report(out: str | Path, report: dict) -> int:
    """Write an eval report (``report["results"]`` printed as a table) as JSON; exit code 0."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(format_table(report["results"]))
    print(f"\nwrote {out}")
    return 0


def format_table(results: dict[str, dict]) -> str:
    """Metric rows, one column per evaluated model (``base``, ``adapter``) and their difference."""
    columns = list(results)
    keys = [k for k in dict.fromkeys(k for r in results.values() for k in r)]
    header = ["metric"] + columns + (["delta"] if len(columns) == 2 else [])
    rows = [header]
    for key in keys:
        values = [results[c].get(key) for c in columns]
        cells = [_cell(key, v) for v in values]
        if len(columns) == 2 and all(isinstance(v, (int, float)) for v in values) and key != "n":
            cells.append(_cell(key, values[1] - values[0], signed=True))
        elif len(columns) == 2:
            cells.append("")
        rows.append([key] + cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def _cell(key: str, value, signed: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:+d}" if signed else str(value)
    if math.isinf(value):
        return "inf"
    if key in _TEXT_KEYS:  # fractions in [0, 1] read best as percentages
        return f"{100 * value:+.1f}%" if signed else f"{100 * value:.1f}%"
    return f"{value:+.4g}" if signed else f"{value:.4g}"
