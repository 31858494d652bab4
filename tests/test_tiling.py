"""Tiled inference: even coverage, smooth blending, and agreement with untiled output."""

import itertools
import math

import numpy as np
import pytest
import torch

from derain_cli import tiling
from derain_cli.enhancer import TorchRunner, default_overlap
from derain_cli.models import MODELS, RDMC, RDMCConfig, SemiDRDNet, SemiDRDNetConfig, build_model
from derain_cli.weights import load_manifest, load_pretrained


def _scene(size: int, seed: int = 0) -> np.ndarray:
    """A (3, H, W) test image with very different halves, so per-tile statistics differ."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([0.2 + 0.6 * x, 0.5 + 0.4 * np.sin(6 * y), 0.3 + 0.5 * x * y])
    base[:, :, : size // 3] *= 0.15  # a dark band
    streaks = (rng.random((size, size)) > 0.995).astype(np.float32)
    for _ in range(12):  # crude vertical rain streaks
        streaks = np.maximum(streaks, np.roll(streaks, 1, axis=0))
    img = np.clip(base + 0.5 * streaks[None] + 0.05 * rng.standard_normal(base.shape), 0, 1)
    return img.astype(np.float32)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


@pytest.mark.parametrize("length,tile,overlap,multiple", [
    (1024, 256, 48, 1), (1000, 256, 48, 16), (257, 256, 32, 1), (100, 256, 32, 1), (64, 32, 8, 16),
])
def test_tiles_cover_evenly_with_overlap(length, tile, overlap, multiple):
    starts = tiling.tile_starts(length, min(tile, length), overlap, multiple)
    t = min(tile, length)
    assert starts[0] == 0 and starts[-1] + t == length
    steps = np.diff(starts)
    if len(steps):
        assert (t - steps >= overlap).all()
        assert steps.max() - steps.min() <= multiple  # evenly spread
    if length % multiple == 0:
        assert all(s % multiple == 0 for s in starts)


def _square_plan_pixels(h: int, w: int, tile: int, overlap: int, multiple: int) -> int:
    """Pixels processed by square-ish tiles fitted per axis (the planner before
    ``tiling.tile_shape``): the fewest tiles of at most ``tile`` px along each axis."""
    def axis(length: int) -> tuple[int, int]:
        if tile >= length:
            return 1, length
        slack = overlap + multiple - 1
        n = math.ceil((length - tile) / (tile - slack)) + 1
        t = min(tile, math.ceil(math.ceil((length + (n - 1) * slack) / n) / multiple) * multiple)
        return len(tiling.tile_starts(length, t, overlap, multiple)), t
    (ny, th), (nx, tw) = axis(h), axis(w)
    return ny * nx * th * tw


@pytest.mark.parametrize("h,w,tile,overlap,multiple", [
    (3000, 4000, 1024, 48, 1), (1008, 1008, 512, 48, 16), (4000, 6000, 1024, 48, 1),
    (304, 704, 256, 48, 16), (3008, 4000, 1024, 96, 16), (1088, 1920, 1024, 96, 16),
    (100, 5000, 512, 48, 1), (4256, 5664, 512, 48, 1)])
def test_tiles_follow_the_image_with_bounded_area(h, w, tile, overlap, multiple):
    """Tiles never hold more than tile**2 pixels (memory), cover every pixel, keep the
    overlap, and send no more pixels through the network than square tiles would."""
    tiles = tiling.plan_tiles(h, w, tile, overlap, multiple)
    shapes = {(t.y1 - t.y0, t.x1 - t.x0) for t in tiles}
    assert len(shapes) == 1  # one shape: one specialised ONNX Runtime session
    (th, tw), = shapes
    assert th * tw <= tile * tile and max(th, tw) <= tiling.MAX_TILE_ASPECT * tile
    covered = len(tiles) * th * tw
    assert covered <= _square_plan_pixels(h, w, tile, overlap, multiple)
    if h * w >= 1e6:  # photos: fixed 1024 px tiles on 3000x4000 processed 1.75x the pixels
        assert covered / (h * w) < 1.3
    cov = np.zeros((h, w), np.int32)
    for t in tiles:
        cov[t.y0:t.y1, t.x0:t.x1] += 1
    assert cov.min() >= 1
    ys, xs = sorted({t.y0 for t in tiles}), sorted({t.x0 for t in tiles})
    assert all(b - a <= th - overlap for a, b in zip(ys, ys[1:], strict=False))
    assert all(b - a <= tw - overlap for a, b in zip(xs, xs[1:], strict=False))
    if multiple > 1:
        assert all(t.y0 % multiple == 0 and t.x0 % multiple == 0 for t in tiles)


def test_tile_shape_figures():
    """The figures ``tiling.tile_shape`` and rdmc.py quote: a 12 MP photo in RDMC's 1024 px
    tiles with 96 px of overlap, and a 1080p frame."""
    tiles = tiling.plan_tiles(3008, 4000, 1024, 96, 16)
    assert len(tiles) == 15 and (tiles[0].y1, tiles[0].x1) == (1088, 896)
    assert _square_plan_pixels(3008, 4000, 1024, 96, 16) == 20 * 848 * 896
    assert _square_plan_pixels(3008, 4000, 1024, 128, 16) == 20 * 864 * 928
    assert len(tiling.plan_tiles(1088, 1920, 1024, 96, 16)) == 3


def test_blend_weights_positive_add_up_to_one_and_fade_smoothly():
    layout = tiling._layout(300, 300, 128, 32, 1)
    assert len(layout.tiles) > 4
    wsum = np.zeros((300, 300))
    for t in layout.tiles:
        w = layout.window(t, 300, 300)
        assert w.min() > 0
        wsum[t.y0:t.y1, t.x0:t.x1] += w
        if t.x0 > 0 and t.y0 == 0:  # an inner left edge: a cross-fade, not a cut
            row = w[0].astype(np.float64)
            fade = row[:32]
            assert fade[0] < 0.01 and fade[-1] > 0.99  # from ~0 to full over the overlap
            assert (np.diff(fade) >= -1e-7).all()  # rising steadily
            assert np.abs(np.diff(fade)).max() < 0.15  # no step: at most ~1.5/16 a pixel
    np.testing.assert_allclose(wsum, 1.0, atol=1e-5)  # the windows share every pixel out


class _Identity:
    size_multiple = 1
    global_stats_shape = None

    def forward(self, x, pooled):
        return x.copy()


class _Recording(_Identity):
    """Records the shape of every batch it is given."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x, pooled):
        self.shapes.append(x.shape)
        return x.copy()


