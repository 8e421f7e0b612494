"""Stopping a run from outside: a ``STOP`` file in the run directory.

Anyone (``lorakit ui``, a script, ``touch RUN_DIR/STOP``) asks a running ``lorakit train`` to
stop by creating the file. The loop checks it after every optimizer step; on seeing it, it
writes a checkpoint of that step, removes the file and returns, so ``lorakit train --resume
RUN_DIR`` continues exactly there. A file is portable (no signals, works under torchrun and on
every OS) and survives the asker: nothing has to stay connected to the trainer.
"""

from __future__ import annotations

from pathlib import Path

from lorakit.train import distributed

STOP_FILE = "STOP"

__all__ = ["STOP_FILE", "clear_stop", "request_stop", "stop_requested"]


def request_stop(run_dir: str | Path) -> Path:
    """Ask the run training in ``run_dir`` to checkpoint and stop after its current step."""
    path = Path(run_dir) / STOP_FILE
    path.touch()
    return path


def stop_requested(run_dir: str | Path, world: distributed.World) -> bool:
    """True on every process once any process sees the ``STOP`` file (all stop at one step)."""
    seen = float((Path(run_dir) / STOP_FILE).exists())
    return distributed.sum_all([seen], world)[0] > 0


def clear_stop(run_dir: str | Path) -> None:
    """Remove a ``STOP`` file (a stale one at start, or the one a stop has acted on)."""
    (Path(run_dir) / STOP_FILE).unlink(missing_ok=True)
