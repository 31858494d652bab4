"""Tiled inference: any image size through a fixed-size window.

Only tiles travel to the device; the input (uint8/uint16 samples are scaled to
float32 tile by tile) and the float32 output accumulator stay in host memory
(numpy); the blend windows' sum is separable, two vectors (``_Layout``), so each
tile's window is normalised as it is added. The input is not copied to pad it to the
model's size multiple: tiles at the border gather their padding through index
arrays. Tiles are spread evenly, start on the model's size multiple (so RDMC's
pooling grid is the same as on the whole image), overlap by at least ``overlap``
pixels and are blended with a smooth window that ignores each tile's outer
quarter-overlap, where zero padding disturbs the result, and cross-fades over the
next half.

Whole-image statistics: a model whose runner reports ``global_stats_shape``
(Semi-DRDNet's squeeze-and-excitation means) is first run in "statistics"
passes. Each pass sums the pooled activations over every tile, weighted by a
partition of unity (the normalised blend window), so each pixel counts once;
the sums over the image divided by its area are the whole-image means, which
the next pass and the final pass use instead of per-tile means. The first pass
has to start from per-tile means, so the estimate is a fixed-point iteration:
block k's means are exact after k passes. In practice one pass is enough: with
the shipped semi-drdnet-lite on a 1024 px rainy photo in 256 px tiles, naive
tiles agree with the untiled output to 33.6 dB and one pass to 73.1 dB with the
statistics tiles at the full overlap (``benchmarks/tiling_agreement.py``;
tests/test_tiling.py asserts >= 45 dB).

The statistics passes plan their own tiles with half the overlap: a mean over
hundreds of thousands of pixels does not notice the few disturbed ones near a tile's
edge, while the final pass's blend does. On that photo the agreement is the same
(73.3 dB; semi-drdnet-fast's earlier weights 74.2 dB fp32, 53.2 dB int8, against 74.1
and 53.3 with the full overlap) and a 12-megapixel photo in 512 px tiles sends 9 % fewer pixels
through the statistics pass (no overlap at all: 17 % fewer, but 62 dB fp32 and
46.5 dB for semi-drdnet-lite's int8 graph; ``benchmarks/tiling_agreement.py
--stats-overlap 0``).

On large images the statistics pass samples (``sample_tiles``): from twice
``STATS_MEGAPIXELS`` (4) million pixels on, it plans 256 px tiles
(``STATS_SAMPLE_TILE``) and runs a diagonal lattice of them, one in two or three,
dividing by the sampled tiles' weight instead of the image area. A mean needs a
representative sample, not every pixel, and many small samples estimate it better
than a few large ones. On a 12-megapixel photo this cuts the statistics pass to about
a third. Measured against an untiled pass on a 6 MP mosaic of distinct photos (a hard
case: neighbouring tiles share nothing), with the sample forced to a third as on a
12 MP photo (``benchmarks/stats_sampling.py --megapixels 6 --budget 2 --untiled``; an
untiled 12 MP pass was stopped at 18 GB of RAM): semi-drdnet-lite's int8 graph goes from 49.0 dB
(every tile) to 45.3 dB, semi-drdnet-tiny's (the default then) from 55.4 to 48.1 dB, its
statistics pass from 16.9 to 4.9 s (one thread). Images below 8 MP, the 1024 px
criterion included, use every tile; ``stats_megapixels=0`` always does.

The runner protocol works on numpy arrays so the PyTorch and ONNX Runtime
backends share this code. A runner that says ``takes_samples`` (the PyTorch one) gets an
8-bit photo's tiles as they are, (b, h, w, 3) uint8, and scales them itself: on a GPU
that sends a quarter of the bytes and leaves the host no conversion to do (NHWC is
also the channels_last layout the network runs in, so nothing is transposed either).

Several tiles per forward pass (``batch``): the final pass's tiles all have one shape
(``tile_shape``), so consecutive tiles are stacked into one batch; a GPU then runs
fewer, larger kernels. A runner that can work asynchronously (``submit``/``collect``:
the PyTorch runner on CUDA) gets the next batch queued before the previous one is
collected, so the host cuts and blends tiles while the device computes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

#: Statistics passes before the final pass (see the module docstring).
STATS_PASSES = 1
#: Pixels (millions) the statistics pass samples on large images; 0 or None: every tile.
STATS_MEGAPIXELS = 4.0
#: ... but never fewer than one tile in this many: sparser lattices are lines of tiles
#: that miss whole regions (1 tile in 4 of a 5x5 grid is its anti-diagonal).
MAX_STATS_STRIDE = 3
#: Tile size of a sampled statistics pass (smaller than the final pass's 512-1024 px).
STATS_SAMPLE_TILE = 256
#: Progress (``on_tile``): what a statistics pixel costs against a final-pass one. The
#: statistics pass runs Semi-DRDNet's rain network alone, about half the network: 0.25
#: to 0.5 of its convolutions in the bundled configurations (6 + 2 blocks: 0.5).
STATS_COST = 0.5


#: ``pad_small``: a side shorter than this is mirrored out to it before the network runs ...
SMALL_SIDE = 256
#: ... as long as the padded image is at most this many times the image's pixels (or
#: ``SMALL_SIDE`` squared) ...
PAD_MAX_GROWTH = 4
#: ... and adds at most this many pixels: a thin strip (3 x 20000 px) is mirrored out less
#: (256 px rows would be 85 times its pixels, and an audit measured the time and memory
#: follow), and a huge one under 256 px (64 x 3 million) does not outgrow the memory its
#: own size was allowed.
PAD_MAX_EXTRA = 8_000_000


def padded_shape(h: int, w: int, side: int = SMALL_SIDE) -> tuple[int, int]:
    """The size ``pad_small`` runs an h x w image at: each side under ``side`` mirrored out
    to it, within ``PAD_MAX_GROWTH`` and ``PAD_MAX_EXTRA`` (the short side of a strip
    grows less; the long side never). A ``side`` above 2828 px counts as 2828: a square of
    it is 8 MP, ``PAD_MAX_EXTRA``."""
    side = min(side, math.isqrt(PAD_MAX_EXTRA))
    th, tw = max(h, side), max(w, side)
    budget = min(max(side * side, PAD_MAX_GROWTH * h * w), h * w + PAD_MAX_EXTRA)
    if th * tw > budget:  # a strip: one side at least ``side``, the other short
        if h < w:
            th = max(h, min(side, budget // w))
        else:
            tw = max(w, min(side, budget // h))
    return th, tw


def pad_small(image: np.ndarray, side: int = SMALL_SIDE, *, hwc: bool = True
              ) -> tuple[np.ndarray, tuple[slice, ...]]:
    """An (H, W, C) image (``hwc=False``: (C, H, W)) mirrored (``np.pad``'s symmetric mode,
    centred) out to ``padded_shape``, and the index that cuts the image back out of the
    result; the image itself when no side is shorter than ``side`` (0: never).

    Why: the networks learned on crops of 64-256 px inside larger photos and behave
    differently on a whole image much smaller than that (their deepest features and
    Semi-DRDNet's whole-image means see mostly border). On centre crops of evaluation
    pairs (``benchmarks/small_images.py``, README "Small images") rdmc-lite's rain100l
    crops of 16 / 64 / 128 px went from 26.5 / 30.2 / 32.0 dB to 31.8 / 32.4 / 32.3 dB,
    and flat colours of 1-16 px had come back up to 23 levels off; whole 481 x 321 images
    gained nothing from a mirrored border, so only small ones get it."""
    h, w = image.shape[:2] if hwc else image.shape[1:3]
    th, tw = padded_shape(h, w, side) if side > 0 else (h, w)
    ph, pw = th - h, tw - w
    if not (ph or pw):
        return image, (slice(None),) * image.ndim
    top, left = ph // 2, pw // 2
    y = 0 if hwc else 1  # the rows' axis
    pads = [(0, 0)] * image.ndim
    pads[y], pads[y + 1] = (top, ph - top), (left, pw - left)
    crop = (slice(None),) * y + (slice(top, top + h), slice(left, left + w))
    return np.pad(image, pads, mode="symmetric"), crop


def auto_tile(engine_tile: int, min_tile: int = 0) -> int:
    """The tile an engine runs with when the user gave none: its own (``engine_tile``),
    but at least twice a network's ``min_tile``. A network whose tiles must be large to
    agree with the whole image (RDMC) would otherwise spend most of each tile on overlap
    (rdmc-lite, 12 MP photo: 126.5 s in 512 px tiles, 85.8 s in 1024 px). ``Derainer``,
    the engine choice and the benchmark all size tiles here, so what they cost agrees."""
    return max(engine_tile, 2 * min_tile)


def effective_overlap(overlap: int, tile: int, multiple: int = 1) -> int:
    """The overlap ``run_tiled`` uses in ``tile`` px tiles (rounded to ``multiple``): at most
    half a tile; ``tile`` 0 (whole image): as given."""
    if tile <= 0:
        return overlap
    return min(overlap, max(multiple, tile // multiple * multiple) // 2)


def effective_tile(asked: int | None, engine_tile: int, min_tile: int = 0) -> int:
    """The tile ``Derainer`` runs: ``auto_tile`` when none was asked for, the asked one
    raised to a network's ``min_tile`` (smaller tiles would not agree with the whole
    image; ``Derainer`` says so), 0 for the whole image. The engine choice and the
    benchmark cost tiles here too, so they cost what runs."""
    if asked is None:
        return auto_tile(engine_tile, min_tile)
    return min_tile if 0 < asked < min_tile else asked


class Runner(Protocol):
    """What the tiler needs from a backend."""

    size_multiple: int
    global_stats_shape: tuple[int, int] | None

    def forward(self, x: np.ndarray, pooled: np.ndarray | None) -> np.ndarray:
        """(b, 3, h, w) float32 -> (b, 3, h, w) float32 (b > 1: ``run_tiled(batch=)``).
        A runner whose ``takes_samples`` attribute is true also takes (b, h, w, 3) uint8
        samples (scaled by 1/255 as it converts them), here and in ``stat_sums``."""

    def stat_sums(self, x: np.ndarray, pooled: np.ndarray | None, mask: np.ndarray) -> np.ndarray:
        """(1, 3, h, w), (1, n, c) or None, (1, 1, h, w) -> (1, n, c) mask-weighted sums."""


class AsyncRunner(Runner, Protocol):
    """A runner that can queue work on its device and hand the result over later."""

    def submit(self, x: np.ndarray, pooled: np.ndarray | None) -> object:
        """Queue ``forward`` of (b, 3, h, w) tiles; returns a handle for ``collect``."""

    def collect(self, handle: object) -> np.ndarray:
        """Wait for a submitted batch: (b, 3, h, w) float32."""


def _submitter(runner: Runner) -> tuple[Callable[[np.ndarray, np.ndarray | None], object],
                                        Callable[[object], np.ndarray]]:
    """``runner``'s submit/collect, or ``forward`` and the identity for synchronous ones."""
    submit, collect = getattr(runner, "submit", None), getattr(runner, "collect", None)
    if submit is not None and collect is not None:
        return submit, collect
    return runner.forward, lambda handle: handle  # type: ignore[return-value]


