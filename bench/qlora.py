"""QLoRA on SmolLM2-135M-Instruct: size, codec speed vs bitsandbytes, training step vs LoRA.

Measured in one run, on the embedded SmolLM2-135M-Instruct loaded in bf16:

1. codec: every quantized weight matrix (the 210 linear layers but lm_head) through lorakit's
   ``nf4_quantize`` / ``nf4_dequantize`` (to bf16) and bitsandbytes' ``quantize_4bit`` /
   ``dequantize_4bit`` (its CPU kernels), alternating per matrix so machine load hits both
   alike; per matrix and operation the best of ``--repeats`` calls counts. Bytes are compared
   for identity.
2. size: bits per quantized parameter and whole-model bytes, with and without double
   quantization, against the bf16 model.
3. answer: greedy answer to "What is the capital of France?" (chat template), bf16 vs NF4.
4. training: median step (forward + backward + AdamW) of LoRA on the bf16 base vs QLoRA on
   the NF4 base (bf16 compute), batch 4 x 128 tokens, r=16, alpha=32, all-linear, each in its
   own process (peak RSS is its own); rounds alternate the two.

    flock /tmp/lorakit-bench.lock .venv/bin/python bench/qlora.py [--rounds 2 --steps 3 --repeats 2]

Writes bench/results/qlora.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from common import machine_info

BATCH, SEQ, RANK, ALPHA = 4, 128, 16, 32
QUESTION = "What is the capital of France?"
RESULTS = Path(__file__).parent / "results" / "qlora.json"


def machine() -> dict:
    import bitsandbytes

    return machine_info(bitsandbytes=bitsandbytes.__version__)


def load():
    from lorakit.models import load_model

    return load_model("smollm2-135m-instruct", dtype=torch.bfloat16).eval()


def model_bytes(model) -> int:
    """Parameters, buffers and 4-bit quant states (each storage counted once)."""
    from lorakit.quant import Linear4bit

    tensors = list(model.parameters()) + list(model.buffers())
    for m in model.modules():
        if isinstance(m, Linear4bit):
            qs = m.quant_state
            tensors += [t for t in (qs.absmax, qs.offset, qs.nested_absmax, qs.nested_code) if t is not None]
    seen = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(seen.values())


# ---- 1. codec speed and identity ------------------------------------------------------------
def best_of(repeats: int, fn):
    """(seconds of the fastest of ``repeats`` calls, the last result)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def codec(model, repeats: int) -> dict:
    import bitsandbytes.functional as F

    from lorakit.quant import nf4_dequantize, nf4_quantize
    from lorakit.quant.quantize import select_layers

    names = select_layers(model)
    t = {"ours_q": 0.0, "bnb_q": 0.0, "ours_dq": 0.0, "bnb_dq": 0.0}
    identical = params = 0
    for name in names:
        w = model.get_submodule(name).weight.detach()
        params += w.numel()
        s, (packed, state) = best_of(repeats, lambda: nf4_quantize(w, 64, double_quant=True))
        t["ours_q"] += s
        s, (ref_packed, ref) = best_of(
            repeats, lambda: F.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
        )
        t["bnb_q"] += s
        s, ours = best_of(repeats, lambda: nf4_dequantize(packed, state, torch.bfloat16))
        t["ours_dq"] += s
        s, theirs = best_of(repeats, lambda: F.dequantize_4bit(ref_packed, ref, quant_type="nf4"))
        t["bnb_dq"] += s
        identical += bool(
            torch.equal(packed, ref_packed)
            and torch.equal(state.absmax, ref.absmax)
            and torch.equal(state.nested_absmax, ref.state2.absmax)
            and torch.equal(ours, theirs)
        )
    return {
        "matrices": len(names),
        "params": params,
        "identical_to_bitsandbytes": identical,
        "repeats": repeats,
        "seconds": t,
        "quantize_mparams_per_s": {k: params / t[f"{k}_q"] / 1e6 for k in ("ours", "bnb")},
        "dequantize_mparams_per_s": {k: params / t[f"{k}_dq"] / 1e6 for k in ("ours", "bnb")},
        "quantize_time_ours_vs_bnb": t["ours_q"] / t["bnb_q"],
        "dequantize_time_ours_vs_bnb": t["ours_dq"] / t["bnb_dq"],
    }


