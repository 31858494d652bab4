"""What ``--ensemble N`` costs: one photo derained with 1, 2 and 4 passes averaged.

    python benchmarks/ensemble_cost.py [-m MODEL] [--device auto] [--precision auto]
        [--megapixels 2] [--passes 1,2,4] [--repeats 2] [--json OUT.json]

Each pass runs the whole tiled job on a mirrored copy of the photo
(``derain_cli.ensemble``), so N passes should take about N times one; what comes on top
is the copies' strided tile reads and the running mean. One photo (the ``photo_e2e``
mosaic of the bundled examples, decoded once) is derained in memory
(``Derainer.derain_array``) with each pass count in turn, rounds interleaved, every count
on the same engine (the one ``Derainer`` picks when told no workload, as for a long-lived
object: PyTorch's start-up not weighed); the table gives seconds,
the ratio to one pass and that ratio over N. What the passes buy is a score, not a time:
``derain eval --ensemble N`` (README, "Several passes").
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
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    from derain_cli.enhancer import DEFAULT_MODEL, Derainer

    model = args.model or DEFAULT_MODEL
    counts = [int(n) for n in args.passes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo.jpg"
        make_photo(path, args.megapixels)
        rgb = np.asarray(Image.open(path).convert("RGB"))
    mp = rgb.shape[0] * rgb.shape[1] / 1e6
    derainers = {n: Derainer(model=model, device=args.device, precision=args.precision,
                             ensemble=n) for n in counts}
    first = derainers[counts[0]]
    engines = {(d.backend, d.precision) for d in derainers.values()}
    if len(engines) > 1:  # not expected: the same request, the same choice
        print(f"note: the pass counts ran on different engines: {sorted(engines)}")
    print(f"{model} on {first.device_name} ({first.backend} {first.precision}), "
          f"{rgb.shape[1]}x{rgb.shape[0]} ({mp:.1f} MP), tile {first.tile}; best of "
          f"{args.repeats} interleaved rounds")
    for d in derainers.values():  # warm-up: kernels, the engine's per-shape plans
        d.derain_array(rgb[:512, :512])
    times: dict[int, list[float]] = {n: [] for n in counts}
    for _ in range(args.repeats):
        for n, d in derainers.items():
            t0 = time.perf_counter()
            d.derain_array(rgb)
            times[n].append(time.perf_counter() - t0)
    base = min(times[counts[0]]) / counts[0]  # one pass's time
    rows = []
    print(f"\n{'passes':<8} {'seconds':>9} {'x one pass':>11} {'per pass':>9}")
    for n, ts in times.items():
        best = min(ts)
        rows.append({"passes": n, "seconds": best, "vs_one_pass": best / base,
                     "per_pass": best / base / n})
        print(f"{n:<8} {best:>9.2f} {best / base:>10.2f}x {best / base / n:>8.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"model": model, "device": first.device_name,
                                         "backend": first.backend,
                                         "precision": first.precision, "megapixels": mp,
                                         "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
