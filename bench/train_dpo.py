"""DPO with LoRA: `lorakit train --method dpo` vs TRL's DPOTrainer + PEFT, same data, steps, batch.

Data: the SQL demo's preference pairs (``data/make_sql_prefs.py``: chosen = the correct query,
rejected = the same query with one plausible mistake), the first ``--pairs`` training pairs,
conversational rows with an explicit prompt; both systems tokenize them with the same chat
template into the same tokens (tests/test_train_preference.py checks the token ids and the
loss against TRL).

Setup: SmolLM2-135M-Instruct in bf16, LoRA r=16, alpha 32, dropout 0.05 on all linear layers,
DPO sigmoid loss, beta 0.1, ``--batch`` pairs per step (8), ``--steps`` optimizer steps, AdamW lr 5e-5 constant
after 10% warmup, clipping at 1.0; the reference is the base model with the adapter disabled
in both (no second copy), computed live at every step. Each system runs in its own process,
timed from launch to adapter written (imports, model load, tokenization, training):

- lorakit: ``python -m lorakit.cli train --method dpo ...`` with its defaults (fast path on:
  fused LoRA layers, chunked head over completion tokens; bf16-true).
- trl:     ``DPOTrainer`` on the bf16 model with ``peft_config``, ``bf16=True`` (autocast),
  ``gradient_checkpointing=False`` (TRL's faster setting), TRL's defaults otherwise.

Peak memory is each child process's peak RSS (``wait4`` rusage). Both adapters are then scored
by the same code (``lorakit.preference.evaluate``) on the first ``--eval-pairs`` held-out
pairs (implicit-reward accuracy against the base), next to the final training loss each
system logged.

    flock /tmp/lorakit-bench.lock .venv/bin/python bench/train_dpo.py [--steps 16] [--batch 8] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_info, machine_line  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m-instruct"
LR, WARMUP, MAX_LEN, RANK, ALPHA, DROPOUT, BETA = 5e-5, 0.1, 256, 16, 32, 0.05, 0.1
TRAIN, TEST = ROOT / "data/sql_demo/prefs_train.jsonl", ROOT / "data/sql_demo/prefs_test.jsonl"
RESULTS = Path(__file__).parent / "results" / "train_dpo.json"


def lorakit_command(data: Path, out: Path, steps: int, batch: int) -> list[str]:
    return [sys.executable, "-m", "lorakit.cli", "train", "--method", "dpo", "--model", MODEL,
            "--data", str(data), "--output-dir", str(out), "--overwrite", "--batch-size", str(batch),
            "--max-steps", str(steps), "--lr", str(LR), "--lr-scheduler", "constant",
            "--warmup-ratio", str(WARMUP), "--max-seq-len", str(MAX_LEN), "--beta", str(BETA),
            "--r", str(RANK), "--lora-alpha", str(ALPHA), "--lora-dropout", str(DROPOUT),
            "--target-modules", "all-linear", "--no-progress"]


def trl_worker(data: Path, out: Path, steps: int, batch: int) -> None:
    """TRL DPOTrainer + PEFT on the same rows; writes metrics.json with its logged losses."""
    import peft
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from lorakit.models import load_model, load_tokenizer

    rows = [json.loads(line) for line in data.read_text().splitlines()]
    tok = load_tokenizer(MODEL)
    model = load_model(MODEL, dtype=torch.bfloat16)
    args = DPOConfig(output_dir=str(out), per_device_train_batch_size=batch, max_steps=steps,
                     learning_rate=LR, lr_scheduler_type="constant_with_warmup", warmup_steps=WARMUP,
                     max_grad_norm=1.0, max_length=MAX_LEN, beta=BETA, bf16=True, use_cpu=True, seed=0,
                     save_strategy="no", logging_steps=1, report_to="none", disable_tqdm=True,
                     gradient_checkpointing=False)
    cfg = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=DROPOUT, target_modules="all-linear",
                          task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tok, peft_config=cfg)
    trainer.train()
    trainer.model.save_pretrained(out / "adapter")
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    (out / "metrics.json").write_text(json.dumps({"losses": losses}))


def run_child(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of ``measured(cmd)``."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} failed:\n{err[-3000:]}")
    return wall, float(out.strip().splitlines()[-1])


def measured(cmd: list[str]) -> list[str]:
    """``cmd`` run by a tiny wrapper that prints its peak RSS in MiB: ``wait4`` on that one
    child (RUSAGE_CHILDREN would be a running maximum over every child of this process)."""
    wrapper = ("import os,subprocess,sys;p=subprocess.Popen(sys.argv[1:],stdout=subprocess.DEVNULL);"
               "_,s,r=os.wait4(p.pid,0);code=os.waitstatus_to_exitcode(s);"
               "print(r.ru_maxrss/1024);sys.exit(code)")
    return [sys.executable, "-c", wrapper, *cmd]


def final_loss(out: Path, system: str) -> float:
    if system == "trl":
        return json.loads((out / "metrics.json").read_text())["losses"][-1]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r][-1]


def held_out(adapter: Path, n_pairs: int) -> dict:
    import lorakit
    from lorakit.models import load_model, load_tokenizer
    from lorakit.preference.data import load_preferences
    from lorakit.preference.evaluate import preference_metrics

    tok = load_tokenizer(MODEL)
    model = load_model(MODEL, dtype=torch.bfloat16)
    lorakit.load_adapter(model, adapter)
    pairs = load_preferences(str(TEST), tok, max_seq_len=MAX_LEN).items[:n_pairs]
    return preference_metrics(model, pairs, tok.pad_token_id, with_reward=True)


def main(args) -> None:
    runs: dict[str, list[dict]] = {"trl": [], "lorakit": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pairs.jsonl"
        data.write_text("".join(TRAIN.read_text().splitlines(keepends=True)[:args.pairs]))
        for r in range(args.repeats):
            for s in runs:
                out = Path(tmp) / f"{s}-{r}"
                cmd = ([sys.executable, __file__, "--worker-trl", str(data), str(out), "--steps", str(args.steps),
                        "--batch", str(args.batch)]
                       if s == "trl" else lorakit_command(data, out, args.steps, args.batch))
                wall, rss = run_child(measured(cmd))
                acc = held_out(out / "adapter", args.eval_pairs) if args.eval_pairs else {}
                runs[s].append({"wall_s": wall, "peak_rss_mib": rss, "final_train_loss": final_loss(out, s),
                                "held_out": acc})
                print(f"round {r + 1}: {s:8} {wall:7.1f} s  peak RSS {rss:7.0f} MiB  final loss "
                      f"{runs[s][-1]['final_train_loss']:.4f}  held-out {acc}", flush=True)
    summary = {s: {"median_wall_s": statistics.median(x["wall_s"] for x in v),
                   "median_peak_rss_mib": statistics.median(x["peak_rss_mib"] for x in v)} for s, v in runs.items()}
    speed = summary["trl"]["median_wall_s"] / summary["lorakit"]["median_wall_s"]
    memory = summary["lorakit"]["median_peak_rss_mib"] / summary["trl"]["median_peak_rss_mib"]
    print(f"\nmachine: {machine_line()}, load average {os.getloadavg()[0]:.1f}")
    print(f"{'system':8} {'wall s':>8} {'peak RSS MiB':>13}")
    for s, v in summary.items():
        print(f"{s:8} {v['median_wall_s']:8.1f} {v['median_peak_rss_mib']:13.0f}")
    print(f"lorakit vs trl: {speed:.2f}x faster (goal >= 3), {memory:.2f}x memory (goal <= 0.6)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "command": "flock /tmp/lorakit-bench.lock .venv/bin/python bench/train_dpo.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "config": {"model": MODEL, "pairs": args.pairs, "steps": args.steps, "batch_pairs": args.batch, "lr": LR,
                   "beta": BETA, "r": RANK, "alpha": ALPHA, "dropout": DROPOUT, "max_len": MAX_LEN},
        "summary": summary, "speedup": speed, "memory_ratio": memory, "runs": runs}, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--pairs", type=int, default=128)
    p.add_argument("--batch", type=int, default=8, help="pairs per optimizer step")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--eval-pairs", type=int, default=50, help="held-out pairs scored per adapter (0: skip)")
    p.add_argument("--worker-trl", type=Path, nargs=2, metavar=("DATA", "OUT"))
    a = p.parse_args()
    if a.worker_trl:
        trl_worker(*a.worker_trl, a.steps, a.batch)
    else:
        main(a)
