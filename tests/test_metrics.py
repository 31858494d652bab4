"""Tests for derain_cli.metrics, checked against independent computations."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from derain_cli.metrics import (
    psnr,
    psnr_rgb,
    psnr_torch,
    psnr_y,
    rgb_to_y,
    ssim,
    ssim_y,
    to_uint8,
)

RAIN100L = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "rain100l"


def _pair(h: int = 48, w: int = 64, noise: float = 20.0, seed: int = 0):
    """A smooth uint8 RGB image and a noisy copy of it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack(
        [128 + 100 * np.sin(xx / 7.0), 128 + 90 * np.cos(yy / 5.0), (xx * 3 + yy * 2) % 256],
        axis=-1,
    )
    clean = np.clip(base, 0, 255).astype(np.uint8)
    noisy = np.clip(base + rng.normal(0, noise, base.shape), 0, 255).astype(np.uint8)
    return noisy, clean


def _y_by_hand(img: np.ndarray) -> np.ndarray:
    r, g, b = (img[..., i].astype(np.float64) / 255.0 for i in range(3))
    return 16.0 + 65.481 * r + 128.553 * g + 24.966 * b


def _ssim_brute_force(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM straight from the definition: one weighted window per valid position."""
    x = np.arange(11) - 5
    g = np.exp(-(x**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    wa = sliding_window_view(a.astype(np.float64), (11, 11))
    wb = sliding_window_view(b.astype(np.float64), (11, 11))
    mu_a = (wa * w).sum(axis=(-2, -1))
    mu_b = (wb * w).sum(axis=(-2, -1))
    var_a = (w * (wa - mu_a[..., None, None]) ** 2).sum(axis=(-2, -1))
    var_b = (w * (wb - mu_b[..., None, None]) ** 2).sum(axis=(-2, -1))
    cov = (w * (wa - mu_a[..., None, None]) * (wb - mu_b[..., None, None])).sum(axis=(-2, -1))
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return float(s.mean())


# ------------------------------------------------------------------------- rgb_to_y


def test_rgb_to_y_white_black_primaries():
    img = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    y = rgb_to_y(img)
    assert y.dtype == np.float64
    assert y.shape == (1, 5)
    np.testing.assert_allclose(y[0], [235.0, 16.0, 16 + 65.481, 16 + 128.553, 16 + 24.966])


def test_rgb_to_y_float_input_is_on_unit_scale():
    img = np.array([[[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]])
    np.testing.assert_allclose(rgb_to_y(img)[0], [235.0, 16.0])


def test_rgb_to_y_matches_formula_and_is_not_rounded():
    img, _ = _pair()
    y = rgb_to_y(img)
    np.testing.assert_allclose(y, _y_by_hand(img), rtol=0, atol=1e-12)
    assert np.any(y != np.round(y))


def test_rgb_to_y_rejects_bad_input():
    with pytest.raises(ValueError, match="HxWx3"):
        rgb_to_y(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        rgb_to_y(np.full((2, 2, 3), 200.0))


# ------------------------------------------------------------------------- to_uint8


def test_to_uint8_rounds_as_derain_writes_and_clips():
    x = np.array([0.0, 1.0, 0.2, -0.3, 1.2, 0.4 / 255, 0.6 / 255])
    np.testing.assert_array_equal(to_uint8(x), [0, 255, 51, 0, 255, 0, 1])
    # the same 8 bits derain's writer stores, so validation scores what eval scores
    from derain_cli.images import _quantise

    img = np.random.default_rng(0).random((8, 9, 3)).astype(np.float32)
    img[0, 0] = [2.5 / 255, 3.5 / 255, 0.5]
    np.testing.assert_array_equal(to_uint8(img), _quantise(img, 8, False))
    u = np.arange(256, dtype=np.uint8)
    assert to_uint8(u) is u
    np.testing.assert_array_equal(to_uint8(u.astype(np.int64)), u)


def test_to_uint8_rejects_0_255_floats_and_out_of_range_ints():
    with pytest.raises(ValueError, match="uint8"):
        to_uint8(np.array([0.0, 128.0, 255.0]))
    with pytest.raises(ValueError, match="0..255"):
        to_uint8(np.array([0, 256], dtype=np.uint16))
    with pytest.raises(TypeError):
        to_uint8(np.array([True, False]))
    half = np.full((4, 4, 3), 0.5)
    half[:2] = np.nan  # scored as black: 8.7 dB for a half-NaN result (an audit)
    for f in (lambda: to_uint8(half), lambda: psnr_y(half, np.full((4, 4, 3), 0.5)),
              lambda: ssim_y(np.full((4, 4, 3), 0.5), half)):
        with pytest.raises(ValueError, match="NaN or infinite"):
            f()


# ------------------------------------------------------------------------- psnr


def test_psnr_hand_computed_tiny_array():
    a = np.array([[0, 0], [0, 0]], dtype=np.uint8)
    b = np.array([[0, 0], [0, 10]], dtype=np.uint8)  # no uint8 wrap-around: 0 - 10 is -10
    mse = (10.0**2) / 4
    assert psnr(a, b) == pytest.approx(10 * math.log10(255.0**2 / mse), abs=1e-12)
    assert psnr(b, a) == psnr(a, b)
    assert psnr(a / 255.0, b / 255.0, data_range=1.0) == pytest.approx(psnr(a, b), abs=1e-9)


def test_psnr_identical_is_inf():
    img, _ = _pair()
    assert psnr(img, img) == math.inf
    assert psnr_y(img, img) == math.inf
    assert psnr_rgb(img, img) == math.inf


def test_psnr_y_against_hand_formula():
    pred, gt = _pair()
    diff = _y_by_hand(pred) - _y_by_hand(gt)
    expected = 10 * math.log10(255.0**2 / np.mean(diff**2))
    assert psnr_y(pred, gt) == pytest.approx(expected, abs=1e-10)


def test_psnr_rgb_against_skimage():
    pred, gt = _pair()
    expected = peak_signal_noise_ratio(gt, pred, data_range=255)
    assert psnr_rgb(pred, gt) == pytest.approx(expected, abs=1e-10)


def test_float_input_is_quantised_like_a_saved_image():
    pred, gt = _pair()
    rng = np.random.default_rng(1)
    # Floats that round to pred (offsets < half a level), as a model output would be saved.
    pred_f = (pred.astype(np.float64) + rng.uniform(-0.45, 0.45, pred.shape)) / 255.0
    np.testing.assert_array_equal(to_uint8(pred_f), pred)
    gt_f = gt.astype(np.float32) / 255.0
    assert psnr_y(pred_f, gt_f) == psnr_y(pred, gt)
    assert ssim_y(pred_f, gt_f) == ssim_y(pred, gt)
    assert psnr_rgb(pred_f, gt_f) == psnr_rgb(pred, gt)


def test_shape_mismatch_and_non_rgb_rejected():
    pred, gt = _pair()
    with pytest.raises(ValueError, match="shape"):
        psnr_y(pred, gt[:-1])
    with pytest.raises(ValueError, match="shape"):
        ssim_y(pred, gt[:, :-1])
    with pytest.raises(ValueError, match="HxWx3"):
        psnr_rgb(pred[..., 0], gt[..., 0])


# ------------------------------------------------------------------------- ssim


def test_ssim_matches_skimage_gaussian_ssim():
    # skimage with gaussian_weights, sigma 1.5 (truncate 3.5 -> 11x11 window) and
    # use_sample_covariance=False filters with reflect padding and then averages the map
    # with a (win_size - 1) // 2 = 5 px border cropped: exactly the valid region, where
    # padding never enters. So the two agree to float64 round-off, not just roughly.
    pred, gt = _pair()
    ya, yb = _y_by_hand(pred), _y_by_hand(gt)
    expected = structural_similarity(
        ya, yb, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert 0.3 < expected < 0.99  # a non-trivial case
    assert ssim_y(pred, gt) == pytest.approx(expected, abs=1e-12)
    assert ssim(ya, yb) == pytest.approx(expected, abs=1e-12)


def test_ssim_matches_brute_force_definition_on_valid_region():
    pred, gt = _pair(h=17, w=23, noise=35.0, seed=3)
    ya, yb = rgb_to_y(pred), rgb_to_y(gt)
    assert ssim(ya, yb) == pytest.approx(_ssim_brute_force(ya, yb), abs=1e-12)


def test_ssim_multichannel_is_mean_of_channels():
    pred, gt = _pair()
    per_channel = [ssim(pred[..., c], gt[..., c]) for c in range(3)]
    assert ssim(pred, gt) == pytest.approx(np.mean(per_channel), abs=1e-15)


def test_ssim_identical_is_one():
    img, _ = _pair()
    assert ssim_y(img, img) == 1.0
    assert ssim(rgb_to_y(img), rgb_to_y(img)) == 1.0


def test_ssim_needs_11x11():
    img = np.zeros((10, 30, 3), np.uint8)
    with pytest.raises(ValueError, match="11x11"):
        ssim_y(img, img)


# ------------------------------------------------------------------------- torch


def test_psnr_torch_batch_mean_of_per_image_psnr():
    p0, g0 = _pair(seed=0)
    p1, g1 = _pair(seed=1, noise=5.0)
    pred = torch.from_numpy(np.stack([p0, p1])).permute(0, 3, 1, 2).float() / 255
    gt = torch.from_numpy(np.stack([g0, g1])).permute(0, 3, 1, 2).float() / 255
    expected = np.mean(
        [psnr(pred[i].double().numpy(), gt[i].double().numpy(), data_range=1.0) for i in range(2)]
    )
    assert psnr_torch(pred, gt) == pytest.approx(expected, abs=1e-6)
    assert psnr_torch(pred[0], gt[0]) == pytest.approx(
        psnr(pred[0].double().numpy(), gt[0].double().numpy(), data_range=1.0), abs=1e-6
    )
    assert psnr_torch(gt, gt) == math.inf


def test_psnr_torch_clamps_prediction():
    gt = torch.full((1, 3, 8, 8), 1.0)
    over = torch.full((1, 3, 8, 8), 1.3)
    assert psnr_torch(over, gt) == math.inf
    with pytest.raises(ValueError, match="shape"):
        psnr_torch(gt, gt[..., :4])


# ------------------------------------------------------------------------- real data


def test_rain100l_identity_figures():
    """The rainy inputs of Rain100L score 26.90 dB / 0.8384 (../shared/data/README.md)."""
    rainy_dir, clean_dir = RAIN100L / "rainy", RAIN100L / "clean"
    if not rainy_dir.is_dir() or not clean_dir.is_dir():
        pytest.skip(f"{RAIN100L} not present (data is not part of the repository)")
    names = sorted(p.name for p in rainy_dir.glob("*.png"))
    assert len(names) == 100
    scores = []
    for name in names:
        with Image.open(rainy_dir / name) as r, Image.open(clean_dir / name) as c:
            rainy, clean = np.asarray(r.convert("RGB")), np.asarray(c.convert("RGB"))
        scores.append((psnr_y(rainy, clean), ssim_y(rainy, clean)))
    mean_psnr, mean_ssim = np.mean(scores, axis=0)
    assert f"{mean_psnr:.2f}" == "26.90"
    assert f"{mean_ssim:.4f}" == "0.8384"


def test_a_float_image_past_1_5_is_refused_and_1_5_is_taken():
    """Floats up to 1.5 are clipped as a network's overshoot; past it they are a 0..255
    image stored as floats (a mutation audit: a limit of 100 passed every test)."""
    from derain_cli import metrics as M

    img = np.full((12, 12, 3), 0.5)
    img[0, 0, 0] = 1.6
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.psnr_y(img, np.full((12, 12, 3), 0.5))
    img[0, 0, 0] = 1.5
    assert math.isfinite(M.psnr_y(img, np.full((12, 12, 3), 0.5)))


def test_rgb_to_y_refuses_integers_out_of_range():
    from derain_cli import metrics as M

    with pytest.raises(ValueError, match="0..255"):
        M.rgb_to_y(np.full((2, 2, 3), 300, np.int16))
