"""The process's OpenMP thread teams: the engine thread's must be the only one.

libgomp, the OpenMP runtime of torch's Linux wheels, keeps a team of worker threads for every
thread that ran a parallel region. Once the process holds more such threads than it has CPUs,
idle workers barely spin before they sleep, so every small parallel op of a step (a norm or an
activation over a few decode rows) first waits for its worker to wake: ~98 µs an op instead of
~15 µs here (docs/kernels.md, "One OpenMP team"). Loading a model on the main thread leaves
such a team behind; a thread frees its own when it sends work to the engine loop.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

_OMP_PAUSE_SOFT = 1


def release_thread_team() -> None:
    """Free the calling thread's OpenMP worker threads; a no-op where it has none, or where the
    OpenMP runtime is not libgomp. Its next parallel region starts a new team."""
    libgomp = _loaded_libgomp()
    if libgomp is not None:
        libgomp.omp_pause_resource_all(_OMP_PAUSE_SOFT)  # libgomp: this thread's team only


@functools.cache
def _loaded_libgomp() -> ctypes.CDLL | None:
    """torch's libgomp (in `torch/lib` or the wheel's `torch.libs`); other packages may load
    their own copies (sentencepiece does), whose teams are not the ones torch's ops use."""
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        return None
    paths = {line.split()[-1] for line in maps.read_text().splitlines() if "libgomp" in line}
    torch_paths = sorted(p for p in paths if "/torch/lib/" in p or "/torch.libs/" in p)
    if not torch_paths:
        return None
    library = ctypes.CDLL(torch_paths[0])  # already loaded: the same handle, not a second copy
    return library if hasattr(library, "omp_pause_resource_all") else None
