"""Multi-adapter serving on SmolLM2-135M-Instruct (bf16): lorakit's engine vs PEFT.

Measured in one process, on the embedded SmolLM2-135M-Instruct in bf16, greedy decoding,
``--requests`` prompts of 20-60 tokens, ``--new-tokens`` each:

  (a) lorakit engine, every request on the base model
  (b) lorakit engine, every request on one adapter
  (c) lorakit engine, request i on adapter i (all distinct: one mixed batch)
  (d) PEFT ``generate(adapter_names=...)`` on the same requests as (c), one left-padded batch
  (e) Hugging Face ``generate`` on the base, one left-padded batch (a reference for (a))

for two adapter shapes (r=8 on q_proj/v_proj, and r=16 on all linear layers), rounds
alternating the scenarios so that machine load hits all alike; each cell is the median
round. tokens/s counts generated tokens (up to and including EOS) over wall time from
submission to the last token, prefill included. Then the adapter hot-load latency for an r=16
all-linear adapter: disk -> host memory -> slot (lorakit), against PEFT's ``load_adapter``.

    flock /tmp/lorakit-bench.lock .venv/bin/python bench/serve.py [--threads 1 --rounds 2]

Writes bench/results/serve.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch
from common import machine_info

import lorakit
from lorakit.serve.cache import HostCache, load_host_adapter
from lorakit.serve.engine import Delta, Done, Engine, Request
from lorakit.serve.sampling import SamplingParams
from lorakit.serve.slots import SlotPool

RESULTS = Path(__file__).parent / "results" / "serve.json"
SHAPES = {"r8-qv": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
          "r16-all-linear": dict(r=16, lora_alpha=32, target_modules="all-linear")}
WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing "
         "matches near old river banks and bright stars fall").split()


def machine() -> dict:
    import peft
    import transformers

    return machine_info(transformers=transformers.__version__, peft=peft.__version__)


def prompts(tok, n: int) -> list[list[int]]:
    """``n`` deterministic prompts of 20-60 tokens."""
    out = []
    for i in range(n):
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(16 + (i * 11) % 40)]
        out.append(tok(f"Story {i}: " + " ".join(words), add_special_tokens=False).input_ids)
    return out


def write_adapters(base, root: Path, n: int, shape: dict) -> list[Path]:
    """``n`` random PEFT adapters of one shape (bf16 factors, B ~ N(0, 0.02))."""
    model = copy.deepcopy(base)
    lorakit.add_adapter(model, lorakit.LoraConfig(**shape), adapter_dtype=torch.bfloat16)
    dirs = []
    for i in range(n):
        torch.manual_seed(i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)
        dirs.append(lorakit.save_adapter(model, root / f"adapter{i:02d}"))
    return dirs


# ---- lorakit engine -------------------------------------------------------------------------
def run_engine(engine_parts, jobs, new_tokens: int) -> tuple[int, float, list[str]]:
    """Submit every job [(HostAdapter or None, prompt ids)] at once; (tokens, seconds, each
    request's text in submission order)."""
    model, tok, pool = engine_parts
    engine = Engine(model, tok, pool, max_batch=len(jobs))
    results, left = {}, threading.Semaphore(0)
    params = SamplingParams(max_tokens=new_tokens, temperature=0)
    for i, (adapter, ids) in enumerate(jobs):
        def emit(event, i=i):
            if not isinstance(event, Delta):
                results[i] = event
                left.release()
        engine.submit(Request(ids, params, emit, adapter))
    start = time.perf_counter()
    engine.start()
    for _ in jobs:
        left.acquire()
    seconds = time.perf_counter() - start
    engine.stop()
    failed = [r for r in results.values() if not isinstance(r, Done)]
    if failed:
        raise RuntimeError(f"engine requests failed: {failed[:2]}")
    return sum(r.completion_tokens for r in results.values()), seconds, [results[i].text for i in range(len(jobs))]


# ---- Hugging Face / PEFT generate -----------------------------------------------------------
def run_generate(model, tok, prompt_ids, new_tokens: int, **kw) -> tuple[int, float]:
    """One left-padded batch through ``model.generate``; (tokens up to EOS, seconds)."""
    width = max(len(p) for p in prompt_ids)
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompt_ids])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids])
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id, **kw)
    seconds = time.perf_counter() - start
    tokens = 0
    for row in out[:, width:].tolist():
        tokens += next((i + 1 for i, t in enumerate(row) if t == tok.eos_token_id), len(row))
    return tokens, seconds


