"""Can the rain's slant be told from the photo? ``slant.choose_angle`` measured.

    python benchmarks/slant_auto.py [-m MODEL | --weights FILE]
        [--parts synthetic,clean,SET...,real] [--presets light,medium,heavy]
        [--angles=0,30,45,60,80,-45] [--upscale 1] [--data ../shared/data] [--real 100]
        [--json OUT.json]

Why: ``--rain-angle`` needs the user to give the slant, one per job. ``choose_angle``
guesses it from the photo's thin bright lines (``estimate_angle``) and, past 25 degrees,
asks the network whether turning takes off more (``GAIN`` times and ``MARGIN`` more). A
wrong turn is costly (upright rain turned sideways is barely derained), so this counts
the turns it takes where it should not as well as where it should:

* ``synthetic``: scikit-image's four colour photos with the synthesizer's light, medium
  and heavy rain at 0, 30, 45, 60, 80 and -45 degrees (one draw each): the angles chosen,
  Y-PSNR derained as it is against with the chosen turn, and the time auto took against
  one plain pass; ``--upscale F`` enlarges the photos F times first (bicubic, before the
  rain), so that past 1.1 MP the check runs on crops;
* ``clean``: the same photos without rain (any turn is a false one);
* an evaluation set's name (``rain100l``, ``heavy-small``, ``sirr-val``, under ``--data``):
  its rain is near vertical, so every turn is a false one; the set's Y-PSNR both ways,
  the photos turned, the worst change, and the time auto took against one plain pass
  (the guess, the check on the network and the final pass);
* ``real``: the first ``--real`` photos of ``real-rain`` (no clean photos): which were
  turned, by how much (look at them: ``derain PHOTO --rain-angle A``).

The default model, fp32, on the CPU. Evaluation pairs are read, never trained on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rain_angle import PHOTOS, photos  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default=None, help="registered model (default: default)")
    ap.add_argument("--weights", type=Path, default=None,
                    help="a weights file instead of the model's bundled weights")
    ap.add_argument("--presets", default="light,medium,heavy", help="synthetic: rain presets")
    ap.add_argument("--angles", default="0,30,45,60,80,-45",
                    help="synthetic: the rain's slants (negative ones as --angles=-45,0)")
    ap.add_argument("--upscale", type=float, default=1.0,
                    help="synthetic and clean: enlarge the sample photos this many times")
    ap.add_argument("--parts", default="synthetic,clean,rain100l,heavy-small,sirr-val,real",
                    help="what to measure, comma-separated")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--real", type=int, default=100, help="real-rain photos to look at")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from derain_cli import metrics
    from derain_cli.enhancer import DEFAULT_MODEL, Derainer
    from derain_cli.pairs import find_pairs, list_images
    from derain_cli.slant import LEAST_ANGLE, choose_angle
    from derain_cli.synth import sample_params, synthesize

    d = Derainer(model=args.model if args.weights else (args.model or DEFAULT_MODEL),
                 weights=args.weights, device="cpu", precision="fp32")
    angles = [float(a) for a in args.angles.split(",")]

    def derain(img: np.ndarray, angle: float) -> np.ndarray:
        d.rain_angle = angle
        return d.derain_array(img)

    seconds = {"plain": 0.0, "auto": 0.0}

    def both(rgb: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
        """(chosen angle, guess, result as it is, result with the chosen turn); the time of
        each way (auto: the guess, its check and the final pass) added to ``seconds``"""
        t0 = time.perf_counter()
        angle, guess, reuse = choose_angle(rgb, derain)
        auto = reuse if reuse is not None else derain(rgb, angle)
        t1 = time.perf_counter()
        plain = derain(rgb, 0.0)
        seconds["auto"] += t1 - t0
        seconds["plain"] += time.perf_counter() - t1
        return angle, guess, plain, auto

    print(f"{d.model_name} (fp32, {d.backend}); rule: guess past 25 degrees, turned takes "
          "off 1.5x and 0.01 more")
    report: dict[str, object] = {"model": d.model_name, "upscale": args.upscale}
    parts = args.parts.split(",")
    shots = photos() if {"synthetic", "clean"} & set(parts) else {}
    if args.upscale != 1.0:
        import cv2

        shots = {n: cv2.resize(c, None, fx=args.upscale, fy=args.upscale,
                               interpolation=cv2.INTER_CUBIC) for n, c in shots.items()}
        print("the sample photos enlarged {:g}x: {}".format(args.upscale, ", ".join(
            f"{c.shape[1]}x{c.shape[0]}" for c in shots.values())))
    for part in parts:
        if part == "synthetic":
            rows = []
            print(f"\n{'preset':<7} {'angle':>6} {'chosen (per photo)':<26} "
                  f"{'plain dB':>9} {'auto dB':>8} {'time':>6}")
            for preset in args.presets.split(","):
                for a in angles:
                    chosen, p0, pa = [], [], []
                    seconds.update(plain=0.0, auto=0.0)
                    for name, clean in shots.items():
                        seed = 1000 * PHOTOS.index(name)
                        p = dataclasses.replace(
                            sample_params(preset, np.random.default_rng(seed)), angle=a)
                        rainy8 = metrics.to_uint8(synthesize(clean, p, seed=seed)[0])
                        angle, _, plain, auto = both(rainy8)
                        chosen.append(angle)
                        p0.append(metrics.psnr_y(metrics.to_uint8(plain), clean))
                        pa.append(metrics.psnr_y(metrics.to_uint8(auto), clean))
                    row = {"preset": preset, "angle": a, "chosen": chosen,
                           "plain": float(np.mean(p0)), "auto": float(np.mean(pa)),
                           "time_ratio": seconds["auto"] / seconds["plain"]}
                    rows.append(row)
                    said = " ".join(f"{c:+.0f}" if c else "0" for c in chosen)
                    print(f"{preset:<7} {a:>6g} {said:<26} {row['plain']:>9.2f} "
                          f"{row['auto']:>8.2f} {row['time_ratio']:>5.2f}x")
            report["synthetic"] = rows
        elif part == "clean":
            chosen = {name: choose_angle(clean, derain)[:2] for name, clean in shots.items()}
            print("\nclean photos (no rain): " + ", ".join(
                f"{n} {a:+.0f} (guess {g:+.0f})" for n, (a, g) in chosen.items()))
            report["clean"] = {n: {"chosen": a, "guess": g} for n, (a, g) in chosen.items()}
        elif part == "real":
            folder = args.data / "real-rain"
            if not folder.is_dir():
                print(f"\nreal: {folder} not found; skipped")
                continue
            turned = {}
            files = list_images(folder)[:args.real]
            for f in files:
                rgb = np.asarray(Image.open(f).convert("RGB"))
                angle, guess, _ = choose_angle(rgb, derain)
                if angle:
                    turned[f.name] = angle
            print(f"\nreal-rain: {len(turned)} of {len(files)} photos turned: " + ", ".join(
                f"{n} {a:+.0f}" for n, a in turned.items()))
            report["real"] = {"photos": len(files), "turned": turned}
        else:  # an evaluation set
            folder = args.data / part
            if not folder.is_dir():
                print(f"\n{part}: {folder} not found; skipped")
                continue
            pairs = find_pairs(folder)
            turned, p0, pa, checked = {}, [], [], 0
            seconds.update(plain=0.0, auto=0.0)
            for pair in pairs:
                rainy = np.asarray(Image.open(pair.rainy).convert("RGB"))
                clean = np.asarray(Image.open(pair.clean).convert("RGB"))
                angle, guess, plain, auto = both(rainy)
                checked += abs(guess) >= LEAST_ANGLE  # (a canvas past 4x is not checked)
                p0.append(metrics.psnr_y(metrics.to_uint8(plain), clean))
                pa.append(metrics.psnr_y(metrics.to_uint8(auto), clean))
                if angle:
                    turned[Path(pair.rainy).name] = {"angle": angle,
                                                     "change": pa[-1] - p0[-1]}
            worst = min((t["change"] for t in turned.values()), default=0.0)
            row = {"pairs": len(pairs), "checked": checked, "plain": float(np.mean(p0)),
                   "auto": float(np.mean(pa)), "turned": turned, "worst": worst,
                   "time_ratio": seconds["auto"] / seconds["plain"]}
            report[part] = row
            print(f"\n{part}: {len(turned)} of {len(pairs)} turned ({checked} guessed past "
                  f"{LEAST_ANGLE:g} degrees); Y-PSNR {row['plain']:.3f} "
                  f"as it is, {row['auto']:.3f} auto; worst change {worst:+.2f} dB; auto took "
                  f"{row['time_ratio']:.2f}x the time")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
