"""The one typed training config, and the YAML files and command-line flags generated from it.

``TrainConfig`` holds every setting of ``lorakit train`` with its default in exactly one place:
the dataclass field (the LoRA section's training defaults live in ``_default_lora``). From it:

- YAML: top-level keys are ``TrainConfig`` fields; the ``lora:`` mapping holds ``LoraConfig``
  fields (PEFT names). An unknown key is an error that lists the known ones.
- flags: ``--<field-name>`` for every field, LoRA ones included (``--r 16 --lora-alpha 32``).
  Booleans are ``--x/--no-x``; list, dict and union values are parsed as YAML
  (``--target-modules "[q_proj, v_proj]"``).

Precedence: field default < YAML file < flags. The resolved config is written to the run
directory as ``config.yaml`` and reads back to the same ``TrainConfig``.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from lorakit.config import LoraConfig
from lorakit.models import DEFAULT_MODEL

# LoraConfig fields the trainer sets itself (bookkeeping written into adapter_config.json).
_LORA_INTERNAL = ("task_type", "base_model_name_or_path", "inference_mode", "peft_type")

_LORA_HELP = {
    "r": "LoRA rank",
    "lora_alpha": "LoRA alpha; the update is scaled by lora_alpha / r",
    "lora_dropout": "dropout on the LoRA input",
    "target_modules": "modules to adapt: 'all-linear', a YAML list of names/suffixes, or a regex",
    "exclude_modules": "modules never adapted (list or regex)",
    "layers_to_transform": "only adapt these layer indices (YAML list)",
    "layers_pattern": "name of the layer list that layers_to_transform indexes",
    "bias": "which biases train: none | all | lora_only",
    "lora_bias": "give lora_B a trainable bias",
    "modules_to_save": "modules trained in full and saved with the adapter "
                       "(seq_cls adds the classification head automatically)",
    "fan_in_fan_out": "the base layer stores W as [in, out] (GPT-2 Conv1D)",
    "init_lora_weights": "true (A kaiming, B zero), false, 'gaussian', or a registered init",
    "use_rslora": "scale by lora_alpha / sqrt(r) (rank-stabilised LoRA)",
    "use_dora": "DoRA: weight-decomposed LoRA",
    "lora_fa": "LoRA-FA: the randomly initialised factor stays frozen",
    "rank_pattern": "per-module ranks, YAML mapping regex -> r",
    "alpha_pattern": "per-module alphas, YAML mapping regex -> alpha",
}


def _default_lora() -> LoraConfig:
    return LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")


def _f(default, help: str):
    """A field with a help string (shown by ``lorakit train --help``)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every setting of one training run. Invalid values raise ``ValueError`` at construction."""

    # ---- model ----
    model: str = _f(DEFAULT_MODEL, "embedded model name, local Hugging Face directory or hub id")
    task: Literal["causal_lm", "seq_cls", "image_classification"] = _f(
        "causal_lm", "causal_lm, seq_cls (new head) or image_classification (docs/vision.md)")
    num_labels: int = _f(0, "seq_cls classes; 0 = number of distinct labels in the data")
    full: bool = _f(False, "full fine-tuning: no adapter, every parameter trains")
    quantize: Literal["none", "nf4"] = _f("none", "quantize the frozen base to 4-bit NF4 (QLoRA)")
    precision: Literal["fp32", "bf16-mixed", "bf16-true"] = _f(
        "bf16-true", "fp32; bf16-mixed: fp32 weights, bf16 autocast; bf16-true: bf16 base "
        "weights, bf16 autocast, trainable parameters kept in fp32")
    gradient_checkpointing: bool = _f(False, "recompute activations in backward to save memory")
    fast: bool = _f(True, "CPU fast path (lorakit.fast): fused LoRA layers, chunked loss over the "
                    "targets, dense short-sequence attention; one process, LoRA runs only")
    # ---- data ----
    data: str = _f("", "training data: .jsonl/.json/.csv/.parquet file or saved datasets dir")
    eval_data: str = _f("", "held-out eval file (instead of eval_split)")
    eval_split: float = _f(0.0, "fraction of the training data held out for eval")
    format: Literal["auto", "instruction", "chat", "text", "classification"] = _f(
        "auto", "data format; auto detects it from the first row's keys")
    instruction_template: Literal["alpaca", "chat"] = _f(
        "alpaca", "instruction data: the Alpaca prompt, or the tokenizer's chat template")
    completion_only_loss: bool = _f(True, "loss on completion/assistant tokens only")
    max_seq_len: int = _f(1024, "longest example in tokens (longer ones: see on_bad_row)")
    on_bad_row: Literal["error", "skip"] = _f(
        "error", "a bad or too long row stops with file:line, or is skipped and counted")
    packing: bool = _f(False, "pack examples into max_seq_len rows (no cross-example attention)")
    # ---- images (task image_classification) ----
    image_size: int = _f(0, "input side for efficientnet-lite0 (0 = 224); HF models use their processor's")
    augment: Literal["crop-flip", "crop", "none"] = _f(
        "crop-flip", "train-time augmentation: random resized crop (+ horizontal flip)")
    augment_min_scale: float = _f(0.08, "smallest crop area as a fraction of the image")
    # ---- optimisation ----
    seed: int = _f(0, "seed for init, shuffling and dropout")
    epochs: int = _f(1, "passes over the training data (ignored when max_steps > 0)")
    max_steps: int = _f(0, "optimizer steps; 0 = derived from epochs")
    batch_size: int = _f(8, "examples (or packed rows) per micro-batch per process")
    grad_accum: int = _f(1, "micro-batches per optimizer step per process")
    lr: float = _f(2e-4, "peak learning rate")
    loraplus_lr_ratio: float = _f(0.0, "LoRA+: lr of lora_B = ratio x lr, e.g. 16 (0 = off)")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    lr_scheduler: Literal["cosine", "linear", "constant"] = _f("cosine", "decay after warmup")
    warmup_ratio: float = _f(0.05, "fraction of steps with linear warmup from 0")
    max_grad_norm: float = _f(1.0, "gradient clipping by global norm (0 = off)")
    # ---- evaluation, checkpoints, output ----
    output_dir: str = _f("runs/train", "run directory (config, checkpoints, metrics, adapter)")
    overwrite: bool = _f(False, "allow an output_dir that already holds a run")
    eval_every: int = _f(0, "evaluate every N steps (0 = only at the end)")
    early_stopping_patience: int = _f(0, "stop after N evals without improvement (0 = off)")
    save_every: int = _f(100, "checkpoint every N steps (0 = no intermediate checkpoints)")
    keep_last: int = _f(2, "checkpoints kept on disk")
    log_every: int = _f(1, "write metrics every N steps")
    progress: bool = _f(True, "show a progress bar")
    fsdp: bool = _f(False, "under torchrun: shard the model with FSDP instead of DDP")
    # ---- adapter ----
    lora: LoraConfig = field(default_factory=_default_lora, metadata={"help": "LoRA settings"})

    def __post_init__(self) -> None:
        _check(self)


def _check(c: TrainConfig) -> None:
    rules = [
        (bool(c.model), "model must not be empty"),
        (c.num_labels >= 0, f"num_labels must be >= 0, got {c.num_labels}"),
        (c.image_size >= 0, f"image_size must be >= 0, got {c.image_size}"),
        (0.0 < c.augment_min_scale <= 1.0, f"augment_min_scale must be in (0, 1], got {c.augment_min_scale}"),
        (0.0 <= c.eval_split < 1.0, f"eval_split must be in [0, 1), got {c.eval_split}"),
        (not (c.eval_split and c.eval_data), "give eval_split or eval_data, not both"),
        (c.max_seq_len >= 2, f"max_seq_len must be >= 2, got {c.max_seq_len}"),
        (c.epochs >= 1, f"epochs must be >= 1, got {c.epochs}"),
        (c.max_steps >= 0, f"max_steps must be >= 0, got {c.max_steps}"),
        (c.batch_size >= 1, f"batch_size must be >= 1, got {c.batch_size}"),
        (c.grad_accum >= 1, f"grad_accum must be >= 1, got {c.grad_accum}"),
        (c.lr > 0, f"lr must be > 0, got {c.lr}"),
        (c.loraplus_lr_ratio == 0 or c.loraplus_lr_ratio >= 1,
         f"loraplus_lr_ratio must be 0 (off) or >= 1, got {c.loraplus_lr_ratio}"),
        (c.weight_decay >= 0, f"weight_decay must be >= 0, got {c.weight_decay}"),
        (0.0 <= c.warmup_ratio < 1.0, f"warmup_ratio must be in [0, 1), got {c.warmup_ratio}"),
        (c.max_grad_norm >= 0, f"max_grad_norm must be >= 0, got {c.max_grad_norm}"),
        (bool(c.output_dir), "output_dir must not be empty"),
        (min(c.eval_every, c.save_every, c.early_stopping_patience) >= 0,
         "eval_every, save_every and early_stopping_patience must be >= 0"),
        (c.keep_last >= 1, f"keep_last must be >= 1, got {c.keep_last}"),
        (c.log_every >= 1, f"log_every must be >= 1, got {c.log_every}"),
        (not (c.early_stopping_patience and not (c.eval_split or c.eval_data)),
         "early_stopping_patience needs eval data (eval_split or eval_data)"),
        (not (c.task == "seq_cls" and c.packing), "packing applies to causal_lm only"),
        ((c.task == "seq_cls") == (c.format == "classification") or c.format == "auto",
         f"format {c.format!r} does not fit task {c.task!r} (classification <-> seq_cls)"),
        (not (c.full and c.quantize != "none"), "full fine-tuning cannot train a quantized base"),
        (not (c.full and c.loraplus_lr_ratio), "loraplus_lr_ratio needs LoRA (not --full)"),
    ]
    for ok, message in rules:
        if not ok:
            raise ValueError(f"config: {message}")


# ---- typed values ---------------------------------------------------------------------------
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe(hint) -> str:
    if typing.get_origin(hint) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is Union:
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def _fits(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin is Union:
        return any(_fits(value, a) for a in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    return isinstance(value, origin or hint)


def _typed(cls, values: dict, where: str) -> dict:
    """Check ``values`` against ``cls``'s fields: unknown keys and wrong types raise."""
    hints = _hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.name not in _LORA_INTERNAL]
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"{where}: unknown key {key!r}; known keys: {', '.join(known)}")
        if not _fits(value, hints[key]):
            raise ValueError(f"{where}: {key} must be {_describe(hints[key])}, got {value!r}")
    return {k: float(v) if hints[k] is float else v for k, v in values.items()}