class TileOutOfMemory(RuntimeError):
    """Raised by a runner when a tile does not fit; the tiler retries smaller tiles.

    ``batch``: how many tiles the failed pass held (``run_tiled`` sets it), so the caller
    can try fewer tiles at once before smaller ones.
    """

    batch: int = 1


class TilesExhausted(MemoryError):
    """Even the smallest tile did not fit: the caller has already shrunk as far as it goes."""


@dataclass(frozen=True)
class Tile:
    y0: int
    y1: int
    x0: int
    x1: int


def tile_starts(length: int, tile: int, overlap: int, multiple: int = 1) -> list[int]:
    """Evenly spread starts (multiples of ``multiple``) of tiles covering ``length``."""
    if tile >= length:
        return [0]
    n = _count(length, tile, overlap, multiple)
    starts = [round(i * (length - tile) / (n - 1) / multiple) * multiple for i in range(n)]
    starts[-1] = length - tile
    return starts


#: How far from square a tile may be: sides up to this many times ``tile``, area up to
#: ``tile`` squared. Activations (memory) grow with the area, not the shape.
MAX_TILE_ASPECT = 2


def _axis_tile(length: int, n: int, overlap: int, multiple: int) -> int:
    """Smallest tile length (a multiple of ``multiple``) with which ``n`` evenly spread
    tiles cover ``length`` and overlap by at least ``overlap``."""
    if n <= 1:
        return length
    slack = overlap + multiple - 1  # starts are rounded to the multiple
    t = math.ceil((length + (n - 1) * slack) / n)
    return min(length, math.ceil(t / multiple) * multiple)


