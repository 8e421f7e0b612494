"""DoRA training cost relative to plain LoRA: lorakit and PEFT, measured in the same run.

Setup: SmolLM2-135M-Instruct in bf16, batch 4 x 128 tokens, r=16, alpha=32, all-linear,
AdamW, fp32 adapter weights (both libraries' default).

Time: one process holds all four models (lorakit LoRA/DoRA, PEFT LoRA/DoRA) and times their
training steps (forward + backward + AdamW step) in turn, step by step, so that load from
other processes on the machine falls on all four alike. Reported: median wall time and median
process CPU time per step.
Memory: each configuration runs alone in a fresh process (one forward/backward and two steps):
its peak RSS, and the bytes autograd saves for the backward of one forward (a deterministic
measure of activation memory).

Projections: forward + backward of one layer's seven projections alone, the adapter's own cost.
Row norm: the DoRA norm alone for SmolLM2's 210 projections, lorakit's expanded form against
PEFT's DoraLinearLayer code, on random weights (no model).

Threads: the workers run with one torch thread by default. This 2-core machine is shared with
other jobs; with two OpenMP threads and more runnable processes than cores, every parallel
region waits for a descheduled thread, and small ops (DoRA adds several) take 10-100x longer
than their arithmetic, which would measure the scheduler rather than the method.

Ratios are DoRA / LoRA within each library. PEFT's own benchmark reports DoRA at +26% time and
+10% memory over LoRA (on GPU).

    flock /tmp/lorakit-bench.lock .venv/bin/python bench/dora.py [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from common import machine_line, saved_bytes
from torch import nn

CONFIGS = [("lorakit", "lora"), ("lorakit", "dora"), ("peft", "lora"), ("peft", "dora")]
BATCH, SEQ, RANK, ALPHA = 4, 128, 16, 32
RESULTS = Path(__file__).parent / "results" / "dora.json"


# ---- one configuration, in a worker process ---------------------------------------------------
def build(library: str, method: str):
    from lorakit.models import load_model

    model = load_model("smollm2-135m-instruct", dtype=torch.bfloat16)
    use_dora = method == "dora"
    if library == "lorakit":
        import lorakit

        cfg = lorakit.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules="all-linear", use_dora=use_dora)
        return lorakit.add_adapter(model, cfg)
    import peft

    cfg = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules="all-linear", use_dora=use_dora)
    return peft.get_peft_model(model, cfg)


def train_step(model, opt, ids: torch.Tensor) -> float:
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def setup(library: str, method: str):
    torch.manual_seed(0)
    model = build(library, method)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(trainable, lr=1e-4), sum(p.numel() for p in trainable)


def batch() -> torch.Tensor:
    return torch.randint(0, 49152, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))


def memory_worker(library: str, method: str) -> dict:
    """Peak RSS and saved-activation bytes of one configuration, alone in this process."""
    model, opt, n_trainable = setup(library, method)
    ids = batch()
    act = saved_bytes(lambda i: model(input_ids=i, labels=i).loss, model, ids)
    for _ in range(2):
        train_step(model, opt, ids)
    return {"library": library, "method": method, "trainable_params": n_trainable,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "saved_activations_mib": act / 2**20}


def timing_worker(steps: int) -> dict:
    """All four configurations in this process, their steps interleaved."""
    runs = {f"{lib}/{m}": setup(lib, m) for lib, m in CONFIGS}
    ids = batch()
    wall = {key: [] for key in runs}
    cpu = {key: [] for key in runs}
    for step in range(steps + 1):  # step 0 warms up
        for key, (model, opt, _) in runs.items():
            w0, c0 = time.perf_counter(), time.process_time()
            train_step(model, opt, ids)
            if step:
                wall[key].append(time.perf_counter() - w0)
                cpu[key].append(time.process_time() - c0)
    return {"wall_s": wall, "cpu_s": cpu}


# SmolLM2-135M's projections per layer (out, in): q, k, v, o, gate, up, down.
SHAPES = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
N_LAYERS = 30


def norm_worker(repeats: int) -> dict:
    """Time of the DoRA row norm for all 210 projections of one forward: lorakit's expanded
    form vs PEFT's DoraLinearLayer (B(A(eye)), W + s*BA, norm), each as its forward runs it
    (bf16 base weight, fp32 adapter; PEFT casts the weight to the adapter's dtype)."""
    from peft.tuners.lora.dora import DoraLinearLayer

    from lorakit.variants.dora import dora_row_norm

    g = torch.Generator().manual_seed(0)
    layers = []
    for out_f, in_f in SHAPES:
        w = torch.randn(out_f, in_f, generator=g).bfloat16()
        a, b = nn.Linear(in_f, RANK, bias=False), nn.Linear(RANK, out_f, bias=False)
        nn.init.normal_(b.weight, std=0.01)
        layers.append((w, a, b))
    peft_dora, s = DoraLinearLayer(fan_in_fan_out=False), ALPHA / RANK

    def ours():
        for w, a, b in layers:
            dora_row_norm(w, a.weight, b.weight, s)

    def theirs():
        for w, a, b in layers:
            lora_weight = peft_dora.get_lora_weight(a, b)
            peft_dora.get_weight_norm(w.float(), lora_weight.detach(), s)

    out = {}
    for key, fn in (("lorakit", ours), ("peft", theirs)):
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * N_LAYERS)
        out[key] = statistics.median(times)
    return out


