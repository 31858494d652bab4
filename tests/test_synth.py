"""Tests of the rain synthesizer (no data needed: backgrounds are generated)."""

from __future__ import annotations

import math
from dataclasses import replace

import cv2
import numpy as np
import pytest

from derain_cli.synth import (
    PRESETS,
    RainParams,
    check_preset,
    dominant_angle,
    sample_params,
    synthesize,
    to_float,
)

H, W = 160, 240
ALL = [*PRESETS, "mixed"]
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    """A smooth, colourful, deterministic background (no streak-like structure)."""
    rng = np.random.default_rng(123)
    small = rng.uniform(0.05, 0.9, (H // 16, W // 16, 3)).astype(np.float32)
    return cv2.resize(small, (W, H), interpolation=cv2.INTER_CUBIC).clip(0.0, 1.0)


def _positive_luma(layer: np.ndarray) -> np.ndarray:
    return np.maximum(layer @ LUMA, 0.0)


@pytest.mark.parametrize("params", ALL)
def test_shapes_dtypes_ranges(clean: np.ndarray, params: str) -> None:
    rainy, layer = synthesize(clean, params, seed=0)
    assert rainy.shape == layer.shape == clean.shape
    assert rainy.dtype == layer.dtype == np.float32
    assert 0.0 <= rainy.min() and rainy.max() <= 1.0
    assert -1.0 <= layer.min() and layer.max() <= 1.0
    assert np.isfinite(layer).all()


@pytest.mark.parametrize("params", [*ALL, PRESETS["storm"], RainParams(haze=0.9)])
def test_composition_identity(clean: np.ndarray, params: RainParams | str) -> None:
    rainy, layer = synthesize(clean, params, seed=1)
    assert np.abs(clean + layer - rainy).max() <= 1e-6


def test_rain_only_brightens_without_haze(clean: np.ndarray) -> None:
    for name in ("light", "medium", "heavy"):
        assert PRESETS[name].haze == 0 and PRESETS[name].accumulation == 0
        rainy, layer = synthesize(clean, PRESETS[name], seed=2)
        assert layer.min() >= -1e-6
        assert (rainy >= clean - 1e-6).all()


def test_deterministic_under_seed(clean: np.ndarray) -> None:
    for params in ("mixed", "heavy", PRESETS["storm"]):
        a = synthesize(clean, params, seed=7)
        b = synthesize(clean, params, seed=7)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        c = synthesize(clean, params, seed=8)
        assert np.abs(a[1] - c[1]).mean() > 1e-3
    g1, g2 = np.random.default_rng(5), np.random.default_rng(5)
    first = synthesize(clean, seed=g1)[0]
    assert np.array_equal(first, synthesize(clean, seed=g2)[0])
    # A generator advances: the next draw from it gives different rain.
    assert not np.array_equal(first, synthesize(clean, seed=g1)[0])


def test_same_rain_on_any_background() -> None:
    """The seed decides the rain, not the image: a darker photo gets the same streaks."""
    dark = np.full((H, W, 3), 0.1, np.float32)
    grey = np.full((H, W, 3), 0.5, np.float32)
    _, ld = synthesize(dark, PRESETS["light"], seed=3)
    _, lg = synthesize(grey, PRESETS["light"], seed=3)
    # Additive rain (the presets' blend) where nothing clips: the same residual.
    unclipped = (dark + ld < 1.0) & (grey + lg < 1.0 - 1e-6)
    assert np.allclose(lg[unclipped], ld[unclipped], atol=1e-5)
    screen = replace(PRESETS["light"], blend="screen")
    _, ld = synthesize(dark, screen, seed=3)
    _, lg = synthesize(grey, screen, seed=3)
    # Screen blend: residual = R * (1 - clean), so the ratio is (1 - 0.5) / (1 - 0.1).
    assert np.allclose(lg, ld * (0.5 / 0.9), atol=1e-5)


def test_additive_rain_is_grey_and_screen_rain_is_tinted_by_the_photo() -> None:
    """The evaluation sets' rain layers are neutral grey (additive rain); screen-blended
    rain over a coloured photo is tinted with its complement. Checked on a blue sky."""
    sky = np.zeros((H, W, 3), np.float32) + np.array([0.35, 0.55, 0.85], np.float32)
    neutral = replace(PRESETS["light"], tint=(1.0, 1.0, 1.0))
    for blend, grey in (("add", True), ("screen", False)):
        rainy, layer = synthesize(sky, replace(neutral, blend=blend), seed=2)
        rain = (layer.mean(axis=2) > 0.05) & (rainy.max(axis=2) < 0.999)  # not clipped
        spread = np.abs(layer[rain] - layer[rain].mean(axis=1, keepdims=True)).max()
        assert (spread < 1e-5) == grey, (blend, spread)
    with pytest.raises(ValueError, match="blend"):
        RainParams(blend="multiply")
    blends = [sample_params("mixed", np.random.default_rng(i)).blend for i in range(300)]
    assert 0.15 < blends.count("screen") / 300 < 0.45
    assert {sample_params(n, np.random.default_rng(0)).blend for n in PRESETS} == {
        "add", "screen"}  # storm is screen-blended


def test_rain_is_visible_and_heavy_exceeds_light(clean: np.ndarray) -> None:
    means = {}
    for name in PRESETS:
        _, layer = synthesize(clean, PRESETS[name], seed=4)
        pos = _positive_luma(layer)
        means[name] = float(pos.mean())
        assert (pos > 0.02).mean() > 0.05, name  # streaks cover a real part of the image
    assert means["light"] > 0.005
    assert means["medium"] > 1.5 * means["light"]
    assert means["heavy"] > 2.0 * means["medium"]
    assert means["storm"] > means["heavy"]


def test_streaks_are_thin_and_semi_transparent(clean: np.ndarray) -> None:
    grey = np.full((H, W, 3), 0.2, np.float32)
    _, layer = synthesize(grey, PRESETS["light"], seed=5)
    pos = _positive_luma(layer)
    assert 0.02 < (pos > 0.02).mean() < 0.5  # sparse, not a veil
    assert np.median(pos[pos > 0.02]) < 0.4  # mostly semi-transparent


def test_streaks_are_neutral_or_bluish() -> None:
    # a colour photo (one grey level off in red): a grey one gets grey rain (below)
    grey = np.full((H, W, 3), 0.4, np.float32) + np.array([0.004, 0, 0], np.float32)
    for seed in range(5):
        _, layer = synthesize(grey, "mixed", seed=seed)
        r, g, b = (float(layer[..., i].mean()) for i in range(3))
        assert b >= g >= r - 1e-6
        assert r > 0.75 * b  # no more than slightly blue


@pytest.mark.parametrize("params", ["light", "veiled", "storm", "mixed"])
def test_a_grayscale_photo_gets_grey_rain(clean: np.ndarray, params: str) -> None:
    """Rain over a grayscale photo stays grayscale (eval and train warned that synth's
    own pairs held one grey and one colour image: an audit); a colour photo's rain keeps
    its tint, drawn the same (the same seed, the same streaks)."""
    gray = np.repeat(clean.mean(axis=2, keepdims=True), 3, axis=2)
    for seed in range(3):
        rainy, layer = synthesize(gray, params, seed=seed)
        assert np.array_equal(rainy[..., 0], rainy[..., 1])
        assert np.array_equal(rainy[..., 1], rainy[..., 2])
        assert layer.max() > 0.05  # rain was drawn
        lit = layer.mean(axis=2) > 0.02
        _, colour = synthesize(gray + np.array([0.002, 0, 0], np.float32), params, seed=seed)
        assert (colour[..., 2] - colour[..., 0])[lit].mean() > 1e-4
        # the same streaks, only greyed: the colour photo's rain luma is about the same
        assert np.abs(colour.mean(axis=2) - layer.mean(axis=2)).max() < 0.03


@pytest.mark.parametrize("angle", [0.0, 20.0, -20.0, 35.0])
def test_orientation_matches_requested_angle(clean: np.ndarray, angle: float) -> None:
    for name in ("light", "heavy"):
        params = replace(PRESETS[name], angle=angle, angle_jitter=0.0)
        for seed in range(2):
            _, layer = synthesize(clean, params, seed=seed)
            est = dominant_angle(layer)
            assert abs(est - angle) < 3.0, (name, seed, est)


def test_slanted_rain_falls_at_every_slant_the_others_never_reach(clean: np.ndarray) -> None:
    """``slanted``: light streaks at angles up to 80 degrees from vertical, spread over the
    whole range; no other preset passes about 40 (networks trained on them barely touch
    rain past 45 degrees: benchmarks/rain_angle.py)."""
    angles = np.array([sample_params("slanted", np.random.default_rng(i)).angle
                       for i in range(400)])
    assert np.abs(angles).max() <= 80 and np.mean(np.abs(angles) > 45) > 0.3
    assert (angles > 45).any() and (angles < -45).any()
    for name in ("light", "medium", "heavy", "storm", "veiled", "mixed"):
        others = [sample_params(name, np.random.default_rng(i)).angle for i in range(200)]
        assert np.abs(others).max() < 40, name
    p = next(q for i in range(50)
             if abs((q := sample_params("slanted", np.random.default_rng(i))).angle) > 60)
    _, layer = synthesize(clean, replace(p, angle_jitter=0.0), seed=0)
    assert abs(dominant_angle(layer) - p.angle) < 4.0  # the streaks do lean that far


def test_angle_sign_convention() -> None:
    """Positive angles fall towards the bottom right, i.e. look like a backslash."""
    img = np.zeros((200, 200), np.float32)
    th = math.radians(25.0)
    dx, dy = 80 * math.sin(th), 80 * math.cos(th)
    cv2.line(img, (int(100 - dx), int(100 - dy)), (int(100 + dx), int(100 + dy)), 1.0, 2)
    assert abs(dominant_angle(img) - 25.0) < 3.0
    _, layer = synthesize(np.zeros((200, 200, 3), np.float32), RainParams(angle=25.0), seed=0)
    # Streaks along (sin a, cos a): shifting down-right along them keeps them aligned.
    lum = layer @ LUMA
    shifted = np.roll(lum, (10, round(10 * math.tan(th))), axis=(0, 1))
    mirrored = np.roll(lum, (10, -round(10 * math.tan(th))), axis=(0, 1))
    inner = (slice(20, -20), slice(20, -20))
    assert (lum * shifted)[inner].mean() > 2 * (lum * mirrored)[inner].mean()


def test_mixed_covers_a_range() -> None:
    rng = np.random.default_rng(0)
    draws = [sample_params("mixed", rng) for _ in range(200)]
    angles = np.array([p.angle for p in draws])
    assert angles.min() >= -30.0 and angles.max() <= 30.0 and angles.std() > 12.0
    dens = np.array([p.density for p in draws])
    assert dens.min() < 1.1 * PRESETS["light"].density
    assert dens.max() > 0.8 * PRESETS["heavy"].density
    hazy = np.mean([p.haze > 0 for p in draws])
    assert 0.1 < hazy < 0.6


def test_preset_variation_is_small() -> None:
    rng = np.random.default_rng(1)
    for name, base in PRESETS.items():
        for _ in range(20):
            p = sample_params(name, rng)
            assert abs(p.density / base.density - 1) <= 0.2 + 1e-9
            assert abs(p.length[1] / base.length[1] - 1) <= 0.15 + 1e-9
            assert abs(p.brightness - base.brightness) <= 0.1 * base.brightness + 1e-9
            # every slant is the point of "slanted" (its own test below)
            assert abs(p.angle - base.angle) <= (80.0 if name == "slanted" else 28.0)
            assert p.layers == base.layers


def test_veiled_rain_washes_out_the_whole_scene_with_sparse_streaks(clean: np.ndarray) -> None:
    """``veiled``: a veil lifts nearly every pixel (the median one clearly), while its
    streaks stay sparse like medium rain's, and the veil's strength varies widely between
    draws, from faint to strong, so a network has to read it from the image."""
    hazes = [sample_params("veiled", np.random.default_rng(i)).haze for i in range(200)]
    assert min(hazes) < 0.08 and max(hazes) > 0.28
    base = PRESETS["veiled"]
    assert base.blend == "add" and base.density < PRESETS["heavy"].density
    dark = np.full((H, W, 3), 0.25, np.float32)
    rainy, layer = synthesize(dark, base, seed=3)
    lift = layer @ LUMA
    assert np.median(lift) > 0.08 and (lift > 0.03).mean() > 0.95  # a veil, everywhere
    streaks = lift - np.median(lift)
    assert 0.01 < (streaks > 0.05).mean() < 0.4  # streaks over it, sparse
    _, medium = synthesize(dark, PRESETS["medium"], seed=3)
    assert np.median(medium @ LUMA) < 0.5 * np.median(lift)  # medium rain has no such veil


def test_a_comma_list_mixes_its_presets_per_draw() -> None:
    """``light,heavy`` draws each preset about half the time (told apart by their streak
    lengths, which do not overlap); a name twice is drawn twice as often; a bad entry is
    refused by name."""
    rng = np.random.default_rng(5)
    draws = [sample_params("light,heavy", rng) for _ in range(400)]
    light = np.mean([p.length[1] < PRESETS["heavy"].length[0] for p in draws])
    assert 0.4 < light < 0.6
    assert all(p.layers in (PRESETS["light"].layers, PRESETS["heavy"].layers) for p in draws)
    draws = [sample_params("light,light,heavy", rng) for _ in range(600)]
    assert 0.58 < np.mean([p.length[1] < PRESETS["heavy"].length[0] for p in draws]) < 0.75
    assert check_preset(" light, mixed") == ("light", "mixed")
    with pytest.raises(ValueError, match="'drizzle' in 'light,drizzle'"):
        sample_params("light,drizzle", rng)
    with pytest.raises(ValueError, match="unknown rain preset ''"):
        check_preset("light,")


def test_sample_params_deterministic() -> None:
    a = sample_params("mixed", np.random.default_rng(3))
    b = sample_params("mixed", np.random.default_rng(3))
    assert a == b


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="unknown rain preset"):
        sample_params("drizzle", np.random.default_rng(0))
    with pytest.raises(ValueError, match="length"):
        RainParams(length=(30.0, 10.0))
    with pytest.raises(ValueError, match="haze"):
        RainParams(haze=1.5)
    with pytest.raises(ValueError, match="shape"):
        synthesize(np.zeros((4, 4, 2), np.float32))


def test_to_float_and_uint8_input(clean: np.ndarray) -> None:
    u8 = np.rint(clean * 255).astype(np.uint8)
    f = to_float(u8)
    assert f.dtype == np.float32 and f.shape == u8.shape
    assert np.array_equal(f, u8.astype(np.float32) / 255)
    assert to_float(np.full((2, 2), 65535, np.uint16)).shape == (2, 2, 3)
    assert to_float(np.zeros((2, 2, 4), np.uint8)).shape == (2, 2, 3)
    assert to_float(np.full((2, 2, 3), 1.5)).max() == 1.0
    with pytest.raises(TypeError):
        to_float(np.zeros((2, 2, 3), np.int32))
    # 0..255 floats came back near white, NaN as NaN, an empty image failed in OpenCV (an
    # audit of the Python API): refused
    with pytest.raises(ValueError, match="divide by 255"):
        synthesize(u8.astype(np.float64), "light", seed=9)
    with pytest.raises(ValueError, match="NaN"):
        to_float(np.full((2, 2, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="got shape"):
        synthesize(np.zeros((0, 5, 3), np.uint8), "light", seed=9)
    # synthesize converts uint8 itself; the identity holds against to_float(clean).
    rainy, layer = synthesize(u8, "light", seed=9)
    assert np.array_equal(rainy, synthesize(f, "light", seed=9)[0])
    assert np.abs(f + layer - rainy).max() <= 1e-6


def test_non_default_sizes() -> None:
    for shape in [(1, 1, 3), (7, 300, 3), (300, 7, 3), (64, 64, 3)]:
        rainy, layer = synthesize(np.full(shape, 0.5, np.float32), "mixed", seed=0)
        assert rainy.shape == shape and np.isfinite(rainy).all()


def test_presets_without_haze_draw_none():
    """Haze (and its sky colour) is drawn only for presets that have it: light, medium,
    heavy and slanted rain stay clear, as the evaluation sets are (a mutation audit)."""
    for name, p in PRESETS.items():
        for seed in range(20):
            drawn = sample_params(name, np.random.default_rng(seed))
            if p.haze == 0:
                assert drawn.haze == 0 and drawn.atmospheric_light == p.atmospheric_light
            else:
                assert drawn.haze > 0


def test_far_rain_is_dimmer_and_denser_by_the_layer_scale() -> None:
    """The second depth layer is drawn ``layer_scale`` times as bright (and as long and
    wide) and ``1 / layer_scale`` times as dense, as ``RainParams`` says: rain far away
    is fainter and more of it is in view. A mutation audit found nothing failing when the
    far rain kept the near rain's brightness, or thinned out by ``layer_scale`` instead of
    filling in (a quarter of its streaks)."""
    from dataclasses import replace

    black = np.zeros((256, 256, 3), np.float32)  # additive white rain: rainy is 1 - clear
    near_only = RainParams(density=300.0, length=(20.0, 30.0), width=4.0, angle=0.0,
                           angle_jitter=0.0, brightness=0.8, brightness_jitter=0.0,
                           blur=0.0, layers=1, layer_scale=0.5, tint=(1.0, 1.0, 1.0))
    ratios, peaks = [], []
    for seed in range(4):  # the near layer draws the same streaks with one layer or two
        near = synthesize(black, near_only, seed=seed)[0][..., 0]
        both = synthesize(black, replace(near_only, layers=2), seed=seed)[0][..., 0]
        seen = near < 0.99  # where the near rain leaves light through
        far = np.where(seen, 1.0 - (1.0 - both) / np.where(seen, 1.0 - near, 1.0), 0.0)
        ratios.append(far.mean() / near.mean())
        peaks.append(np.quantile(far[far > 0.02], 0.99))
    assert np.median(peaks) == pytest.approx(0.8 * 0.5, abs=0.05), peaks  # dimmed
    # each far streak: half as long, wide and bright, twice as many: a quarter of the light
    assert 0.15 < float(np.mean(ratios)) < 0.37, ratios


# --- pinned by a mutation audit (2026-12-07): each test below failed under a one-line change
# that every earlier test let through --------------------------------------------------------


def _gradient(h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([yy * 7 % 256, xx * 11 % 256, (yy + xx) % 256], -1).astype(np.uint8)


def test_mixed_hi_ge_1_5lo():
    """mixed streak lengths: the longest at least 1.5x the shortest (a mutation audit)."""
    ds = [sample_params("mixed", np.random.default_rng(i)) for i in range(300)]
    assert all(p.length[1] >= 1.5 * p.length[0] - 1e-9 for p in ds)


def test_mixed_hazy_share():
    """about a third of mixed draws are hazy (a looser bound let 18 % pass) (a mutation audit)."""
    ds = [sample_params("mixed", np.random.default_rng(i)) for i in range(600)]
    assert 0.24 < np.mean([p.haze > 0 for p in ds]) < 0.40


def test_mixed_layers_1to4():
    """mixed draws take every layer count from 1 to 4 (a mutation audit)."""
    layers = {sample_params("mixed", np.random.default_rng(i)).layers for i in range(300)}
    assert layers == {1, 2, 3, 4}


def test_mixed_layer_scale():
    """mixed draws' layer scale spreads within [0.55, 0.75] (a mutation audit)."""
    v = [sample_params("mixed", np.random.default_rng(i)).layer_scale for i in range(100)]
    assert min(v) >= 0.55 and max(v) <= 0.75 and max(v) - min(v) > 0.1


def test_preset_vary_all():
    """Every preset's draws vary length (both ends alike), width, blur and mist within
    their spreads (a mutation audit)."""
    ok = True
    for name, b in PRESETS.items():
        ps = [sample_params(name, np.random.default_rng(i)) for i in range(60)]
        r0 = np.array([p.length[0] / b.length[0] for p in ps])
        r1 = np.array([p.length[1] / b.length[1] for p in ps])
        w = np.array([p.width / b.width for p in ps])
        bl = np.array([p.blur / b.blur for p in ps])
        ok &= np.allclose(r0, r1) and r0.std() > 0.03
        ok &= np.all(np.abs(w - 1) <= 0.15 + 1e-9) and w.std() > 0.03
        ok &= np.all(np.abs(bl - 1) <= 0.2 + 1e-9) and bl.std() > 0.04
        if b.accumulation:
            a = np.array([p.accumulation / b.accumulation for p in ps])
            ok &= np.all(np.abs(a - 1) <= 0.3 + 1e-9) and a.std() > 0.05
    assert bool(ok)


def test_heavy_angle_spread_12():
    """heavy and storm rain falls within 12 degrees of its angle (a mutation audit)."""
    ok = True
    for name in ("heavy", "storm"):
        a = np.array([sample_params(name, np.random.default_rng(i)).angle for i in range(200)])
        ok &= np.abs(a).max() <= 12 and np.abs(a).max() > 10
    assert bool(ok)


def test_rain_uniform_over_image():
    """streaks cover the whole photo: no band of it is left sparse (a mutation audit)."""
    black = np.zeros((160, 240, 3), np.float32)
    lay = 0
    for s in range(6):
        lay = lay + synthesize(black, replace(PRESETS["heavy"], angle=20.0), seed=s)[1].mean(2)
    q = [lay[:40].mean(), lay[-40:].mean(), lay[:, :60].mean(), lay[:, -60:].mean()]
    assert max(q) / min(q) < 1.3


def test_brightness_jitter_used():
    """brightness_jitter dims streaks: not every streak at peak opacity (a mutation audit)."""
    black = np.zeros((160, 240, 3), np.float32)
    base = RainParams(layers=1, blur=0.0, brightness=0.8, brightness_jitter=0.0,
                      tint=(1, 1, 1), angle_jitter=0.0)
    m0 = synthesize(black, base, seed=1)[1].mean()
    m1 = synthesize(black, replace(base, brightness_jitter=1.0), seed=1)[1].mean()
    assert 0.35 < m1 / m0 < 0.65


def test_angle_jitter_used():
    """angle_jitter turns each layer: heavy rain's slightly crossing directions (a
    mutation audit)."""
    black = np.zeros((160, 240, 3), np.float32)
    p = RainParams(layers=1, angle=0.0, angle_jitter=15.0, blur=0.0)
    a = [dominant_angle(synthesize(black, p, seed=s)[1]) for s in range(12)]
    assert np.std(a) > 7


def test_veil_formula():
    """Haze replaces part of the photo by the atmospheric light: I (1 - t) + A t (a
    mutation audit)."""
    c = np.full((8, 8, 3), 0.25, np.float32)
    p = RainParams(density=0.0, haze=0.5, atmospheric_light=(0.9, 0.9, 0.9))
    r = synthesize(c + np.array([0.01, 0, 0], np.float32), p, seed=0)[0]
    assert np.allclose(r, (c + np.array([0.01, 0, 0], np.float32)) * 0.5 + 0.45, atol=1e-6)


def test_mist_alone_and_combined():
    """accumulation alone draws patchy mist, and mist over haze adds to it (a mutation audit)."""
    c = np.full((32, 32, 3), 0.2, np.float32)
    r_alone = synthesize(c, RainParams(density=0.0, accumulation=0.6), seed=0)[0]
    r_both = synthesize(c, RainParams(density=0.0, haze=0.3, accumulation=0.6), seed=0)[0]
    r_haze = synthesize(c, RainParams(density=0.0, haze=0.3, accumulation=0.0), seed=0)[0]
    # mist over haze: t = 1 - (1-h)(1-m) > h everywhere mist > 0, and mist is patchy
    assert r_alone.mean() > 0.25 and r_alone.std() > 0.01
    assert (r_both >= r_haze - 1e-6).all() and (r_both > r_haze + 1e-3).mean() > 0.9


def test_uint16_scale():
    """16-bit samples are scaled by 65535 (a mutation audit)."""
    f = to_float(np.full((2, 2, 3), 32768, np.uint16))
    assert abs(float(f.max()) - 0.5) < 1e-3
