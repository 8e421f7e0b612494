"""The vision demo: ImageNet EfficientNet-Lite0 adapted to scikit-learn's digits, three ways.

    linear probe   only the new head (Linear 1280 -> 10) trains
    LoRA (+head)   LoRA on every 1x1 convolution (expand, project, conv_head) + the new head
                   through modules_to_save
    full FT        every parameter trains; BatchNorm statistics frozen by default
                   (``--full-bn train`` updates them: with batches of 16-25 and the model's
                   momentum 0.01 the eval-mode running statistics lag the digits' batch
                   statistics, and a first run so scored 37%)

Same data, steps, batch and schedule for all three (each method its own peak lr: head-only
training takes a larger one). Each method runs in its own process, so its peak RSS is its own
(``ru_maxrss``; the load cost is reported beside it). PEFT is not a row: PEFT 0.21 builds its
conv factors as ``type(base_layer)`` and this model's ``Conv2dStaticSamePadding`` constructor
needs an ``image_size`` PEFT does not pass (it raises on ``get_peft_model``).

    flock /tmp/lorakit-bench.lock .venv/bin/python bench/vision_demo.py

Writes bench/results/vision_demo.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

import common

METHODS = {"probe": "linear probe (head only)", "lora": "LoRA r={r} 1x1 convs + head",
           "full": "full fine-tuning (BatchNorm statistics {full_bn})"}
TARGETS = r".*\.(_expand_conv|_project_conv)|_conv_head"


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_method(method: str, args) -> dict:
    """Train and score one method in this process; returns its row."""
    import lorakit
    from lorakit.vision import load_image_model, load_images
    from lorakit.vision.evaluate import predict
    from lorakit.vision.metrics import classification_report
    from lorakit.vision.train import FitOptions, fit

    torch.manual_seed(args.seed)
    train = load_images(Path(args.work) / "digits" / "train")
    test = load_images(Path(args.work) / "digits" / "test", label_names=train.label_names)
    im = load_image_model("efficientnet-lite0", train.label_names, image_size=args.size)
    model = im.model
    if method == "probe":
        model.requires_grad_(False)
        model._fc.requires_grad_(True)
    elif method == "lora":
        lorakit.add_adapter(model, lorakit.LoraConfig(r=args.r, lora_alpha=2 * args.r, target_modules=TARGETS,
                                                      modules_to_save=["_fc"]))
    else:
        model.requires_grad_(True)
    trainable, total = lorakit.trainable_parameters(model)
    loaded_rss = _rss_mib()
    lr = {"probe": args.lr_probe, "lora": args.lr_lora, "full": args.lr_full}[method]
    opts = FitOptions(epochs=args.epochs, batch_size=args.batch_size, lr=lr, augment=args.augment,
                      augment_min_scale=0.6, warmup_ratio=0.1, seed=args.seed,
                      freeze_all_batchnorm=method == "full" and args.full_bn == "frozen")
    result = fit(model, im.preprocess, train, None, opts)
    preds, loss = predict(model, im.preprocess, test, 50)
    report = classification_report([p for p, _ in preds], test.labels, test.label_names)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": method, "label": METHODS[method].format(r=args.r, full_bn=args.full_bn), "accuracy": report["accuracy"],
            "macro_f1": report["macro_f1"], "test_loss": loss, "trainable": trainable,
            "total": total, "trainable_pct": 100 * trainable / total, "steps": result.steps,
            "train_s": result.seconds, "peak_rss_mib": peak, "loaded_rss_mib": loaded_rss,
            "lr": lr, "final_train_loss": result.last_loss}


def _table(rows: list[dict]) -> str:
    full = next((r for r in rows if r["method"] == "full"), None)
    lines = ["| method | test accuracy | macro-F1 | trainable params | peak RSS (load) | train wall time |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        rel = f" ({r['train_s'] / full['train_s']:.2f}x full)" if full and r is not full else ""
        lines.append(f"| {r['label']} | {100 * r['accuracy']:.1f}% | {100 * r['macro_f1']:.1f}% | "
                     f"{r['trainable']:,} ({r['trainable_pct']:.2f}%) | {r['peak_rss_mib']:,.0f} MiB "
                     f"({r['loaded_rss_mib']:,.0f}) | {r['train_s']:.0f} s{rel} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/vision_demo")
    p.add_argument("--size", type=int, default=64, help="digits are upscaled to size x size")
    p.add_argument("--n-train", type=int, default=500)
    p.add_argument("--n-test", type=int, default=400)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--lr-probe", type=float, default=2e-2)
    p.add_argument("--lr-lora", type=float, default=5e-3)
    p.add_argument("--lr-full", type=float, default=5e-4)
    p.add_argument("--augment", default="none", choices=["crop-flip", "crop", "none"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--full-bn", default="frozen", choices=["frozen", "train"],
                   help="full FT: BatchNorm statistics frozen (eval mode) or updated (train mode)")
    p.add_argument("--methods", default="probe,lora,full")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", default="bench/results/vision_demo.json")
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_method(args.child, args)), flush=True)
        return
    from lorakit.vision.digits import write_digits
    from lorakit.vision.efficientnet import weights_path

    weights_path()  # the one-time .pth -> safetensors conversion happens outside the timings
    digits = Path(args.work) / "digits"
    if not digits.exists():
        write_digits(digits, args.size, args.n_train, args.n_test)
    rows, started = [], time.perf_counter()
    for method in args.methods.split(","):
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", method],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"{method}: {rows[-1]['accuracy']:.4f} in {rows[-1]['train_s']:.0f} s", flush=True)
    table = _table(rows)
    print(f"\n{common.machine_line()}; EfficientNet-Lite0 (ImageNet) on digits {args.size}x{args.size}, "
          f"{args.n_train} train / {args.n_test} test, {rows[0]['steps']} steps x {args.batch_size}\n")
    print(table)
    result = {"machine": common.machine_info(), "args": vars(args), "rows": rows, "table": table,
              "wall_s": time.perf_counter() - started}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