def throughput(base, tok, root: Path, shape_name: str, args) -> dict:
    n, new = args.requests, args.new_tokens
    dirs = write_adapters(base, root / shape_name, n, SHAPES[shape_name])
    served = copy.deepcopy(base)
    pool = SlotPool(served, n_slots=n, max_rank=SHAPES[shape_name]["r"])  # lorakit serve --max-rank
    cache = HostCache(pool.layer_shapes, torch.bfloat16, capacity=n)
    adapters = [cache.get(d.name, d) for d in dirs]
    ids = prompts(tok, n)
    from peft import PeftModel

    # Adapters stay in bf16 as in lorakit (PEFT's default would upcast them to fp32, slower here).
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), str(dirs[0]), adapter_name=dirs[0].name,
                                           autocast_adapter_dtype=False)
    for d in dirs[1:]:
        peft_model.load_adapter(str(d), adapter_name=d.name, autocast_adapter_dtype=False)
    peft_model.eval()
    parts = (served, tok, pool)
    scenarios = {
        "a_base": lambda: run_engine(parts, [(None, p) for p in ids], new),
        "b_one_adapter": lambda: run_engine(parts, [(adapters[0], p) for p in ids], new),
        "c_distinct_adapters": lambda: run_engine(parts, list(zip(adapters, ids)), new),
        "d_peft_adapter_names": lambda: run_generate(peft_model, tok, ids, new, adapter_names=[d.name for d in dirs]),
        "e_hf_generate_base": lambda: run_generate(base, tok, ids, new),
    }
    run_engine(parts, [(adapters[0], ids[0])], 2)  # warm-up: first-call kernel setup
    run_generate(peft_model, tok, ids[:2], 2, adapter_names=[dirs[0].name, dirs[1].name])
    rounds = {k: [] for k in scenarios}
    for r in range(args.rounds):
        for key, fn in scenarios.items():
            tokens, seconds = fn()[:2]
            rounds[key].append({"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds})
            print(f"  [{shape_name} round {r + 1}] {key}: {tokens} tokens in {seconds:.2f} s = "
                  f"{tokens / seconds:.1f} tok/s", flush=True)
    del peft_model
    return {k: {"median_tokens_per_s": statistics.median(x["tokens_per_s"] for x in v), "rounds": v}
            for k, v in rounds.items()}


def hot_load(base, root: Path, reps: int) -> dict:
    """p50 of loading one r=16 all-linear adapter: lorakit (read + slot write) vs PEFT."""
    d = write_adapters(base, root / "hotload", 1, SHAPES["r16-all-linear"])[0]
    pool = SlotPool(copy.deepcopy(base), n_slots=2, max_rank=16)
    read_ms, write_ms, peft_ms = [], [], []
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), str(d), adapter_name="first",
                                           autocast_adapter_dtype=False)
    for i in range(reps):
        t0 = time.perf_counter()
        adapter = load_host_adapter(d, pool.layer_shapes, torch.bfloat16, name=f"x{i}")
        t1 = time.perf_counter()
        pool.write(i % 2, adapter)
        t2 = time.perf_counter()
        read_ms.append((t1 - t0) * 1e3)
        write_ms.append((t2 - t1) * 1e3)
        t0 = time.perf_counter()
        peft_model.load_adapter(str(d), adapter_name=f"x{i}", autocast_adapter_dtype=False)
        peft_ms.append((time.perf_counter() - t0) * 1e3)
        peft_model.delete_adapter(f"x{i}")
    total = [a + b for a, b in zip(read_ms, write_ms)]
    mb = adapter.nbytes() / 2**20
    return {"adapter_mib_bf16": mb, "lorakit_read_p50_ms": statistics.median(read_ms),
            "lorakit_slot_write_p50_ms": statistics.median(write_ms), "lorakit_total_p50_ms": statistics.median(total),
            "peft_load_adapter_p50_ms": statistics.median(peft_ms), "reps": reps}


