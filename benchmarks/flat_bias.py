"""What a model does to featureless images: flat colours of several sizes in, mean colour out.

    python benchmarks/flat_bias.py [--model semi-drdnet-lite | --weights FILE]
        [--small-side 256]

A rain-free flat image should come back unchanged. Prints, per size and input colour, the
mean output colour and its largest channel shift (8-bit levels), which shows biases the
evaluation sets hide (a brightness pull learned from hazy synthetic rain, border effects on
tiny images). The network sees each image as it is (``Derainer.small_side = 0``), as
every figure quoted from this script before 2026-12-05 was measured; ``--small-side 256``
shows what ``derain`` does, which mirrors images under 256 px out to that size first
(``tiling.pad_small``).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

COLOURS = [(128, 128, 128), (230, 230, 230), (40, 40, 40), (200, 60, 40), (60, 120, 200)]
SIZES = [1, 4, 16, 64, 256]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--small-side", type=int, default=0,
                    help="mirror sides shorter than this out to it first, as derain does "
                         "(256); default 0: the image as it is")
    args = ap.parse_args()
    from derain_cli import Derainer

    d = Derainer(model=args.model, weights=args.weights, device="cpu", precision="fp32",
                 backend="torch")
    d.small_side = args.small_side
    print(f"{'size':>5}  {'input':>15}  {'mean output':>21}  {'max shift':>9}")
    for side in SIZES:
        for col in COLOURS:
            img = np.zeros((side, side, 3), np.uint8) + np.array(col, np.uint8)
            out = d.derain(img).reshape(-1, 3).astype(np.float64).mean(0)
            shift = np.abs(out - np.array(col)).max()
            print(f"{side:>5}  {str(col):>15}  {np.array2string(out, precision=1):>21}  "
                  f"{shift:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
