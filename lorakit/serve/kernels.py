"""The serving engine's C++ kernels (``csrc/lora_rows.cpp``), built on first use.

Decode steps that mix adapters spend most of their LoRA time copying each row's factors
(gather) before two batched matmuls. ``shrink`` / ``expand_add`` read every row's own slot in
place instead (Punica's BGMV on CPU): bf16 storage, fp32 accumulation, parallel over rows.

The kernels are compiled with ``torch.utils.cpp_extension`` (a C++ compiler and ninja, both
present on the project's machines) for the CPU they run on (``-march=native``: the build is
cached under a name that includes this CPU's flags, so a shared cache never hands one CPU
another's build). Building takes ~25 s once; later processes load the cached library. Where
building fails, or with ``LORAKIT_KERNELS=0``, ``load()`` returns None and the pool keeps its
batched-matmul path (same results up to rounding; tests/test_serve_fastpath.py checks both).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
from pathlib import Path

import torch

log = logging.getLogger("lorakit.serve")
SOURCE = Path(__file__).parent / "csrc" / "lora_rows.cpp"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def load():
    """The compiled module (``shrink``, ``expand_add``), or None where it cannot be built."""
    if os.environ.get("LORAKIT_KERNELS", "1") == "0":
        return None
    recipe = SOURCE.read_bytes() + _cpu_flags().encode() + torch.__version__.encode() + b"-fopenmp"
    key = hashlib.sha256(recipe).hexdigest()[:12]
    try:
        from torch.utils.cpp_extension import load as build

        log.info("lorakit serve: loading the C++ serving kernels (the first time on a machine: a ~30 s build)")

        # -fopenmp: at::parallel_for is inline and runs serially without it; the library links
        # libgomp.so.1 by soname, i.e. the copy torch already loaded (one OpenMP runtime)
        return build(name=f"lorakit_lora_rows_{key}", sources=[str(SOURCE)],
                     extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as err:  # no compiler / ninja, or an unusual platform: keep the torch path
        log.warning("lorakit serve: C++ kernels unavailable (%s: %s); mixed-adapter decode steps use "
                    "batched matmuls", type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        return None
