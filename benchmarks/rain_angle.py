"""How the rain's slant changes what a model removes: synthetic rain at fixed angles.

    python benchmarks/rain_angle.py [-m MODEL | --weights FILE] [--angles 0,15,30,45,60,80]
        [--preset medium] [--seeds 2] [--json OUT.json]

Why: the networks learnt rain within about 30 degrees of vertical (``synth``'s presets;
training rotates the clean crop, then makes rain on it), and a transposed photo, whose rain
runs sideways, came out no cleaner than its input (README, "Several passes", "Only
flips"). This measures the fall-off in between, on photos no model trained on:
scikit-image's four colour sample photos (astronaut, coffee, chelsea, rocket), each with
``--preset`` rain from ``synth.sample_params`` turned to each angle (the same streaks
otherwise: one seed per photo and seed number), derained in fp32 on the CPU and scored as
``derain eval`` scores (Y-PSNR of 8-bit results). Prints, per angle, the rainy input's
PSNR, the derained PSNR and the gain. Needs scikit-image (a dev dependency).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np


def photos() -> dict[str, np.ndarray]:
    """scikit-image's colour sample photos, HxWx3 uint8 (public domain / CC0)."""
    from skimage import data

    return {name: getattr(data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket")}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=None, help="registered model (default: default)")
    ap.add_argument("--weights", type=Path, default=None,
                    help="a weights file instead of the model's bundled weights")
    ap.add_argument("--angles", default="0,15,30,45,60,80",
                    help="degrees from vertical, comma-separated (the synthesizer takes "
                         "-80 to 80)")
    ap.add_argument("--preset", default="medium")
    ap.add_argument("--seeds", type=int, default=2, help="rain draws per photo")
    ap.add_argument("--photos", default=None,
                    help="which sample photos, comma-separated (default: all four)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    angles = [float(a) for a in args.angles.split(",")]
    if any(not -80 <= a <= 80 for a in angles):
        ap.error(f"--angles {args.angles}: the synthesizer takes -80 to 80 degrees")

    from derain_cli import metrics
    from derain_cli.enhancer import DEFAULT_MODEL, Derainer
    from derain_cli.synth import sample_params, synthesize

    model = str(args.weights) if args.weights else (args.model or DEFAULT_MODEL)
    shots = photos()
    if args.photos:
        shots = {k: shots[k] for k in args.photos.split(",")}
    d = Derainer(model=args.model if args.weights else model, weights=args.weights,
                 device="cpu", precision="fp32")
    print(f"{model} (fp32, {d.backend}); {args.preset} rain, {len(shots)} photos x "
          f"{args.seeds} draws per angle")
    print(f"\n{'angle':>6} {'rainy dB':>9} {'derained dB':>12} {'gain dB':>8}")
    rows = []
    for angle in angles:
        before, after = [], []
        for i, clean in enumerate(shots.values()):
            for s in range(args.seeds):
                seed = 1000 * i + s
                p = dataclasses.replace(sample_params(args.preset, np.random.default_rng(seed)),
                                        angle=angle)
                rainy, _ = synthesize(clean, p, seed=seed)
                rainy8 = metrics.to_uint8(rainy)
                out8 = metrics.to_uint8(d.derain_array(rainy8))
                before.append(metrics.psnr_y(rainy8, clean))
                after.append(metrics.psnr_y(out8, clean))
        row = {"angle": angle, "rainy": float(np.mean(before)),
               "derained": float(np.mean(after))}
        row["gain"] = row["derained"] - row["rainy"]
        rows.append(row)
        print(f"{angle:>6g} {row['rainy']:>9.2f} {row['derained']:>12.2f} {row['gain']:>8.2f}")
    if args.json:
        args.json.write_text(json.dumps({"model": model, "preset": args.preset,
                                         "photos": list(shots), "seeds": args.seeds,
                                         "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
