"""EvalConfig: every setting of ``lorakit eval``, typed, with each default in one place.

The command-line flags are generated from these fields (``lorakit.flags``), as ``lorakit
train``'s and ``lorakit serve``'s are from theirs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lorakit.argtypes import nonnegative_int, positive_int
from lorakit.flags import setting
from lorakit.models import DEFAULT_MODEL
from lorakit.train.tasks import TASK_ALIASES

__all__ = ["EvalConfig"]


@dataclass
class EvalConfig:
    """What to evaluate, on which data, and how (``lorakit eval --help``)."""

    model: str = setting(DEFAULT_MODEL, "base model: embedded name, local directory or Hub id")
    adapter: str | None = setting(None, "PEFT LoRA adapter directory (evaluated next to the base model)")
    data: str = setting("", "eval data: .jsonl/.json/.csv/.parquet, a saved datasets directory, "
                        "or hf:org/name[:split]", required=True)
    split: str | None = setting(None, "split of a saved datasets directory or hf:org/name source "
                                "with several splits (default: its only split; several splits "
                                "need this flag)")
    ref_adapter: str | None = setting(None, "preference data: the reference of a DPO-style adapter "
                                      "trained on top of this one (default: the base); see "
                                      "docs/preference.md")
    task: Literal["causal_lm", "seq_cls", "image_classification"] = setting(
        "causal_lm", "seq_cls: a classifier (accuracy, macro-F1) instead of a language model; "
        "image_classification: images (accuracy, macro-F1, confusion matrix PNG)",
        aliases=TASK_ALIASES)
    format: Literal["auto", "instruction", "chat", "prompt_completion", "text", "classification"] = setting(
        "auto", "data format; auto detects it from the first row's keys (as in training)")
    instruction_template: Literal["alpaca", "chat"] = setting(
        "alpaca", "prompt of instruction rows: use the one the adapter was trained with")
    scorer: list[str] = setting([], "extra metric fn(prediction, reference) -> number; repeatable; "
                                "a file.py:fn works too", action="append", metavar="MODULE:FUNCTION")
    label_names: str | None = setting(None, "seq_cls: comma-separated class names in id order "
                                      "(default: from the data)")
    max_new_tokens: int = setting(64, "generation stops here or at end of turn", type=positive_int)
    max_seq_len: int = setting(2048, "longest eval example in tokens", type=positive_int)
    batch_size: int = setting(16, "prompts per forward / generate call", type=positive_int)
    limit: int = setting(0, "evaluate the first N examples only (0 = all)", type=nonnegative_int)
    dtype: Literal["float32", "bfloat16", "float16"] = setting(
        "bfloat16", "dtype the base model is loaded in (adapter weights stay float32)")
    quantize: Literal["none", "nf4"] = setting(
        "none", "quantize the base to NF4 first (evaluate a QLoRA adapter on the base it trained on)")
    loss: bool = setting(True, "loss / perplexity (--no-loss skips it)")
    generate: bool = setting(True, "generation metrics (--no-generate skips them)")
    base: bool = setting(True, "with --adapter: evaluate the base model too (--no-base skips it)")
    out: str = setting("eval.json", "results file (default: ./eval.json)")
