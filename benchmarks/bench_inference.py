"""Inference benchmark: s/MP, GFLOP/s vs this machine's conv peak, bf16 quality, peak RSS.

A thin wrapper over ``derain_cli.bench`` (the same as ``derain bench``); see that module
for what is measured and how. Run it on a quiet machine; the defaults (every registered
model, a 1 MP image, default tiling, every variant) take a few minutes on a 2-core CPU,
``--rss`` (24 MP through ``Derainer``) several more.

Usage (from the repository root)::

    python benchmarks/bench_inference.py [--megapixels 1] [-m semi-drdnet-lite ...]
        [--variants fp32,channels_last,bf16,onnx] [--repeats 3] [--threads N]
        [--rss] [--json results.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

import typer  # noqa: E402

from derain_cli.commands_tools import bench_cmd  # noqa: E402

if __name__ == "__main__":
    typer.run(bench_cmd)
