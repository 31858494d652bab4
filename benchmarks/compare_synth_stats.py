"""Compare the statistics of synthesized rain with the evaluation sets.

Why: a model trained on our synthetic rain is evaluated on Rain100L, the JORDER-E heavy
pairs and SIRR; if the synthetic rain is much lighter, darker, sparser or differently
oriented than theirs, the model learns the wrong thing. This prints one row per
evaluation set and one per synthesizer preset (applied to ``clean-bsds`` photos):

- PSNR of rainy vs clean on 8-bit RGB, and on the BT.601 Y channel (the convention of
  the deraining literature and of ``../shared/data/README.md``), mean over images;
- the rain layer intensity, ``rainy - clean`` on luminance (BT.601 luma, [0, 1]),
  positive part: mean, and the 50/90/99th percentiles over all pixels of the set;
- coverage: fraction of pixels whose rain intensity exceeds 0.02;
- dark: fraction of pixels that rain made darker by more than 0.02 (haze over
  highlights);
- colour: how far the rain layer is from neutral grey, where it is not clipped (rain
  luminance above 0.05, rainy pixel below 250 in every channel): the mean absolute
  deviation of its channels from their mean, over the mean rain; 0 for additive grey
  rain, about ``1 - clean`` spread for screen-blended rain;
- the dominant streak direction per image (structure tensor, degrees from vertical,
  positive towards bottom right): axial mean and standard deviation over images.

Usage (from the repository root)::

    python benchmarks/compare_synth_stats.py [--n-images 30] [--write-md PATH]

The data live outside the repository (``../shared/data``); when they are absent the
script says so and exits 0.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

from derain_cli.synth import dominant_angle, synthesize  # noqa: E402

EVAL_SETS = ("rain100l", "heavy-small", "sirr-val")
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
BINS = 1000  # histogram resolution for the pooled percentiles (0.001 luminance)
COVER = 0.02
NOTES = "## Notes"


@dataclass
class Acc:
    """Accumulates per-image statistics of one set."""

    name: str
    psnr_rgb: list[float] = field(default_factory=list)
    psnr_y: list[float] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    cover: list[float] = field(default_factory=list)
    dark: list[float] = field(default_factory=list)
    angle: list[float] = field(default_factory=list)
    colour: list[float] = field(default_factory=list)
    hist: np.ndarray = field(default_factory=lambda: np.zeros(BINS + 1, np.int64))

    def add(self, rainy: np.ndarray, clean: np.ndarray) -> None:
        """Add one pair of 8-bit RGB images."""
        diff = rainy.astype(np.float64) - clean.astype(np.float64)
        self.psnr_rgb.append(_psnr(float(np.mean(diff**2))))
        dy = _matlab_y(rainy) - _matlab_y(clean)
        self.psnr_y.append(_psnr(float(np.mean(dy**2))))
        d = (rainy.astype(np.float32) - clean.astype(np.float32)) / 255.0 @ LUMA
        pos = np.maximum(d, 0.0)
        self.mean.append(float(pos.mean()))
        self.cover.append(float(np.mean(pos > COVER)))
        self.dark.append(float(np.mean(d < -COVER)))
        self.angle.append(dominant_angle(pos))
        rgb = (rainy.astype(np.float32) - clean.astype(np.float32)) / 255.0
        rain = (d > 0.05) & (rainy.max(axis=2) < 250)
        if rain.any():
            r = rgb[rain]
            grey = r.mean(axis=1, keepdims=True)
            self.colour.append(float(np.abs(r - grey).mean() / max(float(grey.mean()), 1e-6)))
        q = np.minimum((pos * BINS).astype(np.intp), BINS).ravel()
        self.hist += np.bincount(q, minlength=BINS + 1)

    def row(self) -> list[str]:
        """One table row: means over images, percentiles over all pooled pixels."""
        cdf = np.cumsum(self.hist) / max(int(self.hist.sum()), 1)
        pct = [np.searchsorted(cdf, p / 100.0) / BINS for p in (50, 90, 99)]
        # Axial statistics: directions are defined modulo 180 degrees.
        rad = np.radians(2.0 * np.asarray(self.angle))
        mean_ang = 0.5 * math.degrees(math.atan2(np.sin(rad).mean(), np.cos(rad).mean()))
        dev = (np.asarray(self.angle) - mean_ang + 90.0) % 180.0 - 90.0
        return [
            self.name,
            str(len(self.psnr_rgb)),
            f"{np.mean(self.psnr_rgb):.2f}",
            f"{np.mean(self.psnr_y):.2f}",
            f"{np.mean(self.mean):.4f}",
            *(f"{v:.3f}" for v in pct),
            f"{np.mean(self.cover):.3f}",
            f"{np.mean(self.dark):.3f}",
            f"{np.mean(self.colour):.3f}" if self.colour else "-",
            f"{mean_ang:+.1f}",
            f"{float(np.sqrt(np.mean(dev**2))):.1f}",
        ]


HEADER = [
    "set",
    "n",
    "PSNR RGB",
    "PSNR Y",
    "rain mean",
    "p50",
    "p90",
    "p99",
    "coverage",
    "dark",
    "colour",
    "angle mean",
    "angle std",
]


def _psnr(mse: float) -> float:
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def _matlab_y(rgb: np.ndarray) -> np.ndarray:
    """Y of MATLAB's rgb2ycbcr (BT.601, [16, 235]) from 8-bit RGB, unrounded."""
    x = rgb.astype(np.float64) / 255.0
    return 16.0 + 65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]


