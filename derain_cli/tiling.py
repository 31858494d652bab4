"""Tiled inference: any image size through a fixed-size window.

Only tiles travel to the device; the padded input, the output accumulator and
the weight sum stay in host memory (numpy). Tiles are spread evenly, start on
the model's size multiple (so RDMC's pooling grid is the same as on the whole
image), overlap by at least ``overlap`` pixels and are blended with a smooth
window that ignores each tile's outer quarter-overlap, where zero padding
disturbs the result, and cross-fades over the next half.

Whole-image statistics: a model whose runner reports ``global_stats_shape``
(Semi-DRDNet's squeeze-and-excitation means) is first run in "statistics"
passes. Each pass sums the pooled activations over every tile, weighted by a
partition of unity (the normalised blend window), so each pixel counts once;
the sums over the image divided by its area are the whole-image means, which
the next pass and the final pass use instead of per-tile means. The first pass
has to start from per-tile means, so the estimate is a fixed-point iteration:
block k's means are exact after k passes. In practice one pass is enough: with
the shipped semi-drdnet-lite on a 1024 px rainy photo in 256 px tiles, naive
tiles agree with the untiled output to 33.6 dB and one pass to 73.1 dB
(``benchmarks/tiling_agreement.py``; tests/test_tiling.py asserts >= 45 dB).

The statistics passes plan their own tiles with half the overlap: a mean over
hundreds of thousands of pixels does not notice the few disturbed ones near a tile's
edge, while the final pass's blend does. On that photo the agreement is the same
(73.3 dB; semi-drdnet-fast 74.2 dB fp32, 53.2 dB int8, against 74.1 and 53.3 with the
full overlap) and a 12-megapixel photo in 512 px tiles sends 9 % fewer pixels
through the statistics pass (no overlap at all: 17 % fewer, but 62 dB fp32 and
46.5 dB for semi-drdnet-lite's int8 graph; ``benchmarks/tiling_agreement.py
--stats-overlap 0``).

The runner protocol works on numpy arrays so the PyTorch and ONNX Runtime
backends share this code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

#: Statistics passes before the final pass (see the module docstring).
STATS_PASSES = 1


class Runner(Protocol):
    """What the tiler needs from a backend."""

    size_multiple: int
    global_stats_shape: tuple[int, int] | None

    def forward(self, x: np.ndarray, pooled: np.ndarray | None) -> np.ndarray:
        """(1, 3, h, w) float32 -> (1, 3, h, w) float32."""

    def stat_sums(self, x: np.ndarray, pooled: np.ndarray | None, mask: np.ndarray) -> np.ndarray:
        """(1, 3, h, w), (1, n, c) or None, (1, 1, h, w) -> (1, n, c) mask-weighted sums."""


class TileOutOfMemory(RuntimeError):
    """Raised by a runner when a tile does not fit; the tiler retries smaller tiles."""


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
    step = max(multiple, tile - overlap - (multiple - 1))
    n = math.ceil((length - tile) / step) + 1
    starts = [round(i * (length - tile) / (n - 1) / multiple) * multiple for i in range(n)]
    starts[-1] = length - tile
    return starts


def fit_tile(length: int, tile: int, overlap: int, multiple: int = 1) -> int:
    """Smallest tile length (<= ``tile``) that covers ``length`` with as few tiles as ``tile``.

    A 3000 px side in 1024 px tiles needs 4 tiles either way; 786 px tiles do it
    with the requested overlap instead of 1024 px tiles overlapping by 365 px,
    which cut the work on a 12 MP photo by a third.
    """
    if tile >= length:
        return length
    slack = overlap + multiple - 1
    n = math.ceil((length - tile) / max(1, tile - slack)) + 1
    t = math.ceil((length + (n - 1) * slack) / n)
    return min(tile, math.ceil(t / multiple) * multiple)


def plan_tiles(h: int, w: int, tile: int, overlap: int, multiple: int = 1) -> list[Tile]:
    """Tiles of at most ``tile`` px covering an h x w image (already padded to ``multiple``)."""
    th, tw = fit_tile(h, tile, overlap, multiple), fit_tile(w, tile, overlap, multiple)
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


def blend_window(t: Tile, h: int, w: int, overlap: int) -> np.ndarray:
    """Weight of each tile pixel: 1 inside and at image borders, faded near inner edges."""
    th, tw = t.y1 - t.y0, t.x1 - t.x0
    wy = np.ones(th)
    wx = np.ones(tw)
    if overlap > 0:
        if t.y0 > 0:
            wy = np.minimum(wy, _ramp(th, overlap))
        if t.y1 < h:
            wy = np.minimum(wy, _ramp(th, overlap)[::-1])
        if t.x0 > 0:
            wx = np.minimum(wx, _ramp(tw, overlap))
        if t.x1 < w:
            wx = np.minimum(wx, _ramp(tw, overlap)[::-1])
    return (wy[:, None] * wx[None, :]).astype(np.float32)


def _pad_to_multiple(img: np.ndarray, multiple: int, hwc: bool = False) -> np.ndarray:
    h, w = img.shape[:2] if hwc else img.shape[1:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not (ph or pw):
        return img
    mode = "reflect" if ph < h and pw < w else "edge"
    spatial = ((0, ph), (0, pw))
    return np.pad(img, (*spatial, (0, 0)) if hwc else ((0, 0), *spatial), mode=mode)


def run_tiled(
    image: np.ndarray,
    runner: Runner,
    tile: int,
    overlap: int,
    *,
    stats_passes: int = STATS_PASSES,
    stats_overlap: int | None = None,
    on_tile: Callable[[int, int], None] | None = None,
    hwc: bool = False,
) -> np.ndarray:
    """Run ``runner`` over a (3, H, W) float32 image in tiles and blend the result.

    ``hwc=True`` takes and returns (H, W, 3) instead: a photo's natural layout, so the
    caller never holds a transposed copy of a large image; only tiles are transposed
    (host memory for an 80 MP photo: the input, the float32 output and one weight plane).
    ``tile`` <= 0 or a tile covering the image means one pass over the whole
    image. Raises TileOutOfMemory from the runner unchanged (the caller shrinks).
    ``stats_overlap`` (default: half of ``overlap``) is the overlap of the statistics
    passes' tiles; see the module docstring.
    """
    h0, w0 = image.shape[:2] if hwc else image.shape[1:]

    def crop(src: np.ndarray, t: Tile) -> np.ndarray:  # (1, 3, th, tw) float32 for the runner
        if hwc:
            return np.ascontiguousarray(src[t.y0:t.y1, t.x0:t.x1].transpose(2, 0, 1))[None]
        return src[None, :, t.y0:t.y1, t.x0:t.x1]

    m = max(1, runner.size_multiple)
    if tile <= 0 or (tile >= h0 and tile >= w0):
        out = runner.forward(crop(image, Tile(0, h0, 0, w0)), None)[0]
        if on_tile:
            on_tile(1, 1)
        return out.transpose(1, 2, 0)[:h0, :w0] if hwc else out[:, :h0, :w0]
    tile = max(m, tile // m * m)
    overlap = min(overlap, tile // 2)
    img = _pad_to_multiple(image, m, hwc)
    h, w = img.shape[:2] if hwc else img.shape[1:]
    tiles, windows, wsum = _layout(h, w, tile, overlap, m)

    pooled = None
    shape = runner.global_stats_shape
    passes = stats_passes if shape is not None and len(tiles) > 1 else 0
    s_tiles, s_windows, s_wsum = tiles, windows, wsum
    if stats_overlap is None:
        stats_overlap = overlap // 2
    stats_overlap = min(stats_overlap, overlap)
    if passes and stats_overlap != overlap:
        s_tiles, s_windows, s_wsum = _layout(h, w, tile, stats_overlap, m)
    total = len(s_tiles) * passes + len(tiles)
    done = 0
    for _ in range(passes):
        sums = np.zeros((1, *shape), np.float64)
        for t, win in zip(s_tiles, s_windows, strict=True):
            mask = (win / s_wsum[t.y0:t.y1, t.x0:t.x1])[None, None]
            # Pixels of the reflect padding are not part of the image.
            mask = mask * _inside(t, h0, w0)[None, None]
            sums += runner.stat_sums(crop(img, t), pooled, mask)
            done += 1
            if on_tile:
                on_tile(done, total)
        pooled = (sums / (h0 * w0)).astype(np.float32)

    out = np.zeros((h, w, 3) if hwc else (3, h, w), np.float32)
    for t, win in zip(tiles, windows, strict=True):
        pred = runner.forward(crop(img, t), pooled)[0]
        if hwc:
            out[t.y0:t.y1, t.x0:t.x1] += pred.transpose(1, 2, 0) * win[:, :, None]
        else:
            out[:, t.y0:t.y1, t.x0:t.x1] += pred * win
        done += 1
        if on_tile:
            on_tile(done, total)
    del img
    out /= wsum[:, :, None] if hwc else wsum
    return out[:h0, :w0] if hwc else out[:, :h0, :w0]


def _layout(h: int, w: int, tile: int, overlap: int, multiple: int
            ) -> tuple[list[Tile], list[np.ndarray], np.ndarray]:
    """A pass's tiles, their blend windows and the windows' sum over the image."""
    tiles = plan_tiles(h, w, tile, overlap, multiple)
    windows = [blend_window(t, h, w, overlap) for t in tiles]
    wsum = np.zeros((h, w), np.float32)
    for t, win in zip(tiles, windows, strict=True):
        wsum[t.y0:t.y1, t.x0:t.x1] += win
    return tiles, windows, wsum


def _inside(t: Tile, h0: int, w0: int) -> np.ndarray:
    ys = (np.arange(t.y0, t.y1) < h0).astype(np.float32)
    xs = (np.arange(t.x0, t.x1) < w0).astype(np.float32)
    return ys[:, None] * xs[None, :]
