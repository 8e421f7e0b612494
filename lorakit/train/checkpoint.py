"""Checkpoints: the layout on disk, atomic writes, keep-last-N, and reading back for resume.

    RUN_DIR/checkpoints/step-00000040/
        trainable.safetensors   every trainable parameter, by its name in the model, exact dtype
        optimizer.pt            the optimizer's state_dict (AdamW moments, param groups)
        state.json              step, data position (epoch, step in epoch), early-stopping
                                state, data fingerprint; the lr schedule is a function of step
        rng.pt                  torch CPU (and CUDA) RNG states, one entry per process
        adapter/                the adapter at this step, PEFT format (LoRA runs)

A checkpoint is written into ``.step-00000040.tmp`` and renamed into place, so a directory named
``step-*`` is always complete; an interrupted write leaves only a ``.tmp`` that the next save
removes. Then all but the newest ``keep_last`` checkpoints are deleted.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

_STEP_DIR = re.compile(r"^step-(\d{8})$")


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:08d}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def capture_rng() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: str | Path, step: int, trainable: dict[str, torch.Tensor],
                    optimizer_state: dict, state: dict, rng_states: list[dict], keep_last: int,
                    write_extra: Callable[[Path], None] | None = None) -> Path:
    """Write checkpoint ``step`` atomically, then prune to the newest ``keep_last``.

    ``rng_states`` holds one ``capture_rng()`` per process (index = rank); ``write_extra(dir)``
    adds files (the PEFT adapter) before the rename.
    """
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name("." + final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)  # left by an interrupted save
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()},
              str(tmp / "trainable.safetensors"))
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(rng_states, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2))
    if write_extra is not None:
        write_extra(tmp)
    if final.exists():  # re-saving a step (a resumed run that is asked to save it again)
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old)
    return final


def load_checkpoint(path: str | Path) -> dict:
    """Everything ``save_checkpoint`` wrote: trainable, optimizer, state, rng (per rank)."""
    path = Path(path)
    missing = [n for n in ("trainable.safetensors", "optimizer.pt", "rng.pt", "state.json")
               if not (path / n).exists()]
    if missing:
        raise FileNotFoundError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    return {
        "trainable": load_file(str(path / "trainable.safetensors")),
        "optimizer": torch.load(path / "optimizer.pt", weights_only=True),
        "rng": torch.load(path / "rng.pt", weights_only=True),
        "state": json.loads((path / "state.json").read_text()),
    }
