"""How the rain's slant changes what a model removes: synthetic rain at fixed angles.

    python benchmarks/rain_angle.py [-m MODEL | --weights FILE] [--angles=0,15,30,45,60,80]
        [--preset medium] [--seeds 2] [--turn [--turn-offset DEG]] [--edges]
        [--json OUT.json]

Why: the networks learnt rain within about 30 degrees of vertical (``synth``'s presets;
training rotates the clean crop, then makes rain on it), and a transposed photo, whose rain
runs sideways, came out no cleaner than its input (README, "Several passes", "Only
flips"). This measures the fall-off in between, on photos no model trained on:
scikit-image's four colour sample photos (astronaut, coffee, chelsea, rocket), each with
``--preset`` rain from ``synth.sample_params`` turned to each angle (the same rain
parameters at every angle, one seed per photo and draw; the streaks themselves are drawn
anew, since their count follows the turned canvas), derained in fp32 on the CPU and scored as
``derain eval`` scores (Y-PSNR of 8-bit results). Prints, per angle, the rainy input's
PSNR, the derained PSNR and the gain. ``--turn`` also derains each rainy photo turned by
its rain's angle (``derain --rain-angle``, ``derain_cli.slant``) and prints that result,
its gain, the turned canvas's size against the photo's and the time the turned runs took
against the plain ones (one thread pool, the same process: a ratio);
``--turn-offset`` turns by the angle plus that much, as a user who misjudged the slant
would. ``--edges`` also prints each result's error by distance from the photo's border
(:func:`edge_profile`): a turned photo's corners are mirrored, and how much worse its
border comes out than its inside is what that costs. Needs scikit-image (a dev dependency).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

#: scikit-image's colour sample photos; a photo's place here seeds its rain
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def photos(names: tuple[str, ...] = PHOTOS) -> dict[str, np.ndarray]:
    """scikit-image's colour sample photos, HxWx3 uint8 (public domain / CC0)."""
    from skimage import data

    return {name: getattr(data, name)() for name in names}


#: distances from the border (pixels) that ``edge_profile`` reports, and where the inside
#: begins
EDGE_ROWS, INSIDE = (0, 1, 2), 16


