"""Evaluate one model (base or with an adapter) on an ``EvalSet``: loss, generation metrics,
classification metrics. The metrics themselves are in ``metrics``; this file only runs the
model and collects numbers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from torch import nn

from lorakit.eval.classify import predict_labels
from lorakit.eval.generate import greedy_generate
from lorakit.eval.loss import dataset_loss
from lorakit.eval.metrics import (Scorer, accuracy, exact_match, macro_f1, normalized_exact_match,
                                  score_texts)
from lorakit.eval.prompts import EvalSet

BUILTIN_SCORERS: dict[str, Scorer] = {"exact_match": exact_match,
                                      "normalized_exact_match": normalized_exact_match}


@dataclass
class EvalOptions:
    batch_size: int = 16
    max_new_tokens: int = 64
    loss: bool = True          # causal LM: loss / perplexity on the reference tokens
    generate: bool = True      # causal LM with references: greedy generation + text metrics
    scorers: dict[str, Scorer] = field(default_factory=dict)  # user scorers, name -> fn


def evaluate(model: nn.Module, tokenizer, evalset: EvalSet, options: EvalOptions) -> tuple[dict, list[dict]]:
    """``(metrics, per-example records)``. Metrics: ``loss``/``perplexity``/``tokens`` (causal
    LM), ``exact_match``/``normalized_exact_match``/user scorers (generation), ``accuracy``/
    ``macro_f1`` (classification), ``n`` examples and ``seconds`` per phase."""
    metrics: dict = {"n": len(evalset.data.examples)}
    records: list[dict] = []
    if evalset.labels is not None:
        start = time.perf_counter()
        preds = predict_labels(model, tokenizer, evalset.texts, options.batch_size)
        metrics.update(accuracy=accuracy(preds, evalset.labels), macro_f1=macro_f1(preds, evalset.labels),
                       classify_seconds=time.perf_counter() - start)
        names = evalset.data.label_names or []
        records = [{"where": e.where, "label": _name(y, names), "prediction": _name(p, names)}
                   for e, y, p in zip(evalset.data.examples, evalset.labels, preds)]
        return metrics, records
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if options.loss:
        start = time.perf_counter()
        metrics.update(dataset_loss(model, evalset.data, pad_id, options.batch_size))
        metrics["loss_seconds"] = time.perf_counter() - start
    if options.generate and evalset.prompts is not None:
        start = time.perf_counter()
        preds = greedy_generate(model, tokenizer, evalset.prompts, options.max_new_tokens,
                                options.batch_size)
        metrics["generate_seconds"] = time.perf_counter() - start
        metrics.update(score_texts(preds, evalset.references, {**BUILTIN_SCORERS, **options.scorers}))
        records = [{"where": e.where, "reference": r, "prediction": p}
                   for e, r, p in zip(evalset.data.examples, evalset.references, preds)]
    return metrics, records


def _name(label: int, names: list[str]):
    return names[label] if 0 <= label < len(names) else label
