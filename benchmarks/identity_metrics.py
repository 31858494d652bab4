"""Score the identity "model" (rainy input vs clean target) on the evaluation sets.

The figures must match the ones in ``../shared/data/README.md`` (Y-channel PSNR and
Gaussian-window SSIM, MATLAB ``rgb2ycbcr`` convention): if they do not, ``derain_cli.metrics``
computes the metrics differently from the literature. Exit status 1 on a mismatch; when
the data folder is absent the script says so and exits 0.

    python benchmarks/identity_metrics.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from derain_cli.metrics import psnr_rgb, psnr_y, ssim_y
from derain_cli.pairs import find_pairs

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Published in ../shared/data/README.md: (Y-PSNR dB, Y-SSIM), to the printed digits.
EXPECTED = {
    "rain100l": (26.90, 0.8384),
    "heavy-small": (14.49, 0.3877),
    "sirr-val": (22.29, 0.8726),
}


def _load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def score(folder: Path) -> tuple[int, float, float, float]:
    """Number of pairs and mean Y-PSNR, Y-SSIM and RGB-PSNR of rainy vs clean."""
    rows = []
    for pair in find_pairs(folder):
        rainy, clean = _load(pair.rainy), _load(pair.clean)
        rows.append((psnr_y(rainy, clean), ssim_y(rainy, clean), psnr_rgb(rainy, clean)))
    y_psnr, y_ssim, rgb_psnr = np.mean(np.array(rows, dtype=np.float64), axis=0)
    return len(rows), float(y_psnr), float(y_ssim), float(rgb_psnr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="data folder")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"SKIPPED: data folder {args.data} not found (it is not part of the repository)")
        return 0

    print(f"identity model (rainy input as the prediction), data: {args.data}")
    print(f"{'set':<12} {'pairs':>5} {'Y-PSNR':>8} {'Y-SSIM':>8} {'RGB-PSNR':>9}  expected")
    failed = False
    for name, (want_psnr, want_ssim) in EXPECTED.items():
        folder = args.data / name
        if not folder.is_dir():
            print(f"{name:<12} SKIPPED: {folder} not found")
            continue
        t0 = time.perf_counter()
        n, y_psnr, y_ssim, rgb_psnr = score(folder)
        ok = f"{y_psnr:.2f}" == f"{want_psnr:.2f}" and f"{y_ssim:.4f}" == f"{want_ssim:.4f}"
        failed |= not ok
        print(
            f"{name:<12} {n:>5} {y_psnr:>8.2f} {y_ssim:>8.4f} {rgb_psnr:>9.2f}  "
            f"{want_psnr:.2f} / {want_ssim:.4f} {'OK' if ok else 'MISMATCH'}"
            f"  ({y_psnr:.5f} / {y_ssim:.6f}, {time.perf_counter() - t0:.1f} s)"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
