"""Make the rainy example photos in ``examples/`` from scikit-image's sample images.

Why: the README, the CLI's help and quick manual checks need rainy photos that we may
redistribute. These derive from scikit-image's bundled samples (public domain / CC0,
see ``examples/README.md``) with rain from ``derain_cli.synth`` under fixed seeds, so
running this again reproduces them.

Usage (from the repository root; needs scikit-image, a dev dependency)::

    python examples/make_examples.py [--out examples]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

from derain_cli.synth import synthesize  # noqa: E402

# (output stem, scikit-image loader, rain preset, seed)
EXAMPLES = [
    ("astronaut", data.astronaut, "light", 11),
    ("coffee", data.coffee, "medium", 12),
    ("chelsea", data.chelsea, "heavy", 13),
    ("rocket", data.rocket, "mixed", 14),
]
QUALITY = 92
MAX_BYTES = 300 * 1024


def main(argv: list[str] | None = None) -> int:
    """Write ``<stem>_rain.jpg`` for every example; returns the process exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    status = 0
    for stem, load, preset, seed in EXAMPLES:
        rainy, _ = synthesize(load(), preset, seed=seed)
        img = Image.fromarray(np.rint(rainy * 255.0).astype(np.uint8))
        path = args.out / f"{stem}_rain.jpg"
        img.save(path, quality=QUALITY, optimize=True)
        size = path.stat().st_size
        flag = "" if size <= MAX_BYTES else "  (over the 300 KB limit!)"
        status |= int(size > MAX_BYTES)
        print(
            f"{path}  {img.width}x{img.height}  {preset:6s} seed {seed}  {size / 1024:.0f} KB{flag}"
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
