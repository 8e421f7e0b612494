"""What the dashboard knows about a run directory, read from the files ``lorakit train`` writes.

    RUNS/<name>/config.yaml      the resolved TrainConfig (written when training starts)
                metrics.jsonl    train records {step, loss, lr, grad_norm, tokens_per_s, elapsed_s}
                                 and eval records {step, eval_loss} (lorakit.train.tracking)
                checkpoints/     step-NNNNNNNN/ (resume points; each holds adapter/)
                adapter/         the final adapter with its model card README.md (model/: full FT)
                STOP             a stop request the trainer has not acted on yet
                train.yaml       the config the dashboard launched (lorakit ui only)
                train.log        the trainer's stdout and stderr (lorakit ui only)
                job.json         {pid, command, started, returncode} of the last process the
                                 dashboard started there (lorakit ui only)
                evals/<data>.json  `lorakit eval` reports of this run's adapter

Run names are single path components checked by ``NAME`` and resolved inside the runs
directory, so no request can reach a file outside it.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from lorakit.train import checkpoint
from lorakit.train.control import STOP_FILE
from lorakit.train.tracking import read_metrics

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_TOTAL = re.compile(r"(\d+) steps on \d+ process")
# A run the dashboard did not start (no job.json) may count as running while its metrics.jsonl
# changed this recently (see Runs._live_elsewhere).
LIVE_SECONDS = 60.0

__all__ = ["NAME", "RunError", "RunSummary", "Runs", "eta_seconds"]


class RunError(Exception):
    """A request about runs that cannot be served; ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


async def json_body(request) -> dict:
    """The JSON object a dashboard request carries; 400 with the reason when it is not one."""
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunError(400, f"request body is not valid JSON ({err})") from None
    if not isinstance(body, dict):
        raise RunError(400, "request body must be a JSON object")
    return body


@dataclass
class RunSummary:
    name: str
    status: str            # new | running | stopping | stopped | done | failed
    model: str | None
    step: int
    total_steps: int | None
    loss: float | None
    eval_loss: float | None
    lr: float | None
    grad_norm: float | None
    tokens_per_s: float | None
    eta_s: float | None
    has_adapter: bool      # an adapter to chat with / evaluate (final or latest checkpoint)
    updated: float         # mtime of the newest file the trainer writes


