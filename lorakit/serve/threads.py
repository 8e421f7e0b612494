"""Keep the engine thread the only one with an OpenMP worker pool.

PyTorch's CPU kernels run on OpenMP, and GNU libgomp gives every thread that enters a parallel
region its own pool of worker threads, kept until that thread exits. Once the process holds more
OpenMP-managed threads than CPUs, libgomp stops spinning at barriers and parks workers on a
futex instead (its "throttled" spin count, 100 iterations), so every parallel region pays a
wake-up. On the 2-core machine this cost a small decode op 20 -> 80-130 us and the whole
serving engine ~25% of its tokens/s when the engine thread ran after the main thread had
loaded the model (measured: docs/serving.md, "Threads").

Two remedies, both no-ops where the OpenMP runtime cannot be found (macOS, Windows, builds
without OpenMP):

- ``release_openmp_pool()``: free the calling thread's pool (``omp_pause_resource_all``, soft).
  ``Engine.start`` calls it in the thread that starts the engine (the one that loaded the
  model). The pool comes back if that thread runs parallel torch work again.
- ``serial_openmp()``: make the calling thread run its OpenMP regions on itself alone (a team
  of one creates no pool). For threads that do small torch work next to the engine, such as
  reading an adapter file in a web server's worker thread.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from pathlib import Path

import torch

_OMP_PAUSE_SOFT = 1
_serial = threading.local()


@functools.cache
def _openmp() -> ctypes.CDLL | None:
    """The OpenMP runtime torch loaded (libgomp, libiomp5 or libomp), found in this process's
    memory map; None if there is none or no /proc. Other packages map runtimes of their own
    (scikit-learn ships a vendored libgomp): the one in torch's own lib directory comes first,
    since pausing another runtime frees nothing of torch's."""
    torch.get_num_threads()  # make sure torch initialised its runtime
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return None
    torch_lib = str(Path(torch.__file__).parent / "lib")
    paths = dict.fromkeys(line.split()[-1] for line in maps if line.split())
    for path in sorted(paths, key=lambda p: not p.startswith(torch_lib)):
        if any(name in Path(path).name for name in ("libgomp", "libiomp5", "libomp")):
            try:
                lib = ctypes.CDLL(path)
                lib.omp_pause_resource_all, lib.omp_set_num_threads  # noqa: B018 (both must exist)
                return lib
            except (OSError, AttributeError):
                continue
    return None


def release_openmp_pool() -> bool:
    """Free the calling thread's OpenMP worker pool; True if the runtime did."""
    lib = _openmp()
    return lib is not None and lib.omp_pause_resource_all(_OMP_PAUSE_SOFT) == 0


def serial_openmp() -> None:
    """From now on run the calling thread's OpenMP regions single-threaded (torch's thread
    setting of other threads is untouched: OpenMP keeps the team size per thread)."""
    if getattr(_serial, "done", False):
        return
    lib = _openmp()
    if lib is not None:
        torch.get_num_threads()  # torch's per-thread lazy init would otherwise reset it later
        lib.omp_set_num_threads(1)
    _serial.done = True