def edge_profile(out8: np.ndarray, clean: np.ndarray) -> list[float]:
    """Mean absolute error of an 8-bit result against the clean photo, in levels, over the
    pixels 0, 1 and 2 px from the border, then over those at least 16 px inside."""
    h, w = clean.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    dist = np.minimum(np.minimum(yy, xx), np.minimum(h - 1 - yy, w - 1 - xx))
    err = np.abs(out8.astype(np.float64) - clean.astype(np.float64)).mean(axis=2)
    return [float(err[dist == k].mean()) for k in EDGE_ROWS] + [float(err[dist >= INSIDE].mean())]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=None, help="registered model (default: default)")
    ap.add_argument("--weights", type=Path, default=None,
                    help="a weights file instead of the model's bundled weights")
    ap.add_argument("--angles", default="0,15,30,45,60,80",
                    help="degrees from vertical, comma-separated (the synthesizer takes "
                         "-80 to 80; negative ones as --angles=-45,0)")
    ap.add_argument("--preset", default="medium")
    ap.add_argument("--seeds", type=int, default=2, help="rain draws per photo (1 to 1000)")
    ap.add_argument("--photos", default=None,
                    help="which sample photos, comma-separated (default: all four)")
    ap.add_argument("--turn", action="store_true",
                    help="also derain with the photo turned by the rain's angle")
    ap.add_argument("--turn-offset", type=float, default=0.0,
                    help="with --turn: turn by the angle plus this many degrees")
    ap.add_argument("--edges", action="store_true",
                    help="also print the error by distance from the border (0, 1, 2 px and "
                         "the inside)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    angles = [float(a) for a in args.angles.split(",")]
    if any(not -80 <= a <= 80 for a in angles):
        ap.error(f"--angles {args.angles}: the synthesizer takes -80 to 80 degrees")
    names = tuple(args.photos.split(",")) if args.photos else PHOTOS
    if unknown := [n for n in names if n not in PHOTOS]:
        ap.error(f"--photos: unknown {', '.join(unknown)}; use {', '.join(PHOTOS)}")
    if not 1 <= args.seeds <= 1000:  # 1000 draws per photo before the seeds would collide
        ap.error(f"--seeds must be 1 to 1000, not {args.seeds}")
    if args.turn_offset and not args.turn:
        ap.error("--turn-offset goes with --turn")
    if args.turn and any(abs(a + args.turn_offset) > 90 for a in angles):
        ap.error(f"--turn-offset {args.turn_offset:g} turns some angle past 90 degrees")
    from derain_cli.synth import check_preset

    try:
        check_preset(args.preset)
    except ValueError as e:
        ap.error(f"--preset: {e}")

    from derain_cli import metrics
    from derain_cli.enhancer import DEFAULT_MODEL, Derainer
    from derain_cli.slant import Turn
    from derain_cli.synth import sample_params, synthesize

    shots = photos(names)
    d = Derainer(model=args.model if args.weights else (args.model or DEFAULT_MODEL),
                 weights=args.weights, device="cpu", precision="fp32")
    model, weights = d.model_name, d.weights_label  # the network, and whose weights
    print(f"{model}, {weights} (fp32, {d.backend}); {args.preset} rain, {len(shots)} "
          f"photos x {args.seeds} draws per angle")
    turned_by = "" if not args.turn_offset else f" (turned {args.turn_offset:+g} off)"
    print(f"\n{'angle':>6} {'rainy dB':>9} {'derained dB':>12} {'gain dB':>8}" + (
        f" {'turned dB':>10} {'gain dB':>8} {'canvas':>7} {'time':>6}{turned_by}"
        if args.turn else ""))
    rows = []
    # the turned runs' own Derainer (the same request: network, engine, weights), told each
    # angle once (below 20 degrees it warns: once per angle, not once per photo)
    turner = Derainer(model=args.model if args.weights else (args.model or DEFAULT_MODEL),
                      weights=args.weights, device="cpu", precision="fp32") if args.turn \
        else None
    for angle in angles:
        if turner is not None:
            turner.rain_angle = angle + args.turn_offset
        before, after, turned, area = [], [], [], []
        edges: dict[str, list[list[float]]] = {"plain": [], "turned": []}
        seconds = {"plain": 0.0, "turned": 0.0}
        for name, clean in shots.items():
            for s in range(args.seeds):
                seed = 1000 * PHOTOS.index(name) + s  # the same rain for a photo in a subset
                p = dataclasses.replace(sample_params(args.preset, np.random.default_rng(seed)),
                                        angle=angle)
                rainy, _ = synthesize(clean, p, seed=seed)
                rainy8 = metrics.to_uint8(rainy)
                t0 = time.perf_counter()
                out8 = metrics.to_uint8(d.derain_array(rainy8))
                seconds["plain"] += time.perf_counter() - t0
                before.append(metrics.psnr_y(rainy8, clean))
                after.append(metrics.psnr_y(out8, clean))
                if args.edges:
                    edges["plain"].append(edge_profile(out8, clean))
                if args.turn:
                    t0 = time.perf_counter()
                    result = turner.derain_array(rainy8)
                    seconds["turned"] += time.perf_counter() - t0
                    turned.append(metrics.psnr_y(metrics.to_uint8(result), clean))
                    if args.edges:
                        edges["turned"].append(edge_profile(metrics.to_uint8(result), clean))
                    area.append(Turn.make(*clean.shape[:2], turner.rain_angle).area_factor)
        row = {"angle": angle, "rainy": float(np.mean(before)),
               "derained": float(np.mean(after))}
        row["gain"] = row["derained"] - row["rainy"]
        line = f"{angle:>6g} {row['rainy']:>9.2f} {row['derained']:>12.2f} {row['gain']:>8.2f}"
        if args.turn:
            row.update(turned_by=angle + args.turn_offset, turned=float(np.mean(turned)),
                       canvas=float(np.mean(area)),
                       time_ratio=seconds["turned"] / seconds["plain"])
            row["turned_gain"] = row["turned"] - row["rainy"]
            line += (f" {row['turned']:>10.2f} {row['turned_gain']:>8.2f} "
                     f"{row['canvas']:>6.2f}x {row['time_ratio']:>5.2f}x")
        for kind, profiles in edges.items():
            if profiles:
                row[f"{kind}_edges"] = [float(v) for v in np.mean(profiles, axis=0)]
        rows.append(row)
        print(line)
    if args.edges:
        print(f"\nmean |error| in 8-bit levels, {', '.join(map(str, EDGE_ROWS))} px from the "
              f"border and {INSIDE}+ px inside")
        for row in rows:
            for kind in ("plain", "turned"):
                if f"{kind}_edges" in row:
                    *edge, inside = row[f"{kind}_edges"]
                    print(f"{row['angle']:>6g} {kind:>7}: " + " / ".join(
                        f"{v:.2f}" for v in edge) + f"  inside {inside:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"model": model, "weights": weights,
                                         "preset": args.preset, "turn": args.turn,
                                         "turn_offset": args.turn_offset,
                                         "photos": list(shots), "seeds": args.seeds,
                                         "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