def table(results: dict, hot: dict, info: dict, args) -> str:
    lines = [f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} "
             f"({info['torch_threads']} threads), transformers {info['transformers']}, peft {info['peft']}, "
             f"load average at start {info['load_average']:.1f}",
             f"{args.requests} requests x {args.new_tokens} new tokens, greedy, bf16, median of {args.rounds} rounds",
             "",
             f"| adapters | (a) base | (b) one adapter | (c) {args.requests} distinct | (d) PEFT adapter_names | (e) HF generate base "
             "| b/a | c/b | c/d |",
             "|---|---|---|---|---|---|---|---|---|"]
    for shape, r in results.items():
        v = {k: r[k]["median_tokens_per_s"] for k in r}
        a, b, c, d, e = (v["a_base"], v["b_one_adapter"], v["c_distinct_adapters"], v["d_peft_adapter_names"],
                         v["e_hf_generate_base"])
        lines.append(f"| {shape} | {a:.1f} | {b:.1f} | {c:.1f} | {d:.1f} | {e:.1f} | {b / a:.2f} | {c / b:.2f} "
                     f"| {c / d:.2f} |")
    lines += ["", "tokens/s; goals: b/a >= 0.9, c/b >= 0.8, c/d >= 3", "",
              "ratios within each round (the scenarios of a round run back to back, so load that"
              " changes between rounds cancels out), min-max over rounds:"]
    for shape, r in results.items():
        per = {k: [x["tokens_per_s"] for x in r[k]["rounds"]] for k in r}
        rng = lambda num, den: (min(n / m for n, m in zip(per[num], per[den])),  # noqa: E731
                                max(n / m for n, m in zip(per[num], per[den])))
        parts = [f"{label} {lo:.2f}-{hi:.2f}" for label, (lo, hi) in
                 (("b/a", rng("b_one_adapter", "a_base")), ("c/b", rng("c_distinct_adapters", "b_one_adapter")),
                  ("c/d", rng("c_distinct_adapters", "d_peft_adapter_names")))]
        lines.append(f"  {shape}: " + ", ".join(parts))
    lines += ["",
              f"hot-load of an r=16 all-linear adapter ({hot['adapter_mib_bf16']:.1f} MiB bf16), p50 of {hot['reps']}: "
              f"lorakit {hot['lorakit_total_p50_ms']:.1f} ms (disk -> host {hot['lorakit_read_p50_ms']:.1f} ms, "
              f"host -> slot {hot['lorakit_slot_write_p50_ms']:.1f} ms); PEFT load_adapter "
              f"{hot['peft_load_adapter_p50_ms']:.1f} ms"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--hot-load-reps", type=int, default=15)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from lorakit.models import DEFAULT_MODEL, load_model, load_tokenizer

    info = machine()
    base = load_model(DEFAULT_MODEL, dtype=torch.bfloat16).eval()
    tok = load_tokenizer(DEFAULT_MODEL)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        results = {}
        for shape in args.shapes:
            print(f"adapters {shape}: {SHAPES[shape]}", flush=True)
            results[shape] = throughput(base, tok, root, shape, args)
        hot = hot_load(base, root, args.hot_load_reps)
    text = table(results, hot, info, args)
    print("\n" + text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": info, "args": vars(args), "throughput": results, "hot_load": hot,
                                   "command": "flock /tmp/lorakit-bench.lock .venv/bin/python bench/serve.py "
                                              f"--threads {args.threads} --rounds {args.rounds}",
                                   "table": text}, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
