"""Where a tiled int8 run spends its time: the statistics pass against the final pass.

    python benchmarks/tile_passes.py PHOTO.jpg GRAPH.int8.onnx [GRAPH2.int8.onnx ...]
        [--tile 512] [--overlap 48]

Why: Semi-DRDNet's tiler runs the rain network once more over the whole image to get
its squeeze-and-excitation means (``derain_cli.tiling``); this shows what that costs
next to the final pass, per graph (a forward graph with its ``.stats.onnx`` beside it),
on one photo, with 2 ONNX Runtime threads. Decoding, start-up and encoding are not
included (``benchmarks/photo_e2e.py`` times the whole command).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image

from derain_cli import tiling
from derain_cli.onnx_backend import OnnxRunner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photo")
    ap.add_argument("graphs", nargs="+")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    img = np.asarray(Image.open(args.photo).convert("RGB"), dtype=np.float32) / 255
    for graph in args.graphs:
        runner = OnnxRunner(graph, threads=args.threads)
        spent = {"final": 0.0, "stats": 0.0}

        def timed(fn, key, spent=spent):
            def wrapper(*a):
                t = time.perf_counter()
                out = fn(*a)
                spent[key] += time.perf_counter() - t
                return out
            return wrapper

        runner.forward = timed(runner.forward, "final")
        runner.stat_sums = timed(runner.stat_sums, "stats")
        t = time.perf_counter()
        tiling.run_tiled(img, runner, args.tile, args.overlap, hwc=True)
        total = time.perf_counter() - t
        print(f"{graph}: {total:.1f} s in all; final pass {spent['final']:.1f} s, statistics "
              f"pass {spent['stats']:.1f} s, the rest (crops, blending) "
              f"{total - spent['final'] - spent['stats']:.1f} s", flush=True)


if __name__ == "__main__":
    main()
