"""What the model will see: the first examples of a config's data after templating and masking.

``preview(cfg, n)`` loads only the tokenizer (never the weights), reads and tokenizes the whole
training set as ``lorakit train`` would, and returns JSON-able data:

    {"examples": [{"where": "train.jsonl:1", "text": "<decoded input_ids>",
                   "segments": [{"text": ..., "trained": bool}, ...],   # runs of the loss mask
                   "n_tokens": int, "n_trained": int, "label": ...}],   # label: seq_cls only
     "stats": {"format", "rows", "kept", "dropped", "dropped_by_reason", "first_dropped",
               "truncated", "tokens_total", "tokens_mean", "tokens_min", "tokens_max",
               "tokens_p95", "trained_tokens_total", "trained_fraction", "max_seq_len",
               "on_bad_row", "would_stop", "optimizer_steps"}}

Bad and too-long rows are always counted here (as ``on_bad_row: skip`` does); ``would_stop``
holds the error ``lorakit train`` would stop with under ``on_bad_row: error`` (else ``None``).
lorakit never truncates an example, so ``truncated`` is always 0 (too-long rows are dropped or
stop the run), reported so that tools comparing with TRL/Axolotl find the field.
"""

from __future__ import annotations

import dataclasses
import math

from lorakit.train.config import TrainConfig
from lorakit.train.formats import IGNORE, Example

__all__ = ["preview", "segments", "format_preview"]


def segments(tokenizer, example: Example) -> list[dict]:
    """Runs of consecutive tokens with the same mask state, decoded: ``[{text, trained}]``."""
    if not isinstance(example.labels, list):
        return [{"text": tokenizer.decode(example.input_ids), "trained": False}]
    out: list[dict] = []
    run: list[int] = []
    state = None
    for token, label in zip(example.input_ids, example.labels):
        trained = label != IGNORE
        if state is not None and trained != state:
            out.append({"text": tokenizer.decode(run), "trained": state})
            run = []
        run.append(token)
        state = trained
    if run:
        out.append({"text": tokenizer.decode(run), "trained": state})
    return out


def _n_trained(example: Example) -> int:
    if not isinstance(example.labels, list):
        return 0
    return sum(1 for t in example.labels if t != IGNORE)


def _stats(cfg: TrainConfig, data, n_rows: int) -> dict:
    lengths = sorted(len(e.input_ids) for e in data.examples)
    trained = sum(_n_trained(e) for e in data.examples)
    total = sum(lengths)
    dropped = sum(data.skipped.values())
    stop = next(iter(data.first_skip.values()), None) if cfg.on_bad_row == "error" else None
    return {
        "format": data.fmt, "rows": n_rows, "kept": len(lengths), "dropped": dropped,
        "dropped_by_reason": dict(data.skipped), "first_dropped": dict(data.first_skip),
        "truncated": 0, "tokens_total": total, "tokens_mean": total / len(lengths),
        "tokens_min": lengths[0], "tokens_max": lengths[-1],
        "tokens_p95": lengths[min(len(lengths) - 1, math.ceil(0.95 * len(lengths)) - 1)],
        "trained_tokens_total": trained, "trained_fraction": trained / total if total else 0.0,
        "max_seq_len": cfg.max_seq_len, "on_bad_row": cfg.on_bad_row, "would_stop": stop,
        "optimizer_steps": _steps(cfg, lengths),
    }


def _steps(cfg: TrainConfig, lengths: list[int]) -> int:
    """Optimizer steps of a one-process run over these examples (eval split not held out)."""
    from lorakit.train import batching

    if cfg.max_steps:
        return cfg.max_steps
    return sum(batching.steps_in_epoch(batching.epoch_plan(
        lengths, cfg.batch_size, cfg.seed, e, cfg.packing, cfg.max_seq_len), cfg.grad_accum, 1)
        for e in range(cfg.epochs))


def preview(cfg: TrainConfig, n: int = 5) -> dict:
    """The first ``n`` training examples as the model sees them, and statistics of all rows."""
    from lorakit.models import load_tokenizer
    from lorakit.train import build

    build.check_inputs(cfg)
    tokenizer = load_tokenizer(cfg.model)
    counting = dataclasses.replace(cfg, on_bad_row="skip")
    data = build.load_train_source(counting, tokenizer, build.data_kwargs(counting))
    n_rows = len(data.examples) + sum(data.skipped.values())
    examples = []
    for e in data.examples[:n]:
        item = {"where": e.where, "text": tokenizer.decode(e.input_ids),
                "segments": segments(tokenizer, e), "n_tokens": len(e.input_ids),
                "n_trained": _n_trained(e)}
        if not isinstance(e.labels, list):
            item["label"] = (data.label_names or [])[e.labels] if data.label_names else e.labels
        examples.append(item)
    return {"examples": examples, "stats": _stats(cfg, data, n_rows)}


def format_preview(result: dict, color: bool) -> str:
    """Human-readable preview: trained text in green (``color``) or inside ``[[ ]]``."""
    on, off = ("\033[32m", "\033[0m") if color else ("[[", "]]")
    lines = []
    for i, ex in enumerate(result["examples"]):
        head = f"--- example {i} ({ex['where']}): {ex['n_tokens']} tokens, {ex['n_trained']} trained"
        lines.append(head + (f", label {ex['label']!r}" if "label" in ex else "") + " ---")
        lines.append("".join(on + s["text"] + off if s["trained"] else s["text"]
                             for s in ex["segments"]))
    s = result["stats"]
    lines += ["--- stats ---",
              f"format {s['format']}: {s['rows']} rows, {s['kept']} kept, {s['dropped']} dropped"
              + (f" {s['dropped_by_reason']}" if s["dropped"] else "")
              + f", {s['truncated']} truncated",
              f"tokens per example: mean {s['tokens_mean']:.1f}, min {s['tokens_min']}, "
              f"p95 {s['tokens_p95']}, max {s['tokens_max']} (max_seq_len {s['max_seq_len']}); "
              f"{s['trained_tokens_total']:,} of {s['tokens_total']:,} tokens trained "
              f"({100 * s['trained_fraction']:.1f}%); {s['optimizer_steps']} optimizer steps"]
    for reason, message in s["first_dropped"].items():
        lines.append(f"first dropped ({reason}): {message}")
    if s["would_stop"]:
        lines.append(f"lorakit train would stop here (on_bad_row: error): {s['would_stop']}")
    return "\n".join(lines)
