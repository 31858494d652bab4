"""Keep freed memory inside the process, so that each large tensor does not fault in fresh pages.

PyTorch's CPU allocator asks ``malloc`` for every tensor and frees it when the tensor dies.
glibc serves each request above its mmap threshold (adjusted at run time, at most 32 MiB on
64-bit Linux) with a new ``mmap`` and hands it back to the kernel on ``free``, so the next
activation of that size touches pages the kernel must fault in and zero. Deraining networks
run at full resolution: one 32-channel bf16 activation of a 1024 px tile is 64 MiB, and a
forward pass makes hundreds. On the 2-core AVX-512-BF16 test CPU this cost PyTorch's paths
up to half their time (``benchmarks/bench_inference.py``, rdmc bf16 in a 1024 px tile: 2.05x
with and without ``DERAIN_MALLOC=system``; ``benchmarks/torch_profile.py -m rdmc --side 1024``
in another run: 1.5x the whole pass, 2-4x each elementwise step).

:func:`keep_freed_memory` tells glibc to serve large requests from its heap as well
(``M_MMAP_MAX`` = 0) and not to trim the heap's top below 2 GiB of free memory
(``M_TRIM_THRESHOLD``): the next tile's tensors reuse the pages already mapped. It is
process-wide and one-way: the torch engine turns it on when it is built for a CPU
(``TorchRunner``), and so does ``derain train`` on a CPU. What it costs and where it does
not reach:

* The process keeps what it freed until it exits (small allocations made later sit above
  the freed memory, so the top is rarely trimmed): peak RSS grows (README, Speed, "Freed
  memory kept"), also for the caller's own large arrays once it is on. Forked children
  (DataLoader workers) inherit the setting.
* Threads other than the main one allocate from their own arenas, which still map requests
  above 64 MiB: derain runs the network on the calling thread.
* ``DERAIN_MALLOC=system``, set before the first engine is built, keeps glibc's behaviour.
  ONNX Runtime-only runs (the int8 path, and fp32 in ONNX Runtime) do not turn it on,
  except in the run that times them against PyTorch (``engine_choice``: the probe builds
  a torch engine). Other C libraries and operating systems: nothing happens.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
import threading

log = logging.getLogger(__name__)

ENV = "DERAIN_MALLOC"
#: glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: free memory the heap's top may hold before glibc trims it: the most mallopt's int says
TRIM_THRESHOLD = 2**31 - 1

_applied: bool | None = None
_lock = threading.Lock()


def setting() -> str:
    """``keep`` (the default) or ``system`` (``DERAIN_MALLOC=system``: glibc's defaults);
    another value is warned about and ignored, as ``DERAIN_CPU_ENGINE``'s are."""
    value = os.environ.get(ENV, "keep").strip().lower() or "keep"
    if value not in ("keep", "system"):
        log.warning("%s=%s is not one of keep, system; ignored", ENV, value)
        return "keep"
    return value


def _glibc() -> bool:
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def mode() -> str:
    """How this process allocates once a PyTorch CPU engine runs: ``keep`` or ``system``
    (what it does if it has decided, else what :func:`keep_freed_memory` would decide)."""
    if _applied is not None:
        return "keep" if _applied else "system"
    return "keep" if setting() == "keep" and _glibc() else "system"


def keep_freed_memory() -> bool:
    """Ask glibc to reuse freed memory for large allocations (once per process).

    Returns whether the process now runs that way: False under ``DERAIN_MALLOC=system``,
    off Linux or glibc, or if ``mallopt`` refused.
    """
    global _applied
    with _lock:
        if _applied is None:
            _applied = _apply()
        return _applied


def _apply() -> bool:
    if setting() == "system" or not _glibc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not ok:
        log.debug("glibc refused mallopt; large tensors keep their own mappings")
    return ok


class _MallInfo2(ctypes.Structure):  # glibc 2.33+ (malloc.h)
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def heap_bytes() -> tuple[int, int] | None:
    """glibc's heap: (bytes in use, bytes free but kept), or None where glibc cannot say
    (before 2.33, or not glibc)."""
    if not _glibc():
        return None
    try:
        info = ctypes.CDLL(None).mallinfo2
    except AttributeError:
        return None
    info.restype = _MallInfo2
    m = info()
    return int(m.uordblks), int(m.fordblks)


def release_freed_memory(keep: int = 0) -> bool:
    """Hand the memory the process freed back to the system (glibc ``malloc_trim``), when
    more than ``keep`` bytes are free in the heap. Returns whether it did (False off glibc).
    With ``DERAIN_MALLOC=system`` too: glibc's own thresholds then return only part of it
    (a service seeing ever new photo sizes grew as much; an audit found this function did
    nothing there until 2026-12-05).

    For a long-lived process (a service) that derains now and then: between jobs, the
    memory the last photos used goes back, and the next job pays its page faults again
    (what ``DERAIN_MALLOC=system`` pays on every tile, 1.2-2x slower). Freed memory is
    kept, not leaked: over 20 photo sizes the default model's process held about 1 GB, of
    which 0.1 GB in use (``python benchmarks/memory_sizes.py``, README "In a service").
    Not called by derain itself: called before every new photo size it cost 8-13 % on
    small photos (README). Where glibc cannot say how much is free (before 2.33) it
    releases."""
    if not _glibc():
        return False
    heap = heap_bytes()
    if heap is not None and heap[1] <= keep:
        return False
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except AttributeError:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True
