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
import json
import math
from pathlib import Path

from lorakit.argtypes import nonnegative_int, positive_int

_TEXT_KEYS = ("exact_match", "normalized_exact_match", "accuracy", "macro_f1")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a model or an adapter (loss, exact match, accuracy)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="base model: embedded name, local directory or Hub id")
    p.add_argument("--adapter", help="PEFT LoRA adapter directory (evaluated next to the base model)")
    p.add_argument("--data", required=True, help="eval data: .jsonl/.json/.csv/.parquet, a saved datasets directory, or hf:org/name[:split]")
    p.add_argument("--split", default=None,
                   help="split of a saved datasets directory or hf:org/name source with several "
                        "splits (default: its only split; several splits need this flag)")
    p.add_argument("--ref-adapter", help="preference data: the reference of a DPO-style adapter "
                   "trained on top of this one (default: the base); see docs/preference.md")
    p.add_argument("--task", choices=["causal_lm", "seq_cls", "image_classification"], default="causal_lm",
                   help="seq_cls: a classifier (accuracy, macro-F1) instead of a language model; "
                        "image_classification: images (accuracy, macro-F1, confusion matrix PNG)")
    p.add_argument("--format", default="auto", choices=["auto", "instruction", "chat", "prompt_completion", "text",
                                                "classification"],
                   help="data format; auto detects it from the first row's keys (as in training)")
    p.add_argument("--instruction-template", default="alpaca", choices=["alpaca", "chat"],
                   help="prompt of instruction rows: use the one the adapter was trained with")
    p.add_argument("--scorer", action="append", default=[], metavar="MODULE:FUNCTION",
                   help="extra metric fn(prediction, reference) -> number; repeatable; a file.py:fn works too")
    p.add_argument("--label-names", help="seq_cls: comma-separated class names in id order (default: from the data)")
    p.add_argument("--max-new-tokens", type=positive_int, default=64, help="generation stops here or at end of turn")
    p.add_argument("--max-seq-len", type=positive_int, default=2048, help="longest eval example in tokens")
    p.add_argument("--batch-size", type=positive_int, default=16, help="prompts per forward / generate call")
    p.add_argument("--limit", type=nonnegative_int, default=0, help="evaluate the first N examples only (0 = all)")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"],
                   help="dtype the base model is loaded in (adapter weights stay float32)")
    p.add_argument("--quantize", default="none", choices=["none", "nf4"],
                   help="quantize the base to NF4 first (evaluate a QLoRA adapter on the base it trained on)")
    p.add_argument("--no-loss", dest="loss", action="store_false", help="skip loss / perplexity")
    p.add_argument("--no-generate", dest="generate", action="store_false", help="skip generation metrics")
    p.add_argument("--no-base", dest="base", action="store_false", help="with --adapter: skip the base model")
    p.add_argument("--out", default="eval.json", help="results file (default: ./eval.json)")
    p.set_defaults(func=run)


def load_for_eval(args):
    """(base model, tokenizer, evalset) as the flags describe; the adapter is not loaded yet."""
    import torch

    from lorakit.eval.prompts import load_eval_set
    from lorakit.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(args.model)
    label_names = args.label_names.split(",") if args.label_names else None
    evalset = load_eval_set(args.data, tokenizer, fmt=args.format, template=args.instruction_template,
                            max_seq_len=args.max_seq_len, label_names=label_names, limit=args.limit,
                            split=args.split)
    if (args.task == "seq_cls") != (evalset.labels is not None):
        raise ValueError(f"{args.data}: {evalset.data.fmt} data does not fit --task {args.task}")
    num_labels = len(evalset.data.label_names) if evalset.data.label_names else None
    model = load_model(args.model, dtype=getattr(torch, args.dtype), task=args.task, num_labels=num_labels)
    if args.quantize == "nf4":
        from lorakit.quant import quantize

        quantize(model)
    return model, tokenizer, evalset


def run(args) -> int:
    import lorakit
    from lorakit.eval.evaluate import EvalOptions, evaluate
    from lorakit.eval.metrics import load_scorer
    from lorakit.paths import check_output_file

    check_output_file(args.out, "--out")
    if args.adapter:
        lorakit.config.load_config(args.adapter)  # a bad adapter path fails before the model loads

    if args.task == "image_classification":
        from lorakit.vision.evaluate import run_eval

        return run_eval(args)
    from lorakit.vision.checks import image_input_reason

    reason = image_input_reason(args.model, [args.data])
    if reason:
        raise ValueError(f"{reason}; evaluate it with --task image_classification")

    from lorakit.preference.data import is_preference_row
    from lorakit.train.readers import read_rows

    if is_preference_row(read_rows(args.data, args.split)[0].record):
        from lorakit.preference.evaluate import run_eval

        return run_eval(args)
    scorers = {}
    for spec in args.scorer:
        name = spec.rpartition(":")[2]
        if name in scorers or name in ("exact_match", "normalized_exact_match"):
            raise ValueError(f"--scorer {spec}: a metric named {name!r} already exists; rename the function")
        scorers[name] = load_scorer(spec)
    options = EvalOptions(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, loss=args.loss,
                          generate=args.generate, scorers=scorers)
    model, tokenizer, evalset = load_for_eval(args)
    results, examples = {}, {}
    # The base is scored before the adapter is loaded: PiSSA/OLoRA/LoftQ adapters rewrite the
    # base weights when they load, so "adapter disabled" would not be the original model.
    if args.base or not args.adapter:
        results["base"], examples["base"] = evaluate(model, tokenizer, evalset, options)
    if args.adapter:
        lorakit.load_adapter(model, args.adapter)
        results["adapter"], examples["adapter"] = evaluate(model, tokenizer, evalset, options)
    report = {"model": args.model, "adapter": args.adapter, "data": args.data, "format": evalset.data.fmt,
              "task": args.task, "dtype": args.dtype, "quantize": args.quantize,
              "instruction_template": args.instruction_template, "max_new_tokens": args.max_new_tokens,
              "results": results, "examples": examples}
    return write_report(args.out, report)


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
