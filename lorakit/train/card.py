"""The model card (README.md) written next to a trained adapter: what a practitioner needs to
reuse or audit it: base model, adapter settings, data, steps, final losses, the command."""

from __future__ import annotations

import datetime
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

from lorakit.models import EMBEDDED_HUB_IDS
from lorakit.train.build import base_model_id
from lorakit.train.config import TrainConfig


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


_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def model_card(cfg: TrainConfig, run: RunSummary) -> str:
    lora = cfg.lora
    targets = lora.target_modules if lora.target_modules is not None else "(architecture default)"
    kind = "full fine-tune" if cfg.full else ("DoRA" if lora.use_dora else "LoRA")
    base = base_model_id(cfg.model)
    tags = ["lorakit"] + (["full-finetune"] if cfg.full else
                          ["lora", "peft"] + (["dora"] if lora.use_dora else []))
    meta = {"library_name": "transformers" if cfg.full else "peft",
            "pipeline_tag": "text-classification" if cfg.task == "seq_cls" else "text-generation",
            "tags": tags}
    if _HUB_ID.fullmatch(base) and not Path(base).exists():  # the Hub links a base by its id
        meta = {"base_model": base, **meta}
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {kind} of `{base}` ({cfg.task})",
        "",
        f"Trained with lorakit on {datetime.date.today().isoformat()}.",
        "",
    ]
    if cfg.model in EMBEDDED_HUB_IDS:
        lines += [f"Training used lorakit's embedded `{cfg.model}`: the weights of `{base}` "
                  "dequantized from its Q4_1 GGUF file, which differ slightly from the original "
                  "bf16 weights. The adapter loads on the original model; for an exact match, "
                  "apply it to the same dequantized weights (`lorakit.models.load_model"
                  f"({cfg.model!r})`).", ""]
    lines += [
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
        f"| training data | `{cfg.data or cfg.data_mix}` ({run.n_train} examples, {run.train_tokens:,} tokens, "
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
        auto = ("AutoPeftModelForSequenceClassification" if cfg.task == "seq_cls"
                else "AutoPeftModelForCausalLM")
        lines += ["", "## Use", "", "With PEFT (the base model is read from adapter_config.json):",
                  "", "```python", f"from peft import {auto}", "from transformers import AutoTokenizer",
                  f"model = {auto}.from_pretrained('path/to/this/directory')",
                  "tokenizer = AutoTokenizer.from_pretrained('path/to/this/directory')", "```",
                  "", "With lorakit:", "", "```python", "import lorakit",
                  "from lorakit.models import load_model",
                  f"model = load_model({cfg.model!r})",
                  "lorakit.load_adapter(model, 'path/to/this/directory')", "```"]
    return "\n".join(lines) + "\n"
