"""Keep freed memory inside the process, so that each large tensor does not fault in fresh pages.

PyTorch's CPU allocator asks ``malloc`` for every tensor and frees it when the tensor dies.
glibc serves each request above its mmap threshold (adjusted at run time, at most 32 MiB on
64-bit Linux) with a new ``mmap`` and hands it back to the kernel on ``free``, so the next
activation of that size touches pages the kernel must fault in and zero one 4 KiB page at a
time. Deraining networks run at full resolution: one 32-channel bf16 activation of a 1024 px
tile is 64 MiB, and a forward pass makes hundreds. On the 2-core AVX-512-BF16 test CPU this
cost PyTorch's paths about half their time (``python benchmarks/torch_profile.py -m rdmc
--side 1024``: sigmoid and multiply took 6-10x their memory-bound time, convolutions 1.3x).

:func:`keep_freed_memory` tells glibc to serve large requests from its heap as well
(``M_MMAP_MAX`` = 0) and to keep freed memory there instead of trimming it
(``M_TRIM_THRESHOLD``): the next tile's tensors reuse the pages already mapped. The price is
that the process keeps its peak memory until it exits (figures in the README, Speed); a
library user in a long-lived process who prefers glibc's own behaviour sets
``DERAIN_MALLOC=system``. ONNX Runtime has its own memory arena and is unaffected. On other
C libraries and operating systems this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import sys

log = logging.getLogger(__name__)

ENV = "DERAIN_MALLOC"
#: glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: free memory at the top of the heap kept for reuse: the most mallopt's int can say (2 GiB)
TRIM_THRESHOLD = 2**31 - 1

_applied: bool | None = None


def setting() -> str:
    """``keep`` (the default) or ``system`` (``DERAIN_MALLOC=system``: glibc's defaults);
    another value is warned about and ignored, as ``DERAIN_CPU_ENGINE``'s are."""
    value = os.environ.get(ENV, "keep").strip().lower() or "keep"
    if value not in ("keep", "system"):
        log.warning("%s=%s is not one of keep, system; ignored", ENV, value)
        return "keep"
    return value


def keep_freed_memory() -> bool:
    """Ask glibc to reuse freed memory for large allocations (once per process).

    Returns whether the process now runs that way: False under ``DERAIN_MALLOC=system``,
    off Linux or glibc, or if ``mallopt`` refused.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if setting() == "system" or not sys.platform.startswith("linux"):
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not ok:
        log.debug("glibc refused mallopt; large tensors keep their own mappings")
    _applied = ok
    return ok