@pytest.mark.parametrize("shape", [(3, 64, 600), (3, 600, 64)])
def test_an_image_larger_than_the_tile_on_one_side_only_is_tiled(shape):
    """A mutation audit: a panorama wider than the tile but not taller went through in one
    piece under a mutant (and could run out of memory), and no test saw it."""
    img = np.random.default_rng(0).random(shape, dtype=np.float32)
    runner = _Recording()
    out = tiling.run_tiled(img, runner, 128, 16)
    np.testing.assert_allclose(out, img, atol=1e-6)
    assert len(runner.shapes) > 1 and max(max(s[-2:]) for s in runner.shapes) <= 256


def test_identity_runner_reconstructs_exactly():
    img = _scene(300)
    out = tiling.run_tiled(img, _Identity(), 96, 24)
    np.testing.assert_allclose(out, img, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("hwc", [False, True])
def test_integer_samples_are_scaled_tile_by_tile(dtype, hwc):
    """uint8/uint16 input gives exactly what its float32 version gives, tiled or not."""
    top = np.iinfo(dtype).max
    ints = np.rint(_scene(300) * top).astype(dtype)
    floats = ints.astype(np.float32)
    floats *= np.float32(1.0 / top)  # the scaling images.LoadedImage.rgb applies
    if hwc:
        ints, floats = ints.transpose(1, 2, 0), np.ascontiguousarray(floats.transpose(1, 2, 0))
    net = _Sharpen()
    for tile, overlap in ((0, 0), (96, 24), (128, 40)):  # 128 reaches into the padding
        net.contiguous = []
        a = tiling.run_tiled(ints, net, tile, overlap, hwc=hwc)
        assert all(net.contiguous) and net.contiguous  # what an ONNX Runtime session wants
        b = tiling.run_tiled(floats, net, tile, overlap, hwc=hwc)
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b)


