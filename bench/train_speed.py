"""Training throughput and memory: lorakit's fast path vs PEFT, measured in the same run.

Configuration of record: SmolLM2-135M-Instruct in bf16, LoRA r=16, alpha 32, dropout 0.05 on
all linear layers, micro-batch 4 x 256 tokens (the demo SQL chats, tokenized with the chat
template, concatenated and cut into 256-token rows; every position is a target), AdamW
lr 2e-4, fp32 adapter weights in both libraries.

- peft:    PEFT ``get_peft_model`` on the bf16 model, forward under ``torch.autocast(bf16)``
           (PEFT's best fair CPU setting: frozen weights already bf16), the model's own loss.
- lorakit: ``lorakit.fast.enable_fast_training`` (fused LoRA layers, stacked q/k/v and
           gate/up, chunked loss over the targets), no autocast needed.
- lorakit-core (``--systems`` to add it): lorakit's generic layers, bf16 + autocast, the
           model's logits; shows what the fast path adds on top of the core.

Both start from the same adapter (PEFT initialises it, saves it, lorakit loads the file), see
the same batches, and run in their own process, one after the other, alternating over
``--repeats`` rounds so load from other processes hits both alike. Per run: median step time
(forward + backward + AdamW) over ``--steps`` steps after ``--warmup`` untimed ones, tokens/s,
MFU (matmul FLOPs the step needs, ``lorakit.fast.flops``, over the bf16 matmul rate this program
measures first), peak RSS while training (the kernel's high-water mark, reset after the model
and adapter are loaded, so loading is not counted), and the bytes autograd saves for the
backward pass of one step (deterministic, noise-free). A separate pair of runs with dropout 0
compares the first ``--curve-steps`` losses, which should agree up to bf16 rounding.

    flock /tmp/lorakit-bench.lock .venv/bin/python bench/train_speed.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import machine_info, saved_bytes

MODEL = "smollm2-135m-instruct"
BATCH, SEQ, RANK, ALPHA, DROPOUT, LR = 4, 256, 16, 32, 0.05, 2e-4
DATA = Path(__file__).parent.parent / "data" / "sql_demo" / "train.jsonl"
RESULTS = Path(__file__).parent / "results" / "train_speed.json"


# ---- machine ----------------------------------------------------------------------------------
def matmul_tflops(n: int = 2048, reps: int = 10) -> float:
    """Best-of-``reps`` bf16 ``[n, n] @ [n, n]`` rate in TFLOP/s (the roofline for MFU)."""
    a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e12


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


# ---- data and the shared initial adapter ----------------------------------------------------
def make_batches(path: Path, n_batches: int) -> torch.Tensor:
    """``[n_batches, BATCH, SEQ]`` token ids: the demo chats concatenated, cut into rows."""
    from lorakit.models import load_tokenizer

    tok = load_tokenizer(MODEL)
    stream: list[int] = []
    for line in path.read_text().splitlines():
        text = tok.apply_chat_template(json.loads(line)["messages"], tokenize=False)
        stream += tok(text, add_special_tokens=False)["input_ids"]
    need = n_batches * BATCH * SEQ
    stream = (stream * (need // len(stream) + 1))[:need]
    return torch.tensor(stream).view(n_batches, BATCH, SEQ)


def make_adapter(directory: Path, dropout: float) -> None:
    """PEFT's initial adapter (seed 0) as a PEFT directory; both systems start from it."""
    import peft

    from lorakit.models import load_model

    torch.manual_seed(0)
    model = load_model(MODEL, dtype=torch.bfloat16)
    cfg = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=dropout, target_modules="all-linear",
                          task_type="CAUSAL_LM")
    peft.get_peft_model(model, cfg).save_pretrained(directory)


# ---- one system, in a worker process ---------------------------------------------------------
def build(system: str, adapter_dir: Path):
    """(model, loss function of a ``[B, T]`` batch -> mean loss over its targets)."""
    from lorakit.models import load_model

    model = load_model(MODEL, dtype=torch.bfloat16)
    if system == "peft":
        import peft

        model = peft.PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)

        def loss_fn(ids):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(input_ids=ids, labels=ids).loss
        return model, loss_fn
    import lorakit

    lorakit.load_adapter(model, adapter_dir, is_trainable=True)
    if system == "lorakit-core":
        def loss_fn(ids):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(input_ids=ids, labels=ids).loss
        return model, loss_fn
    from lorakit.fast import enable_fast_training

    fast = enable_fast_training(model)

    def loss_fn(ids):
        return fast.loss_sum(ids, input_ids=ids) / (ids.shape[0] * (ids.shape[1] - 1))
    return model, loss_fn


