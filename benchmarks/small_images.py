"""Small images with and without their mirrored context (``tiling.pad_small``).

    python benchmarks/small_images.py --data ../shared/data/rain100l --model rdmc-lite \
        [--side 16 --side 64 --side 128 --side 192] [--limit 30]

For each side, centre crops of that size from the first ``--limit`` rainy/clean pairs go
through ``Derainer`` (PyTorch, fp32, CPU) as they are (``small_side = 0``) and mirrored out
to ``tiling.SMALL_SIDE`` (the default); prints the mean Y-PSNR of each and the mean Y
difference output - clean in 8-bit levels (negative: too dark). Why: the networks learned
on crops inside larger photos; a thumbnail-sized image alone is a different input, and
eval's sets (320 px and more) never show what happens to it.

``--border 16 --border 64``: whole images instead, as they are and with that many pixels
mirrored on every side (cut off again): whether large images would gain from the same
context (they did not).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

from derain_cli import data as D  # noqa: E402
from derain_cli import metrics, tiling  # noqa: E402
from derain_cli.enhancer import Derainer  # noqa: E402
from derain_cli.pairs import find_pairs  # noqa: E402


def centre(a: np.ndarray, side: int) -> np.ndarray:
    """The ``side`` x ``side`` centre of ``a`` (the whole of a shorter axis)."""
    h, w = a.shape[:2]
    y, x = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return a[y:y + side, x:x + side]


def measure(derainer: Derainer, pairs: list, side: int, small_side: int) -> tuple[float, float]:
    """Mean Y-PSNR (dB) and mean Y bias (levels) of ``side`` px centre crops."""
    derainer.small_side = small_side
    psnr, bias = [], []
    for p in pairs:
        rainy, clean = centre(D.load_rgb_u8(p.rainy), side), centre(D.load_rgb_u8(p.clean), side)
        out = metrics.to_uint8(derainer.derain_array(rainy))
        psnr.append(metrics.psnr_y(out, clean))
        bias.append(float((metrics.rgb_to_y(out).astype(np.float64)
                           - metrics.rgb_to_y(clean)).mean()))
    return float(np.mean(psnr)), float(np.mean(bias))


def measure_border(derainer: Derainer, pairs: list, border: int) -> float:
    """Mean Y-PSNR (dB) of whole images run with ``border`` px mirrored on every side."""
    derainer.small_side = 0
    psnr = []
    for p in pairs:
        rainy, clean = D.load_rgb_u8(p.rainy), D.load_rgb_u8(p.clean)
        b = border
        padded = np.pad(rainy, ((b, b), (b, b), (0, 0)), mode="symmetric")
        out = derainer.derain_array(padded)[b:b + rainy.shape[0], b:b + rainy.shape[1]]
        psnr.append(metrics.psnr_y(metrics.to_uint8(out), clean))
    return float(np.mean(psnr))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="rainy/clean pairs folder")
    ap.add_argument("--model", default=None, help="a bundled model (default: the default)")
    ap.add_argument("--weights", default=None, help="or a weights file")
    ap.add_argument("--side", type=int, action="append", default=None,
                    help="crop side in px, repeatable (default: 16, 64, 128, 192)")
    ap.add_argument("--border", type=int, action="append", default=None,
                    help="whole images with this many px mirrored around them instead, "
                         "repeatable")
    ap.add_argument("--limit", type=int, default=30, help="first N pairs (default 30)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    d = Derainer(model=args.model, weights=args.weights, device="cpu", precision="fp32",
                 backend="torch", threads=args.threads, quiet=True)
    pairs = find_pairs(args.data)[:args.limit]
    if args.border:
        print(f"{d.model_name} on {args.data.name}, first {len(pairs)} pairs, whole images; "
              "Y-PSNR (dB)")
        base = measure_border(d, pairs, 0)
        print(f"as they are: {base:.3f}")
        for b in args.border:
            got = measure_border(d, pairs, b)
            print(f"{b} px mirrored around: {got:.3f} ({got - base:+.3f})", flush=True)
        return 0
    print(f"{d.model_name} on {args.data.name}, first {len(pairs)} pairs, centre crops; "
          f"Y-PSNR (dB) / mean Y bias (levels)")
    print(f"| side | as it is | mirrored out to {tiling.SMALL_SIDE} px | gain |")
    print("|---:|---:|---:|---:|")
    for side in args.side or [16, 64, 128, 192]:
        p0, b0 = measure(d, pairs, side, 0)
        p1, b1 = measure(d, pairs, side, tiling.SMALL_SIDE)
        print(f"| {side} | {p0:.2f} / {b0:+.2f} | {p1:.2f} / {b1:+.2f} | {p1 - p0:+.2f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
