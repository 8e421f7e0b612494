"""Config keys of the peers (Axolotl, LLaMA-Factory, Hugging Face ``TrainingArguments``, PEFT)
and what they are in lorakit.

``translate(values)`` rewrites a YAML-shaped dict: a key with an exact lorakit equivalent is
renamed (its value converted where the encodings differ, e.g. Axolotl's ``bf16: true`` ->
``precision: bf16-true``); a key lorakit has no equivalent for is returned in ``unknown`` with
the reason, never dropped silently. ``TrainConfig`` loading accepts the renamed keys (so an
Axolotl ``learning_rate:`` works) and reports every untranslatable key at once;
``lorakit config convert`` writes the translated file and lists the rest.
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["ALIASES", "NO_EQUIVALENT", "translate"]


_SKIP = object()  # a conversion result meaning "this value sets nothing"


def _same(value):
    return value


def _precision(value):
    """Axolotl / LLaMA-Factory ``bf16``: true or auto -> bf16 weights and compute."""
    if value in (True, "auto", "true"):
        return "bf16-true"
    if value in (False, "false"):
        return "fp32"
    raise ValueError(f"bf16 must be true, false or auto, got {value!r}")


def _not(value):
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return not value


def _quantize(value):
    if value is True:
        return "nf4"
    if value is False:
        return "none"
    raise ValueError(f"expected true or false, got {value!r}")


def _quantization_bit(value):
    if value == 4:
        return "nf4"
    raise ValueError(f"lorakit quantizes to 4-bit NF4 only, got quantization_bit {value!r}")


def _targets(value):
    """``all`` / ``all-linear`` / a comma-separated string (LLaMA-Factory) / a list."""
    if value in ("all", "all-linear"):
        return "all-linear"
    if isinstance(value, str) and "," in value:
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


def _adapter(value):
    """Axolotl ``adapter``: lora (the default) or qlora (the base quantized to NF4)."""
    if value in ("lora", "qlora"):
        return "nf4" if value == "qlora" else "none"
    raise ValueError(f"adapter {value!r} has no lorakit equivalent (lora, qlora; full "
                     "fine-tuning is full: true)")


def _finetuning_type(value):
    if value in ("lora", "full"):
        return value == "full"
    raise ValueError(f"finetuning_type {value!r} has no lorakit equivalent (lora or full)")


# peer key -> (lorakit key ("lora.x" = under lora:), value conversion, where the key comes from)
ALIASES: dict[str, tuple[str, Callable[[Any], Any], str]] = {
    "base_model": ("model", _same, "Axolotl"),
    "model_name_or_path": ("model", _same, "LLaMA-Factory / TRL"),
    "learning_rate": ("lr", _same, "Axolotl / LLaMA-Factory / TrainingArguments"),
    "micro_batch_size": ("batch_size", _same, "Axolotl"),
    "per_device_train_batch_size": ("batch_size", _same, "LLaMA-Factory / TrainingArguments"),
    "gradient_accumulation_steps": ("grad_accum", _same, "Axolotl / LLaMA-Factory"),
    "num_epochs": ("epochs", _same, "Axolotl"),
    "num_train_epochs": ("epochs", _same, "LLaMA-Factory / TrainingArguments"),
    "sequence_len": ("max_seq_len", _same, "Axolotl"),
    "cutoff_len": ("max_seq_len", _same, "LLaMA-Factory"),
    "max_length": ("max_seq_len", _same, "TRL"),
    "max_seq_length": ("max_seq_len", _same, "TRL (older)"),
    "lr_scheduler_type": ("lr_scheduler", _same, "LLaMA-Factory / TrainingArguments"),
    "eval_steps": ("eval_every", _same, "Axolotl / TrainingArguments"),
    "save_steps": ("save_every", _same, "Axolotl / TrainingArguments"),
    "logging_steps": ("log_every", _same, "Axolotl / TrainingArguments"),
    "save_total_limit": ("keep_last", _same, "Axolotl / TrainingArguments"),
    "val_set_size": ("eval_split", _same, "Axolotl"),
    "val_size": ("eval_split", _same, "LLaMA-Factory"),
    "sample_packing": ("packing", _same, "Axolotl"),
    "train_on_inputs": ("completion_only_loss", _not, "Axolotl"),
    "train_on_prompt": ("completion_only_loss", _not, "LLaMA-Factory"),
    "bf16": ("precision", _precision, "Axolotl / LLaMA-Factory"),
    "adapter": ("quantize", _adapter, "Axolotl"),
    "load_in_4bit": ("quantize", _quantize, "Axolotl"),
    "quantization_bit": ("quantize", _quantization_bit, "LLaMA-Factory"),
    "finetuning_type": ("full", _finetuning_type, "LLaMA-Factory"),
    "lora_r": ("lora.r", _same, "Axolotl"),
    "lora_rank": ("lora.r", _same, "LLaMA-Factory"),
    "lora_alpha": ("lora.lora_alpha", _same, "Axolotl / LLaMA-Factory"),
    "lora_dropout": ("lora.lora_dropout", _same, "Axolotl / LLaMA-Factory"),
    "lora_target_modules": ("lora.target_modules", _targets, "Axolotl"),
    "lora_target": ("lora.target_modules", _targets, "LLaMA-Factory"),
    "lora_target_linear": ("lora.target_modules", lambda v: "all-linear" if v else _SKIP, "Axolotl"),
    "use_rslora": ("lora.use_rslora", _same, "LLaMA-Factory / Axolotl"),
    "use_dora": ("lora.use_dora", _same, "LLaMA-Factory"),
    "peft_use_dora": ("lora.use_dora", _same, "Axolotl"),
    "peft_use_rslora": ("lora.use_rslora", _same, "Axolotl"),
    "lora_modules_to_save": ("lora.modules_to_save", _same, "Axolotl"),
    "overwrite_output_dir": ("overwrite", _same, "LLaMA-Factory / TrainingArguments"),
}

# peer keys with no lorakit equivalent, and what to do instead
NO_EQUIVALENT: dict[str, str] = {
    "datasets": "give the data file as data: (or convert the file with `lorakit config convert`)",
    "dataset": "LLaMA-Factory dataset names live in dataset_info.json: set data: to the file "
               "and columns: to its column mapping",
    "dataset_dir": "set data: to the data file itself",
    "template": "lorakit renders chat data with the tokenizer's own chat template "
                "(instruction_template: chat) or the Alpaca prompt (alpaca)",
    "chat_template": "lorakit uses the tokenizer's own chat template",
    "fp16": "lorakit trains in fp32 or bf16 (precision: bf16-true)",
    "tf32": "not applicable on CPU; lorakit has no setting for it",
    "optimizer": "lorakit trains with AdamW",
    "optim": "lorakit trains with AdamW",
    "flash_attention": "lorakit picks the attention kernel itself",
    "deepspeed": "lorakit shards with FSDP (fsdp: true under torchrun)",
    "wandb_project": "set report_to: [wandb] and the WANDB_PROJECT environment variable",
    "stage": "lorakit train is supervised fine-tuning (stage sft)",
    "do_train": "lorakit train always trains",
    "warmup_steps": "use warmup_ratio (a fraction of the steps)",
    "special_tokens": "lorakit uses the tokenizer's special tokens",
}


def translate(values: dict) -> tuple[dict, dict[str, str], list[str]]:
    """(values with peer keys renamed to lorakit's, ``{peer key: what to do}`` for keys with no
    equivalent, notes ``"old -> new"`` of what was renamed). A peer key whose lorakit key is
    also given is an error naming both."""
    out: dict = {}
    unknown: dict[str, str] = {}
    aliased = []
    for key, value in values.items():
        if key in NO_EQUIVALENT:
            unknown[key] = NO_EQUIVALENT[key]
            out[key] = value  # loading reports it with this advice; convert drops it
        elif key in ALIASES:
            aliased.append((key, value))
        else:
            out[key] = value
    notes = []
    for key, value in aliased:
        target, convert, origin = ALIASES[key]
        section, _, name = target.rpartition(".")
        if section and out.get("lora") is None:
            out["lora"] = {}
        if section and not isinstance(out["lora"], dict):
            break  # a malformed lora: value; loading reports it
        into = out["lora"] if section else out
        try:
            converted = convert(value)
        except ValueError as err:
            raise ValueError(f"{key}: {err}") from None
        if converted is _SKIP:
            continue
        if name in into and into[name] != converted:
            raise ValueError(f"{key} ({origin}) and {target} both given; keep {target}")
        into[name] = converted
        notes.append(f"{key} -> {target}")
    return out, unknown, notes