# ---- 2. size and 3. answer -----------------------------------------------------------------
def answer(model, tok) -> str:
    msgs = [{"role": "user", "content": QUESTION}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = ids["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=24, do_sample=False)
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def size_and_answers() -> dict:
    from lorakit.models import load_tokenizer
    from lorakit.quant import quantize, quantized_linear_stats

    tok = load_tokenizer()
    model = load()
    out = {"bf16": {"model_bytes": model_bytes(model), "answer": answer(model, tok)}}
    for label, dq in (("nf4", False), ("nf4_double_quant", True)):
        model = load()
        start = time.perf_counter()
        quantize(model, "nf4", double_quant=dq)
        seconds = time.perf_counter() - start
        stats = quantized_linear_stats(model)
        out[label] = {
            "quantize_model_s": seconds,
            "bits_per_param": stats["bits_per_param"],
            "model_bytes": model_bytes(model),
            "model_vs_bf16": model_bytes(model) / out["bf16"]["model_bytes"],
            "stats": stats,
            "answer": answer(model, tok),
        }
    return out


# ---- 4. training step, in a worker process ------------------------------------------------
def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(method: str, steps: int, warmup: int) -> dict:
    import lorakit
    from lorakit.quant import quantize

    torch.manual_seed(0)
    model = load()
    if method == "qlora":
        quantize(model, "nf4", double_quant=True, compute_dtype=torch.bfloat16)
    lorakit.add_adapter(model, lorakit.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules="all-linear"))
    rss_before_training = rss_mib()
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    ids = torch.randint(0, 49152, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return {
        "method": method,
        "step_s": times,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_training_mib": rss_before_training,
        "model_bytes": model_bytes(model),
        "loss": float(loss.detach()),
    }


def run_worker(method: str, steps: int, warmup: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--steps", str(steps), "--warmup", str(warmup)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def training(rounds: int, steps: int, warmup: int) -> dict:
    runs = []
    for r in range(rounds):
        for method in ("lora", "qlora"):
            runs.append(run_worker(method, steps, warmup))
            print(f"round {r + 1}/{rounds} {method}: median step {statistics.median(runs[-1]['step_s']):.3f} s",
                  file=sys.stderr)
    table = {}
    for method in ("lora", "qlora"):
        mine = [r for r in runs if r["method"] == method]
        table[method] = {
            "step_s_median": statistics.median(t for r in mine for t in r["step_s"]),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in mine),
            "rss_before_training_mib": max(r["rss_before_training_mib"] for r in mine),
            "model_bytes": mine[0]["model_bytes"],
        }
    keys = ("step_s_median", "peak_rss_mib", "rss_before_training_mib", "model_bytes")
    table["qlora_vs_lora"] = {k: table["qlora"][k] / table["lora"][k] for k in keys}
    return {"table": table, "runs": runs}


# ---- report -------------------------------------------------------------------------------
def report(res: dict) -> None:
    m, c, s = res["machine"], res["codec"], res["size"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, bitsandbytes {m['bitsandbytes']}")
    print(f"\ncodec, {c['matrices']} matrices / {c['params'] / 1e6:.1f}M params of SmolLM2-135M (bf16 in), "
          f"identical to bitsandbytes: {c['identical_to_bitsandbytes']}/{c['matrices']}")
    print(f"{'':<22}{'lorakit':>10}{'bnb':>10}{'time x':>9}")
    for op in ("quantize", "dequantize"):
        rate = c[f"{op}_mparams_per_s"]
        print(f"{op + ' Mparam/s':<22}{rate['ours']:>10.1f}{rate['bnb']:>10.1f}"
              f"{c[f'{op}_time_ours_vs_bnb']:>9.2f}")
    print(f"\n{'model':<18}{'bits/param':>11}{'MiB':>9}{'vs bf16':>9}  answer")
    for label in ("bf16", "nf4", "nf4_double_quant"):
        row = s[label]
        bits = f"{row['bits_per_param']:.3f}" if "bits_per_param" in row else "16"
        print(f"{label:<18}{bits:>11}{row['model_bytes'] / 2**20:>9.1f}{row.get('model_vs_bf16', 1.0):>9.3f}"
              f"  {row['answer']!r}")
    if "training" in res:
        t = res["training"]["table"]
        print(f"\ntraining step, batch {BATCH}x{SEQ}, r={RANK}, all-linear, AdamW")
        print(f"{'':<8}{'step s':>9}{'peak RSS MiB':>14}{'RSS pre-train':>15}{'model MiB':>11}")
        for method in ("lora", "qlora"):
            row = t[method]
            print(f"{method:<8}{row['step_s_median']:>9.3f}{row['peak_rss_mib']:>14.0f}"
                  f"{row['rss_before_training_mib']:>15.0f}{row['model_bytes'] / 2**20:>11.1f}")
        r = t["qlora_vs_lora"]
        print(f"{'ratio':<8}{r['step_s_median']:>9.3f}{r['peak_rss_mib']:>14.3f}"
              f"{r['rss_before_training_mib']:>15.3f}{r['model_bytes']:>11.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2, help="codec timings: best of this many calls")
    ap.add_argument("--no-train", action="store_true", help="skip the training-step comparison")
    ap.add_argument("--worker", metavar="METHOD", choices=["lora", "qlora"])
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.warmup)))
        return
    res = {
        "command": "flock /tmp/lorakit-bench.lock .venv/bin/python bench/qlora.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
    }
    res["codec"] = codec(load(), args.repeats)
    res["size"] = size_and_answers()
    if not args.no_train:
        res["training"] = training(args.rounds, args.steps, args.warmup)
    report(res)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
