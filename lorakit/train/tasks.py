"""What ``lorakit train`` can train: the task table and the method table, and the one dispatch.

Task names are spelled with underscores (``causal_lm``, ``seq_cls``, ``image_classification``,
``text_to_image``, ``unconditional``), like PEFT's ``task_type`` values; the hyphenated
spellings (``text-to-image``, ``image-classification``, ``causal-lm``, ``seq-cls``), which
Hugging Face pipelines use, are accepted everywhere a task is given (YAML, flags, the UI form)
and stored canonical (``TASK_ALIASES``).

    task                  runner                                   --resume  methods
    causal_lm             the method's runner (below)              sft only  all
    seq_cls               lorakit.train.loop (a new class head)    yes       sft
    image_classification  lorakit.vision.train.train_images        no        sft
    text_to_image         lorakit.diffusion.train.train_diffusion  no        sft
    unconditional         lorakit.diffusion.train.train_diffusion  no        sft

    method                runner
    sft                   lorakit.train.loop (next-token / class loss, checkpoints, DDP/FSDP)
    dpo ipo orpo simpo    lorakit.preference.loop.train_preference (one process, no checkpoints)
    kto reward

Runners are imported when their task runs, so the table costs nothing to import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

__all__ = ["METHODS", "TASKS", "TASK_ALIASES", "Method", "Task", "canonical_task", "checkpoints", "run"]


def _sft(cfg, resume: bool, command: list[str]) -> Path:
    from lorakit.train.loop import train_sft

    return train_sft(cfg, resume, command)


def _preference(cfg, resume: bool, command: list[str]) -> Path:
    from lorakit.preference.loop import train_preference

    return train_preference(cfg, command)


def _images(cfg, resume: bool, command: list[str]) -> Path:
    from lorakit.vision.train import train_images

    return train_images(cfg, resume)


def _diffusion(cfg, resume: bool, command: list[str]) -> Path:
    from lorakit.diffusion.train import train_diffusion

    return train_diffusion(cfg)


@dataclass(frozen=True)
class Method:
    """A training objective of the text tasks."""

    runner: Callable            # (cfg, resume, command) -> output directory
    checkpoints: bool           # writes intermediate checkpoints, so --resume can continue it


@dataclass(frozen=True)
class Task:
    """One kind of model and data ``lorakit train`` trains."""

    runner: Callable | None     # (cfg, resume, command) -> output dir; None: the method's runner
    checkpoints: bool           # writes intermediate checkpoints, so --resume can continue it
    methods: tuple[str, ...]    # the methods (objectives) it accepts
    text: bool                  # tokenized text data (formats, packing, data_mix apply)
    peft_task_type: str | None  # PEFT's task_type of its adapters (None: not a PEFT text task)


METHODS: dict[str, Method] = {
    "sft": Method(_sft, checkpoints=True),
    **{name: Method(_preference, checkpoints=False)
       for name in ("dpo", "ipo", "orpo", "simpo", "kto", "reward")},
}

TASKS: dict[str, Task] = {
    "causal_lm": Task(None, True, tuple(METHODS), text=True, peft_task_type="CAUSAL_LM"),
    "seq_cls": Task(_sft, True, ("sft",), text=True, peft_task_type="SEQ_CLS"),
    "image_classification": Task(_images, False, ("sft",), text=False, peft_task_type=None),
    "text_to_image": Task(_diffusion, False, ("sft",), text=False, peft_task_type=None),
    "unconditional": Task(_diffusion, False, ("sft",), text=False, peft_task_type=None),
}

TASK_ALIASES = {name.replace("_", "-"): name for name in TASKS if "_" in name}


def canonical_task(name: str) -> str:
    """The table's spelling of a task name (``text-to-image`` -> ``text_to_image``); names that
    are not tasks come back unchanged (the config check names them)."""
    return TASK_ALIASES.get(name, name)


def checkpoints(cfg) -> bool:
    """Whether ``cfg``'s run writes intermediate checkpoints (what ``--resume`` continues)."""
    task = TASKS[cfg.task]
    return task.checkpoints and (task.runner is not None or METHODS[cfg.method].checkpoints)


def run(cfg, resume: bool, command: list[str]) -> Path:
    """Train ``cfg`` with its task's runner (causal_lm: its method's); returns the output
    directory. ``resume`` is refused for runs that write no checkpoints."""
    task = TASKS[cfg.task]
    if resume and not checkpoints(cfg):
        what = f"method {cfg.method!r}" if task.checkpoints else f"task {cfg.task!r}"
        raise ValueError(f"--resume continues runs with checkpoints; {what} writes none")
    runner = task.runner or METHODS[cfg.method].runner
    return runner(cfg, resume, command)
