"""What ``lorakit train --resume RUN_DIR`` may change, and whether there is anything to resume.

A resumed run continues the saved run bit for bit, so it takes every setting from
``RUN_DIR/config.yaml``. Settings that only change what is reported or when training stops
(``RESUMABLE``, trackers included) may be given as flags; ``max_steps`` only upwards (the learning-rate schedule
is a function of the total, so the remaining steps follow the longer schedule, as Hugging Face
``Trainer`` does). Any other setting that differs from the saved one is refused by name.
"""

from __future__ import annotations

from pathlib import Path

from lorakit.train import config_io
from lorakit.train.checkpoint import latest_checkpoint
from lorakit.train.config import TrainConfig
from lorakit.train.tasks import TASKS
from lorakit.train.tracking import read_metrics

RESUMABLE = ("progress", "log_every", "eval_every", "save_every", "keep_last",
             "early_stopping_patience", "max_steps", "report_to")

__all__ = ["RESUMABLE", "resume_config"]


def _finished_step(run_dir: Path) -> int | None:
    """The step a finished run ended at (its final weights and card exist), else None."""
    if not any((run_dir / d / "README.md").exists() and any((run_dir / d).glob("*.safetensors"))
               for d in ("adapter", "model")):
        return None
    steps = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    return max(steps, default=0)


def resume_config(run_dir: str | Path, flags: dict) -> TrainConfig:
    """The saved config of ``run_dir`` with the allowed ``flags`` applied (see module doc)."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"--resume {run_dir}: not a lorakit run directory (no config.yaml)")
    saved = config_io.load_yaml(path, relative_to_file=False)
    current = config_io.to_dict(config_io.from_dict(saved, str(path)))
    if not TASKS[current["task"]].checkpoints:  # lorakit.vision, lorakit.diffusion
        raise ValueError(f"--resume {run_dir}: task {current['task']} does not support --resume "
                         "(its runs write no intermediate checkpoints); start it again instead")
    changed = {k: v for k, v in flags.items() if k != "lora" and current.get(k) != v}
    changed.update({f"lora.{k}": v for k, v in (flags.get("lora") or {}).items()
                    if current["lora"].get(k) != v})
    refused = sorted(k for k in changed if k not in RESUMABLE)
    if refused:
        raise ValueError(f"--resume {run_dir}: {', '.join(refused)} would change the run being "
                         f"resumed (saved: {', '.join(f'{k}={_get(current, k)!r}' for k in refused)}); "
                         f"a resume may change only {', '.join(RESUMABLE)} (max_steps upwards); "
                         "start a new run in another output_dir for other settings")
    if "max_steps" in changed and 0 < changed["max_steps"] < current["max_steps"]:
        raise ValueError(f"--resume {run_dir}: max_steps can only grow on resume "
                         f"(saved {current['max_steps']}, asked {changed['max_steps']})")
    finished = _finished_step(run_dir)
    target = changed.get("max_steps", current["max_steps"])
    if finished is not None and (not target or target <= finished):
        raise ValueError(f"--resume {run_dir}: this run already finished at step {finished} "
                         f"(adapter in {run_dir}); nothing to resume. To train further, pass "
                         f"--max-steps N with N > {finished}")
    if latest_checkpoint(run_dir) is None:
        why = (f"it finished at step {finished} without one (save_every 0)" if finished is not None
               else "the run stopped before its first checkpoint: start it again with the same "
                    "config, or with --overwrite")
        raise FileNotFoundError(f"no checkpoint to resume from in {run_dir / 'checkpoints'} ({why})")
    resolved = config_io.merge(current, {k: v for k, v in flags.items() if k != "lora"})
    cfg = config_io.from_dict(resolved, f"{path} + flags")
    path.write_text(config_io.to_yaml(cfg))  # the record says what the resumed run used
    return cfg


def _get(values: dict, key: str):
    section, _, name = key.rpartition(".")
    return (values[section] if section else values).get(name)