class _Sharpen:
    """A local, non-trivial operator with a size multiple (so tiles reach into padding)."""

    size_multiple = 32
    global_stats_shape = None

    def __init__(self):
        self.contiguous = []

    def forward(self, x, pooled):
        assert x.dtype == np.float32
        self.contiguous.append(x.flags.c_contiguous)
        return 2 * x - np.roll(x, 1, axis=-1)


class _AsyncSharpen(_Sharpen):
    """``_Sharpen`` with the asynchronous protocol; records the order of calls."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def submit(self, x, pooled):
        self.calls.append(("submit", x.shape[0]))
        return ("queued", self.forward(x, pooled))  # a handle, as a GPU's: not the result

    def collect(self, handle):
        self.calls.append(("collect", handle[1].shape[0]))
        return handle[1]


def test_a_synchronous_runner_s_tile_is_counted_before_the_next_runs():
    """On a CPU (whose submit returns the result itself) each tile's progress came after the
    next tile's network pass: the bar ran a tile late, 96 % to 100 % with no work between
    (an audit)."""
    events = []

    class Sync(_Identity):
        def forward(self, x, pooled):
            events.append("forward")
            return x.copy()

    tiling.run_tiled(_scene(300), Sync(), 96, 24, on_tile=lambda d, t: events.append("tile"))
    assert events == ["forward", "tile"] * (len(events) // 2)


@pytest.mark.parametrize("hwc", [False, True])
def test_several_tiles_per_pass_give_the_same_result(hwc):
    """Batches of tiles (the last one short) blend to exactly what one tile at a time
    gives, and an asynchronous runner gets each batch queued before the previous one is
    collected, so the host blends while the device computes."""
    img = _scene(300)
    if hwc:
        img = np.ascontiguousarray(img.transpose(1, 2, 0))
    one = tiling.run_tiled(img, _Sharpen(), 96, 24, hwc=hwc)
    n = len(tiling.plan_tiles(320, 320, 96, 24, 32))
    assert n % 4 and n > 8  # a short last batch is exercised
    seen = []
    net = _AsyncSharpen()
    four = tiling.run_tiled(img, net, 96, 24, hwc=hwc, batch=4,
                            on_tile=lambda d, t: seen.append(d))
    np.testing.assert_array_equal(one, four)
    areas = [(t.y1 - t.y0) * (t.x1 - t.x0) for t in tiling.plan_tiles(320, 320, 96, 24, 32)]
    assert seen == list(np.cumsum(areas))  # one call a tile, in pixels
    sizes = [4] * (n // 4) + [n % 4]
    expect = [("submit", sizes[0])]
    for prev, nxt in itertools.pairwise(sizes):
        expect += [("submit", nxt), ("collect", prev)]
    assert net.calls == expect + [("collect", sizes[-1])]


def test_batched_tiles_share_the_whole_image_statistics():
    """A Semi-DRDNet's batch of tiles gets the one set of whole-image means (broadcast):
    the result equals one tile at a time."""
    torch.manual_seed(0)
    net = _perturb_bn(SemiDRDNet(SemiDRDNetConfig(width=16, rain_blocks=2, detail_blocks=1,
                                                  se_reduction=4)))
    img, r = _scene(192), _runner(net)
    one = tiling.run_tiled(img, r, 64, 16)
    three = tiling.run_tiled(img, r, 64, 16, batch=3)
    np.testing.assert_allclose(one, three, atol=2e-6)


def test_host_memory_is_the_output_plus_tiles():
    """No image-sized float32 input or weight plane: a 2000x1500 uint8 photo in 256 px
    tiles peaks at its float32 output (36 MB) plus tile buffers (numpy's allocations,
    as tracemalloc sees them); a float32 copy of the input would add 36 MB more."""
    import tracemalloc

    img = np.zeros((2000, 1500, 3), np.uint8)
    out_bytes = img.size * 4
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        out = tiling.run_tiled(img, _Identity(), 256, 64, hwc=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == img.shape
    assert out_bytes <= peak < out_bytes + 8 * 2**20


class _MaskCounter:
    """Records the statistics pass: its tiles, and the pooled value the final pass gets."""

    size_multiple = 1
    global_stats_shape = (1, 1)

    def __init__(self):
        self.stat_shapes, self.pooled = [], []

    def stat_sums(self, x, pooled, mask):
        self.stat_shapes.append(x.shape[-2:])
        return np.full((1, 1, 1), mask.sum(), np.float64)

    def forward(self, x, pooled):
        self.pooled.append(None if pooled is None else float(pooled.ravel()[0]))
        return x


@pytest.mark.parametrize("stats_overlap", [None, 0, 48])
def test_statistics_pass_has_its_own_half_overlap_tiles(stats_overlap):
    """Its tiles overlap by half as much (default) and still count every pixel once."""
    img = _scene(1000)[:, :, :700]  # 1000 x 700
    r, calls = _MaskCounter(), []
    tiling.run_tiled(img, r, 256, 48, stats_overlap=stats_overlap,
                     on_tile=lambda d, t: calls.append((d, t)))
    ov = 24 if stats_overlap is None else stats_overlap
    planned = tiling.plan_tiles(1000, 700, 256, ov)
    assert r.stat_shapes == [(t.y1 - t.y0, t.x1 - t.x0) for t in planned]
    assert r.pooled == pytest.approx([1.0] * len(tiling.plan_tiles(1000, 700, 256, 48)))
    # progress counts pixels through the network, a statistics pixel at STATS_COST
    final = tiling.plan_tiles(1000, 700, 256, 48)
    stats_work = [round((t.y1 - t.y0) * (t.x1 - t.x0) * tiling.STATS_COST) for t in planned]
    final_work = [(t.y1 - t.y0) * (t.x1 - t.x0) for t in final]
    total = sum(stats_work) + sum(final_work)
    assert len(calls) == len(planned) + len(final) and all(t == total for _, t in calls)
    assert [d for d, _ in calls] == list(np.cumsum(stats_work + final_work))
    if stats_overlap is None:  # fewer pixels than the final pass's tiles
        assert sum(a * b for a, b in r.stat_shapes) < sum(
            (t.y1 - t.y0) * (t.x1 - t.x0) for t in tiling.plan_tiles(1000, 700, 256, 48))


def test_sample_tiles_is_a_spread_lattice():
    tiles = tiling.plan_tiles(600, 800, 100, 0)  # a 6 x 8 grid of 0.01 MP tiles
    assert tiling.sample_tiles(tiles, None) == tiling.sample_tiles(tiles, 0) == list(range(48))
    assert tiling.sample_tiles(tiles, 0.3) == list(range(48))  # most of them: all
    half = tiling.sample_tiles(tiles, 0.24)  # a checkerboard
    assert len(half) == 24 and all((i % 8 + i // 8) % 2 == 0 for i in half)
    third = tiling.sample_tiles(tiles, 0.16)
    sparse = tiling.sample_tiles(tiles, 0.01)  # never sparser than one tile in three
    assert third == sparse and len(sparse) == 16
    rows, cols = {i // 8 for i in sparse}, {i % 8 for i in sparse}
    assert rows == set(range(6)) and cols == set(range(8))  # every row and column sampled


def test_sampled_statistics_pass_divides_by_the_sampled_weight():
    """A sample of the tiles still yields means (1.0 for a constant), not partial sums."""
    img = _scene(1000)
    r = _MaskCounter()
    tiling.run_tiled(img, r, 128, 32, stats_megapixels=0.01)
    planned = tiling.plan_tiles(1000, 1000, 128, 16)
    sample = tiling.sample_tiles(planned, 0.01)
    assert len(r.stat_shapes) == len(sample) < len(planned) / 2
    assert r.pooled == pytest.approx([1.0] * len(r.pooled), rel=1e-6)
    assert tiling.statistics_tiles(1000, 1000, 128, 32, stats_megapixels=0.01) == [
        planned[i] for i in sample]
    # Large images sample smaller tiles than the final pass's: more, finer samples.
    big = tiling.statistics_tiles(3000, 4000, 512, 32)
    assert all((t.y1 - t.y0) * (t.x1 - t.x0) <= tiling.STATS_SAMPLE_TILE ** 2 for t in big)
    # Under twice the budget nothing is sampled, whatever the tile count (7.2 MP here).
    assert tiling.statistics_tiles(2400, 3000, 512, 32) == tiling.plan_tiles(2400, 3000, 512, 16)
    # Below the default sample size every tile counts (the 1024 px criterion is exact).
    r = _MaskCounter()
    tiling.run_tiled(img, r, 128, 32)
    assert len(r.stat_shapes) == len(planned)


def test_sampled_statistics_agree_with_the_untiled_output():
    """The shipped default with sampling forced (a third of the tiles) on a 512 px scene in
    128 px tiles (the 1024/256 criterion's seams, at a quarter of the cost)."""
    net = _trained_or_random("semi-drdnet-tiny")
    img = _scene(512)
    r = _runner(net)
    full = np.clip(tiling.run_tiled(img, r, 0, 0), 0, 1)
    exact = np.clip(tiling.run_tiled(img, r, 128, 32, stats_megapixels=0), 0, 1)
    sampled = np.clip(tiling.run_tiled(img, r, 128, 32, stats_megapixels=0.001), 0, 1)
    assert not np.array_equal(sampled, exact)
    assert _psnr(sampled, full) >= 45


def _runner(net):
    return TorchRunner(net.eval(), torch.device("cpu"), "fp32")


def _perturb_bn(net, seed=0):
    """Random-init BN is the identity; give it statistics like a trained network's."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
    return net


def test_se_statistics_matter_and_are_restored():
    """Naive tiles (per-tile SE means) differ; the whole-image statistics fix it."""
    torch.manual_seed(0)
    net = _perturb_bn(SemiDRDNet(SemiDRDNetConfig(width=16, rain_blocks=4, detail_blocks=2,
                                                  se_reduction=4)))
    img = _scene(256)
    r = _runner(net)
    full = tiling.run_tiled(img, r, 0, 0)
    naive = tiling.run_tiled(img, r, 64, 32, stats_passes=0)
    fixed = tiling.run_tiled(img, r, 64, 32, stats_passes=2)
    assert _psnr(naive, full) < _psnr(fixed, full) - 3
    assert _psnr(fixed, full) >= 45


def _trained_or_random(name):
    if name in load_manifest():
        return load_pretrained(name)
    torch.manual_seed(0)
    return _perturb_bn(build_model(name))


#: The paper-size models carry the bare architecture names; every other one is CPU-sized.
_PAPER_SIZE = {n for n, spec in MODELS.items() if n == spec.arch}


@pytest.mark.parametrize("name", sorted(set(MODELS) - _PAPER_SIZE))
def test_tiled_matches_untiled_1024_lite(name):
    """Issue's criterion: 1024x1024, tile 256, PSNR >= 45 dB (CPU-sized models)."""
    net = _trained_or_random(name)
    img = _scene(1024)
    r = _runner(net)
    full = np.clip(tiling.run_tiled(img, r, 0, 0), 0, 1)
    # The overlap the product uses (48 px was not enough for the trained rdmc-lite: 39.9 dB)
    # and its smallest tile: RDMC's reach needs 512 px tiles (models/rdmc.py), which
    # Derainer enforces; at 256 px the trained rdmc-lite stays below 45 dB on this scene.
    tile = max(256, getattr(net, "min_tile", 0))
    tiled = np.clip(tiling.run_tiled(img, r, tile, default_overlap(net)), 0, 1)
    assert _psnr(tiled, full) >= 45


@pytest.mark.parametrize("name", sorted(_PAPER_SIZE))
def test_tiled_matches_untiled_full_models(name):
    """Paper-size models on a smaller scene to keep CI short (at 512 px the two took 151 s
    on a 2-core AVX2 CPU, at 384 px 86 s, 51 s in 2026-12-07's suite): 320 px in 128 px
    tiles still puts seams on both axes around an interior tile, and tiles smaller
    against the network's reach than the issue's 1024/256. benchmarks/tiling_agreement.py
    measures every model at 1024/256."""
    net = _trained_or_random(name)
    img = _scene(320)
    r = _runner(net)
    full = np.clip(tiling.run_tiled(img, r, 0, 0), 0, 1)
    tiled = np.clip(tiling.run_tiled(img, r, 128, default_overlap(net)), 0, 1)
    assert _psnr(tiled, full) >= 45


def test_rdmc_tiles_align_to_pooling_grid():
    torch.manual_seed(0)
    net = _perturb_bn(RDMC(RDMCConfig(channels=(4, 8, 8, 8, 8), stages=1)))
    img = _scene(200)  # not a multiple of 16: padded once, tiles start on multiples of 16
    r = _runner(net)
    full = tiling.run_tiled(img, r, 0, 0)
    tiled = tiling.run_tiled(img, r, 96, 40)
    assert tiled.shape == img.shape
    assert _psnr(np.clip(tiled, 0, 1), np.clip(full, 0, 1)) >= 45


class _OOMOnce(_Identity):
    def __init__(self, limit):
        self.limit = limit

    def forward(self, x, pooled):
        if x.shape[-1] > self.limit:
            raise tiling.TileOutOfMemory("fake OOM")
        return x.copy()


def test_oom_propagates_for_the_caller_to_shrink():
    with pytest.raises(tiling.TileOutOfMemory) as info:
        tiling.run_tiled(_scene(128), _OOMOnce(64), 0, 0)
    assert info.value.batch == 1  # one untiled pass: fewer tiles at once cannot help
    with pytest.raises(tiling.TileOutOfMemory) as info:  # the pass says how many it held
        tiling.run_tiled(_scene(300), _OOMOnce(64), 96, 24, batch=3)
    assert info.value.batch == 3


@pytest.mark.parametrize("size,tile", [(200, 96), (200, 0), (61, 32)])
def test_hwc_layout_gives_the_same_result(size, tile):
    """The enhancer tiles photos in their HxWx3 layout (no transposed copy of a huge image):
    same tiles, same statistics, same blend as the (3, H, W) path, padded sizes included."""
    torch.manual_seed(0)
    semi = _perturb_bn(SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=2, detail_blocks=1,
                                                   se_reduction=4)))
    rdmc = _perturb_bn(RDMC(RDMCConfig(channels=(4, 8, 8, 8, 8), stages=1)))
    img = _scene(size)[:, : size - 3]  # not square, not a multiple of 16
    for net in (semi, rdmc):
        r = _runner(net)
        chw = tiling.run_tiled(img, r, tile, 24)
        hwc = tiling.run_tiled(np.ascontiguousarray(img.transpose(1, 2, 0)), r, tile, 24, hwc=True)
        assert hwc.shape == (*img.shape[1:], 3)
        np.testing.assert_allclose(hwc, chw.transpose(1, 2, 0), atol=1e-5)


