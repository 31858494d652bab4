"""Brightness bias and PSNR of a model's output by input size: centre crops of rainy/clean pairs.

    python benchmarks/crop_bias.py --data ../shared/data/heavy-small \
        --weights weights/rdmc-lite.safetensors --weights runs/x/model.safetensors

For each weights file and crop side (0: the whole image), over the first ``--limit`` pairs:
the mean Y difference output - clean in 8-bit levels (negative: too dark), the Y-PSNR, and
the rainy input's own mean Y excess over the clean image. Why: a network trained on small
crops can behave differently on whole photos (RDMC's deepest level sees 4 x 4 features of
a 64 px crop), and a loss that hardly charges brightness (RDMC's 0.1 MSE + (1 - SSIM)) lets
a uniform offset grow; eval's PSNR shows the damage, this shows its kind. The network runs
untiled in fp32 on the CPU, as ``derain train`` validates.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

import numpy as np  # noqa: E402
import torch  # noqa: E402

from derain_cli import data as D  # noqa: E402
from derain_cli import metrics  # noqa: E402
from derain_cli.pairs import find_pairs  # noqa: E402
from derain_cli.weights import model_from_file  # noqa: E402


def _centre(a: np.ndarray, side: int) -> np.ndarray:
    if not side:
        return a
    h, w = a.shape[:2]
    s_h, s_w = min(side, h), min(side, w)
    y, x = (h - s_h) // 2, (w - s_w) // 2
    return a[y:y + s_h, x:x + s_w]


def measure(weights: str, data: Path, crops: list[int], limit: int) -> list[dict[str, float]]:
    """One row per crop side: mean bias (levels), PSNR (dB), rain excess (levels)."""
    net = model_from_file(weights).float().eval()
    pairs = find_pairs(data)[:limit]
    rows = []
    for side in crops:
        bias, psnr, excess = [], [], []
        for p in pairs:
            rainy = _centre(D.load_rgb_u8(p.rainy), side)
            clean = _centre(D.load_rgb_u8(p.clean), side)
            with torch.no_grad():
                out = net(D.to_tensor(rainy)[None]).float().clamp(0, 1)[0]
            out = out.permute(1, 2, 0).numpy()
            y_clean = metrics.rgb_to_y(clean)
            bias.append(float((metrics.rgb_to_y(out) - y_clean).mean()))
            excess.append(float((metrics.rgb_to_y(rainy) - y_clean).mean()))
            psnr.append(metrics.psnr_y(out, clean))
        rows.append({"crop": side, "bias": float(np.mean(bias)), "psnr": float(np.mean(psnr)),
                     "rain_excess": float(np.mean(excess)), "count": len(pairs)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="rainy/clean pairs folder")
    ap.add_argument("--weights", action="append", required=True, help="weights file (repeat)")
    ap.add_argument("--crop", type=int, action="append", default=None,
                    help="centre-crop side in px, repeatable; 0: whole image "
                         "(default: 64, 128, 256, 0)")
    ap.add_argument("--limit", type=int, default=8, help="first N pairs (default 8)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    crops = args.crop or [64, 128, 256, 0]
    print(f"{args.data.name}, first {args.limit} pairs; bias and rain excess: mean Y, "
          "8-bit levels")
    print("| weights | crop | bias | PSNR (dB) | rain excess |")
    print("|---|---:|---:|---:|---:|")
    for w in args.weights:
        for r in measure(w, args.data, crops, args.limit):
            print(f"| {w} | {r['crop'] or 'whole'} | {r['bias']:+.2f} | {r['psnr']:.2f} | "
                  f"{r['rain_excess']:+.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