def from_dict(values: dict, source: str = "config") -> TrainConfig:
    """Build a ``TrainConfig`` from a YAML-shaped dict (``lora`` nested); errors name ``source``."""
    if not isinstance(values, dict):
        raise ValueError(f"{source}: expected a mapping of settings, got {type(values).__name__}")
    values = dict(values)
    lora_values = values.pop("lora", None) or {}
    if not isinstance(lora_values, dict):
        raise ValueError(f"{source}: lora must be a mapping of LoRA settings")
    top = _typed(TrainConfig, values, source)
    lora = _typed(LoraConfig, lora_values, f"{source}: lora")
    try:
        lora_cfg = dataclasses.replace(_default_lora(), **lora)
        return TrainConfig(**top, lora=lora_cfg)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from None
    return values or {}


def to_dict(cfg: TrainConfig) -> dict:
    """YAML-shaped dict of ``cfg`` (``from_dict(to_dict(cfg)) == cfg``)."""
    out = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "lora"}
    out["lora"] = {f.name: getattr(cfg.lora, f.name) for f in dataclasses.fields(cfg.lora)
                   if f.name not in _LORA_INTERNAL}
    return out


def to_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# ---- flags ----------------------------------------------------------------------------------
def _flag_fields():
    """(section, field, hint, default, help) for every flag; section is None or 'lora'."""
    defaults = to_dict(TrainConfig())
    for f in dataclasses.fields(TrainConfig):
        if f.name != "lora":
            yield None, f.name, _hints(TrainConfig)[f.name], defaults[f.name], f.metadata["help"]
    for name, default in defaults["lora"].items():
        help_text = _LORA_HELP.get(name, f"LoraConfig.{name} (see lorakit.config)")
        yield "lora", name, _hints(LoraConfig)[name], default, help_text