@pytest.mark.parametrize("h,w,m", [(200, 123, 16), (5, 40, 16), (64, 64, 16), (31, 9, 8)])
def test_padded_indices_match_numpy_padding(h, w, m):
    """Tiles are cut through index arrays instead of a padded copy: the same pixels."""
    img = np.random.default_rng(0).random((h, w, 3)).astype(np.float32)
    rows, cols = tiling._padded_indices(h, w, m)
    ph, pw = (-h) % m, (-w) % m
    mode = "reflect" if ph < h and pw < w else "edge"
    ref = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode=mode)
    assert len(rows) % m == 0 and len(cols) % m == 0
    assert np.array_equal(img[rows[:, None], cols[None, :]], ref)


@pytest.mark.parametrize("shape,want", [
    ((1, 1), (256, 256)), ((16, 16), (256, 256)), ((255, 300), (256, 300)),
    ((300, 255), (300, 256)), ((256, 256), (256, 256)), ((700, 300), (700, 300)),
    # strips: the short side grows within 4x the pixels (or 256 x 256)
    ((40, 300), (218, 300)), ((3, 20000), (12, 20000)), ((900, 70), (900, 256)),
])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_pad_small_mirrors_short_sides_out_and_cuts_the_image_back(shape, want, dtype):
    """Each side shorter than 256 px grows to 256 (less for a thin strip), the image in the
    middle of its own mirror image; larger images stay as they are."""
    h, w = shape
    x = np.random.default_rng(h * w).integers(0, 255, (h, w, 3)).astype(dtype)
    out, crop = tiling.pad_small(x)
    assert out.dtype == dtype and out.shape == (*want, 3)
    assert tiling.padded_shape(h, w) == want
    np.testing.assert_array_equal(out[crop], x)
    chw, crop_chw = tiling.pad_small(x.transpose(2, 0, 1), hwc=False)
    np.testing.assert_array_equal(chw, out.transpose(2, 0, 1))
    np.testing.assert_array_equal(chw[crop_chw], x.transpose(2, 0, 1))
    assert tiling.pad_small(x, 0)[0] is x
    if want == (h, w):
        assert out is x
        return
    top, left = crop[0].start, crop[1].start
    bottom, right = out.shape[0] - h - top, out.shape[1] - w - left
    assert abs(top - bottom) <= 1 and abs(left - right) <= 1  # centred
    inner_rows, inner_cols = slice(top, top + h), slice(left, left + w)
    # the border is the image mirrored, first row or column repeated: symmetric, not edge
    for k in range(min(top, h)):
        np.testing.assert_array_equal(out[top - 1 - k, inner_cols], x[k])
    for k in range(min(bottom, h)):
        np.testing.assert_array_equal(out[top + h + k, inner_cols], x[h - 1 - k])
    for k in range(min(left, w)):
        np.testing.assert_array_equal(out[inner_rows, left - 1 - k], x[:, k])
    for k in range(min(right, w)):
        np.testing.assert_array_equal(out[inner_rows, left + w + k], x[:, w - 1 - k])


