"""Where a model's remaining error lies: fine streaks left behind, or a veil of brightness.

    python benchmarks/error_split.py [-m NAME | --weights FILE] [--sets rain100l,sirr-val]

For each evaluation set, the mean squared error on BT.601 Y (8-bit levels, the derained
output rounded to 8 bits as ``derain eval`` does), the share of it that survives a Gaussian
low-pass (sigma 8 px: veils, haze and brightness shifts rather than streaks), and the
per-image median Y offset (output minus clean; positive: brighter than the clean image),
printed beside the same figures for the rainy input. Why: PSNR alone does not say whether a
model should learn to remove more streaks or to lift a veil, and the two call for
different training rain. Uses ../shared/data; prints a note and exits 0 without it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

SETS = ("rain100l", "heavy-small", "sirr-val")


def split(err: np.ndarray, sigma: float) -> tuple[float, float, float]:
    """(MSE, MSE of the low-passed error, median offset) of one Y error image."""
    low = cv2.GaussianBlur(err, (0, 0), sigma)
    return float((err**2).mean()), float((low**2).mean()), float(np.median(err))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=None, help="registry name (default model)")
    ap.add_argument("--weights", default=None, help="a weights file instead")
    ap.add_argument("--sets", default=",".join(SETS), help="comma list of sets under --data")
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--sigma", type=float, default=8.0, help="low-pass sigma in px")
    ap.add_argument("--per-image", action="store_true", help="print every image's offsets")
    args = ap.parse_args()
    data = Path(args.data)
    if not data.is_dir():
        print(f"{data} not found: nothing to measure (the evaluation sets live there)")
        return 0
    from derain_cli import Derainer
    from derain_cli.data import load_rgb_u8
    from derain_cli.metrics import rgb_to_y, to_uint8
    from derain_cli.pairs import find_pairs

    d = Derainer(model=args.model, weights=args.weights, device="cpu", precision="fp32")
    print(f"{d.model_name} ({d.backend}/{d.precision}); low-pass sigma {args.sigma:g} px")
    print(f"{'set':<12} {'':>6} {'MSE':>8} {'low-pass share':>15} {'median offset':>14} "
          f"{'|offset|':>9}")
    for name in args.sets.split(","):
        rows: dict[str, list[tuple[float, float, float]]] = {"input": [], "output": []}
        for p in find_pairs(data / name):
            rainy, clean = load_rgb_u8(p.rainy), load_rgb_u8(p.clean)
            out = to_uint8(d.derain_array(rainy))
            yc = rgb_to_y(clean)
            rows["input"].append(split(rgb_to_y(rainy) - yc, args.sigma))
            rows["output"].append(split(rgb_to_y(out) - yc, args.sigma))
        for kind, r in rows.items():
            a = np.array(r)
            print(f"{name:<12} {kind:>6} {a[:, 0].mean():>8.1f} "
                  f"{a[:, 1].sum() / a[:, 0].sum():>15.2f} {a[:, 2].mean():>+14.2f} "
                  f"{np.abs(a[:, 2]).mean():>9.2f}")
            if args.per_image:
                print(f"{'':<12} {kind:>6} offsets: {np.round(a[:, 2]).astype(int).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