def _read_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise OSError(f"cannot read {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _pairs(root: Path) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for rainy in sorted((root / "rainy").iterdir()):
        clean = root / "clean" / rainy.name
        if clean.exists():
            yield _read_rgb(rainy), _read_rgb(clean)


def _synth_pairs(
    images: list[Path], preset: str, seed: int
) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    for i, path in enumerate(images):
        clean = _read_rgb(path)
        rainy, _ = synthesize(clean, preset, seed=seed + i)
        # Quantise like a saved dataset image, so PSNRs are comparable.
        yield (np.rint(rainy * 255.0).astype(np.uint8), clean)


def _table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the comparison table; returns the process exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--n-images", type=int, default=30, help="clean-bsds images per preset")
    ap.add_argument("--presets", default="light,medium,heavy,mixed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write-md", type=Path, help="also write the table (markdown) here")
    args = ap.parse_args(argv)

    data: Path = args.data
    if not data.is_dir():
        print(
            f"compare_synth_stats: no data at {data} (../shared/data is not part of the "
            "repository); nothing to compare, skipping."
        )
        return 0

    rows: list[list[str]] = []
    for name in EVAL_SETS:
        root = data / name
        if not (root / "rainy").is_dir() or not (root / "clean").is_dir():
            print(f"compare_synth_stats: {root} absent, skipping that set.")
            continue
        acc = Acc(name)
        for rainy, clean in _pairs(root):
            acc.add(rainy, clean)
        rows.append(acc.row())

    bsds = data / "clean-bsds"
    if bsds.is_dir():
        files = sorted(p for p in bsds.iterdir() if p.suffix.lower() in {".jpg", ".png"})
        step = max(len(files) // max(args.n_images, 1), 1)
        images = files[::step][: args.n_images]
        for preset in [p.strip() for p in args.presets.split(",") if p.strip()]:
            acc = Acc(f"synth {preset}")
            for rainy, clean in _synth_pairs(images, preset, args.seed):
                acc.add(rainy, clean)
            rows.append(acc.row())
    else:
        print(f"compare_synth_stats: {bsds} absent, no synthetic rows.")

    table = _table(rows)
    print(table)
    if args.write_md:
        cmd = "python benchmarks/compare_synth_stats.py " + " ".join(
            shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
        )
        text = (
            "# Synthetic rain vs evaluation sets\n\n"
            f"Produced by `{cmd.strip()}` (from the repository root).\n"
            "Columns are explained in the script's docstring; eval rows use every pair of\n"
            "the set, synth rows apply `synthesize(img, preset, seed=i)` (the preset with\n"
            "its random variations) to evenly spaced `clean-bsds` photos. Angles are in\n"
            "degrees from vertical, positive towards the bottom right.\n\n"
            f"{table}\n"
        )
        # Keep hand-written notes (from a "## Notes" heading on) across regenerations.
        old = args.write_md.read_text() if args.write_md.exists() else ""
        if NOTES in old:
            text += "\n" + old[old.index(NOTES) :]
        args.write_md.write_text(text)
        print(f"wrote {args.write_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
