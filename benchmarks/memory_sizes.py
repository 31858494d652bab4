"""Memory of one Derainer over photos of many sizes: does the process keep growing?

    python benchmarks/memory_sizes.py [--precision bf16] [--backend torch] [--n 20]
        [--passes 2] [--no-mem-pattern] [--threads 1]

Derains ``--n`` random photos of distinct sizes (``--lo`` to ``--hi`` px a side, one seed)
in one process, ``--passes`` times over the same sizes, and prints after each pass the
resident memory (RSS), its peak, glibc's heap (in use / free but kept: ``mallinfo2``) and
the pass's seconds. A process that only reuses what it has plateaus after the first pass;
one that fragments keeps growing.

At the end it calls ``cpu_memory.release_freed_memory()`` (what a service may call between
jobs) and prints RSS again. ``--no-mem-pattern`` turns off ONNX Runtime's per-shape memory
plans in every session (the int8 engine). Run each configuration in its own process (this
script is one): glibc's settings and oneDNN's caches are process-wide. Timings are only
comparable within one machine and one load.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _heap_mb() -> dict[str, float]:
    """glibc's heap: in use, free but kept (NaN where glibc cannot say)."""
    from derain_cli.cpu_memory import heap_bytes

    heap = heap_bytes()
    if heap is None:
        return {"heap_in_use_mb": float("nan"), "heap_free_mb": float("nan")}
    return {"heap_in_use_mb": round(heap[0] / 2**20), "heap_free_mb": round(heap[1] / 2**20)}


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024)
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="default: derain's default model")
    ap.add_argument("--backend", default="torch", help="torch or onnx")
    ap.add_argument("--precision", default="bf16",
                    help="fp32, bf16 (needs a CPU with bf16 instructions) or int8")
    ap.add_argument("--n", type=int, default=20, help="distinct sizes")
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--lo", type=int, default=200)
    ap.add_argument("--hi", type=int, default=900)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--every", type=int, default=0,
                    help="also print RSS and the heap after every N photos of the first "
                         "pass (growth against the number of sizes seen)")
    ap.add_argument("--no-mem-pattern", action="store_true",
                    help="ONNX Runtime sessions without per-shape memory plans")
    a = ap.parse_args()

    from derain_cli import Derainer, cpu_memory, onnx_backend
    from derain_cli.engine_choice import cpu_has_bf16

    if a.precision == "bf16" and a.backend == "torch" and not cpu_has_bf16():
        ap.error("this CPU has no bf16 instructions: give --precision fp32 (the README's "
                 "figures are bf16's) or --backend onnx --precision int8")  # (a traceback
        # on AVX2 CPUs: an audit)

    if a.no_mem_pattern:
        plain = onnx_backend.session_options

        def without_patterns(*args, **kw):  # type: ignore[no-untyped-def]
            opts = plain(*args, **kw)
            opts.enable_mem_pattern = False
            return opts

        onnx_backend.session_options = without_patterns
    d = Derainer(model=a.model, device="cpu", backend=a.backend, precision=a.precision,
                 threads=a.threads)
    sizes = np.random.default_rng(a.seed).integers(a.lo, a.hi + 1, size=(a.n, 2))
    pixels = np.random.default_rng(1)
    print(f"{d!r}; {a.n} sizes of {a.lo}-{a.hi} px; start RSS {_status_mb('VmRSS')} MB",
          flush=True)
    passes = []
    for p in range(a.passes):
        seconds, megapixels = 0.0, 0.0
        for i, (h, w) in enumerate(sizes, 1):
            x = pixels.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8)
            t = time.perf_counter()
            d.derain(x)
            seconds += time.perf_counter() - t
            megapixels += h * w / 1e6
            if a.every and p == 0 and i % a.every == 0 and i < len(sizes):
                print(json.dumps({"sizes_seen": i, "rss_mb": _status_mb("VmRSS"),
                                  **_heap_mb()}), flush=True)
        row = {"pass": p + 1, "rss_mb": _status_mb("VmRSS"), "peak_rss_mb": _status_mb("VmHWM"),
               **_heap_mb(), "seconds": round(seconds, 2),
               "s_per_mp": round(seconds / megapixels, 3)}
        passes.append(row)
        print(json.dumps(row), flush=True)
    released = cpu_memory.release_freed_memory()
    after = {"released": released, "rss_mb": _status_mb("VmRSS"), **_heap_mb()}
    print("after release_freed_memory(): " + json.dumps(after))
    print("summary " + json.dumps({"derainer": repr(d), "no_mem_pattern": a.no_mem_pattern,
                                   "passes": passes, "after_release": after}))


if __name__ == "__main__":
    main()
