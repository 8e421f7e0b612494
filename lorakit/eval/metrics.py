"""Evaluation metrics as plain functions over Python values (no model, no tensors).

Definitions (what each number in ``eval.json`` means):

- ``exact_match``: the prediction equals the reference after stripping leading/trailing
  whitespace only (case, inner spacing and punctuation all count).
- ``normalized_exact_match``: equality after ``normalize_answer``: Unicode NFKC, lower case,
  every punctuation character (Unicode category P*) replaced by a space, whitespace runs
  collapsed to one space, ends stripped. ``"SELECT  COUNT(*) FROM t;"`` and
  ``"select count( * ) from t"`` match; ``"salary > 5"`` and ``"salary < 5"`` do not (``<`` and
  ``>`` are symbols, not punctuation).
- ``accuracy``: fraction of predicted labels equal to the reference labels.
- ``macro_f1``: the unweighted mean over classes of ``F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)``,
  over every class that occurs in the references or the predictions (scikit-learn's default).
- ``perplexity``: ``exp(mean token negative log-likelihood)``.
- a user scorer ``module:function`` (or ``path/to/file.py:function``): called as
  ``function(prediction, reference)`` per example, returning a number or bool; the metric is
  the mean.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import unicodedata
from pathlib import Path
from typing import Callable, Sequence

Scorer = Callable[[str, str], float]


def normalize_answer(text: str) -> str:
    """NFKC, lower case, punctuation -> space, whitespace collapsed (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(prediction.strip() == reference.strip())


def normalized_exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("cannot average an empty list of scores (no examples?)")
    return float(sum(values)) / len(values)


def accuracy(predictions: Sequence, labels: Sequence) -> float:
    _same_length(predictions, labels)
    return mean([float(p == y) for p, y in zip(predictions, labels)])


def macro_f1(predictions: Sequence, labels: Sequence) -> float:
    """Mean per-class F1 over the classes seen in ``labels`` or ``predictions``."""
    _same_length(predictions, labels)
    classes = sorted(set(labels) | set(predictions), key=repr)
    scores = []
    for c in classes:
        tp = sum(p == c and y == c for p, y in zip(predictions, labels))
        fp = sum(p == c and y != c for p, y in zip(predictions, labels))
        fn = sum(p != c and y == c for p, y in zip(predictions, labels))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return mean(scores)


def perplexity(mean_nll: float) -> float:
    """``exp(mean_nll)``; ``inf`` when that overflows a float."""
    try:
        return math.exp(mean_nll)
    except OverflowError:
        return math.inf


def load_scorer(spec: str) -> Scorer:
    """Import ``module:function`` or ``path/to/file.py:function`` and return the function."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ValueError(f"scorer {spec!r} must look like 'module:function' or 'file.py:function'")
    if target.endswith(".py"):
        path = Path(target)
        if not path.exists():
            raise FileNotFoundError(f"scorer file not found: {path}")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except SyntaxError as err:
            raise ValueError(f"scorer file {path}:{err.lineno}: {err.msg}") from None
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise ValueError(f"scorer {spec!r}: cannot import {target!r} ({err})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"scorer {spec!r}: {target} has no function {attr!r}")
    return fn


def score_texts(predictions: Sequence[str], references: Sequence[str],
                scorers: dict[str, Scorer]) -> dict[str, float]:
    """Mean of each scorer over (prediction, reference) pairs; ``name -> mean score``."""
    _same_length(predictions, references)
    out = {}
    for name, fn in scorers.items():
        values = []
        for i, (p, r) in enumerate(zip(predictions, references)):
            value = fn(p, r)
            if not isinstance(value, (int, float)):
                raise ValueError(f"scorer {name!r} returned {type(value).__name__} for example {i}; "
                                 "it must return a number or bool")
            values.append(float(value))
        out[name] = mean(values)
    return out


def _same_length(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} predictions but {len(b)} references")
