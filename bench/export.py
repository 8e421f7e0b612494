"""Export cost and the unmerged-adapter cost in llama.cpp, on the embedded SmolLM2-135M.

    flock /tmp/lorakit-bench.lock .venv/bin/python bench/export.py

Measures, for a random-B r=16 all-linear LoRA adapter: the wall time and file size of every
export (``gguf-lora`` f32/f16/q8_0, ``gguf`` f16/q8_0/q4_0, ``hf``, ``ollama``), then llama.cpp
(node-llama-cpp) greedy generation tokens/s on the Q4_1 base without the adapter, with the
exported LoRA file, and on the merged q8_0 / q4_0 GGUFs. Writes ``bench/results/export.json``.

llama.cpp runs with one thread by default: its worker threads spin-wait, so on a machine whose
cores are taken by others a second thread makes the speed collapse unpredictably. The speed
configurations are measured in ``--rounds`` interleaved rounds (base, LoRA, merged, base, ...)
and each reports its best round, so a load spike during one configuration does not decide the
ratio; tokens/s counts generated tokens over the time of each request (prompt evaluation
included, the same prompts for every configuration).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine_info, machine_line  # noqa: E402

from lorakit.export import check, export, load_source  # noqa: E402
from lorakit.export.source import embedded_gguf  # noqa: E402
from adapters import make_adapter  # noqa: E402

EXPORTS = [("gguf-lora", "f32"), ("gguf-lora", "f16"), ("gguf-lora", "q8_0"),
           ("gguf", "f16"), ("gguf", "q8_0"), ("gguf", "q4_0"), ("hf", None), ("ollama", "q8_0")]


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def tokens_per_s(model: Path, prompts, n: int, threads: int, lora: Path | None = None) -> dict:
    answer = check.run_llama({"model": str(model), "threads": threads,
                              "lora": [{"filePath": str(lora), "scale": 1.0}] if lora else [],
                              "jobs": [{"tokens": p, "maxTokens": n} for p in prompts]})
    tokens = sum(len(r["tokens"]) for r in answer["results"])
    seconds = sum(r["seconds"] for r in answer["results"])
    return {"tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=48, help="greedy tokens per prompt")
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per speed configuration")
    parser.add_argument("--out", default="bench/results/export.json")
    args = parser.parse_args()
    missing = check.consumer_missing()
    if missing:
        sys.exit(f"bench/export.py needs llama.cpp: {missing}")
    work = Path(tempfile.mkdtemp(prefix="lorakit-bench-export-"))
    try:
        adapter = make_adapter("smollm2-135m-instruct", work / "adapter", "plain", std=0.02, r=16, lora_alpha=32)
        rows = []
        for fmt, outtype in EXPORTS:
            src = load_source(adapter, untie_for_merge=fmt != "gguf-lora")
            out = work / (f"{fmt}-{outtype}.gguf" if fmt.startswith("gguf") else f"{fmt}-{outtype}")
            start = time.perf_counter()
            export(src, fmt, out, outtype=outtype, check_prompts=0)
            rows.append({"format": fmt, "outtype": outtype, "seconds": round(time.perf_counter() - start, 2),
                         "bytes": _size(out)})
            print(f"{fmt:10s} {outtype or '':5s} {rows[-1]['seconds']:7.2f} s  {rows[-1]['bytes'] / 2**20:8.1f} MiB")
        from lorakit.models import load_tokenizer

        prompts = check.chat_prompts(load_tokenizer(), check.PROMPTS[:args.prompts])
        base = embedded_gguf("smollm2-135m-instruct")
        configs = {
            "q4_1 base": (base, None),
            "q4_1 base + LoRA f32": (base, work / "gguf-lora-f32.gguf"),
            "q4_1 base + LoRA f16": (base, work / "gguf-lora-f16.gguf"),
            "q4_1 base + LoRA q8_0": (base, work / "gguf-lora-q8_0.gguf"),
            "merged f16": (work / "gguf-f16.gguf", None),
            "merged q8_0": (work / "gguf-q8_0.gguf", None),
            "merged q4_0": (work / "gguf-q4_0.gguf", None),
        }
        rounds: dict[str, list[dict]] = {name: [] for name in configs}
        for _ in range(args.rounds):
            for name, (model, lora) in configs.items():
                rounds[name].append(tokens_per_s(model, prompts, args.tokens, args.threads, lora))
        speed = {name: {**max(rs, key=lambda r: r["tokens_per_s"]),
                        "rounds_tokens_per_s": [r["tokens_per_s"] for r in rs]} for name, rs in rounds.items()}
        ref = speed["q4_1 base"]["tokens_per_s"]
        print(f"\nllama.cpp greedy generation, {args.threads} thread(s), best of {args.rounds} "
              f"interleaved rounds ({machine_line()}, load average {os.getloadavg()[0]:.1f})")
        for name, s in speed.items():
            print(f"{name:24s} {s['tokens_per_s']:7.1f} tok/s  ({s['tokens_per_s'] / ref:.2f}x the base; "
                  f"rounds {s['rounds_tokens_per_s']})")
        result = {"machine": machine_info(llama_threads=args.threads, rounds=args.rounds,
                                          load_average_end=os.getloadavg()[0]),
                  "command": "flock /tmp/lorakit-bench.lock .venv/bin/python bench/export.py " + " ".join(sys.argv[1:]),
                  "exports": rows, "llama_generation": speed,
                  "ratio_vs_base": {n: round(s["tokens_per_s"] / ref, 3) for n, s in speed.items()},
                  "adapter": "r=16 alpha=32, q,k,v,o,gate,up,down, random B (std 0.02)",
                  "note": "measured while the machine was shared: absolute times pessimistic, ratios within one run hold"}
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
