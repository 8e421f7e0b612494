"""The model card (README.md) written next to a trained adapter: what a practitioner needs to
reuse or audit it: base model, adapter settings, data, steps, final losses, the command."""

from __future__ import annotations

import datetime
import shlex
from dataclasses import dataclass

from lorakit.train.schema import TrainConfig


@dataclass
class RunSummary:
    command: list[str]
    data_format: str
    n_train: int
    n_eval: int
    train_tokens: int
    skipped: dict
    steps: int
    epochs_seen: float
    final_train_loss: float | None
    final_eval_loss: float | None
    best_eval_loss: float | None
    trainable: int
    total: int
    stopped: str  # why training ended: "completed", "early stopping", ...


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def model_card(cfg: TrainConfig, run: RunSummary) -> str:
    lora = cfg.lora
    targets = lora.target_modules if lora.target_modules is not None else "(architecture default)"
    kind = "full fine-tune" if cfg.full else ("DoRA" if lora.use_dora else "LoRA")
    lines = [
        "---",
        f"base_model: {cfg.model}",
        "library_name: lorakit",
        "tags: [lorakit, " + ("full-finetune" if cfg.full else "lora, peft") + "]",
        "---",
        "",
        f"# {kind} of `{cfg.model}` ({cfg.task})",
        "",
        f"Trained with lorakit on {datetime.date.today().isoformat()}.",
        "",
        "| setting | value |",
        "|---|---|",
        f"| base model | `{cfg.model}` ({cfg.precision}" + (", NF4" if cfg.quantize == "nf4" else "") + ") |",
    ]
    if not cfg.full:
        lines += [
            f"| rank r / lora_alpha | {lora.r} / {lora.lora_alpha}"
            + (" (rsLoRA)" if lora.use_rslora else "") + " |",
            f"| target modules | `{targets}` |",
            f"| modules_to_save | `{lora.modules_to_save}` |",
            f"| lora_dropout | {lora.lora_dropout} |",
        ]
    lines += [
        f"| trainable parameters | {run.trainable:,} of {run.total:,} "
        f"({100 * run.trainable / max(run.total, 1):.3f}%) |",
        f"| training data | `{cfg.data}` ({run.n_train} examples, {run.train_tokens:,} tokens, "
        f"format {run.data_format}) |",
        f"| skipped rows | {run.skipped or 0} |",
        f"| eval data | {run.n_eval} examples |",
        f"| optimizer steps | {run.steps} (~{run.epochs_seen:.2f} epochs), {run.stopped} |",
        f"| batch | {cfg.batch_size} x {cfg.grad_accum} accumulation per process"
        + (", packed" if cfg.packing else "") + " |",
        f"| learning rate | {cfg.lr} {cfg.lr_scheduler}, warmup {cfg.warmup_ratio}"
        + (f", LoRA+ ratio {cfg.loraplus_lr_ratio}" if cfg.loraplus_lr_ratio else "") + " |",
        f"| final train loss | {_fmt(run.final_train_loss)} |",
        f"| final / best eval loss | {_fmt(run.final_eval_loss)} / {_fmt(run.best_eval_loss)} |",
        "",
        "Losses are mean cross-entropy per target token"
        + (" (completion tokens only)." if cfg.completion_only_loss else "."),
        "",
        "## Command",
        "",
        "```",
        shlex.join(run.command),
        "```",
        "",
        "The full resolved configuration is `config.yaml` in the run directory.",
    ]
    if not cfg.full:
        lines += ["", "## Use", "", "```python", "import lorakit",
                  "from lorakit.models import load_model",
                  f"model = load_model({cfg.model!r})",
                  "lorakit.load_adapter(model, 'path/to/this/directory')", "```"]
    return "\n".join(lines) + "\n"
