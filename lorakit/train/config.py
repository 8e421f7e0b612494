"""The one typed training config: every setting of ``lorakit train``, validated once.

``TrainConfig`` holds each default in exactly one place: the dataclass field (the LoRA
section's training defaults live in ``default_lora``). The YAML files, the command-line flags
and the UI's New-run form are generated from these fields (``lorakit.train.config_io``,
``lorakit.flags``); which tasks and methods exist is the table in ``lorakit.train.tasks``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lorakit.config import LoraConfig
from lorakit.flags import setting
from lorakit.models import DEFAULT_MODEL
from lorakit.train.tasks import METHODS, TASK_ALIASES, TASKS, canonical_task

__all__ = ["LORA_HELP", "LORA_INTERNAL", "MethodName", "TaskName", "TrainConfig", "default_lora"]

TaskName = Literal[tuple(TASKS)]
MethodName = Literal[tuple(METHODS)]

# LoraConfig fields the trainer sets itself (bookkeeping written into adapter_config.json).
LORA_INTERNAL = ("task_type", "base_model_name_or_path", "inference_mode", "peft_type")

LORA_HELP = {
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


def default_lora() -> LoraConfig:
    """The LoRA section's training defaults (rank 16, alpha 32, every linear layer)."""
    return LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")


@dataclass
class TrainConfig:
    """Every setting of one training run. Invalid values raise ``ValueError`` at construction."""

    # ---- model ----
    model: str = setting(DEFAULT_MODEL, "embedded model name, local Hugging Face directory or hub id")
    task: TaskName = setting(
        "causal_lm", "causal_lm, seq_cls (new head), image_classification (docs/vision.md), or a "
        "diffusion U-Net LoRA: text_to_image (DreamBooth-style) or unconditional "
        "(lorakit.diffusion.train); hyphenated spellings (text-to-image) are accepted",
        aliases=TASK_ALIASES)
    num_labels: int = setting(0, "seq_cls classes; 0 = number of distinct labels in the data")
    full: bool = setting(False, "full fine-tuning: no adapter, every parameter trains")
    quantize: Literal["none", "nf4"] = setting("none", "quantize the frozen base to 4-bit NF4 (QLoRA)")
    precision: Literal["fp32", "bf16-mixed", "bf16-true"] = setting(
        "bf16-true", "fp32; bf16-mixed: fp32 weights, bf16 autocast; bf16-true: bf16 base "
        "weights, bf16 autocast, trainable parameters kept in fp32")
    gradient_checkpointing: bool = setting(False, "recompute activations in backward to save memory")
    fast: bool = setting(True, "CPU fast path (lorakit.fast): fused LoRA layers, chunked loss over the "
                         "targets, dense short-sequence attention; one process, LoRA runs only")
    # ---- data ----
    data: str = setting("", "training data: .jsonl/.json/.csv/.parquet file, saved datasets dir "
                        "(train split), or hf:org/name[:split] (a Hub data set, local cache first)")
    data_mix: dict[str, float] = setting({}, "several training sources with weights, instead of data: "
                                         "{a.jsonl: 1, hf:org/b: 0.5} (weight w = w x the source's "
                                         "examples, seeded; flag: a.jsonl=1,b.jsonl=0.5)")
    eval_data: str = setting("", "held-out eval file (instead of eval_split)")
    eval_split: float = setting(0.0, "fraction of the training data held out for eval")
    format: Literal["auto", "instruction", "chat", "prompt_completion", "text", "classification"] = setting(
        "auto", "data format; auto detects it from the first row's keys")
    columns: dict[str, str] = setting({}, "lorakit field -> column of the data, e.g. {instruction: "
                                      "question, output: answer} (flag: instruction=question,output=answer)")
    instruction_template: Literal["alpaca", "chat"] = setting(
        "alpaca", "instruction data: the Alpaca prompt, or the tokenizer's chat template")
    completion_only_loss: bool = setting(True, "loss on completion/assistant tokens only")
    max_seq_len: int = setting(1024, "longest example in tokens (longer ones: see on_bad_row)")
    on_bad_row: Literal["error", "skip"] = setting(
        "error", "a bad or too long row stops with file:line, or is skipped and counted")
    packing: bool = setting(False, "pack examples into max_seq_len rows (no cross-example attention)")
    # ---- images (task image_classification) ----
    image_size: int = setting(0, "input side for efficientnet-lite0 (0 = 224); HF models use their processor's")
    augment: Literal["crop-flip", "crop", "none"] = setting(
        "crop-flip", "train-time augmentation: random resized crop (+ horizontal flip)")
    augment_min_scale: float = setting(0.08, "smallest crop area as a fraction of the image")
    # ---- optimisation ----
    seed: int = setting(0, "seed for init, shuffling and dropout")
    epochs: int = setting(1, "passes over the training data (ignored when max_steps > 0)")
    max_steps: int = setting(0, "optimizer steps; 0 = derived from epochs")
    batch_size: int = setting(8, "examples (or packed rows) per micro-batch per process")
    grad_accum: int = setting(1, "micro-batches per optimizer step per process")
    lr: float = setting(2e-4, "peak learning rate")
    loraplus_lr_ratio: float = setting(0.0, "LoRA+: lr of lora_B = ratio x lr, e.g. 16 (0 = off)")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    lr_scheduler: Literal["cosine", "linear", "constant"] = setting("cosine", "decay after warmup")
    warmup_ratio: float = setting(0.05, "fraction of steps with linear warmup from 0")
    max_grad_norm: float = setting(1.0, "gradient clipping by global norm (0 = off)")
    # ---- evaluation, checkpoints, output ----
    output_dir: str = setting("runs/train", "run directory (config, checkpoints, metrics, adapter)")
    overwrite: bool = setting(False, "allow an output_dir that already holds a run")
    eval_every: int = setting(0, "evaluate every N steps (0 = only at the end)")
    early_stopping_patience: int = setting(0, "stop after N evals without improvement (0 = off)")
    save_every: int = setting(100, "checkpoint every N steps (0 = no intermediate checkpoints)")
    keep_last: int = setting(2, "checkpoints kept on disk")
    log_every: int = setting(1, "write metrics every N steps")
    progress: bool = setting(True, "show a progress bar")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = setting(
        [], "experiment trackers besides metrics.jsonl: tensorboard, wandb, mlflow (each an "
            "optional extra; see lorakit.train.trackers)")
    fsdp: bool = setting(False, "under torchrun: shard the model with FSDP instead of DDP")
    # ---- diffusion tasks (lorakit.diffusion.train; data is a folder of images) ----
    instance_prompt: str = setting("", "text-to-image: caption of every image without a .txt beside it")
    class_data: str = setting("", "text-to-image: folder of class images for prior preservation")
    class_prompt: str = setting("", "text-to-image: caption of the class images")
    prior_loss_weight: float = setting(1.0, "weight of the class images' loss (prior preservation)")
    resolution: int = setting(0, "image side in pixels; 0 = the model's own")
    # ---- preference tuning (lorakit.preference, docs/preference.md) ----
    method: MethodName = setting(
        "sft", "objective: sft (next-token loss); dpo | ipo | orpo | simpo | kto on preference "
        "data (prompt/chosen/rejected; kto also prompt/completion/label); reward: a Bradley-Terry "
        "reward model (sequence-classification head + LoRA)")
    beta: float = setting(0.1, "preference methods: beta (DPO/IPO/KTO: strength of the reference; "
                          "ORPO: odds-ratio weight; SimPO: reward scale)")
    simpo_gamma: float = setting(0.5, "simpo: target reward margin")
    desirable_weight: float = setting(1.0, "kto: weight of the desirable rows' losses")
    undesirable_weight: float = setting(1.0, "kto: weight of the undesirable rows' losses")
    ref_adapter: str = setting("", "dpo/ipo/kto: adapter directory (e.g. an SFT run's) that is the "
                               "reference; the trained adapter starts as a copy of it")
    precompute_ref: bool = setting(False, "dpo/ipo: compute reference log-probs once before training, "
                                   "cached in the run directory")
    # ---- adapter ----
    lora: LoraConfig = field(default_factory=default_lora, metadata={"help": "LoRA settings"})

    def __post_init__(self) -> None:
        self.task = canonical_task(self.task)
        _check(self)


def _check(c: TrainConfig) -> None:
    if c.task not in TASKS:
        raise ValueError(f"config: task must be one of {', '.join(TASKS)}, got {c.task!r}")
    if c.method not in TASKS[c.task].methods:
        raise ValueError(f"config: method {c.method!r} does not apply to task {c.task!r} "
                         f"(it takes {', '.join(TASKS[c.task].methods)})")
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
