"""Tiled vs untiled inference agreement (PSNR) for every registered model.

The issue's criterion: on a 1024x1024 image, 256 px tiles with the default overlap must
agree with one untiled pass at >= 45 dB. The image (``derain_cli.bench.test_scene``) has
very different regions (a dark band, a flat bright top, the astronaut when scikit-image
is installed, else a procedural scene) plus synthetic rain, so per-tile statistics differ
from the whole image's. Weights: the published ones when the manifest has the model,
else a random initialisation with BatchNorm statistics like a trained network's.
For Semi-DRDNet the table also shows naive tiling (per-tile SE means, no statistics
passes), to show what the whole-image statistics buy.

The paper-size models take minutes each at 1024 px on a small CPU; for a quick check::

    python benchmarks/tiling_agreement.py --size 256 --tile 64

Exit status 1 when a model falls below ``--min-psnr``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

import numpy as np  # noqa: E402
import torch  # noqa: E402

from derain_cli import tiling  # noqa: E402
from derain_cli.bench import make_variant_runner, model_for_bench, psnr, test_scene  # noqa: E402
from derain_cli.enhancer import DEFAULT_OVERLAP, TorchRunner, default_overlap  # noqa: E402
from derain_cli.models import MODELS  # noqa: E402

#: --backend -> ``bench.make_variant_runner`` variant (torch: what the torch backend runs).
VARIANTS = {"torch": "channels_last", "onnx": "onnx", "int8": "int8"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024, help="image side (default 1024)")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--overlap", type=int, default=None,
                    help="default: each model's own (enhancer.default_overlap: at most "
                         f"{DEFAULT_OVERLAP}, 96 for RDMC)")
    ap.add_argument("--stats-passes", type=int, default=1)
    ap.add_argument("--stats-overlap", type=int, default=None,
                    help="overlap of the statistics pass's tiles (default: half the overlap)")
    ap.add_argument("--stats-megapixels", type=float, default=tiling.STATS_MEGAPIXELS,
                    help="statistics sample on large images (default "
                         f"{tiling.STATS_MEGAPIXELS:g}; 0: every tile); a 1024 px image is "
                         "below it, so set it lower to measure sampling")
    ap.add_argument("-m", "--model", action="append", choices=list(MODELS),
                    help="model(s) to check (default: all registered)")
    ap.add_argument("--backend", choices=["torch", "onnx", "int8"], default="torch",
                    help="runner for the tiled pass; the reference is untiled torch fp32, "
                         "except for int8: untiled int8 (the shipped graph; int8 differs "
                         "from fp32 by itself, tiling is what is measured)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--min-psnr", type=float, default=45.0)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    img = test_scene(args.size, args.size)
    overlap_s = "each model's default" if args.overlap is None else args.overlap
    print(f"{args.size}x{args.size} image, tile {args.tile}, overlap {overlap_s}, "
          f"{args.stats_passes} statistics passes (sample {args.stats_megapixels:g} MP), "
          f"tiled pass on {args.backend}, "
          f"{torch.get_num_threads()} threads\n")
    print("| model | weights | overlap | tile runs | tiled vs untiled (dB) | naive tiles (dB) "
          "| time s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    rows, ok, skipped = [], True, 0
    for name in args.model or list(MODELS):
        t0 = time.perf_counter()
        net, label = model_for_bench(name)
        overlap = default_overlap(net) if args.overlap is None else args.overlap
        runner = make_variant_runner(net, VARIANTS[args.backend], torch.device("cpu"), name=name)
        if isinstance(runner, str):  # e.g. no int8 graph ships for this model
            print(f"| {name} | {label} | {runner} |")
            skipped += 1
            continue
        ref = runner if args.backend == "int8" else TorchRunner(net, torch.device("cpu"), "fp32")
        full = np.clip(tiling.run_tiled(img, ref, 0, 0), 0, 1)
        n_tiles = 0

        def count(done: int, total: int) -> None:
            # called once per tile (done/total count pixels of work since 2026-12-03, so
            # "total" is no tile count)
            nonlocal n_tiles
            n_tiles += 1

        tiled = tiling.run_tiled(img, runner, args.tile, overlap,
                                 stats_passes=args.stats_passes,
                                 stats_overlap=args.stats_overlap,
                                 stats_megapixels=args.stats_megapixels, on_tile=count)
        value = psnr(tiled, full)
        naive = None
        if net.global_stats_shape is not None:
            naive = psnr(tiling.run_tiled(img, runner, args.tile, overlap,
                                          stats_passes=0), full)
        seconds = time.perf_counter() - t0
        ok &= value >= args.min_psnr
        rows.append({"model": name, "weights": label, "overlap": overlap, "calls": n_tiles,
                     "psnr": value,
                     "naive_psnr": naive, "seconds": seconds})
        naive_s = "-" if naive is None else f"{naive:.1f}"
        print(f"| {name} | {label} | {overlap} | {n_tiles} | {value:.1f} | {naive_s} | "
              f"{seconds:.0f} |",
              flush=True)
    if not rows:  # every model skipped: "PASS" of nothing measured (an audit)
        print("\nFAIL: no model measured (every one skipped above)")
        return 1
    verdict = ("PASS: every model measured" if ok else "FAIL: not every model") + (
        f" ({skipped} skipped above)" if skipped else "")
    print(f"\n{verdict} >= {args.min_psnr} dB")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
