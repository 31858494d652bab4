"""A folder of photos end to end against the model alone: how much throughput I/O costs.

Issue 6's GPU target: deraining a folder of 12-megapixel JPEGs end to end should reach at
least 80 % of the model's own throughput, which takes decoding and encoding off the
device's critical path (``batch.BatchOptions.io_workers``). This measures, in one process
and one run:

* **in memory**: ``Derainer.derain_array`` on an already decoded photo (tiling, the
  network, blending; no decoding, encoding or disk), best of ``--repeats``;
* **folder**: ``batch.run_batch`` over ``--count`` JPEGs (``-o`` a folder, quality 95)
  with each of ``--io-threads`` (default: the device's default, and 0: all in turn),
  megapixels per second of the whole batch; best of ``--repeats`` interleaved rounds.

A second table says where each folder run's time went, per photo, from the stages timed
on the threads that ran them (``Timeline``: ``batch``'s read, derain, quantise and write
steps wrapped for the run): the main thread's derain call against the same call in
memory (above 1.00x: the I/O threads slowed the network's host work down) and the main
thread's waits (the rest of the wall time: for a read, for a write slot, the first read
and last write). Which of the two is large says whether the I/O is too slow to hide or
contends with the network call.

``--stand-in SECONDS`` replaces the network with a stand-in that converts the photo to
float once (H x W x 3, contiguous, as PyTorch's channels_last pass returns it) and waits
the rest of ``SECONDS`` without holding the GIL, as a call that waits
for a GPU looks to the host; it reports as a GPU, so the GPU's I/O-thread default applies.
On any CPU it measures how much of the I/O the folder loop itself can hide, apart from
the host work a real network adds (tiling, copies, blending).
``--io-stand-in READ,WRITE`` also replaces reading and writing a photo by waits of those
seconds (the photo is still read, so use it with small ``--megapixels``): with both
stand-ins nothing uses the CPU, and the table is the loop's own schedule, the share of
the network's time it can reach at best for those step times.

The photos are 4:3 mosaics of the bundled rainy examples (as ``photo_e2e.py``), each
a little different (mirrored, rotated order), saved as quality-92 JPEGs. The model is
loaded and warmed up once before anything is timed: process start-up and model loading
are per folder, not per photo, and ``photo_e2e.py`` times them.

    python benchmarks/folder_e2e.py [--device cuda] [-m semi-drdnet] [--precision auto]
        [--megapixels 12] [--count 8] [--repeats 2] [--io-threads auto,0] [--stand-in S]
        [--io-stand-in READ,WRITE]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

from photo_e2e import add_model_args, make_photo  # noqa: E402  (benchmarks/ is on sys.path: the script's folder)

from derain_cli import batch  # noqa: E402
from derain_cli.batch import BatchOptions, collect_inputs, resolve_io_workers, run_batch  # noqa: E402
from derain_cli.enhancer import Derainer  # noqa: E402
from derain_cli.images import read_image  # noqa: E402


def make_photos(folder: Path, count: int, megapixels: float) -> tuple[int, int]:
    """``count`` different mosaics of ``examples/*_rain.jpg`` (``photo_e2e.make_photo``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        size = make_photo(folder / f"photo{n:02d}.jpg", megapixels, variant=n)
    return size


class StandIn:
    """A network that only waits: ``seconds`` per photo, one float conversion included."""

    device_name = "cuda"  # for the I/O-thread default; no GPU is used
    model_name = "stand-in"
    precision = "none"
    engine_note = None

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def derain_array(self, rgb: np.ndarray, on_tile=None) -> np.ndarray:  # noqa: ANN001
        t0 = time.perf_counter()
        out = np.multiply(rgb, np.float32(1 / 255), dtype=np.float32)
        time.sleep(max(0.0, self.seconds - (time.perf_counter() - t0)))
        return out


@contextmanager
def patched_batch(replacements: dict[str, Callable]) -> Iterator[None]:
    """``batch``'s functions of these names replaced for the duration (the pipelined loop
    and the serial one both look them up at call time), then put back."""
    saved = {name: getattr(batch, name) for name in replacements}
    for name, fn in replacements.items():
        setattr(batch, name, fn)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(batch, name, fn)


def io_stand_in(read_s: float, write_s: float) -> AbstractContextManager:
    """``batch``'s read and write of a photo replaced by waits (``--io-stand-in``): the read
    still reads (the stand-in network needs pixels), the write only waits."""
    real_read = batch._read

    def read(job, options):  # noqa: ANN001, ANN202
        time.sleep(read_s)
        return real_read(job, options)

    def encode(job, box, options) -> float:  # noqa: ANN001
        h, w = box.pop().pixels.shape[:2]
        time.sleep(write_s)
        return h * w / 1e6

    return patched_batch({"_read": read, "_encode": encode})


class Timeline:
    """Each photo's read, derain, quantise and write, timed on the thread that ran it.

    ``installed()`` wraps ``batch``'s step functions for the duration of a run
    (``patched_batch``); ``per_photo``
    turns the spans into seconds a photo.
    """

    #: the wrapped ``batch`` functions and what each is called in the table
    STEPS = {"_read": "read", "_derain": "derain", "_prepare": "quantise", "_encode": "encode"}

    def __init__(self) -> None:
        self.spans: list[tuple[str, bool, float]] = []  # (step, on the main thread, seconds)

    def _wrap(self, step: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:  # list.append is atomic: the I/O threads append too
                self.spans.append((step, threading.current_thread() is threading.main_thread(),
                                   time.perf_counter() - t0))
        return timed

    @contextmanager
    def installed(self) -> Iterator[Timeline]:
        wrapped = {name: self._wrap(label, getattr(batch, name))
                   for name, label in self.STEPS.items()}
        with patched_batch(wrapped):
            yield self

    def per_photo(self, photos: int, wall: float) -> dict[str, float]:
        """Seconds a photo: each step (``write`` is encode minus quantise: file encoding
        and the atomic write), ``main waits`` the main thread's wall time outside them."""
        total = {label: 0.0 for label in self.STEPS.values()}
        main_busy = 0.0
        for step, on_main, secs in self.spans:
            total[step] += secs
            if on_main and step != "quantise":  # quantise runs inside encode
                main_busy += secs
        out = {k: v / photos for k, v in total.items() if k != "encode"}
        out["write"] = (total["encode"] - total["quantise"]) / photos
        out["main waits"] = max(0.0, wall - main_busy) / photos
        return out


def parser() -> argparse.ArgumentParser:
    """The command line (tests/test_recipes.py parses recipes/gpu-session.sh's calls with it)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--io-threads", default="auto,0",
                    help="comma-separated I/O thread counts to time the folder with; auto: "
                         "the default for the device")
    ap.add_argument("--stand-in", type=float, default=None, metavar="SECONDS",
                    help="replace the network with a wait of this many seconds per photo")
    ap.add_argument("--io-stand-in", default=None, metavar="READ,WRITE",
                    help="replace reading and writing a photo with waits of these seconds")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="derain-folder-"))
    try:
        w, h = make_photos(work / "in", args.count, args.megapixels)
        mp = w * h / 1e6
        if args.stand_in is not None:
            derainer = StandIn(args.stand_in)
        else:
            derainer = Derainer(model=args.model, device=args.device,
                                precision=args.precision, workload_megapixels=mp * args.count)
        print(f"{args.count} photos of {w}x{h} ({mp:.1f} MP); model {derainer.model_name}, "
              f"{derainer.device_name}, {derainer.engine_note or derainer.precision}")
        pixels = read_image(work / "in" / "photo00.jpg").pixels
        derainer.derain_array(pixels)  # warm-up: sessions, kernels, autotuning
        memory = "in memory (derain_array)"
        rows: dict[str, float] = {}
        steps: dict[str, dict[str, float]] = {}  # per folder run: its best round's timeline
        in_memory = float("inf")
        items = collect_inputs([str(work / "in")])
        io_waits: Callable[[], AbstractContextManager] = nullcontext  # a new one per run
        if args.io_stand_in:
            read_s, write_s = (float(v) for v in args.io_stand_in.split(","))
            io_waits = lambda: io_stand_in(read_s, write_s)  # noqa: E731
        configs = [None if v == "auto" else int(v) for v in args.io_threads.split(",")]
        labels = {c: "folder, --io-threads "
                  + str(resolve_io_workers(BatchOptions(io_workers=c), derainer))
                  + (" (the default here)" if c is None else "") for c in configs}
        for _ in range(args.repeats):  # interleaved rounds: a busy moment hits all alike
            in_memory = min(in_memory, _timed(lambda: derainer.derain_array(pixels)))
            rows[memory] = mp / in_memory
            # each figure as it is taken: a run cut short by a timeout keeps what it measured
            print(f"  {memory}: {mp / in_memory:.3f} MP/s", flush=True)
            for c in configs:
                opts = BatchOptions(output=work / f"out{c}", io_workers=c, overwrite=True)
                with io_waits(), Timeline().installed() as timeline:
                    summary = run_batch(items, derainer, opts)
                if not summary.ok or summary.processed != args.count:
                    raise SystemExit(f"{labels[c]}: {summary.to_json()}")
                print(f"  {labels[c]}: {summary.megapixels_per_s:.3f} MP/s", flush=True)
                if summary.megapixels_per_s > rows.get(labels[c], 0.0):
                    rows[labels[c]] = summary.megapixels_per_s
                    steps[labels[c]] = timeline.per_photo(args.count, summary.seconds)
        base = rows[memory]
        print("| run | MP/s | share of in-memory |")
        print("| --- | ---: | ---: |")
        for label, rate in rows.items():
            print(f"| {label} | {rate:.3f} | {100 * rate / base:.0f} % |")
        print(f"\nSeconds a photo (in memory: {in_memory:.3f}); derain on the main thread, "
              "the rest where it ran:\n")
        print("| run | wall | derain | vs in memory | read | quantise | write | main waits |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for label, st in steps.items():
            print(f"| {label} | {mp / rows[label]:.3f} | {st['derain']:.3f} | "
                  f"{st['derain'] / in_memory:.2f}x | {st['read']:.3f} | {st['quantise']:.3f} | "
                  f"{st['write']:.3f} | {st['main waits']:.3f} |")
        if args.json:
            args.json.write_text(json.dumps({
                "model": derainer.model_name, "device": derainer.device_name,
                "precision": derainer.precision, "megapixels": mp, "count": args.count,
                "mp_per_s": rows, "in_memory_s": in_memory, "seconds_per_photo": steps},
                indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _timed(fn) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