def test_padding_a_huge_strip_adds_at_most_8_megapixels_and_work_counts_it():
    """A 64 x 3 million strip (192 MP) would be 768 MP mirrored to 256 px rows: it grows
    by 8 MP at most. ``work_per_pixel`` counts what a small image runs at."""
    assert tiling.padded_shape(64, 3_000_000) == (66, 3_000_000)
    for h, w in [(16, 16), (3000, 16), (16, 20000), (2000, 2000)]:  # a very large side too
        th, tw = tiling.padded_shape(h, w, 4096)
        assert th >= h and tw >= w and th * tw <= h * w + 8_000_000
    assert tiling.work_per_pixel(64, 64, 512, 48) == pytest.approx(256 * 256 / 64**2)
    assert tiling.work_per_pixel(3, 20000, 0, 48) == pytest.approx(4.0)
    assert tiling.work_per_pixel(300, 400, 0, 48) == 1.0


def test_auto_tile_is_the_engines_own_but_at_least_twice_the_networks_minimum():
    assert tiling.auto_tile(512) == 512
    assert tiling.auto_tile(1024, 384) == 1024
    assert tiling.auto_tile(512, 384) == 768  # RDMC in ONNX Runtime's 512 px CPU tile


@pytest.mark.parametrize("size,tile,batch", [(200, 96, 1), (200, 96, 3), (200, 0, 1), (61, 32, 1)])
def test_torch_runner_takes_8bit_tiles_as_they_are_with_the_float_paths_result(size, tile, batch):
    """An 8-bit photo's tiles reach the PyTorch runner as (b, h, w, 3) uint8 (a quarter of
    the bytes to a GPU, no conversion on the host), statistics passes and padded tiles
    included, and give exactly what the host's float32 scaling gives."""
    torch.manual_seed(0)
    semi = _perturb_bn(SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=2, detail_blocks=1,
                                                   se_reduction=4)))
    rdmc = _perturb_bn(RDMC(RDMCConfig(channels=(4, 8, 8, 8, 8), stages=1)))
    ints = np.rint(_scene(size)[:, : size - 3] * 255).astype(np.uint8).transpose(1, 2, 0)
    ints = np.ascontiguousarray(ints)
    floats = ints.astype(np.float32)
    floats *= np.float32(1 / 255)
    for net in (semi, rdmc):
        r = _runner(net)
        seen: list[tuple[str, int]] = []
        for name in ("forward", "stat_sums"):
            setattr(r, name, _recording(getattr(r, name), seen))
        a = tiling.run_tiled(ints, r, tile, 24, hwc=True, batch=batch)
        assert seen and set(seen) == {("uint8", 3)}, seen
        seen.clear()
        b = tiling.run_tiled(floats, r, tile, 24, hwc=True, batch=batch)
        assert {d for d, _ in seen} == {"float32"}
        np.testing.assert_array_equal(a, b)


