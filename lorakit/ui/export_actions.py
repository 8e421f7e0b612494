"""The dashboard's export actions: ``lorakit export`` of a finished run's adapter.

    POST /api/runs/{name}/export    {to, outtype?, overwrite?, check_prompts?}: start the export
    GET  /api/runs/{name}/exports   the run's exports so far, each with its report
    GET  /api/exports/{id}          one export job: state, command, log tail, report when done

Like every dashboard job, an export is a ``python -m lorakit.cli export ...`` child (the command
shown is the one a user can type); it writes under ``RUNS/<name>/exports/`` (``gguf-lora-f32.gguf``,
``ollama-f16/``, ``hf-default/``...) and the report ``lorakit export`` writes beside its output is
what the API returns. Only a finished run (``done``: a final adapter) can be exported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from fastapi import FastAPI, Request

from lorakit.export.run import HF_DTYPES, LORA_OUTTYPES, report_path
from lorakit.formats.gguf import OUTTYPES
from lorakit.ui.runs import RunError, Runs, json_body

__all__ = ["ACTIONS", "Exports", "register_export_routes"]

ACTIONS = {   # --to: (the outtypes it takes, its default, whether the output is a directory)
    "gguf-lora": (LORA_OUTTYPES, "f32", False),
    "ollama": (tuple(sorted(OUTTYPES)), "f16", True),
    "hf": (HF_DTYPES, "default", True),
}


def _out_name(fmt: str, outtype: str) -> str:
    return f"{fmt}-{outtype}" + ("" if ACTIONS[fmt][2] else ".gguf")


class Exports:
    """Export jobs of one dashboard: each runs ``lorakit export`` in a background thread."""

    def __init__(self, runs: Runs, cwd: str | Path | None = None):
        self.runs = runs
        self.cwd = Path(cwd or os.getcwd())   # relative model paths in run configs start here
        self._lock = threading.Lock()
        self._jobs: dict[str, dict] = {}

    def command(self, name: str, fmt: str, outtype: str | None, overwrite: bool,
                check_prompts: int) -> tuple[list[str], Path]:
        """The ``lorakit export`` command for run ``name`` and its output path; refuses (4xx,
        with the reason) what the export would refuse, before anything starts."""
        path = self.runs.path(name)
        if fmt not in ACTIONS:
            raise RunError(422, f"to: unknown export {fmt!r}; choose one of {sorted(ACTIONS)}")
        choices, default, _ = ACTIONS[fmt]
        outtype = outtype or default
        if outtype not in choices and not (fmt == "hf" and outtype == "default"):
            raise RunError(422, f"outtype {outtype!r} is not one of {list(choices)} for {fmt}")
        status = self.runs.status(name)
        if status != "done" or not (path / "adapter" / "adapter_config.json").is_file():
            raise RunError(409, f"run {name!r} is {status}; only a finished run (with its final "
                                "adapter) can be exported")
        if not isinstance(check_prompts, int) or isinstance(check_prompts, bool) or not 0 <= check_prompts <= 20:
            raise RunError(422, f"check_prompts must be an integer 0-20, got {check_prompts!r}")
        out = path / "exports" / _out_name(fmt, outtype)
        if out.exists() and not overwrite:
            raise RunError(409, f"{out.relative_to(self.runs.root)} exists; send overwrite: true to replace it")
        cmd = ["lorakit", "export", str(path / "adapter"), "--to", fmt, "--out", str(out),
               "--check-prompts", str(check_prompts)]
        model = self.runs.config(name).get("model")
        if model:
            cmd += ["--model", str(model)]
        if fmt == "hf" and outtype != "default":
            cmd += ["--dtype", outtype]
        elif fmt != "hf":
            cmd += ["--outtype", outtype]
        return cmd + (["--overwrite"] if overwrite else []), out

    def start(self, name: str, fmt: str, outtype: str | None = None, overwrite: bool = False,
              check_prompts: int = 2) -> dict:
        cmd, out = self.command(name, fmt, outtype, overwrite, check_prompts)
        with self._lock:
            busy = [j for j in self._jobs.values() if j["run"] == name and j["state"] == "running"]
            if busy:
                raise RunError(409, f"run {name!r} is already exporting ({busy[0]['id']})")
            job = {"id": f"export-{int(time.time() * 1000)}-{len(self._jobs)}", "run": name, "to": fmt,
                   "out": str(out), "command": cmd, "state": "running", "log": "", "report": None}
            self._jobs[job["id"]] = job
        out.parent.mkdir(exist_ok=True)
        threading.Thread(target=self._run, args=(job, cmd, out), daemon=True).start()
        return dict(job)

    def _run(self, job: dict, cmd: list[str], out: Path) -> None:
        argv = [sys.executable, "-m", "lorakit.cli", *cmd[1:]]   # cmd[0]: the shown name
        result = subprocess.run(argv, cwd=self.cwd, capture_output=True, text=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        report = report_path(job["to"], out)
        with self._lock:
            job["log"] = f"$ {' '.join(cmd)}\n{result.stderr[-4000:]}"
            if result.returncode == 0 and report.is_file():
                job["report"] = json.loads(report.read_text())
                job["state"] = "done"
            else:
                job["state"] = "failed"
                job["error"] = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
            job["ended"] = time.time()

    def job(self, job_id: str) -> dict:
        with self._lock:
            if job_id not in self._jobs:
                raise RunError(404, f"no export job {job_id!r}")
            return dict(self._jobs[job_id])

    def wait(self, job_id: str, timeout: float = 300) -> dict:
        """The job once it is no longer running (for tests and scripts)."""
        deadline = time.monotonic() + timeout
        while self.job(job_id)["state"] == "running":
            if time.monotonic() > deadline:
                raise TimeoutError(f"export job {job_id} still running after {timeout} s")
            time.sleep(0.2)
        return self.job(job_id)

    def listing(self, name: str) -> dict:
        """The run's finished exports (those with a report) and whether it can be exported."""
        path, found = self.runs.path(name), []
        folder = path / "exports"
        for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
            fmt = next((f for f in ACTIONS if entry.name.startswith(f + "-")), None)
            report = report_path(fmt, entry) if fmt else None
            if report is not None and report.is_file() and not entry.name.endswith(".report.json"):
                found.append({"name": entry.name, "to": fmt, "report": json.loads(report.read_text())})
        return {"run": name, "exportable": self.runs.status(name) == "done",
                "actions": {f: {"outtypes": list(c), "default": d} for f, (c, d, _) in ACTIONS.items()},
                "exports": found}


def register_export_routes(app: FastAPI, runs: Runs, cwd: str | Path | None = None) -> Exports:
    """Add the export routes (module docstring) to the dashboard ``app``."""
    exports = Exports(runs, cwd)
    app.state.exports = exports

    @app.post("/api/runs/{name}/export")
    async def start_export(name: str, request: Request):
        body = await json_body(request)
        unknown = sorted(set(body) - {"to", "outtype", "overwrite", "check_prompts"})
        if unknown:
            raise RunError(422, f"unknown field(s) {unknown}; known: to, outtype, overwrite, check_prompts")
        return exports.start(name, body.get("to"), body.get("outtype"), bool(body.get("overwrite", False)),
                             body.get("check_prompts", 2))

    @app.get("/api/runs/{name}/exports")
    async def list_exports(name: str):
        return exports.listing(name)

    @app.get("/api/exports/{job_id}")
    async def export_status(job_id: str):
        return exports.job(job_id)

    return exports
