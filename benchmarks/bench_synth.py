"""Time ``synthesize`` on a 481x321 image (the BSDS / Rain100 size), per preset.

Why: rain is synthesized on the fly in the training data loader, so it must stay far
cheaper than a training step; the budget is 50 ms per image on one CPU core. Prints the
median (and 90th percentile) of ``--runs`` calls per preset and exits 1 if any median
exceeds the budget. No data needed: the background is a fixed random-but-smooth image.

Usage (from the repository root)::

    python benchmarks/bench_synth.py [--runs 50] [--threads 1] [--budget-ms 50]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

from derain_cli.synth import PRESETS, synthesize  # noqa: E402


def _background(h: int = 321, w: int = 481) -> np.ndarray:
    rng = np.random.default_rng(0)
    small = rng.uniform(0.0, 1.0, (h // 8, w // 8, 3)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0.0, 1.0)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--budget-ms", type=float, default=50.0)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="OpenCV threads (default 1: a data-loader worker gets one core)",
    )
    args = ap.parse_args(argv)
    cv2.setNumThreads(args.threads)

    clean = _background()
    h, w = clean.shape[:2]
    print(f"synthesize() on {w}x{h}, {args.runs} runs, cv2 threads={args.threads}")
    worst = 0.0
    for preset in [*PRESETS, "mixed"]:
        for i in range(3):  # warm-up: first calls pay for allocations and caches
            synthesize(clean, preset, seed=i)
        times = []
        for i in range(args.runs):
            t0 = time.perf_counter()
            synthesize(clean, preset, seed=i)
            times.append((time.perf_counter() - t0) * 1e3)
        med, p90 = float(np.median(times)), float(np.percentile(times, 90))
        worst = max(worst, med)
        print(f"  {preset:8s} median {med:6.2f} ms   p90 {p90:6.2f} ms")
    ok = worst <= args.budget_ms
    verdict = "OK" if ok else "TOO SLOW"
    print(f"worst median {worst:.2f} ms vs budget {args.budget_ms:.0f} ms: {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
