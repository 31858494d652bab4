"""How much a sampled statistics pass changes a large photo's result, and what it saves.

Why: the tiler's statistics pass (``derain_cli.tiling``) runs the rain network over the
whole image once more, only to estimate whole-image means. ``stats_megapixels`` lets
it run over a spread-out sample of its tiles instead (``tiling.sample_tiles``). This
script compares, on one large image, the tiled result with every statistics tile
(the reference; it agrees with an untiled pass to 59-80 dB, ``tiling_agreement.py``)
against the result with each sample budget: PSNR between the two and the time of the
statistics pass.

The image is a 4:3 mosaic of distinct photos, each with its own synthetic rain
(``--photos DIR``: e.g. ../shared/data/clean-bsds; default: ``bench.test_scene`` at
full size, which is one scene and therefore easier). Distinct photos in every
cell are a hard case for sampling: neighbouring tiles share nothing, unlike a real
photo's sky, wall or street.

    python benchmarks/stats_sampling.py [-m semi-drdnet-tiny] [--megapixels 12]
        [--budget 4 --budget 2] [--backend int8|torch] [--photos DIR] [--untiled]

``--untiled`` also compares each result with one untiled pass: the issue's reference,
but at 12 MP it needed more than 18 GB of RAM for semi-drdnet-tiny, so measure at 6 MP with
``--budget 2`` (the same third of the tiles as the default takes of a 12 MP photo).
Images under twice the budget are not sampled at all (``tiling._stats_tile``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

import numpy as np  # noqa: E402
import torch  # noqa: E402

from derain_cli import tiling  # noqa: E402
from derain_cli.bench import make_variant_runner, model_for_bench, psnr, test_scene  # noqa: E402
from derain_cli.enhancer import default_overlap  # noqa: E402


def mosaic(photos: Path, h: int, w: int, seed: int = 0) -> np.ndarray:
    """HxWx3 float32: cells of distinct photos from ``photos``, each with mixed rain."""
    from PIL import Image

    from derain_cli.pairs import list_images
    from derain_cli.synth import synthesize

    files = list_images(photos)
    cell_w, cell_h = 480, 320
    out = np.zeros((h, w, 3), np.float32)
    k = 0
    for y in range(0, h, cell_h):
        for x in range(0, w, cell_w):
            img = Image.open(files[k % len(files)]).convert("RGB").resize((cell_w, cell_h))
            rainy, _ = synthesize(np.asarray(img), "mixed", seed=seed + k)
            out[y:y + cell_h, x:x + cell_w] = rainy[: h - y, : w - x]
            k += 1
    return out


class _Counting:
    """The runner, counting its statistics calls and when the last one ended."""

    def __init__(self, runner) -> None:
        self.runner, self.calls, self.last = runner, 0, 0.0

    def __getattr__(self, name: str):
        return getattr(self.runner, name)

    def stat_sums(self, x, pooled, mask):
        out = self.runner.stat_sums(x, pooled, mask)
        self.calls += 1
        self.last = time.perf_counter()
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default="semi-drdnet-tiny")
    ap.add_argument("--megapixels", type=float, default=12.0)
    ap.add_argument("--budget", type=float, action="append",
                    help="statistics sample in megapixels (repeatable; default 4 and 2)")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--backend", choices=["int8", "torch"], default="int8")
    ap.add_argument("--photos", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--untiled", action="store_true",
                    help="also compare with one untiled pass (memory: several GB at 12 MP)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    w = int(round((args.megapixels * 1e6 * 4 / 3) ** 0.5))
    h = w * 3 // 4
    img = (mosaic(args.photos, h, w) if args.photos
           else np.ascontiguousarray(test_scene(h, w).transpose(1, 2, 0)))
    net, label = model_for_bench(args.model)
    # The shipped int8 graph, or PyTorch fp32 (channels_last, as the torch backend runs it)
    variant = "int8" if args.backend == "int8" else "channels_last"
    runner = make_variant_runner(net, variant, torch.device("cpu"), name=args.model)
    if isinstance(runner, str):
        raise SystemExit(f"{args.model}: {runner}")
    overlap = default_overlap(net)
    source = f"mosaic of {args.photos}" if args.photos else "bench.test_scene"
    print(f"{args.model} ({label}, {args.backend}), {w}x{h} {source}, tile {args.tile}, "
          f"overlap {overlap}, {torch.get_num_threads()} threads\n")
    full = None
    if args.untiled:
        full = np.clip(tiling.run_tiled(img, runner, 0, 0, hwc=True), 0, 1)
    print("| statistics sample | stats tiles | stats pass s | whole run s | PSNR vs every tile "
          "| PSNR vs untiled |")
    print("|---|---:|---:|---:|---:|---:|")
    ref = None
    for budget in [None, *(args.budget or [4.0, 2.0])]:
        counted = _Counting(runner)
        start = time.perf_counter()
        out = tiling.run_tiled(img, counted, args.tile, overlap, stats_megapixels=budget,
                               hwc=True)
        whole = time.perf_counter() - start
        stats_s = counted.last - start if counted.calls else 0.0
        if ref is None:
            ref = out
            agree = "reference"
        else:
            agree = f"{psnr(out, ref):.1f} dB"
        what = "every tile" if budget is None else f"{budget:g} MP"
        vs_full = "-" if full is None else f"{psnr(out, full):.1f} dB"
        print(f"| {what} | {counted.calls} | {stats_s:.1f} | {whole:.1f} | {agree} | {vs_full} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
