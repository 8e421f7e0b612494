"""The LoRA paper's claims at small scale: full fine-tuning vs LoRA ranks and variants.

Task: the shipped text-to-SQL demo (data/sql_demo: 400 train / 50 held-out test questions,
graded by exact match of the generated query). Model: SmolLM2-135M-Instruct (bf16-true
training: bf16 base, fp32 trainable weights, bf16 autocast). Every row trains with the same
budget (``--steps`` optimizer steps of ``--batch-size`` examples, seed 0, cosine schedule),
each in its own ``lorakit train`` subprocess, so its peak RSS (the child's ``VmHWM``) and CPU
time are its own. LoRA rows use a fixed ``lora_alpha`` (16), as the paper does, so the scaling alpha/r
falls with r; rsLoRA keeps alpha/sqrt(r). Evaluation (in this process): batched greedy
generation on the 50 test prompts, rendered with the training template, bf16.

Peer (PEFT, measured in the same run): the trainable-parameter count PEFT gives for each LoRA
configuration, and the test exact match of the r=8 all-linear adapter loaded into PEFT.

Also: subspace similarity between the r=8 and r=64 all-linear adapters (paper section 7.2).

    flock /tmp/lorakit-bench.lock .venv/bin/python bench/paper_table.py [--steps 30 --batch-size 4]

Finished rows are cached in ``--work`` (a rerun with the same settings reuses them; ``--fresh``
retrains). Writes bench/results/paper_table.{json,md,png} and the similarity heatmaps
paper_table_similarity_{A,dW-in,dW-out}.png.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from common import machine_line
from paper_report import goals, markdown, plot

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "sql_demo"
RESULTS = ROOT / "bench" / "results"
MODEL = "smollm2-135m-instruct"
ALPHA, LORAPLUS_RATIO, LOW_DATA = 16, 16, 100
QV = "[q_proj, v_proj]"


@dataclass
class Row:
    name: str
    method: str
    target: str = "all-linear"
    r: int = 0
    flags: list = field(default_factory=list)
    n_train: int = 0          # 0 = the whole training file
    quantize: bool = False    # evaluate on the NF4 base it trained on
    full: bool = False


def table_rows() -> list[Row]:
    rows = [Row("base", "base model (no training)", target="-"),
            Row("full", "full fine-tuning", target="all", full=True, flags=["--full"])]
    for target, modules in (("q,v", QV), ("all-linear", "all-linear")):
        for r in (1, 4, 8, 16, 64):
            rows.append(Row(f"lora-{'qv' if target == 'q,v' else 'all'}-r{r}", "LoRA", target, r,
                            ["--r", str(r), "--lora-alpha", str(ALPHA), "--target-modules", modules]))
    lora8 = ["--r", "8", "--lora-alpha", str(ALPHA), "--target-modules", "all-linear"]
    rows += [
        Row("rslora-all-r64", "rsLoRA", r=64, flags=["--r", "64", "--lora-alpha", str(ALPHA),
                                                       "--target-modules", "all-linear", "--use-rslora"]),
        Row("dora-all-r8", "DoRA", r=8, flags=lora8 + ["--use-dora"]),
        Row("qlora-all-r8", "QLoRA (NF4 base)", r=8, flags=lora8 + ["--quantize", "nf4"], quantize=True),
        Row("loraplus-all-r8", f"LoRA+ (ratio {LORAPLUS_RATIO})", r=8,
            flags=lora8 + ["--loraplus-lr-ratio", str(LORAPLUS_RATIO)]),
        Row("pissa-all-r8", "PiSSA", r=8, flags=lora8 + ["--init-lora-weights", "pissa"]),
        Row(f"lora-all-r8-n{LOW_DATA}", f"LoRA, {LOW_DATA} examples", r=8, flags=lora8, n_train=LOW_DATA),
        Row(f"full-n{LOW_DATA}", f"full fine-tuning, {LOW_DATA} examples", target="all", full=True,
            flags=["--full"], n_train=LOW_DATA),
        # The memory claim at a setting where activations do not dominate: both recompute them.
        Row("full-gc", "full fine-tuning, gradient checkpointing", target="all", full=True,
            flags=["--full", "--gradient-checkpointing"]),
        Row("lora-all-r8-gc", "LoRA, gradient checkpointing", r=8, flags=lora8 + ["--gradient-checkpointing"]),
    ]
    return rows


# Run order: the rows the goals need first, so an interrupted run still answers them (finished
# rows are cached; --cached-only builds the table from what is there).
PRIORITY = ["full", "lora-all-r8", "lora-all-r64", "qlora-all-r8", "lora-all-r1", "lora-all-r4",
            "lora-all-r16", "lora-qv-r8", "dora-all-r8", "loraplus-all-r8", "pissa-all-r8",
            "rslora-all-r64", "lora-qv-r1", "lora-qv-r4", "lora-qv-r16", "lora-qv-r64",
            f"lora-all-r8-n{LOW_DATA}", f"full-n{LOW_DATA}", "base", "full-gc", "lora-all-r8-gc"]


def missing_reason(row: Row) -> str | None:
    """Why this build of lorakit cannot run ``row`` (a feature not in the tree), else None."""
    from lorakit.inits import is_known_init
    from lorakit.train.config import TrainConfig
    from lorakit.adapter_types import adapter_type_for
    from lorakit.config import LoraConfig

    fields = TrainConfig.__dataclass_fields__
    if row.full and "full" not in fields:
        return "lorakit train has no --full"
    if row.quantize and "quantize" not in fields:
        return "lorakit train has no --quantize"
    if "--loraplus-lr-ratio" in row.flags and "loraplus_lr_ratio" not in fields:
        return "lorakit train has no --loraplus-lr-ratio"
    if "pissa" in row.flags and not is_known_init("pissa"):
        return "no PiSSA init registered"
    if "--use-dora" in row.flags:
        try:
            adapter_type_for(LoraConfig(use_dora=True))
        except ValueError:
            return "no DoRA variant registered"
    return None


# ---- training: one subprocess per row ---------------------------------------------------------
def train_command(row: Row, args, out: Path, data: Path) -> list[str]:
    lr = args.lr_full if row.full else args.lr
    return ["lorakit.cli", "train", "--model", MODEL, "--data", str(data),
            "--max-steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", str(lr),
            "--seed", "0", "--save-every", "0", "--no-progress", "--overwrite",
            "--output-dir", str(out)] + row.flags


# The child writes its own peak RSS (VmHWM of the address space exec gave it) when it exits.
# wait4's ru_maxrss is no use here: Linux carries the parent's RSS at fork into the child's
# maxrss across exec, and this process grows as it evaluates rows.
_CHILD = """import atexit, runpy, sys
out = sys.argv.pop(1)
def _peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            open(out, "w").write(line.split()[1])
atexit.register(_peak)
if sys.argv[1] == "-c":
    exec(compile(sys.argv[2], "<child>", "exec"), {"__name__": "__main__"})
