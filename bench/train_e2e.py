"""End to end: `lorakit train` vs TRL's SFTTrainer + PEFT, wall time to the same eval loss.

Task: write the docstring summary of a Python function, given its code (Alpaca instruction
format). The rows are generated from the Python standard library of this interpreter
(``make_docstring_data``: functions whose docstring's first paragraph has 20-400 characters,
code of 60-900 characters, shuffled with seed 0): 400 training and 100 held-out examples of
40-300 tokens. Real code and prose, so the eval loss stays far from zero and a 2% difference
means something (the demo SQL task is solved to a loss near 0.00 by both systems).

Setup: SmolLM2-135M-Instruct in bf16, LoRA r=16, alpha 32, dropout 0.05 on all linear layers,
batch 8, one epoch (50 optimizer steps), AdamW lr 2e-4, cosine schedule with 10% warmup,
gradient clipping at 1.0, loss on the response only. Each system runs in its own process,
timed from launch to adapter written (imports, model load, data preparation and training all
count):

- lorakit:  ``python -m lorakit.cli train ...`` with its defaults (fast path on, bf16-true,
            length-bucketed batches).
- trl:      ``SFTTrainer`` on the bf16 model with ``peft_config``, ``bf16=True`` (autocast),
            ``completion_only_loss`` on prompt/completion rows (the same Alpaca prompt text),
            ``gradient_checkpointing=False`` (TRL turns it on by default, which costs a
            recomputed forward per step; off is TRL's faster setting), TRL's defaults otherwise.
- lorakit-nofast (``--systems`` to add it): ``lorakit train --no-fast``.

Both adapters are then scored by the same code (``lorakit.eval.loss.dataset_loss``: mean NLL
per response token over the 100 held-out rows), so "the same eval loss" is measured one way.

    flock /tmp/lorakit-bench.lock .venv/bin/python bench/train_e2e.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import cpu_model  # noqa: E402

MODEL = "smollm2-135m-instruct"
BATCH, EPOCHS, LR, WARMUP, MAX_LEN, RANK, ALPHA, DROPOUT = 8, 1, 2e-4, 0.1, 320, 16, 32, 0.05
N_TRAIN, N_TEST = 400, 100
INSTRUCTION = "Write the one-paragraph docstring summary of this Python function."
RESULTS = Path(__file__).parent / "results" / "train_e2e.json"


# ---- data -------------------------------------------------------------------------------------
def _functions(path: Path):
    """(code without its docstring, first docstring paragraph) of each function in a file."""
    try:
        src = path.read_text()
        tree = ast.parse(src)
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return
    lines = src.splitlines()
    for node in ast.walk(tree):
        doc = ast.get_docstring(node) if isinstance(node, ast.FunctionDef) else None
        if not doc or len(node.body) < 2:
            continue
        body = textwrap.dedent("\n".join(lines[node.body[1].lineno - 1:node.body[-1].end_lineno]))
        yield lines[node.lineno - 1].strip() + "\n" + textwrap.indent(body, "    "), doc.split("\n\n")[0].strip()


def make_docstring_data(directory: Path) -> tuple[Path, Path]:
    """Write ``train.jsonl`` / ``test.jsonl`` instruction rows (see the module docstring)."""
    from lorakit.models import load_tokenizer
    from lorakit.train.formats import instruction_prompt

    tok = load_tokenizer(MODEL)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.rglob("*.py") if not {"test", "tests", "idlelib", "site-packages"} & set(p.parts))
    rows = [{"instruction": INSTRUCTION, "input": code, "output": doc}
            for f in files for code, doc in _functions(f)
            if 20 <= len(doc) <= 400 and 60 <= len(code) <= 900]
    random.Random(0).shuffle(rows)
    fits = [r for r in rows if len(tok(instruction_prompt(r, "") + r["output"])["input_ids"]) < MAX_LEN - 1]
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "train.jsonl", directory / "test.jsonl"
    for path, part in zip(paths, (fits[:N_TRAIN], fits[N_TRAIN:N_TRAIN + N_TEST])):
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
    return paths


# ---- the two systems -------------------------------------------------------------------------
def lorakit_command(train: Path, out: Path, fast: bool) -> list[str]:
    return [sys.executable, "-m", "lorakit.cli", "train", "--model", MODEL, "--data", str(train),
            "--output-dir", str(out), "--overwrite", "--batch-size", str(BATCH), "--epochs", str(EPOCHS),
            "--lr", str(LR), "--lr-scheduler", "cosine", "--warmup-ratio", str(WARMUP),
            "--max-seq-len", str(MAX_LEN), "--r", str(RANK), "--lora-alpha", str(ALPHA),
            "--lora-dropout", str(DROPOUT), "--target-modules", "all-linear", "--save-every", "0",
            "--no-progress", "--fast" if fast else "--no-fast"]


def trl_worker(train: Path, out: Path) -> None:
    """TRL SFTTrainer + PEFT on prompt/completion rows with lorakit's Alpaca prompt text."""
    import peft
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from lorakit.models import load_model, load_tokenizer
    from lorakit.train.formats import instruction_prompt

    rows = [{"prompt": instruction_prompt(r, str(train)), "completion": r["output"]}
            for r in map(json.loads, train.read_text().splitlines())]
    tok = load_tokenizer(MODEL)
    model = load_model(MODEL, dtype=torch.bfloat16)
    args = SFTConfig(output_dir=str(out), per_device_train_batch_size=BATCH, num_train_epochs=EPOCHS,
                     learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=WARMUP,  # a ratio when < 1
                     max_grad_norm=1.0, max_length=MAX_LEN, completion_only_loss=True, bf16=True,
                     use_cpu=True, seed=0, save_strategy="no", logging_steps=10, report_to="none",
                     disable_tqdm=True, gradient_checkpointing=False)
    cfg = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=DROPOUT, target_modules="all-linear",
                          task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tok, peft_config=cfg)
    trainer.train()
    trainer.model.save_pretrained(out / "adapter")


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def eval_loss(adapter_dir: Path, test: Path) -> float:
    """Mean NLL per response token of the held-out rows, lorakit's masking for both."""
    import lorakit
    from lorakit.eval.loss import dataset_loss
    from lorakit.models import load_model, load_tokenizer
    from lorakit.train.data import load_data

    tok = load_tokenizer(MODEL)
    model = load_model(MODEL, dtype=torch.bfloat16)
    lorakit.load_adapter(model, adapter_dir)
    data = load_data(str(test), tok, fmt="instruction", template="alpaca", completion_only=True,
                     max_seq_len=MAX_LEN)
    return dataset_loss(model, data, tok.pad_token_id)["loss"]


