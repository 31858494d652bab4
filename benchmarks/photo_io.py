"""What one photo costs the host outside the network: decode, quantise, encode and write.

Why: on the first lent H200 (2026-12-04) a folder of 12 MP JPEGs ran at 59 % of the
model's in-memory throughput with two I/O threads (``folder_e2e.py``), short of issue 6's
80 %. Each photo's reading and writing is host work the folder job must hide behind the
network; this splits it into its stages, best of ``--repeats`` interleaved rounds:

* **read**: ``images.read_image`` (JPEG decoding, orientation, metadata);
* **quantise**: float32 [0, 1] -> uint8 as ``prepare_image`` does it (``images._quantise``),
  beside the ``nan_to_num`` + ``clip`` formula it replaced (the reference its test checks it
  against exactly);
* **prepare**: the whole ``images.prepare_image`` (quantise plus metadata);
* **write**: ``PreparedImage.write`` (JPEG encoding at ``--quality``, fsync, rename);
* **network call, identity**: ``tiling.run_tiled`` through the PyTorch runner (CPU, fp32,
  one tile: what a GPU with the memory for it runs) of a network that returns its input,
  i.e. the call's own host work: cutting the tile, scaling, layout, copies. Once with the
  8-bit samples handed over as they are (the runner scales them, on a GPU on the device),
  once with the host's float32 scaling the tiler used before (``takes_samples`` off).

    python benchmarks/photo_io.py [--megapixels 12] [--repeats 3] [--quality 95]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

from photo_e2e import count, make_photo  # noqa: E402  (benchmarks/ is on sys.path: the script's folder)

from derain_cli import images, tiling  # noqa: E402


def reference_quantise(rgb: np.ndarray) -> np.ndarray:
    """The 8-bit RGB quantisation before 2026-12-04: whole-array nan_to_num, clip, rint."""
    x = np.nan_to_num(rgb * np.float32(255.0), nan=0.0, posinf=255.0, neginf=0.0)
    return np.rint(np.clip(x, 0.0, 255.0)).astype(np.uint8)


def identity_runners() -> tuple[object, object]:
    """Two PyTorch CPU runners of a network that returns its input: one takes 8-bit
    tiles as they are (the default), one gets them scaled to float32 by the tiler."""
    import torch

    from derain_cli.torch_runner import TorchRunner

    samples = TorchRunner(torch.nn.Identity(), torch.device("cpu"), "fp32")
    floats = TorchRunner(torch.nn.Identity(), torch.device("cpu"), "fp32")
    floats.takes_samples = False
    return samples, floats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--megapixels", type=float, default=12.0)
    ap.add_argument("--repeats", type=count, default=3)
    ap.add_argument("--quality", type=int, default=95)
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="derain-io-"))
    try:
        src, out = work / "in.jpg", work / "out.jpg"
        w, h = make_photo(src, args.megapixels)
        loaded = images.read_image(src)
        rgb = loaded.pixels.astype(np.float32) / np.float32(255.0)  # as the network returns it
        if not np.array_equal(images._quantise(rgb, 8, False), reference_quantise(rgb)):
            raise SystemExit("quantise differs from the reference")
        prepared = images.prepare_image(out, rgb, like=loaded, quality=args.quality)
        samples, floats = identity_runners()
        stages: dict[str, Callable[[], object]] = {
            "read": lambda: images.read_image(src),
            "quantise": lambda: images._quantise(rgb, 8, False),
            "quantise, reference (nan_to_num + clip)": lambda: reference_quantise(rgb),
            "prepare": lambda: images.prepare_image(out, rgb, like=loaded,
                                                    quality=args.quality),
            "write": lambda: prepared.write(replace=True),
            "network call, identity, 8-bit tiles": lambda: tiling.run_tiled(
                loaded.pixels, samples, 0, 0, hwc=True),
            "network call, identity, float32 tiles (before)": lambda: tiling.run_tiled(
                loaded.pixels, floats, 0, 0, hwc=True),
        }
        best = {name: float("inf") for name in stages}
        for _ in range(args.repeats):
            for name, fn in stages.items():
                t0 = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - t0)
        print(f"{w}x{h} ({w * h / 1e6:.1f} MP) JPEG, quality {args.quality}; "
              f"best of {args.repeats} interleaved rounds")
        print("| stage | seconds | x quantise |")
        print("| --- | ---: | ---: |")
        for name, s in best.items():
            print(f"| {name} | {s:.3f} | {s / best['quantise']:.1f} |")
        total = best["read"] + best["prepare"] + best["write"]
        print(f"read + prepare + write: {total:.3f} s per photo")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