else:
    sys.argv = sys.argv[1:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def run_measured(argv: list[str], log: Path) -> dict:
    """Run ``python <argv>`` (``-m``-style module and args, or ``-c CODE``) with output to
    ``log``; its wall time, CPU time (``wait4``) and peak RSS (its own ``VmHWM``)."""
    hwm = log.with_suffix(".peak_kib")
    hwm.unlink(missing_ok=True)
    cmd = [sys.executable, "-c", _CHILD, str(hwm)] + argv
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{tail}")
    return {"wall_s": time.perf_counter() - start, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mib": int(hwm.read_text()) / 1024}


def train_row(row: Row, args, work: Path) -> dict:
    out = work / row.name
    out.mkdir(parents=True, exist_ok=True)
    data = DATA / "train.jsonl"
    if row.n_train:
        data = work / f"train{row.n_train}.jsonl"
        data.write_text("".join((DATA / "train.jsonl").read_text().splitlines(keepends=True)[:row.n_train]))
    load_before = os.getloadavg()[0]
    result = run_measured(train_command(row, args, out, data), out / "train.log")
    log = (out / "train.log").read_text()
    found = re.search(r"trainable ([\d,]+) / ([\d,]+) params", log)
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    artifact = out / ("model" if row.full else "adapter")
    result.update(trainable=int(found.group(1).replace(",", "")),
                  loop_s=steps[-1]["elapsed_s"], final_loss=steps[-1]["loss"],
                  file_bytes=sum(p.stat().st_size for p in artifact.glob("*.safetensors")),
                  artifact=str(artifact), load_avg_before=load_before, load_avg_after=os.getloadavg()[0])
    return result


def load_only_rss(work: Path) -> float:
    """Peak RSS (MiB) of a process that only loads the bf16 model and tokenizer: the fixed cost
    inside every training row's peak."""
    cache = work / "load_only.json"
    if not cache.exists():
        code = ("import torch; from lorakit.models import load_model, load_tokenizer; "
                f"load_tokenizer({MODEL!r}); load_model({MODEL!r}, dtype=torch.bfloat16)")
        work.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(run_measured(["-c", code], work / "load_only.log")))
    return json.loads(cache.read_text())["peak_rss_mib"]


# ---- evaluation: in this process --------------------------------------------------------------
def load_for_row(row: Row, artifact: str | None):
    import lorakit
    from lorakit.models import load_model

    model = load_model(artifact if row.full else MODEL, dtype=torch.bfloat16)
    if row.quantize:
        from lorakit.quant import quantize

        quantize(model, "nf4")
    if artifact and not row.full:
        lorakit.load_adapter(model, artifact)
    return model


def exact_match_of(model, tokenizer, evalset, args) -> dict:
    from lorakit.eval.evaluate import EvalOptions, evaluate

    options = EvalOptions(batch_size=args.eval_batch_size, max_new_tokens=args.max_new_tokens, loss=False)
    start = time.perf_counter()
    metrics, records = evaluate(model, tokenizer, evalset, options)
    return {"exact_match": metrics["exact_match"], "normalized_exact_match": metrics["normalized_exact_match"],
            "eval_s": time.perf_counter() - start, "sample": records[:3]}


# ---- the peer: PEFT ---------------------------------------------------------------------------
def meta_model():
    """The base model's modules on the meta device (shapes only, no memory, no weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from lorakit.models import resolve_model_path

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve_model_path(MODEL)))


def count_base_params() -> int:
    return sum(p.numel() for p in meta_model().parameters())


def peft_trainable(row: Row) -> int | None:
    """Trainable parameters PEFT reports for the row's LoRA config (model on the meta device)."""
    if row.full or not row.r:
        return None
    import peft

    model = meta_model()
    target = ["q_proj", "v_proj"] if QV in row.flags else "all-linear"
    cfg = peft.LoraConfig(r=row.r, lora_alpha=ALPHA, target_modules=target, use_dora="--use-dora" in row.flags,
                          use_rslora="--use-rslora" in row.flags)
    return peft.get_peft_model(model, cfg).get_nb_trainable_parameters()[0]


def peer_eval(row: Row, adapter: str, tokenizer, evalset, args, rounds: int = 2) -> dict:
    """The same adapter directory loaded by PEFT and by lorakit, scored by the same generation
    code, alternating (lorakit, PEFT) ``rounds`` times so that machine load hits both alike;
    exact match of each and the minimum generation time of each."""
    from peft import PeftModel

    from lorakit.models import load_model

    models = {"lorakit": load_for_row(row, adapter),
              "peft": PeftModel.from_pretrained(load_model(MODEL, dtype=torch.bfloat16), adapter)}
    runs: dict[str, list] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            runs[name].append(exact_match_of(model, tokenizer, evalset, args))
    out = {f"{name}_exact_match": results[0]["exact_match"] for name, results in runs.items()}
    out.update({f"{name}_eval_s": min(r["eval_s"] for r in results) for name, results in runs.items()})
    return out


# ---- subspace similarity (paper section 7.2) --------------------------------------------------
def subspace_summary(adapter_8: str, adapter_64: str, out_dir: Path) -> dict:
    """Mean over layers of phi(1,1), phi(1,64) and phi(8,64) between the r=8 and r=64 adapters,
    for A's row space (the paper's subject) and dW's output space, per module type and overall,
    with the random-subspace expectation of each; the mean grids go to a heatmap per subject
    (the paper's Figure 3)."""
    from lorakit.analysis import inspect_layers, read_adapter
    from lorakit.analysis.cli import means_by_type
    from lorakit.analysis.plots import save_similarity_heatmaps
    from lorakit.analysis.report import mean_grids

    _, layers8 = read_adapter(adapter_8)
    _, layers64 = read_adapter(adapter_64)
    out = {}
    for subject in ("A", "dW-in", "dW-out"):
        rows, grids = inspect_layers(layers8, layers64, subject=subject)
        grouped = mean_grids(grids)
        save_similarity_heatmaps({k: v for k, v in grouped.items() if k in ("all", "q_proj", "v_proj")},
                                 out_dir / f"paper_table_similarity_{subject}.png",
                                 f"phi(i, j) of {subject}: LoRA r=8 vs r=64, all-linear (mean over layers)")
        keys = ("sim_top", "sim_top_in_other", "sim_all", "sim_top_random", "sim_top_in_other_random")
        means = {m["module"]: {k: m[k] for k in keys} for m in means_by_type(rows)}
        means["all"] = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
        out[subject] = means
    return out


# ---- main -------------------------------------------------------------------------------------
def settings_of(args) -> dict:
    return {k: getattr(args, k) for k in ("steps", "batch_size", "lr", "lr_full", "max_new_tokens")}


def run_row(row: Row, args, work: Path, tokenizer, evalset) -> dict:
    cache = work / row.name / "row.json"
    if cache.exists() and not args.fresh:
        cached = json.loads(cache.read_text())
        if cached.get("settings") == settings_of(args):
            return cached["result"]
    reason = missing_reason(row)
    if reason:
        return {"missing": reason}
    if args.cached_only:
        return {"missing": "not run (no cached result with these settings)"}
    result = train_row(row, args, work) if row.name != "base" else {}
    model = load_for_row(row, result.get("artifact"))
    result.update(exact_match_of(model, tokenizer, evalset, args))
    del model
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"settings": settings_of(args), "result": result}, indent=2))
    return result


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate of every adapter row (the demo's)")
    p.add_argument("--lr-full", type=float, default=1e-4, help="learning rate of full fine-tuning")
    # the longest reference is 29 tokens; a longer answer cannot match exactly
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=50)
    p.add_argument("--rows", help="comma-separated row names to run (default: all)")
    p.add_argument("--work", default=str(ROOT / "runs" / "paper_table"))
    p.add_argument("--fresh", action="store_true", help="retrain rows even if cached")
    p.add_argument("--cached-only", action="store_true", help="train nothing: build the table from cached rows")
    p.add_argument("--out", default=str(RESULTS), help="directory for paper_table.{json,md,png}")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    from lorakit.eval.prompts import load_eval_set
    from lorakit.models import load_tokenizer

    work = Path(args.work)
    tokenizer = load_tokenizer(MODEL)
    evalset = load_eval_set(str(DATA / "test.jsonl"), tokenizer)
    base_params = count_base_params()
    rows = table_rows()
    if args.rows:
        wanted = args.rows.split(",")
        rows = [r for r in rows if r.name in wanted]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    results = {}
    for row in sorted(rows, key=lambda r: PRIORITY.index(r.name)):
        print(f"[{time.strftime('%H:%M:%S')}] {row.name} ...", flush=True)
        res = results[row.name] = run_row(row, args, work, tokenizer, evalset)
        if "trainable" in res:
            res["trainable_pct"] = 100 * res["trainable"] / base_params
        if "exact_match" in res:
            res["exact_match_pct"] = 100 * res["exact_match"]
            res["normalized_exact_match_pct"] = 100 * res["normalized_exact_match"]
        if "missing" not in res and "peft_trainable" not in res:
            res["peft_trainable"] = peft_trainable(row)
        print(f"    {json.dumps({k: v for k, v in res.items() if k != 'sample'})}", flush=True)
    report = {"machine": machine_line(), "settings": settings_of(args), "base_params": base_params,
              "command": "flock /tmp/lorakit-bench.lock .venv/bin/python bench/paper_table.py "
                         + " ".join(a for a in sys.argv[1:] if a != "--cached-only"),  # what trains them
              "rows": [asdict(r) for r in rows], "results": results}
    r8, r64 = results.get("lora-all-r8", {}), results.get("lora-all-r64", {})
    if "artifact" in r8:
        row8 = next(r for r in table_rows() if r.name == "lora-all-r8")
        report["peft_eval"] = peer_eval(row8, r8["artifact"], tokenizer, evalset, args)
    if "artifact" in r8 and "artifact" in r64:
        report["similarity"] = subspace_summary(r8["artifact"], r64["artifact"], Path(args.out))
    report["load_only_rss_mib"] = load_only_rss(work)
    report["goals"] = goals(results, report.get("similarity"), report["load_only_rss_mib"])
    out = Path(args.out)
    (out / "paper_table.json").write_text(json.dumps(report, indent=2))
    (out / "paper_table.md").write_text(markdown(report))
    plot(report, out / "paper_table.png")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