def main(args) -> None:
    systems = args.systems.split(",")
    runs: dict[str, list[dict]] = {s: [] for s in systems}
    with tempfile.TemporaryDirectory() as tmp:
        train, test = make_docstring_data(Path(tmp) / "data")
        for r in range(args.repeats):
            for s in systems:
                out = Path(tmp) / f"{s}-{r}"
                if s == "trl":
                    seconds = timed([sys.executable, __file__, "--worker-trl", str(train), str(out)])
                else:
                    seconds = timed(lorakit_command(train, out, fast=s == "lorakit"))
                loss = eval_loss(out / "adapter", test)
                runs[s].append({"wall_s": seconds, "eval_loss": loss})
                print(f"round {r + 1}: {s:15} {seconds:7.1f} s  eval loss {loss:.4f}", flush=True)
    summary = {s: {"median_wall_s": statistics.median(x["wall_s"] for x in v),
                   "wall_s": [x["wall_s"] for x in v],
                   "eval_loss": statistics.median(x["eval_loss"] for x in v),
                   "eval_losses": [x["eval_loss"] for x in v]} for s, v in runs.items()}
    print(f"\nmachine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"{'system':15} {'wall s':>8} {'eval loss':>10}  runs (s)")
    for s, v in summary.items():
        print(f"{s:15} {v['median_wall_s']:8.1f} {v['eval_loss']:10.4f}  "
              + " ".join(f"{w:.1f}" for w in v["wall_s"]))
    peer = summary["trl"]
    for s, v in summary.items():
        if s != "trl":
            print(f"{s} vs trl: {peer['median_wall_s'] / v['median_wall_s']:.2f}x less wall time, "
                  f"eval loss {100 * (v['eval_loss'] / peer['eval_loss'] - 1):+.1f}%")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "command": "flock /tmp/lorakit-bench.lock .venv/bin/python bench/train_e2e.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "python": platform.python_version()},
        "config": {"model": MODEL, "data": f"Python {platform.python_version()} stdlib docstrings, "
                                           f"{N_TRAIN} train / {N_TEST} test", "batch": BATCH, "epochs": EPOCHS,
                   "lr": LR, "warmup_ratio": WARMUP, "r": RANK, "alpha": ALPHA, "dropout": DROPOUT},
        "summary": summary, "runs": runs}, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--systems", default="trl,lorakit")
    p.add_argument("--worker-trl", type=Path, nargs=2, metavar=("TRAIN", "OUT"))
    a = p.parse_args()
    if a.worker_trl:
        trl_worker(*a.worker_trl)
    else:
        main(a)
