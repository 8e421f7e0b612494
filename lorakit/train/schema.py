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
import difflib
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from lorakit.config import LoraConfig
from lorakit.models import DEFAULT_MODEL
from lorakit.train import peer_config
from lorakit.train.readers import read_text

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
    task: Literal["causal_lm", "seq_cls", "image_classification", "text-to-image", "unconditional"] = _f(
        "causal_lm", "causal_lm, seq_cls (new head), image_classification (docs/vision.md), or a "
        "diffusion U-Net LoRA: text-to-image (DreamBooth-style) or unconditional "
        "(lorakit.diffusion.train)")
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
    data: str = _f("", "training data: .jsonl/.json/.csv/.parquet file, saved datasets dir "
                   "(train split), or hf:org/name[:split] (a Hub data set, local cache first)")
    data_mix: dict[str, float] = _f({}, "several training sources with weights, instead of data: "
                                    "{a.jsonl: 1, hf:org/b: 0.5} (weight w = w x the source's "
                                    "examples, seeded; flag: a.jsonl=1,b.jsonl=0.5)")
    eval_data: str = _f("", "held-out eval file (instead of eval_split)")
    eval_split: float = _f(0.0, "fraction of the training data held out for eval")
    format: Literal["auto", "instruction", "chat", "prompt_completion", "text", "classification"] = _f(
        "auto", "data format; auto detects it from the first row's keys")
    columns: dict[str, str] = _f({}, "lorakit field -> column of the data, e.g. {instruction: "
                                 "question, output: answer} (flag: instruction=question,output=answer)")
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
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = _f(
        [], "experiment trackers besides metrics.jsonl: tensorboard, wandb, mlflow (each an "
            "optional extra; see lorakit.train.trackers)")
    fsdp: bool = _f(False, "under torchrun: shard the model with FSDP instead of DDP")
    # ---- diffusion tasks (lorakit.diffusion.train; data is a folder of images) ----
    instance_prompt: str = _f("", "text-to-image: caption of every image without a .txt beside it")
    class_data: str = _f("", "text-to-image: folder of class images for prior preservation")
    class_prompt: str = _f("", "text-to-image: caption of the class images")
    prior_loss_weight: float = _f(1.0, "weight of the class images' loss (prior preservation)")
    resolution: int = _f(0, "image side in pixels; 0 = the model's own")
    # ---- preference tuning (lorakit.preference, docs/preference.md) ----
    method: Literal["sft", "dpo", "ipo", "orpo", "simpo", "kto", "reward"] = _f(
        "sft", "objective: sft (next-token loss); dpo | ipo | orpo | simpo | kto on preference "
        "data (prompt/chosen/rejected; kto also prompt/completion/label); reward: a Bradley-Terry "
        "reward model (sequence-classification head + LoRA)")
    beta: float = _f(0.1, "preference methods: beta (DPO/IPO/KTO: strength of the reference; "
                     "ORPO: odds-ratio weight; SimPO: reward scale)")
    simpo_gamma: float = _f(0.5, "simpo: target reward margin")
    desirable_weight: float = _f(1.0, "kto: weight of the desirable rows' losses")
    undesirable_weight: float = _f(1.0, "kto: weight of the undesirable rows' losses")
    ref_adapter: str = _f("", "dpo/ipo/kto: adapter directory (e.g. an SFT run's) that is the "
                          "reference; the trained adapter starts as a copy of it")
    precompute_ref: bool = _f(False, "dpo/ipo: compute reference log-probs once before training, "
                              "cached in the run directory")
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
        (not (c.data and c.data_mix), "give data or data_mix, not both"),
        (all(w > 0 for w in c.data_mix.values()), f"data_mix weights must be > 0, got {c.data_mix}"),
        (not (c.data_mix and c.task == "seq_cls"), "data_mix applies to causal_lm data only"),
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
        (c.beta > 0, f"beta must be > 0, got {c.beta}"),
        (c.method == "sft" or not (c.packing or c.full),
         f"method {c.method!r} trains a LoRA adapter without packing (not --packing, not --full)"),
        (not (c.ref_adapter or c.precompute_ref) or c.method in ("dpo", "ipo", "kto"),
         "ref_adapter and precompute_ref need a method with a reference model (dpo, ipo, kto)"),
        (not (c.precompute_ref and c.method == "kto"),
         "precompute_ref: kto's KL rows depend on the batch, so its reference runs live"),
        (c.method != "kto" or c.batch_size >= 2, "kto needs batch_size >= 2 (its KL estimate "
         "pairs each prompt with another row's completion)"),
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
    if typing.get_origin(hint) is list:
        return f"a list of ({_describe(typing.get_args(hint)[0])})"
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
    if origin is dict:
        key_hint, value_hint = typing.get_args(hint)
        return isinstance(value, dict) and all(_fits(k, key_hint) and _fits(v, value_hint)
                                               for k, v in value.items())
    return isinstance(value, origin or hint)


def yaml_number(value, hint):
    """A number as a person writes it in YAML: PyYAML reads ``1e-3`` (no dot) and ``1_000``
    as strings; integral floats (``1e3``, ``2.0``) are ints where an int is asked for."""
    if hint not in (int, float) or isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            value = float(value.strip()) if hint is float else _integer(value.strip())
        except ValueError:
            return value
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _integer(text: str):
    try:
        return int(text)
    except ValueError:
        return float(text)


_SYNONYMS = {"rank": "r", "alpha": "lora_alpha", "dropout": "lora_dropout",
             "target": "target_modules", "targets": "target_modules", "steps": "max_steps",
             "learning-rate": "lr", "batch": "batch_size", "model_name": "model"}


