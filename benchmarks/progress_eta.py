"""How well the tile progress bar tracks time on a large photo (default model, this CPU).

    python benchmarks/progress_eta.py [--height 3000 --width 4000]

Derains a mosaic of the bundled example and records every ``on_tile(done, total)`` call.
Prints the fraction of the work reported against the fraction of the time spent, at the
end of the statistics pass and at 25 / 50 / 75 % of the work, and what a count of tiles
would have said at the end of the statistics pass. A bar whose work tracks time gives an
honest time estimate (``tiling.STATS_COST``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from derain_cli import tiling
from derain_cli.enhancer import Derainer

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--height", type=int, default=3000)
    ap.add_argument("--width", type=int, default=4000)
    args = ap.parse_args()
    h, w = args.height, args.width
    src = np.asarray(Image.open(ROOT / "examples" / "astronaut_rain.jpg").convert("RGB"))
    reps = (h // src.shape[0] + 1, w // src.shape[1] + 1, 1)
    img = np.ascontiguousarray(np.tile(src, reps)[:h, :w])
    d = Derainer(device="cpu")
    times: list[float] = []
    work: list[float] = []
    t0 = time.perf_counter()

    def on_tile(done: int, total: int) -> None:
        times.append(time.perf_counter() - t0)
        work.append(done / total)

    d.derain_array(img, on_tile=on_tile)
    total_s = times[-1]
    n_stats = len(tiling.statistics_tiles(h, w, d.tile, d.tile_overlap)) \
        if len(work) > 1 else 0
    print(f"{h}x{w}, {d.model_name}, {d.backend} {d.precision}, tile {d.tile}: "
          f"{len(work)} tiles ({n_stats} statistics), {total_s:.1f} s")
    if n_stats:
        i = n_stats - 1
        print(f"end of the statistics pass: work {work[i]:.3f}, time {times[i] / total_s:.3f} "
              f"(a count of tiles: {(i + 1) / len(work):.3f})")
    for q in (0.25, 0.5, 0.75):
        j = next(k for k, f in enumerate(work) if f >= q)
        print(f"work {work[j]:.3f} at time {times[j] / total_s:.3f}")


if __name__ == "__main__":
    main()