def _recording(fn, seen: list):
    """``fn`` noting each input's dtype and last axis (3: HxWx3 samples) in ``seen``."""
    def record(x, *rest):
        seen.append((str(x.dtype), x.shape[-1]))
        return fn(x, *rest)
    return record


def test_the_result_array_is_made_before_the_statistics_pass(monkeypatch):
    """A photo whose float32 result could not fit failed after its whole statistics pass
    (minutes on a 196 MP photo: an audit): the array is made first."""
    net = SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=1, detail_blocks=1,
                                      se_reduction=4))
    runner = _runner(net)
    passes = []
    real = runner.stat_sums
    monkeypatch.setattr(runner, "stat_sums", lambda *a, **k: passes.append(1) or real(*a, **k))
    img = _scene(200)
    tiling.run_tiled(img, runner, 96, 16)
    assert passes  # the statistics pass ran ...

    def no_room(read):
        raise MemoryError("Unable to allocate the result")

    passes.clear()
    monkeypatch.setattr(tiling, "_output_array", no_room)
    with pytest.raises(MemoryError):
        tiling.run_tiled(img, runner, 96, 16)
    assert passes == []  # ... and not before the result's array was there


class _MeanRunner:
    """The statistics are the photo's channel means (masked sums); the final pass records
    what it was given. Size multiple 16: a 200 x 300 photo is padded to 208 x 304."""

    size_multiple = 16
    global_stats_shape = (1, 3)

    def __init__(self):
        self.given = []

    def stat_sums(self, x, pooled, mask):
        return (x * mask).sum(axis=(2, 3)).reshape(1, 1, 3).astype(np.float64)

    def forward(self, x, pooled):
        self.given.append(None if pooled is None else pooled.ravel().copy())
        return x


@pytest.mark.parametrize("stats_megapixels", [0, 0.01])
def test_statistics_of_a_photo_padded_to_the_multiple_are_its_own(stats_megapixels):
    """The padding a size multiple adds is no part of the photo: counted in the sums, or the
    sums divided by the padded area, the whole-image means shifted by 5 % (a mutation
    audit: no test had a photo whose size needs padding)."""
    img = np.random.default_rng(0).random((3, 200, 300)).astype(np.float32) ** 3
    r = _MeanRunner()
    tiling.run_tiled(img, r, 128, 32, stats_megapixels=stats_megapixels)
    got, true = r.given[-1], img.mean(axis=(1, 2))
    assert np.allclose(got, true, rtol=0.02 if stats_megapixels else 1e-4), (got, true)


def test_an_asked_tile_below_a_networks_minimum_is_raised_to_it():
    """What the engine choice and the benchmark cost is the tile Derainer runs."""
    assert tiling.effective_tile(256, 1024, 512) == 512
    assert tiling.effective_tile(768, 1024, 512) == 768
    assert tiling.effective_tile(0, 1024, 512) == 0  # the whole image
    assert tiling.effective_tile(None, 1024, 0) == tiling.auto_tile(1024, 0)