def _suggest(key: str, known: list[str]) -> str:
    """The lorakit key a mistyped or foreign key most likely means (difflib over the known
    keys, the peers' aliases and a few synonyms)."""
    if key in peer_config.NO_EQUIVALENT:
        return f"no lorakit equivalent: {peer_config.NO_EQUIVALENT[key]}"
    meaning = {k: k for k in known}
    meaning.update({k: t.rpartition(".")[2] for k, (t, _, _) in peer_config.ALIASES.items()
                    if t.rpartition(".")[2] in known})
    meaning.update({k: t for k, t in _SYNONYMS.items() if t in known})
    close = difflib.get_close_matches(key, list(meaning), n=1, cutoff=0.6)
    if key in meaning:
        close = [key]
    return f"did you mean {meaning[close[0]]!r}?" if close else "no similar key"


def _typed(cls, values: dict, where: str, problems: list[str]) -> dict:
    """``values`` checked against ``cls``'s fields; unknown keys and wrong types are appended
    to ``problems`` (one line each), so every problem of a file is reported at once."""
    hints = _hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.name not in _LORA_INTERNAL]
    out = {}
    for key, value in values.items():
        if key not in known:
            problems.append(f"{where}: unknown key {key!r} ({_suggest(key, known)})")
            continue
        value = yaml_number(value, hints[key])
        if hints[key] == dict[str, float] and isinstance(value, dict):
            value = {k: yaml_number(v, float) for k, v in value.items()}
        if typing.get_origin(hints[key]) is list and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]  # "a,b" or "a"
        if not _fits(value, hints[key]):
            problems.append(f"{where}: {key} must be {_describe(hints[key])}, got {value!r}")
            continue
        out[key] = float(value) if hints[key] is float else value
    return out


def _lora_bookkeeping(lora: dict, task: str, where: str, problems: list[str]) -> dict:
    """PEFT's own ``task_type`` / ``peft_type`` in a ``lora:`` block: accepted when they agree
    with the run (``CAUSAL_LM`` for causal_lm, ``SEQ_CLS`` for seq_cls; ``LORA``)."""
    lora = dict(lora)
    task_type = lora.pop("task_type", None)
    expected = {"causal_lm": "CAUSAL_LM", "seq_cls": "SEQ_CLS"}.get(task)
    if task_type is not None and str(task_type).upper() != expected:
        problems.append(f"{where}: task_type {task_type!r} does not fit task {task!r} "
                        f"(use {expected}, or set task)")
    peft_type = lora.pop("peft_type", None)
    if peft_type is not None and str(peft_type).upper() != "LORA":
        problems.append(f"{where}: peft_type {peft_type!r}: lorakit train trains LORA adapters")
    return lora


def from_dict(values: dict, source: str = "config") -> TrainConfig:
    """Build a ``TrainConfig`` from a YAML-shaped dict (``lora`` nested); errors name ``source``.

    Peer keys with a lorakit equivalent (``peer_config.ALIASES``) are accepted; every unknown
    key and wrong type is reported in one error, one line each, with a suggestion."""
    if not isinstance(values, dict):
        raise ValueError(f"{source}: expected a mapping of settings, got {type(values).__name__}")
    try:
        values, _, _ = peer_config.translate(values)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    lora_values = values.pop("lora", None) or {}
    if not isinstance(lora_values, dict):
        raise ValueError(f"{source}: lora must be a mapping of LoRA settings")
    problems: list[str] = []
    top = _typed(TrainConfig, values, source, problems)
    lora_values = _lora_bookkeeping(lora_values, top.get("task", "causal_lm"), f"{source}: lora",
                                    problems)
    lora = _typed(LoraConfig, lora_values, f"{source}: lora", problems)
    if problems:
        raise ValueError(problems[0] if len(problems) == 1 else
                         f"{len(problems)} problems:\n  " + "\n  ".join(problems))
    try:
        lora_cfg = dataclasses.replace(_default_lora(), **lora)
        return TrainConfig(**top, lora=lora_cfg)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


PATH_KEYS = ("data", "eval_data", "output_dir")


def load_yaml(path: str | Path, relative_to_file: bool = True) -> dict:
    """A config file's settings. With ``relative_to_file``, relative paths in it (``data``,
    ``eval_data``, ``output_dir``, and ``model`` when it names a directory there) are taken
    relative to the file's directory, so a config works from any working directory."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(read_text(path))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: the top level must be a mapping of settings (key: value "
                         f"lines), got a {type(values).__name__}")
    return _resolve_paths(values, Path(os.path.abspath(path.parent))) if relative_to_file else values


def _resolve_paths(values: dict, base: Path) -> dict:
    out = dict(values)
    for key in PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and value and not value.startswith("hf:"):
            out[key] = _join(base, value)
    if isinstance(out.get("data_mix"), dict):
        out["data_mix"] = {(k if k.startswith("hf:") else _join(base, k)): w
                           for k, w in out["data_mix"].items()}
    model = out.get("model")
    if isinstance(model, str) and (model.startswith(".") or (base / model).is_dir()):
        out["model"] = _join(base, model)
    return out


def _join(base: Path, value: str) -> str:
    expanded = Path(value).expanduser()
    return str(expanded) if expanded.is_absolute() else os.path.normpath(base / expanded)


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


def _mapping_value(text: str):
    """``a=b,c=d`` or a YAML mapping."""
    if "=" in text and not text.lstrip().startswith("{"):
        pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
        if all(len(p) == 2 for p in pairs):
            return {k.strip(): v.strip() for k, v in pairs}
    return _yaml_value(text)


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
        elif hint in (dict[str, str], dict[str, float]):
            kw.update(type=_mapping_value, metavar="K=V,...")
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