def _fewest(length: int, limit: int, overlap: int, multiple: int) -> int | None:
    """Fewest tiles along an axis whose length stays within ``limit`` (None: impossible)."""
    if length <= limit:
        return 1
    slack = overlap + multiple - 1
    usable = limit // multiple * multiple - slack
    if usable < multiple:
        return None
    n = max(2, math.ceil((length - slack) / usable))
    while _axis_tile(length, n, overlap, multiple) > limit:
        n += 1
    return n


def _count(length: int, tile: int, overlap: int, multiple: int) -> int:
    """How many tiles ``tile_starts`` spreads over ``length`` (no list made)."""
    if tile >= length:
        return 1
    return math.ceil((length - tile) / max(multiple, tile - overlap - (multiple - 1))) + 1


def tile_shape(h: int, w: int, tile: int, overlap: int, multiple: int = 1) -> tuple[int, int]:
    """The (height, width) of the tiles covering an h x w image with the least work.

    Tiles hold at most ``tile`` squared pixels (sides up to ``MAX_TILE_ASPECT`` times
    ``tile``), so a tile's memory is what a square ``tile`` px tile would need, but their
    shape follows the image: the grid (rows x columns) that sends the fewest pixels
    through the network, overlap included, wins. A 3000 px side in 1024 px tiles needs 4
    tiles either way; 786 px tiles do it with the requested overlap instead of 1024 px
    tiles overlapping by 365 px, which cut the work on a 12 MP photo by a third. Letting
    the shape follow the image as well saves a few per cent more (figures in the tests).
    """
    best: tuple[tuple[int, int, float], int, int] | None = None
    cap = MAX_TILE_ASPECT * tile
    min_side = max(1, tile // MAX_TILE_ASPECT)
    ny = _fewest(h, min(cap, h), overlap, multiple) or 1
    while True:
        th = _axis_tile(h, ny, overlap, multiple)
        nx = _fewest(w, min(cap, tile * tile // th), overlap, multiple)
        if ny > 1 and th - overlap - multiple + 1 < multiple:
            break  # more rows cannot keep the overlap
        if nx is not None:
            tw = _axis_tile(w, nx, overlap, multiple)
            n = _count(h, th, overlap, multiple) * _count(w, tw, overlap, multiple)
            key = (n * th * tw, n, max(th, tw) / min(th, tw))  # ties: squarer tiles
            if best is None or key < best[0]:
                best = (key, th, tw)
        if th <= min_side or ny >= h:
            break
        ny += 1
    if best is None:  # overlap too large for such small tiles: square tiles, as asked
        return min(tile, h), min(tile, w)
    return best[1], best[2]


def plan_tiles(h: int, w: int, tile: int, overlap: int, multiple: int = 1) -> list[Tile]:
    """Tiles of at most ``tile`` squared pixels covering an h x w image (already padded to
    ``multiple``), in row-major order; see ``tile_shape``."""
    th, tw = tile_shape(h, w, tile, overlap, multiple)
    return [
        Tile(y, y + th, x, x + tw)
        for y in tile_starts(h, th, overlap, multiple)
        for x in tile_starts(w, tw, overlap, multiple)
    ]


def _ramp(n: int, overlap: int) -> np.ndarray:
    """1-D weights for an interior edge: ~0 on the outer quarter, smooth rise over a half."""
    d = np.arange(n, dtype=np.float64) + 0.5
    lo, hi = overlap / 4, 3 * overlap / 4
    t = np.clip((d - lo) / max(hi - lo, 1e-9), 0.0, 1.0)
    return np.maximum(t * t * (3 - 2 * t), 1e-6)


def _axis_window(n: int, start: int, stop: int, length: int, overlap: int) -> np.ndarray:
    """One axis of a tile's blend window: faded at inner edges, flat at the image's."""
    wv = np.ones(n)
    if overlap > 0:
        if start > 0:
            wv = np.minimum(wv, _ramp(n, overlap))
        if stop < length:
            wv = np.minimum(wv, _ramp(n, overlap)[::-1])
    return wv


def _axis_windows(t: Tile, h: int, w: int, overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """A tile's row and column weights; its blend window is their outer product."""
    return (_axis_window(t.y1 - t.y0, t.y0, t.y1, h, overlap),
            _axis_window(t.x1 - t.x0, t.x0, t.x1, w, overlap))


@dataclass(frozen=True)
class _Layout:
    """A pass's tiles and their blend windows' sum, which is separable.

    The tiles are a grid (every row of tiles has the same columns) and each window is the
    product of a row weight and a column weight, so the windows' sum over the image is
    the product of the row weights' sum and the column weights' sum: two vectors instead
    of an image-sized plane (96 MB at 24 MP in float32).
    """

    tiles: list[Tile]
    overlap: int
    ysum: np.ndarray  # (h,) float64
    xsum: np.ndarray  # (w,) float64

    def window(self, t: Tile, h: int, w: int) -> np.ndarray:
        """Tile ``t``'s blend window divided by the sum: the tiles' weights add up to 1."""
        wy, wx = _axis_windows(t, h, w, self.overlap)
        wy, wx = wy / self.ysum[t.y0:t.y1], wx / self.xsum[t.x0:t.x1]
        return (wy[:, None] * wx[None, :]).astype(np.float32)


def _padded_indices(h: int, w: int, multiple: int) -> tuple[np.ndarray, np.ndarray]:
    """Source row and column of every pixel of the image padded to ``multiple``.

    The padding ``np.pad`` would add (reflect, or edge where the image is too small to
    reflect), as indices: tiles are cut from the unpadded image through them, so no
    padded copy of a large photo is ever made (288 MB for 24 MP in float32).
    """
    ph, pw = (-h) % multiple, (-w) % multiple
    mode = "reflect" if ph < h and pw < w else "edge"
    return (np.pad(np.arange(h), (0, ph), mode=mode),
            np.pad(np.arange(w), (0, pw), mode=mode))


class _TileReader:
    """Cuts tiles out of an image as the runner takes them: (1, 3, th, tw) float32 in [0, 1],
    or (1, th, tw, 3) uint8 for a runner that scales 8-bit samples itself.

    Tiles reaching past the image gather its padding (to the model's size ``multiple``)
    through index arrays, so no padded copy of the image is made; ``h`` and ``w`` are the
    padded size, ``h0`` and ``w0`` the image's.
    """

    def __init__(self, image: np.ndarray, runner: Runner, hwc: bool, multiple: int) -> None:
        self.image, self.hwc = image, hwc
        self.h0, self.w0 = image.shape[:2] if hwc else image.shape[1:]
        self.inv_scale = (np.float32(1.0 / np.iinfo(image.dtype).max)
                          if image.dtype.kind == "u" else None)
        # 8-bit photo tiles as they are, for a runner that scales them itself (module docstring)
        self.samples = hwc and image.dtype == np.uint8 and getattr(runner, "takes_samples", False)
        self.rows, self.cols = _padded_indices(self.h0, self.w0, multiple)
        self.h, self.w = len(self.rows), len(self.cols)

    def __call__(self, t: Tile) -> np.ndarray:
        src, hwc = self.image, self.hwc
        if t.y1 <= self.h0 and t.x1 <= self.w0:  # inside the image: a view
            part = src[t.y0:t.y1, t.x0:t.x1] if hwc else src[:, t.y0:t.y1, t.x0:t.x1]
        else:  # reaches into the padding
            ys, xs = self.rows[t.y0:t.y1, None], self.cols[None, t.x0:t.x1]
            part = src[ys, xs] if hwc else src[:, ys, xs]
        if self.samples:  # (1, th, tw, 3) uint8; no copy when the tile is whole rows
            return np.ascontiguousarray(part)[None]
        if hwc:
            part = part.transpose(2, 0, 1)
        if self.inv_scale is not None:
            x = np.ascontiguousarray(part, dtype=np.float32)
            x *= self.inv_scale
            return x[None]
        return (np.ascontiguousarray(part) if hwc else part)[None]


def _work(t: Tile, cost: float = 1.0) -> int:
    """A tile's share of the progress count: its pixels through the network, at ``cost``."""
    return max(1, round((t.y1 - t.y0) * (t.x1 - t.x0) * cost))


@dataclass
class _Progress:
    """Work done and in all, in ``_work`` units, reported to ``on_tile`` after each tile."""

    total: int
    on_tile: Callable[[int, int], None] | None
    done: int = 0

    def add(self, t: Tile, cost: float = 1.0) -> None:
        self.done += _work(t, cost)
        if self.on_tile:
            self.on_tile(self.done, self.total)


def _statistics(runner: Runner, read: _TileReader, layout: _Layout, keep: list[int],
                passes: int, shape: tuple[int, ...], progress: _Progress) -> np.ndarray | None:
    """The whole-image statistics after ``passes`` passes over ``layout``'s tiles ``keep``
    (None without passes): the module docstring's fixed-point iteration."""
    pooled = None
    h, w = read.h, read.w
    for _ in range(passes):
        sums = np.zeros((1, *shape), np.float64)
        weight = 0.0
        for i in keep:
            t = layout.tiles[i]
            # Pixels of the reflect padding are not part of the image.
            mask = (layout.window(t, h, w) * _inside(t, read.h0, read.w0))[None, None]
            sums += runner.stat_sums(read(t), pooled, mask)
            weight += float(mask.sum(dtype=np.float64))
            progress.add(t, STATS_COST)
        # Every tile: the weights are a partition of unity, so they sum to the image area.
        area = read.h0 * read.w0 if len(keep) == len(layout.tiles) else weight
        pooled = (sums / area).astype(np.float32)
    return pooled


def _output_array(read: _TileReader) -> np.ndarray:
    """The float32 result's array, zeroed: made before the statistics pass, so a photo
    whose result cannot fit fails at once, not after minutes of work (an audit)."""
    h, w = read.h, read.w
    return np.zeros((h, w, 3) if read.hwc else (3, h, w), np.float32)


def _final_pass(runner: Runner, read: _TileReader, layout: _Layout, pooled: np.ndarray | None,
                batch: int, progress: _Progress, out: np.ndarray | None = None) -> np.ndarray:
    """The network's output over the padded image: ``batch`` tiles per forward pass, each
    blended in with its normalised window (they sum to 1 at every pixel: no division at
    the end). An asynchronous runner gets the next batch queued before the previous one is
    blended; a result that is there at once (a CPU's) is blended at once, so progress
    counts each tile when it is done (it came one tile late: an audit)."""
    h, w = read.h, read.w
    out = _output_array(read) if out is None else out
    submit, collect = _submitter(runner)
    n = max(1, batch)
    groups = [layout.tiles[i:i + n] for i in range(0, len(layout.tiles), n)]

    def blend(done: list[Tile], preds: np.ndarray) -> None:
        for t, pred in zip(done, preds, strict=True):
            win = layout.window(t, h, w)
            if read.hwc:
                out[t.y0:t.y1, t.x0:t.x1] += pred.transpose(1, 2, 0) * win[:, :, None]
            else:
                out[:, t.y0:t.y1, t.x0:t.x1] += pred * win
            progress.add(t)

    pending: tuple[list[Tile], object] | None = None
    for group in [*groups, None]:
        queued = None
        if group is not None:
            x = read(group[0]) if len(group) == 1 else np.concatenate([read(t) for t in group])
            try:
                queued = (group, submit(x, pooled))
            except TileOutOfMemory as e:
                e.batch = len(group)
                raise
        if pending is not None:
            blend(pending[0], collect(pending[1]))
        if queued is not None and isinstance(queued[1], np.ndarray):  # done already
            blend(*queued)  # type: ignore[arg-type]
            queued = None
        pending = queued
    return out


def run_tiled(
    image: np.ndarray,
    runner: Runner,
    tile: int,
    overlap: int,
    *,
    stats_passes: int = STATS_PASSES,
    stats_overlap: int | None = None,
    stats_megapixels: float | None = STATS_MEGAPIXELS,
    on_tile: Callable[[int, int], None] | None = None,
    hwc: bool = False,
    batch: int = 1,
) -> np.ndarray:
    """Run ``runner`` over a (3, H, W) image in tiles and blend the result (float32).

    The image is float32 in [0, 1], or uint8/uint16 samples: those are scaled to [0, 1]
    tile by tile, so a large photo is never held in host memory as float32 (12 bytes
    a pixel instead of 3 or 6).
    ``hwc=True`` takes and returns (H, W, 3) instead: a photo's natural layout, so the
    caller never holds a transposed copy of a large image; only tiles are transposed
    (host memory for an 80 MP photo: the input and the float32 output).
    ``tile`` <= 0 or a tile covering the image means one pass over the whole
    image. Raises TileOutOfMemory from the runner unchanged (the caller shrinks).
    ``stats_overlap`` (default: half of ``overlap``) is the overlap of the statistics
    passes' tiles; see the module docstring. ``stats_megapixels`` caps the pixels a
    statistics pass runs through (a spread-out sample of its tiles, ``sample_tiles``).
    ``batch``: tiles per forward pass of the final pass (see the module docstring).
    ``on_tile(done, total)`` is called after each tile with the work done and in all,
    counted in pixels through the network (a statistics pass's at ``STATS_COST`` each):
    a fraction that grows with time, for progress bars and their time estimates. (Counted
    in tiles, an 80 MP photo's 500 small, cheap statistics tiles made the first 57 % of
    the count take 16 % of the time.)
    """
    for what, v, least in (("overlap", overlap, 0), ("batch", batch, 1)):  # a negative
        # overlap blended the tiles into a broken image in silence (an audit)
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < least:
            raise ValueError(f"{what} must be a whole number of at least {least}, not {v!r}")
    m = max(1, runner.size_multiple)
    read = _TileReader(image, runner, hwc, m)
    h0, w0 = read.h0, read.w0
    if tile <= 0 or (tile >= h0 and tile >= w0):
        out = runner.forward(read(Tile(0, h0, 0, w0)), None)[0]
        if on_tile:
            on_tile(h0 * w0, h0 * w0)
        return out.transpose(1, 2, 0)[:h0, :w0] if hwc else out[:, :h0, :w0]
    overlap = effective_overlap(overlap, tile, m)
    tile = max(m, tile // m * m)
    h, w = read.h, read.w
    final = _layout(h, w, tile, overlap, m)

    shape = runner.global_stats_shape
    passes = stats_passes if shape is not None and len(final.tiles) > 1 else 0
    stats, keep = final, []
    if passes:
        stats_overlap = _stats_overlap(overlap, stats_overlap)
        s_tile = _stats_tile(h, w, tile, m, stats_megapixels)
        if stats_overlap != overlap or s_tile != tile:
            stats = _layout(h, w, s_tile, stats_overlap, m)
        keep = sample_tiles(stats.tiles, stats_megapixels if _sampled(h, w, stats_megapixels)
                            else None)
    progress = _Progress(passes * sum(_work(stats.tiles[i], STATS_COST) for i in keep)
                         + sum(_work(t) for t in final.tiles), on_tile)
    out = _output_array(read)
    pooled = _statistics(runner, read, stats, keep, passes, shape, progress) if passes else None
    out = _final_pass(runner, read, final, pooled, batch, progress, out)
    return out[:h0, :w0] if hwc else out[:, :h0, :w0]


def work_per_pixel(h: int, w: int, tile: int, overlap: int, multiple: int = 1, *,
                   stats: bool = False, stats_cost: float = STATS_COST,
                   stats_passes: int = STATS_PASSES,
                   stats_megapixels: float | None = STATS_MEGAPIXELS) -> float:
    """Pixels ``run_tiled`` sends through the network per pixel of an h x w image (a
    statistics pixel at ``stats_cost``; ``stats``: the runner has whole-image statistics),
    a small image's mirrored border included (``Derainer`` runs it at ``padded_shape``).

    Why: the same network costs more in small tiles (overlap, plus the statistics pass
    once there are two tiles or more), so engines run in different tiles (ONNX Runtime's
    512 px, PyTorch's 1024 px on CPUs) are compared per pass times this.
    """
    area = h * w
    h, w = padded_shape(h, w)  # a small image runs mirrored out (``pad_small``)
    hp, wp = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    if tile <= 0 or (tile >= h and tile >= w):
        return hp * wp / area
    overlap = effective_overlap(overlap, tile, multiple)
    tile = max(multiple, tile // multiple * multiple)
    tiles = plan_tiles(hp, wp, tile, overlap, multiple)
    px = sum((t.y1 - t.y0) * (t.x1 - t.x0) for t in tiles)
    passes = stats_passes if stats and len(tiles) > 1 else 0
    stats_px = sum((t.y1 - t.y0) * (t.x1 - t.x0) for t in statistics_tiles(
        hp, wp, tile, overlap, multiple, stats_megapixels=stats_megapixels)) if passes else 0
    return (px + passes * stats_px * stats_cost) / area


def _stats_overlap(overlap: int, stats_overlap: int | None) -> int:
    return min(overlap // 2 if stats_overlap is None else stats_overlap, overlap)


def _sampled(h: int, w: int, megapixels: float | None) -> bool:
    """Whether the statistics pass of an h x w image samples: twice the budget or more."""
    return bool(megapixels) and megapixels > 0 and h * w >= 2 * megapixels * 1e6


def _stats_tile(h: int, w: int, tile: int, multiple: int, megapixels: float | None) -> int:
    """The statistics pass's tile size: the final pass's, or ``STATS_SAMPLE_TILE`` when
    the image is sampled (more, smaller samples estimate a mean better)."""
    if not _sampled(h, w, megapixels):
        return tile
    return max(multiple, min(tile, STATS_SAMPLE_TILE) // multiple * multiple)


def statistics_tiles(h: int, w: int, tile: int, overlap: int, multiple: int = 1, *,
                     stats_overlap: int | None = None,
                     stats_megapixels: float | None = STATS_MEGAPIXELS) -> list[Tile]:
    """The tiles one statistics pass of ``run_tiled`` runs for an h x w image (already
    padded to ``multiple``, tile size already a multiple of it): for cost accounting."""
    size = _stats_tile(h, w, tile, multiple, stats_megapixels)
    tiles = plan_tiles(h, w, size, _stats_overlap(overlap, stats_overlap), multiple)
    budget = stats_megapixels if _sampled(h, w, stats_megapixels) else None
    return [tiles[i] for i in sample_tiles(tiles, budget)]


def sample_tiles(tiles: list[Tile], megapixels: float | None) -> list[int]:
    """Indices of a spread-out subset of ``tiles`` (row-major, as ``plan_tiles`` makes them)
    with about ``megapixels`` million pixels in all; every index when that is most of them.

    The subset is a diagonal lattice over the tile grid: every s-th tile of each row,
    shifted by one from row to row, so each row and each column of the grid is sampled
    alike (s = 2 is a checkerboard). Why: the statistics pass only estimates
    whole-image means, and on a 12-megapixel photo a third of it estimates them well
    (``benchmarks/stats_sampling.py``), for a third of the time.
    """
    n = len(tiles)
    if not megapixels or megapixels <= 0 or n < 2:
        return list(range(n))
    t = tiles[0]
    want = math.ceil(megapixels * 1e6 / ((t.y1 - t.y0) * (t.x1 - t.x0)))
    stride = min(MAX_STATS_STRIDE, n // max(1, want))
    if stride < 2:
        return list(range(n))
    cols = sum(1 for u in tiles if u.y0 == t.y0)
    return [i for i in range(n) if (i % cols + i // cols) % stride == 0]


def _layout(h: int, w: int, tile: int, overlap: int, multiple: int) -> _Layout:
    """A pass's tiles and their windows' separable sum (``_Layout``).

    The windows themselves are made again tile by tile when used: kept for every tile,
    they were another 126 MB on a 24-megapixel photo.
    """
    tiles = plan_tiles(h, w, tile, overlap, multiple)
    ysum, xsum = np.zeros(h), np.zeros(w)
    for y0, y1 in sorted({(t.y0, t.y1) for t in tiles}):
        ysum[y0:y1] += _axis_window(y1 - y0, y0, y1, h, overlap)
    for x0, x1 in sorted({(t.x0, t.x1) for t in tiles}):
        xsum[x0:x1] += _axis_window(x1 - x0, x0, x1, w, overlap)
    return _Layout(tiles, overlap, ysum, xsum)


def _inside(t: Tile, h0: int, w0: int) -> np.ndarray:
    ys = (np.arange(t.y0, t.y1) < h0).astype(np.float32)
    xs = (np.arange(t.x0, t.x1) < w0).astype(np.float32)
    return ys[:, None] * xs[None, :]
