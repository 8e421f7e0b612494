"""bench/serve_slora.py's pure parts (the uniform and Zipf(1.0) popularity traces, cold-request
marking, the server's Prometheus counters parsed back, the per-trace summary) and, with the real
model, the 1,000-adapter writer's directories read back by lorakit's server cache and by PEFT.
The measurement itself is the program (flock /tmp/lorakit-bench.lock .venv/bin/python
bench/serve_slora.py)."""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import serve_slora  # noqa: E402
from serve_http import Result  # noqa: E402

from lorakit.serve.metrics import ServerMetrics  # noqa: E402


def test_traces():
    assert serve_slora.trace("one", 5, 1000) == [0] * 5
    uniform = serve_slora.trace("uniform", 20000, 1000, seed=3)
    assert min(uniform) >= 0 and max(uniform) < 1000 and len(set(uniform)) > 990
    assert max(collections.Counter(uniform).values()) < 45  # ~20 each
    assert serve_slora.trace("uniform", 50, 1000, seed=3) == uniform[:50]
    with pytest.raises(ValueError, match="unknown trace 'pareto'"):
        serve_slora.trace("pareto", 1, 10)


def test_zipf_one_over_rank():
    counts = collections.Counter(serve_slora.trace("zipf", 50000, 1000, seed=0))
    harmonic = sum(1 / k for k in range(1, 1001))
    for k in (0, 1, 9):  # P(rank k+1) = 1 / ((k+1) H_1000)
        assert counts[k] / 50000 == pytest.approx(1 / ((k + 1) * harmonic), rel=0.1)
    assert counts[0] > 1.8 * counts[1] > counts[3]


def test_first_uses_mark_cold_requests():
    assert serve_slora.first_uses([3, 1, 3, 3, 2, 1]) == [True, True, False, False, True, False]


def test_cache_counters_read_back_from_the_servers_metrics():
    m = ServerMetrics()
    m.adapter_cache.inc(1, "host", "miss")
    m.adapter_cache.inc(3, "host", "hit")
    m.adapter_cache.inc(2, "slot", "miss")
    m.gauge("lorakit_host_adapters", "x", lambda: 7)
    counts = serve_slora.cache_counts(serve_slora.parse_metrics(m.render()))
    assert counts == {"host_hit": 3, "host_miss": 1, "slot_hit": 0, "slot_miss": 2, "host_adapters": 7}


def test_trace_summary_splits_cold_and_warm():
    results = [Result(i, True, ttft=t, latency=t + 1, output_tokens=4) for i, t in enumerate([1.0, 0.2, 0.3, 2.0])]
    counts = {"host_hit": 2, "host_miss": 2, "slot_hit": 2, "slot_miss": 2, "host_adapters": 2}
    s = serve_slora.trace_summary(results, 4.0, [5, 5, 5, 9], counts)
    assert (s["cold_requests"], s["warm_requests"], s["distinct_adapters"]) == (2, 2, 2)
    assert s["cold_ttft_p50_ms"] == pytest.approx(1500) and s["warm_ttft_p99_ms"] == pytest.approx(299)
    assert s["loads_per_s"] == 0.5 and s["slot_swaps_per_s"] == 0.5 and s["output_tokens_per_s"] == 4.0


@pytest.mark.slow
def test_written_adapters_are_distinct_and_served(tmp_path):
    import torch

    from lorakit.models import load_model
    from lorakit.serve.cache import load_host_adapter
    from lorakit.serve.slots import SlotPool

    dirs = serve_slora.write_many(tmp_path, 3)
    assert [d.name for d in dirs] == ["a0000", "a0001", "a0002"] and not (tmp_path / "_template").exists()
    model = load_model("smollm2-135m-instruct", dtype=torch.bfloat16)
    shapes = SlotPool(model, n_slots=1, max_rank=8).layer_shapes
    loaded = [load_host_adapter(d, shapes, torch.bfloat16) for d in dirs]
    assert all(len(a.modules) == 60 and a.max_rank == 8 for a in loaded)  # q,v of 30 layers
    key = "model.layers.0.self_attn.q_proj"
    assert not torch.equal(loaded[0].modules[key][1], loaded[1].modules[key][1])
    try:
        from peft import PeftModel
    except ImportError:
        pytest.skip("peft not installed (pip install 'lorakit[dev]'): PEFT read-back not checked")
    peft_model = PeftModel.from_pretrained(load_model("smollm2-135m-instruct", dtype=torch.bfloat16), str(dirs[2]))
    sd = {k: v for k, v in peft_model.state_dict().items() if "lora_B" in k and "layers.0.self_attn.q_proj" in k}
    assert torch.equal(next(iter(sd.values())), loaded[2].modules[key][1])