def _yaml_value(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"not valid YAML: {err}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per config field; only flags given on the command line land in the args."""
    groups = {None: parser.add_argument_group("training settings (YAML keys)"),
              "lora": parser.add_argument_group("LoRA settings (YAML keys under lora:)")}
    for section, name, hint, default, help_text in _flag_fields():
        flag = "--" + name.replace("_", "-")
        kw: dict[str, Any] = dict(dest=f"cfg.{section or ''}.{name}", default=argparse.SUPPRESS,
                                  help=f"{help_text} (default: {default!r})")
        if hint is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(hint) is Literal:
            kw["choices"] = typing.get_args(hint)
        elif hint in (int, float, str):
            kw.update(type=hint, metavar=name.upper())
        else:
            kw.update(type=_yaml_value, metavar="YAML")
        groups[section].add_argument(flag, **kw)


def flag_values(args: argparse.Namespace) -> dict:
    """The config settings given as flags, YAML-shaped (``lora`` nested)."""
    out: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if dest.startswith("cfg."):
            _, section, name = dest.split(".", 2)
            (out.setdefault("lora", {}) if section else out)[name] = value
    return out


def as_flags(values: dict) -> list[str]:
    """Command-line flags that reproduce ``values`` (YAML-shaped, as ``flag_values`` returns)."""
    out: list[str] = []
    flat = {**{k: v for k, v in values.items() if k != "lora"}, **values.get("lora", {})}
    for name, value in flat.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (int, float, str)):
            out += [flag, str(value)]
        else:
            out += [flag, yaml.safe_dump(value, default_flow_style=True).strip()]
    return out


def merge(base: dict, override: dict) -> dict:
    """``override`` on top of ``base``, one level deep into ``lora``."""
    out = {**base, **{k: v for k, v in override.items() if k != "lora"}}
    if "lora" in override:
        out["lora"] = {**(base.get("lora") or {}), **override["lora"]}
    return out
