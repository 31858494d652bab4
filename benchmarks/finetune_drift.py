"""How far fine-tuned weights move a model's output brightness on the photos they were
tuned on (the fine-tuning table in README.md, "Fine-tuning stays near its start").

    python benchmarks/finetune_drift.py PHOTOS RUN/model.safetensors [MORE.safetensors ...]
        [--model semi-drdnet-fast] [--count 20]

For the first ``--count`` photos of PHOTOS (sorted by name), prints the base model's mean
BT.601 Y against the input, then for each weights file the mean Y of its output against
the base model's output: the mean over the photos, and the smallest and largest. All in
fp32 (``precision="fp32"``), so the figures are the networks', not an engine's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from derain_cli import Derainer
from derain_cli.pairs import list_images


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.601 Y in levels (16-235), as deraining papers score."""
    a = rgb.astype(np.float64)
    return 16 + (65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2]) / 255


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("photos", type=Path)
    ap.add_argument("weights", nargs="+", type=Path)
    ap.add_argument("--model", default="semi-drdnet-fast", help="the base model")
    ap.add_argument("--count", type=int, default=20)
    args = ap.parse_args()
    base = Derainer(model=args.model, precision="fp32")
    tuned = [Derainer(weights=w, precision="fp32") for w in args.weights]
    rows = []
    for path in list_images(args.photos)[:args.count]:
        x = np.asarray(Image.open(path).convert("RGB"))
        yb = luma(base.derain(x)).mean()
        rows.append([yb - luma(x).mean()] + [luma(d.derain(x)).mean() - yb for d in tuned])
    r = np.array(rows)
    print(f"{len(r)} photos of {args.photos}; base {args.model}: mean Y {r[:, 0].mean():+.2f} "
          "levels against the input")
    for i, w in enumerate(args.weights, start=1):
        print(f"{w}: mean Y against the base {r[:, i].mean():+.2f} "
              f"(min {r[:, i].min():+.2f}, max {r[:, i].max():+.2f})")


if __name__ == "__main__":
    main()
