"""Several tiles per forward pass: does stacking tiles speed up a tiled photo?

    python benchmarks/tile_batch.py [--device cuda] [-m MODEL] [--megapixels 12]
        [--tile 512] [--batches 1,4,auto] [--repeats 2] [--json OUT.json]

Issue 6 lists "several tiles per forward pass" among the GPU paths. One photo (the
``photo_e2e`` mosaic, decoded once) is derained in memory (``Derainer.derain_array``,
the photo's own statistics pass included) in ``--tile`` px tiles with each tile batch in
turn, rounds interleaved; the table gives megapixels per second and the ratio to one tile
per pass, and the largest difference from the one-tile output (it must be tiny: the same
tiles, blended the same way). ``auto`` is ``Derainer``'s own choice (free GPU memory; one
on CPUs). On CUDA the batches are also queued without waiting (``TorchRunner.submit``),
so the host blends while the GPU computes.
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
    """The command line (tests/test_recipes.py parses recipes/gpu-session.sh's calls with it)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--batches", default="1,4,auto", help="tile batches, comma-separated")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    from derain_cli.enhancer import DEFAULT_MODEL, Derainer

    model = args.model or DEFAULT_MODEL
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo.jpg"
        make_photo(path, args.megapixels)
        rgb = np.asarray(Image.open(path).convert("RGB"))
    mp = rgb.shape[0] * rgb.shape[1] / 1e6
    derainers = {}
    for b in args.batches.split(","):
        d = Derainer(model=model, device=args.device, precision=args.precision, tile=args.tile,
                     backend="torch", tile_batch=0 if b == "auto" else int(b))
        derainers[f"{b} ({d.tile_batch})" if b == "auto" else b] = d
    first = next(iter(derainers.values()))
    print(f"{model} on {first.device_name} ({first.precision}), {rgb.shape[1]}x{rgb.shape[0]} "
          f"({mp:.1f} MP), {args.tile} px tiles; best of {args.repeats} interleaved rounds")
    for d in derainers.values():  # warm-up: kernels, cudnn autotuning, allocator
        d.derain_array(rgb[:1024, :1024])
    times: dict[str, list[float]] = {k: [] for k in derainers}
    outs: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for name, d in derainers.items():
            t0 = time.perf_counter()
            outs[name] = d.derain_array(rgb)
            times[name].append(time.perf_counter() - t0)
            # each time as it is taken: a run cut short by a timeout keeps what it measured
            print(f"  batch {name}: {times[name][-1]:.3f} s", flush=True)
    ref_name = next(iter(derainers))
    rows = []
    print(f"\n{'tile batch':<12} {'MP/s':>8} {'x one':>7} {'max |diff|':>11}")
    for name, ts in times.items():
        best = min(ts)
        ratio = min(times[ref_name]) / best
        diff = float(np.abs(outs[name] - outs[ref_name]).max())
        rows.append({"batch": name, "seconds": best, "mp_per_s": mp / best,
                     "vs_first": ratio, "max_abs_diff": diff})
        print(f"{name:<12} {mp / best:>8.2f} {ratio:>6.2f}x {diff:>11.2e}")
    if args.json:
        args.json.write_text(json.dumps({"model": model, "device": first.device_name,
                                         "precision": first.precision, "megapixels": mp,
                                         "tile": args.tile, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
