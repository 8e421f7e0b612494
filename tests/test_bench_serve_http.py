"""bench/serve_http.py's pure parts (the row plan, Poisson arrivals, percentiles, per-row
summary and lorakit / vLLM ratios, the token-count check, the report) and, with the real model,
a lorakit-only run with tiny counts through real ``openai`` streaming clients. The measurement
itself is the program (flock /tmp/lorakit-bench.lock .venv/bin/python bench/serve_http.py)."""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import serve_http  # noqa: E402
from serve_http import Result, Row  # noqa: E402


def test_plan_covers_every_concurrency_and_rate_per_scenario():
    rows = serve_http.plan(["base", "one"], [1, 8, 32, 64], [4.0, math.inf, 16.0], rate_concurrency=64)
    assert [r.num for r in rows if r.scenario == "base"] == [8, 16, 64, 64, 32, 32]
    assert [(r.rate, r.concurrency) for r in rows if r.scenario == "one"][4:] == [(4.0, 64), (16.0, 64)]
    assert len({r.label for r in rows}) == len(rows)  # labels key the results
    assert [r.num for r in serve_http.plan(["base"], [1], [], 8, scale=0.1)] == [1]


def test_arrivals_are_a_poisson_process():
    assert serve_http.arrivals(5, math.inf) == [0.0] * 5
    times = serve_http.arrivals(4000, 10.0, seed=1)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert times[0] == 0.0 and min(gaps) >= 0
    assert statistics.mean(gaps) == pytest.approx(0.1, rel=0.05)
    assert statistics.stdev(gaps) == pytest.approx(0.1, rel=0.08)  # exponential: sd = mean
    assert serve_http.arrivals(10, 3.0, seed=2) == serve_http.arrivals(10, 3.0, seed=2)


def test_percentile_interpolates_like_numpy():
    assert serve_http.percentile([4, 1, 3, 2], 50) == 2.5
    assert serve_http.percentile(range(101), 99) == 99
    assert serve_http.percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert serve_http.percentile([7], 99) == 7 and serve_http.percentile([], 50) is None


def test_summary_and_ratios():
    results = [Result(0, True, ttft=0.1, latency=1.1, itl=[0.5, 0.5], output_tokens=11),
               Result(1, True, ttft=0.3, latency=0.3, itl=[], output_tokens=1),
               Result(2, False, error="APIConnectionError: refused")]
    s = serve_http.summarize(results, wall=2.0)
    assert (s["completed"], s["failed"], s["output_tokens"]) == (2, 1, 12)
    assert s["output_tokens_per_s"] == 6.0 and s["requests_per_s"] == 1.0
    assert s["ttft_p50_ms"] == pytest.approx(200) and s["tpot_p50_ms"] == pytest.approx(100)  # 1 s / 10 tokens
    assert s["itl_p99_ms"] == pytest.approx(500) and s["errors"] == ["APIConnectionError: refused"]
    q = serve_http.ratios(s, {**s, "output_tokens_per_s": 3.0, "ttft_p50_ms": 400.0})
    assert q["output_tokens_per_s"] == 2.0 and q["ttft_p50_ms"] == 0.5 and q["requests_per_s"] == 1.0


def test_token_mismatches_name_the_pairs():
    a = {"base/m/0": 32, "base/m/1": 32, "one/x/0": 17}
    b = {"base/m/0": 32, "base/m/1": 30, "one/x/0": 17, "one/x/9": 1}
    assert serve_http.token_mismatches(a, b) == ["base/m/1"]


def test_report_with_and_without_vllm():
    args = serve_http.parse_args(["--no-vllm"])
    rows = [Row("one", math.inf, 8, 16)]
    side = serve_http.summarize([Result(0, True, ttft=0.1, latency=0.5, itl=[0.2, 0.2], output_tokens=3)], 1.0)
    info = {"cpu": "cpu", "cores": 2, "torch": "t", "load_before": "1.0", "load_after": "2.0"}
    alone = serve_http.table(rows, {rows[0].label: side}, {}, info, args, None)
    assert "| one | inf | 8 | 16 | lorakit | 3.0 | 1.00 | 100 | 100 |" in alone
    assert "lorakit/vLLM |" not in alone and "no vLLM side to compare with" in alone
    slower = {**side, "output_tokens_per_s": 1.5, "requests_per_s": 0.5}
    both = serve_http.table(rows, {rows[0].label: side}, {rows[0].label: slower}, info, args, ["one/x/3"])
    assert "| one | inf | 8 | 16 | lorakit/vLLM | **2.00** | 2.00 |" in both
    assert "1 (scenario/prompt) pairs differ" in both


@pytest.mark.slow
def test_lorakit_only_run_over_http(tmp_path):
    out = tmp_path / "serve_http.json"
    serve_http.main(["--no-vllm", "--scenarios", "base", "distinct", "--distinct", "2", "--concurrency", "2",
                     "--rates", "50", "--scale", "0.25", "--max-tokens", "4", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["vllm_error"] == "not run (--no-vllm)" and data["token_mismatches"] is None
    assert [(r["scenario"], r["concurrency"], r["num"]) for r in data["rows"]] == [
        ("base", 2, 2), ("base", 64, 8), ("distinct", 2, 2), ("distinct", 64, 8)]
    for row in data["rows"]:
        s = row["lorakit"]
        assert s["completed"] == row["num"] and s["failed"] == 0, s["errors"]
        assert 0 < s["output_tokens"] <= 4 * row["num"] and s["ttft_p50_ms"] > 0
        assert row["vllm"] is None and row["ratio"] is None
    assert "| distinct | 50 | 64 | 8 | lorakit |" in data["table"]
