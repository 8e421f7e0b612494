"""Processes the dashboard starts: ``lorakit train`` (new or ``--resume``) and ``lorakit eval``.

Model work never runs in the dashboard's process or its request handlers: every job is a
``python -m lorakit.cli ...`` child whose output goes to a log file, so the command a job runs
is the command a user can type. A training job's pid and exit status are kept in the run's
``job.json`` (see ``runs``); a reaper thread per child records the exit status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from lorakit.train.config import TrainConfig
from lorakit.train.control import request_stop
from lorakit.ui.runs import RunError, Runs

__all__ = ["Jobs"]


def _cli(*args: str) -> list[str]:
    """``lorakit ARGS`` as this interpreter runs it (the first item is the shown name)."""
    return ["lorakit", *args]


def _argv(command: list[str]) -> list[str]:
    return [sys.executable, "-m", "lorakit.cli", *command[1:]]


class Jobs:
    def __init__(self, runs: Runs, cwd: str | Path | None = None):
        self.runs = runs
        self.cwd = Path(cwd or os.getcwd())
        self._lock = threading.Lock()
        self._children: dict[str, subprocess.Popen] = {}
        self._evals: dict[str, dict] = {}

    # ---- training ---------------------------------------------------------------------------
    def check_inputs(self, cfg) -> None:
        """The files a config names exist (relative paths: from the jobs' working directory),
        so a typo is a 422 now rather than a failed run later."""
        if not cfg.data:
            raise RunError(422, "data: a training data file is required")
        for key in ("data", "eval_data"):
            value = getattr(cfg, key)
            if value and not (self.cwd / value).exists():
                raise RunError(422, f"{key} not found: {value} (relative to {self.cwd})")

    def train(self, name: str, yaml_text: str) -> list[str]:
        """Write ``RUNS/name/train.yaml`` and start ``lorakit train`` on it."""
        path = self.runs.path(name, must_exist=False)
        if path.exists() and any(path.iterdir()):
            raise RunError(409, f"run {name!r} already exists; choose another name")
        path.mkdir(parents=True, exist_ok=True)
        (path / "train.yaml").write_text(yaml_text)
        return self._spawn(name, _cli("train", str(path / "train.yaml")))

    def resume(self, name: str) -> list[str]:
        path = self.runs.path(name)
        status = self.runs.status(name)
        if status != "stopped":
            raise RunError(409, f"run {name!r} is {status}; only a stopped run (one with a "
                                "checkpoint and no final adapter) can be resumed")
        return self._spawn(name, _cli("train", "--resume", str(path)))

    def stop(self, name: str) -> None:
        status = self.runs.status(name)
        if status not in ("running", "stopping"):
            raise RunError(409, f"run {name!r} is {status}, not running")
        request_stop(self.runs.path(name))

    def _spawn(self, name: str, command: list[str]) -> list[str]:
        path = self.runs.path(name)
        with self._lock:
            child = self._children.get(name)
            if child is not None and child.poll() is None:
                raise RunError(409, f"run {name!r} already has a running process (pid {child.pid})")
            with open(path / "train.log", "ab") as log:
                log.write(f"$ {' '.join(command)}\n".encode())
                log.flush()
                # Its own session: a Ctrl-C that ends the dashboard does not kill the training
                # (a restarted dashboard finds it again through job.json).
                child = subprocess.Popen(_argv(command), cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self._env(),
                                         start_new_session=True)
            self._children[name] = child
            self._write_job(path, {"pid": child.pid, "command": command, "started": time.time(),
                                   "returncode": None})
        threading.Thread(target=self._reap, args=(name, path, child), daemon=True).start()
        return command

    def _reap(self, name: str, path: Path, child: subprocess.Popen) -> None:
        code = child.wait()
        with self._lock:
            job = json.loads((path / "job.json").read_text())
            if job.get("pid") == child.pid:
                self._write_job(path, {**job, "returncode": code, "ended": time.time()})

    @staticmethod
    def _write_job(path: Path, job: dict) -> None:
        tmp = path / ".job.json.tmp"
        tmp.write_text(json.dumps(job))
        tmp.replace(path / "job.json")

    @staticmethod
    def _env() -> dict:
        return dict(os.environ, PYTHONUNBUFFERED="1")

    def wait(self, name: str, timeout: float | None = None) -> int | None:
        """Exit status of the run's process (for tests and shutdown)."""
        child = self._children.get(name)
        return None if child is None else child.wait(timeout)

    # ---- evaluation -------------------------------------------------------------------------
    def evaluate(self, names: list[str], data: str, limit: int = 0, max_new_tokens: int = 64) -> dict:
        """Start ``lorakit eval`` of each run's adapter on ``data``, one after the other (the
        first also scores the base model); reports go to ``RUNS/<run>/evals/<data>.json``."""
        if not names:
            raise RunError(400, "evaluate: give at least one run")
        if not data or not (self.cwd / data).is_file():
            raise RunError(400, f"evaluate: data file not found: {data!r}")
        commands = []
        for i, name in enumerate(names):
            adapter = self.runs.adapter_dir(name)
            if adapter is None:
                raise RunError(409, f"run {name!r} has no adapter yet (no final adapter, no checkpoint)")
            cfg = self.runs.config(name)
            out = self.runs.path(name) / "evals" / f"{Path(data).stem}.json"
            cmd = _cli("eval", "--model", str(cfg.get("model")), "--adapter", str(adapter),
                       "--data", data, "--out", str(out), "--max-new-tokens", str(max_new_tokens),
                       "--instruction-template", str(cfg.get("instruction_template", TrainConfig.instruction_template)),
                       "--task", str(cfg.get("task", TrainConfig.task)), "--limit", str(limit))
            commands.append(cmd + ([] if i == 0 else ["--no-base"]))
        job = {"id": f"eval-{int(time.time() * 1000)}", "runs": names, "data": data,
               "state": "running", "done": 0, "total": len(commands), "log": ""}
        with self._lock:
            self._evals[job["id"]] = job
        threading.Thread(target=self._run_evals, args=(job, commands), daemon=True).start()
        return dict(job)

    def _run_evals(self, job: dict, commands: list[list[str]]) -> None:
        for cmd in commands:
            result = subprocess.run(_argv(cmd), cwd=self.cwd, capture_output=True, text=True,
                                    env=self._env())
            with self._lock:
                job["log"] += f"$ {' '.join(cmd)}\n{result.stdout[-4000:]}{result.stderr[-4000:]}"
                if result.returncode != 0:
                    job["state"] = "failed"
                    return
                job["done"] += 1
        with self._lock:
            job["state"] = "done"

    def eval_job(self, job_id: str) -> dict:
        with self._lock:
            if job_id not in self._evals:
                raise RunError(404, f"no eval job {job_id!r}")
            return dict(self._evals[job_id])
