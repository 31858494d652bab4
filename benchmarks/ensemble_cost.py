"""What ``--ensemble N`` costs: one photo derained with 1, 2 and 4 passes averaged.

    python benchmarks/ensemble_cost.py [-m MODEL] [--device auto] [--precision auto]
        [--megapixels 2] [--passes 1,2,4] [--rain-angles 45] [--repeats 2] [--json OUT.json]

Each pass runs the whole tiled job on a mirrored copy of the photo
(``derain_cli.ensemble``), so N passes should take about N times one; what comes on top
is the copies' strided tile reads and the running mean. One photo (the ``photo_e2e``
mosaic of the bundled examples, decoded once) is derained in memory
(``Derainer.derain_array``) with each pass count in turn, rounds interleaved, every count
on the same engine (the one ``Derainer`` picks when told no workload, as for a long-lived
object: PyTorch's start-up not weighed); the table gives seconds,
the ratio to one pass and that ratio over N. What the passes buy is a score, not a time:
``derain eval --ensemble N`` (README, "Several passes").

``--rain-angles``: also one pass with the photo turned by each angle (``--rain-angle``,
``derain_cli.slant``), whose canvas is larger than the photo (its ``canvas`` column: the
canvas's pixels over the photo's), timed the same way against one plain pass.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photo_e2e import add_model_args, make_photo  # noqa: E402


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.set_defaults(megapixels=2.0)
    ap.add_argument("--passes", default="1,2,4", help="pass counts, comma-separated")
    ap.add_argument("--rain-angles", default="",
                    help="also time one pass turned by each of these angles (degrees, "
                         "comma-separated; as --rain-angles=-45,45)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    counts = [int(n) for n in args.passes.split(",")]
    try:
        angles = [float(a) for a in args.rain_angles.split(",") if a.strip()]
    except ValueError:
        ap.error(f"--rain-angles {args.rain_angles}: degrees, comma-separated")
    if any(not -90 <= a <= 90 or a == 0 for a in angles):
        ap.error(f"--rain-angles {args.rain_angles}: each from -90 to 90, not 0")

    from derain_cli.enhancer import DEFAULT_MODEL, Derainer
    from derain_cli.slant import Turn

    model = args.model or DEFAULT_MODEL
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo.jpg"
        make_photo(path, args.megapixels)
        rgb = np.asarray(Image.open(path).convert("RGB"))
    mp = rgb.shape[0] * rgb.shape[1] / 1e6
    jobs = [(n, 0.0) for n in counts] + [(1, a) for a in angles]  # (passes, rain angle)
    derainers = {(n, a): Derainer(model=model, device=args.device, precision=args.precision,
                                  ensemble=n, rain_angle=a) for n, a in jobs}
    first = derainers[jobs[0]]
    engines = {(d.backend, d.precision) for d in derainers.values()}
    if len(engines) > 1:  # not expected: the same request, the same choice
        print(f"note: the pass counts ran on different engines: {sorted(engines)}")
    print(f"{model} on {first.device_name} ({first.backend} {first.precision}), "
          f"{rgb.shape[1]}x{rgb.shape[0]} ({mp:.1f} MP), tile {first.tile}; best of "
          f"{args.repeats} interleaved rounds")
    for d in derainers.values():  # warm-up: kernels, the engine's per-shape plans
        d.derain_array(rgb[:512, :512])
    times: dict[tuple[int, float], list[float]] = {job: [] for job in jobs}
    for _ in range(args.repeats):
        for job, d in derainers.items():
            t0 = time.perf_counter()
            d.derain_array(rgb)
            times[job].append(time.perf_counter() - t0)
            # each time as it is taken: a run cut short by a timeout keeps what it measured
            print(f"  passes {job[0]}, rain angle {job[1]:g}: {times[job][-1]:.2f} s",
                  flush=True)
    base = min(times[jobs[0]]) / counts[0]  # one pass's time
    rows = []
    print(f"\n{'passes':<8} {'seconds':>9} {'x one pass':>11} {'per pass':>9} {'canvas':>7}")
    for (n, angle), ts in times.items():
        best = min(ts)
        canvas = Turn.make(*rgb.shape[:2], angle).area_factor if angle else 1.0
        rows.append({"passes": n, "rain_angle": angle, "canvas": canvas, "seconds": best,
                     "vs_one_pass": best / base, "per_pass": best / base / n})
        label = f"{n}" + (f", {angle:g} deg" if angle else "")
        print(f"{label:<8} {best:>9.2f} {best / base:>10.2f}x {best / base / n:>8.2f}x "
              f"{canvas:>6.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"model": model, "device": first.device_name,
                                         "backend": first.backend,
                                         "precision": first.precision, "megapixels": mp,
                                         "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