def worker(system: str, adapter_dir: Path, batches: Path, steps: int, warmup: int, measure_saved: bool) -> dict:
    data = torch.load(batches)
    torch.manual_seed(0)
    model, loss_fn = build(system, adapter_dir)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
    rss_loaded = rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # restart the peak-RSS (VmHWM) count here
    saved = saved_bytes(loss_fn, model, data[0]) if measure_saved else None
    times, losses = [], []
    for i in range(warmup + steps):
        ids = data[i % len(data)]
        t = time.perf_counter()
        loss = loss_fn(ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        times.append(time.perf_counter() - t)
    return {"system": system, "step_s": times[warmup:], "warmup_s": times[:warmup], "losses": losses,
            "rss_loaded_mib": rss_loaded / 1024, "rss_peak_train_mib": rss_kib("VmHWM") / 1024,
            "saved_activation_mib": saved / 2**20 if saved is not None else None,
            "threads": torch.get_num_threads()}


def run_worker(system: str, adapter_dir: Path, batches: Path, steps: int, warmup: int,
               measure_saved: bool) -> dict:
    cmd = [sys.executable, __file__, "--worker", system, "--adapter", str(adapter_dir),
           "--batches", str(batches), "--steps", str(steps), "--warmup", str(warmup)]
    cmd += ["--measure-saved"] if measure_saved else []
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- report -----------------------------------------------------------------------------------
def summarize(runs: list[dict], flops: float, peak_tflops: float) -> dict:
    step = statistics.median([s for r in runs for s in r["step_s"]])
    medians = [statistics.median(r["step_s"]) for r in runs]
    return {"median_step_s": step, "run_medians_s": medians, "tokens_per_s": BATCH * SEQ / step,
            "mfu": flops / step / (peak_tflops * 1e12),
            "rss_peak_train_mib": max(r["rss_peak_train_mib"] for r in runs),
            "rss_loaded_mib": max(r["rss_loaded_mib"] for r in runs),
            "saved_activation_mib": next((r["saved_activation_mib"] for r in runs
                                          if r["saved_activation_mib"] is not None), None)}


def print_table(summary: dict, peer: str = "peft") -> None:
    print(f"\n{'system':14} {'tokens/s':>9} {'step s':>7} {'MFU':>6} {'peak RSS MiB':>13} "
          f"{'saved act MiB':>14}  run medians (s)")
    for name, s in summary.items():
        saved = f"{s['saved_activation_mib']:.0f}" if s["saved_activation_mib"] is not None else "-"
        print(f"{name:14} {s['tokens_per_s']:9.0f} {s['median_step_s']:7.2f} {s['mfu']:6.1%} "
              f"{s['rss_peak_train_mib']:13.0f} {saved:>14}  "
              + " ".join(f"{m:.2f}" for m in s["run_medians_s"]))
    base = summary[peer]
    for name, s in summary.items():
        if name != peer:
            print(f"{name} / {peer}: {s['tokens_per_s'] / base['tokens_per_s']:.2f}x tokens/s, "
                  f"{s['rss_peak_train_mib'] / base['rss_peak_train_mib']:.2f}x peak RSS")


def main(args) -> None:
    from transformers import AutoConfig

    from lorakit.fast.flops import lora_step_flops
    from lorakit.models import resolve_model_path

    peak = matmul_tflops()
    cfg = AutoConfig.from_pretrained(resolve_model_path(MODEL))
    flops = lora_step_flops(cfg, BATCH, SEQ, BATCH * (SEQ - 1), RANK)["total"]
    machine = machine_info(bf16_matmul_tflops=peak, python=platform.python_version())
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}; "
          f"bf16 matmul {peak:.3f} TFLOP/s; step needs {flops / 1e12:.3f} TFLOP")
    systems = args.systems.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        batches = tmp / "batches.pt"
        torch.save(make_batches(DATA, max(args.warmup + args.steps, args.curve_steps)), batches)
        make_adapter(tmp / "adapter", DROPOUT)
        make_adapter(tmp / "adapter-nodrop", 0.0)
        runs: dict[str, list[dict]] = {s: [] for s in systems}
        for r in range(args.repeats):
            for s in systems:
                runs[s].append(run_worker(s, tmp / "adapter", batches, args.steps, args.warmup, r == 0))
                print(f"round {r + 1}: {s:13} median step {statistics.median(runs[s][-1]['step_s']):.2f} s",
                      flush=True)
        curves = {s: run_worker(s, tmp / "adapter-nodrop", batches, args.curve_steps, 0, False)["losses"]
                  for s in ("peft", "lorakit")} if args.curve_steps else {}
    summary = {s: summarize(runs[s], flops, peak) for s in systems}
    print_table(summary)
    if curves:
        diffs = [abs(a - b) / a for a, b in zip(curves["peft"], curves["lorakit"])]
        print(f"loss curves, dropout 0, {args.curve_steps} steps: max relative difference "
              f"{max(diffs):.2%} (peft {curves['peft'][0]:.4f} -> {curves['peft'][-1]:.4f}, "
              f"lorakit {curves['lorakit'][0]:.4f} -> {curves['lorakit'][-1]:.4f})")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "command": "flock /tmp/lorakit-bench.lock .venv/bin/python bench/train_speed.py " + " ".join(sys.argv[1:]),
        "machine": machine, "config": {"model": MODEL, "batch": BATCH, "seq": SEQ, "r": RANK,
                                       "alpha": ALPHA, "dropout": DROPOUT, "lr": LR,
                                       "steps": args.steps, "warmup": args.warmup,
                                       "repeats": args.repeats},
        "flops_per_step": flops, "summary": summary, "runs": runs,
        "loss_curves_dropout0": curves}, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--curve-steps", type=int, default=20)
    p.add_argument("--systems", default="peft,lorakit")
    p.add_argument("--worker")
    p.add_argument("--adapter", type=Path)
    p.add_argument("--batches", type=Path)
    p.add_argument("--measure-saved", action="store_true")
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, a.adapter, a.batches, a.steps, a.warmup, a.measure_saved)))
    else:
        main(a)