def eta_seconds(records: list[dict], total: int | None) -> float | None:
    """Seconds left at the pace of the current process: ``elapsed_s`` restarts at 0 when a run
    is resumed, so the pace comes from the train records after the last restart."""
    train = [r for r in records if "loss" in r and "elapsed_s" in r]
    if not train or not total:
        return None
    segment = [train[-1]]
    for r in reversed(train[:-1]):
        if r["elapsed_s"] > segment[0]["elapsed_s"]:
            break
        segment.insert(0, r)
    first, last = segment[0], segment[-1]
    if last["step"] >= total:
        return 0.0
    if last["step"] == first["step"]:
        per_step = last["elapsed_s"] / max(1, len(segment))
    else:
        per_step = (last["elapsed_s"] - first["elapsed_s"]) / (last["step"] - first["step"])
    return per_step * (total - last["step"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a finished child not yet reaped is a zombie: not running
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


class Runs:
    """The runs directory. Every method takes a run *name* and checks it."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    # ---- names and paths --------------------------------------------------------------------
    def path(self, name: str, must_exist: bool = True) -> Path:
        if not isinstance(name, str) or not NAME.match(name):
            raise RunError(400, f"run name {name!r} must be 1-64 letters, digits, '_', '-' or '.', "
                                "starting with a letter or digit")
        path = (self.root / name).resolve()
        if path.parent != self.root:
            raise RunError(400, f"run name {name!r} leaves the runs directory")
        if must_exist and not path.is_dir():
            raise RunError(404, f"no run {name!r} in {self.root}; runs: {', '.join(self.names()) or 'none'}")
        return path

    def names(self) -> list[str]:
        found = [p for p in self.root.iterdir() if p.is_dir() and NAME.match(p.name)
                 and any((p / f).exists() for f in ("config.yaml", "train.yaml", "metrics.jsonl"))]
        return sorted(p.name for p in found)

    # ---- reading one run --------------------------------------------------------------------
    def config(self, name: str) -> dict:
        path = self.path(name)
        for fname in ("config.yaml", "train.yaml"):
            if (path / fname).is_file():
                return yaml.safe_load((path / fname).read_text()) or {}
        return {}

    def metrics(self, name: str, since: int = 0) -> list[dict]:
        """Records with ``step > since`` (``since=0``: all)."""
        return [r for r in read_metrics(self.path(name) / "metrics.jsonl") if r.get("step", 0) > since]

    def job(self, name: str) -> dict:
        path = self.path(name) / "job.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def log(self, name: str, tail: int = 20000) -> str:
        path = self.path(name) / "train.log"
        if not path.is_file():
            return ""
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - tail))
            return f.read().decode("utf-8", "replace")

    def card(self, name: str) -> str:
        path = self.path(name)
        for sub in ("adapter", "model"):
            if (path / sub / "README.md").is_file():
                return (path / sub / "README.md").read_text()
        return ""

    def adapter_dir(self, name: str) -> Path | None:
        """The final adapter, else the newest checkpoint's (a stopped run can be tried out)."""
        path = self.path(name)
        if (path / "adapter" / "adapter_config.json").is_file():
            return path / "adapter"
        latest = checkpoint.latest_checkpoint(path)
        if latest is not None and (latest / "adapter" / "adapter_config.json").is_file():
            return latest / "adapter"
        return None

    def total_steps(self, name: str) -> int | None:
        """The step count the trainer announced (train.log), else the config's max_steps."""
        match = _TOTAL.findall(self.log(name, tail=1 << 20))
        if match:
            return int(match[-1])
        return self.config(name).get("max_steps") or None

    def status(self, name: str) -> str:
        path, job = self.path(name), self.job(name)
        if job.get("pid") and job.get("returncode") is None and _alive(job["pid"]):
            return "stopping" if (path / STOP_FILE).exists() else "running"
        if (path / "adapter" / "README.md").is_file() or (path / "model" / "README.md").is_file():
            return "done"
        if not job and self._live_elsewhere(path):
            return "stopping" if (path / STOP_FILE).exists() else "running"
        if job.get("returncode") not in (None, 0):
            return "failed"
        if checkpoint.latest_checkpoint(path) is not None:
            return "stopped"
        return "failed" if job else "new"

    @staticmethod
    def _live_elsewhere(path: Path) -> bool:
        """A run started outside the dashboard: training while metrics.jsonl changed within
        ``LIVE_SECONDS`` and its last step is past its newest checkpoint (a stop on request
        writes a checkpoint of the last step)."""
        metrics = path / "metrics.jsonl"
        if not metrics.is_file() or time.time() - metrics.stat().st_mtime > LIVE_SECONDS:
            return False
        steps = [r.get("step", 0) for r in read_metrics(metrics)]
        latest = checkpoint.latest_checkpoint(path)
        return latest is None or max(steps, default=0) > int(latest.name.split("-")[1])

    def summary(self, name: str) -> RunSummary:
        path = self.path(name)
        records = self.metrics(name)
        train = [r for r in records if "loss" in r]
        evals = [r for r in records if "eval_loss" in r]
        last = train[-1] if train else {}
        total = self.total_steps(name)
        status = self.status(name)
        files = [path / f for f in ("metrics.jsonl", "train.log", "config.yaml", "job.json")]
        return RunSummary(
            name=name, status=status, model=self.config(name).get("model"),
            step=max((r.get("step", 0) for r in records), default=0), total_steps=total,
            loss=last.get("loss"), eval_loss=evals[-1]["eval_loss"] if evals else None,
            lr=last.get("lr"), grad_norm=last.get("grad_norm"), tokens_per_s=last.get("tokens_per_s"),
            eta_s=eta_seconds(records, total) if status in ("running", "stopping") else None,
            has_adapter=self.adapter_dir(name) is not None,
            updated=max((f.stat().st_mtime for f in files if f.exists()), default=path.stat().st_mtime))

    def detail(self, name: str) -> dict:
        return {**asdict(self.summary(name)), "config": self.config(name), "card": self.card(name),
                "log": self.log(name, tail=4000), "job": self.job(name),
                "checkpoints": [p.name for p in checkpoint.list_checkpoints(self.path(name))]}

    def evals(self, name: str) -> list[dict]:
        """The run's `lorakit eval` reports (evals/*.json), newest last."""
        folder = self.path(name) / "evals"
        if not folder.is_dir():
            return []
        reports = []
        for f in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime):
            try:
                reports.append({"run": name, "file": f.name, **json.loads(f.read_text())})
            except json.JSONDecodeError:
                continue  # being written by a running eval
        return reports
