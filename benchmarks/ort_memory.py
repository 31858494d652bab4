"""ONNX Runtime on the CPU: time and peak memory per tile size, with and without its arena.

    python benchmarks/ort_memory.py [--model semi-drdnet-lite] [--mp 3] [--threads 2]

Each configuration runs in a fresh process (so peak RSS is its own) that derains one
synthetic photo of ``--mp`` megapixels with ``Derainer(backend="onnx", tile=T)`` and ONNX
Runtime's CPU memory arena on or off. The first configuration also exports the ONNX graph
into the cache, so every timed run starts from a cached graph. Prints seconds, seconds per
megapixel and peak RSS; the ratios between rows are what matters (absolute CPU times depend
on the machine and its load).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

CONFIGS = [(1024, False), (1024, True), (512, False), (512, True), (768, True)]


def child(model: str, mp: float, tile: int, arena: bool, threads: int) -> dict:
    import numpy as np
    import torch

    from derain_cli.enhancer import Derainer
    from derain_cli.onnx_backend import OnnxRunner

    torch.set_num_threads(threads)
    h = int(round((mp * 1e6 * 3 / 4) ** 0.5))
    w = int(round(mp * 1e6 / h))
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3)).astype(np.float32)
    img = np.kron(small, np.ones((16, 16, 1), np.float32))[:h, :w]  # blocky "photo"
    img = (img + rng.normal(0, 8, img.shape)).clip(0, 255).astype(np.uint8)
    d = Derainer(model=model, device="cpu", precision="fp32", backend="onnx", tile=tile,
                 threads=threads)
    d.runner = OnnxRunner(d.runner.paths, device="cpu", threads=threads, cpu_arena=arena)
    t0 = time.perf_counter()
    d.derain(img)
    secs = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"tile": tile, "arena": arena, "mp": h * w / 1e6, "seconds": secs,
            "s_per_mp": secs / (h * w / 1e6), "peak_rss_mb": rss_mb}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="semi-drdnet-lite")
    ap.add_argument("--mp", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", nargs=2, metavar=("TILE", "ARENA"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        res = child(args.model, args.mp, int(args.child[0]), args.child[1] == "1", args.threads)
        print(json.dumps(res))
        return 0
    print(f"{args.model}, {args.mp} MP, {args.threads} threads, ONNX Runtime CPU")
    print(f"{'tile':>5} {'arena':>6} {'seconds':>8} {'s/MP':>6} {'peak RSS':>9}")
    for tile, arena in CONFIGS:
        out = subprocess.run(
            [sys.executable, __file__, "--model", args.model, "--mp", str(args.mp),
             "--threads", str(args.threads), "--child", str(tile), str(int(arena))],
            check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"{tile:>5} {'on' if arena else 'off':>6} {r['seconds']:>8.1f} "
              f"{r['s_per_mp']:>6.2f} {r['peak_rss_mb']:>7.0f} MB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
