"""Evaluation metrics on cases with known answers."""

from __future__ import annotations

import math

import pytest

from lorakit.eval.metrics import (accuracy, exact_match, load_scorer, macro_f1, normalize_answer,
                                  normalized_exact_match, perplexity, score_texts)


def test_exact_match_ignores_only_surrounding_whitespace():
    assert exact_match("  SELECT 1;\n", "SELECT 1;") == 1.0
    assert exact_match("select 1;", "SELECT 1;") == 0.0
    assert exact_match("SELECT  1;", "SELECT 1;") == 0.0


def test_normalized_exact_match_folds_case_space_and_punctuation():
    ref = "SELECT COUNT(*) FROM employees WHERE city = 'Oslo';"
    assert normalized_exact_match("select count( * )  from employees where city = \"oslo\"", ref) == 1.0
    assert normalize_answer("Hello,   World!") == "hello world"
    assert normalize_answer("ｆｕｌｌ\u00a0width") == "full width"  # NFKC
    # comparison operators are symbols, not punctuation: they still count
    assert normalized_exact_match("salary > 5", "salary < 5") == 0.0
    assert normalized_exact_match("Oslo", "Paris") == 0.0


def test_accuracy_and_macro_f1_known_values():
    labels = [0, 0, 0, 1, 1, 2]
    preds = [0, 0, 1, 1, 1, 0]
    assert accuracy(preds, labels) == pytest.approx(4 / 6)
    # class 0: tp 2 fp 1 fn 1 -> 4/6; class 1: tp 2 fp 1 fn 0 -> 4/5; class 2: tp 0 fn 1 -> 0
    assert macro_f1(preds, labels) == pytest.approx((4 / 6 + 4 / 5 + 0) / 3)
    assert macro_f1(labels, labels) == 1.0
    # a class only ever predicted still counts (scikit-learn's default label set)
    assert macro_f1(["a", "b"], ["a", "a"]) == pytest.approx((2 / 3 + 0) / 2)


def test_metrics_reject_mismatched_or_empty_inputs():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        accuracy([1, 2], [1])
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])


def test_perplexity():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(7.5)) == pytest.approx(7.5)
    assert perplexity(1e6) == math.inf


def test_user_scorer_from_module_and_from_file(tmp_path):
    path = tmp_path / "my_scorer.py"
    path.write_text("def starts(p, r):\n    return p.startswith(r[:3])\n\ndef bad(p, r):\n    return 'x'\n")
    fn = load_scorer(f"{path}:starts")
    assert score_texts(["abcd", "xyz"], ["abc", "abc"], {"starts": fn}) == {"starts": 0.5}
    assert load_scorer("lorakit.eval.metrics:exact_match") is exact_match
    with pytest.raises(ValueError, match="must return a number"):
        score_texts(["a"], ["a"], {"bad": load_scorer(f"{path}:bad")})
    with pytest.raises(ValueError, match="no function 'nope'"):
        load_scorer(f"{path}:nope")
    with pytest.raises(ValueError, match="module:function"):
        load_scorer("just_a_name")
    with pytest.raises(FileNotFoundError, match="missing.py"):
        load_scorer(f"{tmp_path}/missing.py:f")