def layers_worker(repeats: int) -> dict:
    """Forward + backward of the seven projections of one SmolLM2 layer alone (bf16 base, fp32
    adapters, 512 tokens, inputs requiring grad), per configuration: the adapter's own cost
    without attention, the output head and the loss around it."""
    import peft

    import lorakit

    def build_layers(library: str, method: str) -> nn.Module:
        torch.manual_seed(0)
        model = nn.ModuleList(nn.Linear(i, o, bias=False) for o, i in SHAPES).bfloat16()
        names = [str(i) for i in range(len(SHAPES))]
        if library == "lorakit":
            cfg = lorakit.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=names, use_dora=method == "dora")
            return lorakit.add_adapter(model, cfg)
        cfg = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=names, use_dora=method == "dora")
        return peft.get_peft_model(model, cfg).base_model.model

    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(BATCH * SEQ, i, generator=g).bfloat16().requires_grad_() for _, i in SHAPES]
    runs = {f"{lib}/{m}": build_layers(lib, m) for lib, m in CONFIGS}
    times = {key: [] for key in runs}
    for step in range(repeats + 2):
        for key, layers in runs.items():
            start = time.perf_counter()
            sum(layer(x).float().sum() for layer, x in zip(layers, xs)).backward()
            if step >= 2:
                times[key].append(time.perf_counter() - start)
    return {key: statistics.median(t) for key, t in times.items()}


# ---- driver -----------------------------------------------------------------------------------
def run_worker(threads: int, *args: str) -> dict:
    cmd = [sys.executable, __file__, "--threads", str(threads), "--worker", *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def summarise(memory: list[dict], timing: dict) -> dict:
    table = {}
    for row in memory:
        key = f"{row['library']}/{row['method']}"
        table[key] = {
            "step_wall_s_median": statistics.median(timing["wall_s"][key]),
            "step_cpu_s_median": statistics.median(timing["cpu_s"][key]),
            "peak_rss_mib": row["peak_rss_mib"],
            "saved_activations_mib": row["saved_activations_mib"],
            "trainable_params": row["trainable_params"],
        }
    for library in ("lorakit", "peft"):
        lora, dora = table[f"{library}/lora"], table[f"{library}/dora"]
        for field, ratio in (("step_wall_s_median", "wall_vs_lora"), ("step_cpu_s_median", "cpu_vs_lora"),
                             ("peak_rss_mib", "rss_vs_lora"), ("saved_activations_mib", "activations_vs_lora")):
            dora[ratio] = dora[field] / lora[field]
    return table


def print_table(table: dict, header: str) -> None:
    print(header)
    print(f"{'config':<14}{'wall s':>8}{'cpu s':>8}{'RSS MiB':>9}{'act MiB':>9}"
          f"{'wall x':>8}{'cpu x':>8}{'RSS x':>8}{'act x':>8}")
    for key, row in table.items():
        ratios = "".join(f"{row[k]:>8.3f}" for k in ("wall_vs_lora", "cpu_vs_lora", "rss_vs_lora",
                                                     "activations_vs_lora")) if "wall_vs_lora" in row else ""
        print(f"{key:<14}{row['step_wall_s_median']:>8.2f}{row['step_cpu_s_median']:>8.2f}"
              f"{row['peak_rss_mib']:>9.0f}{row['saved_activations_mib']:>9.1f}{ratios}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per configuration")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per worker (1: the machine is shared, see the docstring)")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        kind, *rest = args.worker
        workers = {"timing": lambda: timing_worker(args.steps), "norm": lambda: norm_worker(20),
                   "layers": lambda: layers_worker(20),
                   "memory": lambda: memory_worker(*rest)}
        result = workers[kind]()
        print(json.dumps(result))
        return
    memory = []
    for library, method in CONFIGS:
        memory.append(run_worker(args.threads, "memory", library, method))
        print(f"memory {library}/{method}: {memory[-1]['peak_rss_mib']:.0f} MiB", file=sys.stderr)
    load_before = os.getloadavg()[0]
    timing = run_worker(args.threads, "timing", "--steps", str(args.steps))
    norm = run_worker(args.threads, "norm")
    layers = run_worker(args.threads, "layers")
    load = (load_before, os.getloadavg()[0])
    table = summarise(memory, timing)
    header = (f"DoRA vs LoRA training step, SmolLM2-135M bf16, batch {BATCH}x{SEQ}, r={RANK}, all-linear, AdamW\n"
              f"machine: {machine_line()}; {args.threads} torch thread(s); 1-min load average "
              f"{load[0]:.1f} -> {load[1]:.1f} during timing; {args.steps} interleaved timed steps "
              "per config (+1 warm-up)")
    print_table(table, header)
    print("one layer's 7 projections alone, forward + backward (ms): " + ", ".join(
        f"{k} {v * 1e3:.1f}" for k, v in layers.items())
          + f"; DoRA/LoRA: lorakit {layers['lorakit/dora'] / layers['lorakit/lora']:.3f}, "
          f"PEFT {layers['peft/dora'] / layers['peft/lora']:.3f}")
    print(f"DoRA row norm, all {N_LAYERS * len(SHAPES)} projections of one forward: lorakit "
          f"{norm['lorakit'] * 1e3:.1f} ms, PEFT {norm['peft'] * 1e3:.1f} ms "
          f"(x{norm['peft'] / norm['lorakit']:.1f})")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"setup": header, "command": "flock /tmp/lorakit-bench.lock "
                                   ".venv/bin/python bench/dora.py " + " ".join(sys.argv[1:]),
                                   "results": table, "row_norm_s_per_forward": norm,
                                   "projections_fwd_bwd_s": layers,
                                   "memory_runs": memory, "timing_runs": timing}, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
