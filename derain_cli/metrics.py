"""Image-quality metrics computed the way deraining papers compute them.

Conventions (they decide whether numbers are comparable with the literature):

* **Inputs are 8-bit images as saved.** ``psnr_y``, ``ssim_y`` and ``psnr_rgb`` take
  ``HxWx3`` RGB arrays, either ``uint8`` (0..255) or float in ``[0, 1]``. Float input is
  first turned into the 8-bit image it would be saved as (clipped to ``[0, 1]``, scaled by
  255, rounded to the nearest integer, ties to even, as derain's writer rounds):
  published figures are computed on the PNGs a model wrote, so evaluating unquantised
  floats would report slightly different (usually higher) numbers than the same output
  read back from disk.
  Float input whose maximum is above 1.5 is rejected, because it is almost certainly a
  0..255 image in a float array, which would otherwise be clipped to white silently;
  so is float input holding NaN or infinities (it would be scored as black).
* **Y channel** of ITU-R BT.601 with the MATLAB ``rgb2ycbcr`` convention:
  ``Y = 16 + (65.481 R + 128.553 G + 24.966 B)`` with R, G, B in ``[0, 1]``, i.e. Y in
  ``[16, 235]`` on the 0..255 scale. Y is *not* rounded: the metrics are computed on the
  float64 Y values (that is what reproduces the published identity figures of the data
  sets in ``../shared/data``; rounding Y to integers changes the 4th SSIM digit).
* **SSIM** is the Gaussian-window SSIM of Wang et al. (MATLAB ``ssim_index``, and the
  ``calculate_ssim`` copied around deraining codebases): 11x11 Gaussian window with
  sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255, statistics without the sample-covariance
  correction, averaged over the *valid* region only (the 5-pixel border where the window
  would leave the image is dropped, so no border padding enters the result).
* **PSNR** is ``10 log10(L^2 / MSE)`` with the MSE over all pixels (and channels), L = 255;
  identical images give ``inf``. Data-set figures are the mean of the per-image values.
* All arithmetic is float64.

``psnr_torch`` is the cheap variant for validation during training: RGB, on ``[0, 1]``
tensors, no quantisation, mean of per-image PSNR over the batch.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # imported by psnr_torch alone: `import derain_cli.metrics` took 3 s
    import torch

__all__ = [
    "SSIM_WINDOW",
    "psnr",
    "psnr_rgb",
    "psnr_torch",
    "psnr_y",
    "rgb_to_y",
    "ssim",
    "ssim_y",
    "to_uint8",
]

# BT.601 "studio swing" luma coefficients (MATLAB rgb2ycbcr), for R, G, B in [0, 1].
_Y_COEFFS = np.array([65.481, 128.553, 24.966], dtype=np.float64)
_Y_OFFSET = 16.0

_SSIM_WIN = 11
#: The smallest side SSIM can score (its Gaussian window's width).
SSIM_WINDOW = _SSIM_WIN
_SSIM_SIGMA = 1.5
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03
# 1-D normalised Gaussian; the 2-D window is its outer product (separable).
_GAUSS_1D = cv2.getGaussianKernel(_SSIM_WIN, _SSIM_SIGMA, cv2.CV_64F)

# Float input above this maximum is taken to be a 0..255 image stored as float: an error.
_FLOAT_MAX = 1.5


def _check_rgb(img: np.ndarray, what: str = "image") -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{what} must be an HxWx3 RGB array, got shape {img.shape}")
    return img


def _check_float_range(img: np.ndarray) -> None:
    if not img.size:
        return
    lo, hi = float(np.min(img)), float(np.max(img))  # NaN anywhere makes both NaN
    if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN was scored as black (8.7 dB
        # for a half-NaN result: an audit), a network's overflow passed for a score
        raise ValueError("the float image holds NaN or infinite values: nothing to score")
    if hi > _FLOAT_MAX:
        raise ValueError(
            f"float images must be in [0, 1], got maximum {hi:g}; "
            "pass a uint8 array for 0..255 data (or divide by 255)"
        )


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Return the 8-bit image ``img`` would be saved as.

    ``uint8`` input is returned unchanged. Float input is taken as ``[0, 1]``: it is
    clipped, scaled by 255 and rounded to the nearest integer, ties to even, as derain's
    writer (``images._quantise``) and ``derain eval`` round (this rounded ties up until
    2026-12-05, so validation and eval could differ at exact ties). Other integer types
    must already hold 0..255 values. Raises ``ValueError`` for float input above 1.5 (a
    0..255 float image) or integers outside 0..255, and ``TypeError`` for other dtypes.
    """
    img = np.asarray(img)
    if img.dtype == np.uint8:
        return img
    if np.issubdtype(img.dtype, np.floating):
        _check_float_range(img)
        # in float32, as the writer computes it: at a tie float64 can round the other way
        x = np.asarray(img, dtype=np.float32) * np.float32(255.0)
        return np.rint(np.clip(x, 0.0, 255.0)).astype(np.uint8)
    if np.issubdtype(img.dtype, np.integer):
        if img.size and (int(img.min()) < 0 or int(img.max()) > 255):
            raise ValueError(
                f"integer images must hold 0..255 values, got {img.min()}..{img.max()}"
            )
        return img.astype(np.uint8)
    raise TypeError(f"unsupported image dtype {img.dtype}; use uint8 or float in [0, 1]")


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma (MATLAB ``rgb2ycbcr`` convention) of an ``HxWx3`` RGB image.

    Returns float64 Y on the 0..255 scale, in ``[16, 235]``: white -> 235, black -> 16.
    Integer input (``uint8``) is 0..255; float input is taken as ``[0, 1]`` and is not
    quantised here (``psnr_y``/``ssim_y`` quantise to 8 bits first). Y is not rounded.
    """
    img = _check_rgb(img)
    if np.issubdtype(img.dtype, np.floating):
        _check_float_range(img)
        rgb01 = img.astype(np.float64)
    elif np.issubdtype(img.dtype, np.integer):
        rgb01 = to_uint8(img).astype(np.float64) / 255.0
    else:
        raise TypeError(f"unsupported image dtype {img.dtype}; use uint8 or float in [0, 1]")
    return rgb01 @ _Y_COEFFS + _Y_OFFSET


def _same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """PSNR in dB between two arrays of the same shape, ``10 log10(L^2 / MSE)``.

    No conversion or quantisation: values are used as given (in float64), on a scale
    whose peak-to-peak range is ``data_range``. Identical arrays give ``inf``.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    _same_shape(a, b)
    if a.size == 0:
        raise ValueError("empty images")
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def _filter_valid(x: np.ndarray) -> np.ndarray:
    """Gaussian-filter a 2-D float64 array and keep the valid region (MATLAB 'valid')."""
    out = cv2.sepFilter2D(x, cv2.CV_64F, _GAUSS_1D, _GAUSS_1D, borderType=cv2.BORDER_REFLECT)
    r = _SSIM_WIN // 2
    return out[r:-r, r:-r]


def _ssim_2d(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    c1 = (_SSIM_K1 * data_range) ** 2
    c2 = (_SSIM_K2 * data_range) ** 2
    mu_a = _filter_valid(a)
    mu_b = _filter_valid(b)
    mu_aa = mu_a * mu_a
    mu_bb = mu_b * mu_b
    mu_ab = mu_a * mu_b
    var_a = _filter_valid(a * a) - mu_aa
    var_b = _filter_valid(b * b) - mu_bb
    cov = _filter_valid(a * b) - mu_ab
    ssim_map = ((2.0 * mu_ab + c1) * (2.0 * cov + c2)) / (
        (mu_aa + mu_bb + c1) * (var_a + var_b + c2)
    )
    return float(ssim_map.mean())


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Gaussian-window SSIM (Wang et al. 2004, MATLAB ``ssim_index``) of two images.

    ``a`` and ``b`` are ``HxW`` (or ``HxWxC``: the mean of the per-channel SSIM) arrays on
    a scale with peak-to-peak range ``data_range`` (255 for the 0..255 scale). 11x11
    Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, mean over the valid region (the
    5-pixel border is dropped). Both sides must be at least 11x11. No quantisation.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    _same_shape(a, b)
    if a.ndim not in (2, 3):
        raise ValueError(f"ssim expects HxW or HxWxC arrays, got shape {a.shape}")
    if a.shape[0] < _SSIM_WIN or a.shape[1] < _SSIM_WIN:
        raise ValueError(
            f"ssim needs images of at least {_SSIM_WIN}x{_SSIM_WIN}, got {a.shape[:2]}"
        )
    if a.ndim == 2:
        return _ssim_2d(a, b, data_range)
    per_channel = [
        _ssim_2d(np.ascontiguousarray(a[..., c]), np.ascontiguousarray(b[..., c]), data_range)
        for c in range(a.shape[2])
    ]
    return float(np.mean(per_channel))


def _y_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = to_uint8(_check_rgb(pred, "pred"))
    gt = to_uint8(_check_rgb(gt, "gt"))
    _same_shape(pred, gt)
    return rgb_to_y(pred), rgb_to_y(gt)


def psnr_y(pred: np.ndarray, gt: np.ndarray) -> float:
    """PSNR (dB) on the BT.601 Y channel of two ``HxWx3`` RGB images (uint8 or [0,1] float).

    Float input is quantised to 8 bits first (see the module docstring).
    """
    y_pred, y_gt = _y_pair(pred, gt)
    return psnr(y_pred, y_gt, data_range=255.0)


def ssim_y(pred: np.ndarray, gt: np.ndarray) -> float:
    """Gaussian-window SSIM on the BT.601 Y channel of two ``HxWx3`` RGB images.

    Float input is quantised to 8 bits first (see the module docstring).
    """
    y_pred, y_gt = _y_pair(pred, gt)
    return ssim(y_pred, y_gt, data_range=255.0)


def psnr_rgb(pred: np.ndarray, gt: np.ndarray) -> float:
    """PSNR (dB) over all three channels of two ``HxWx3`` RGB images, on the 0..255 scale.

    Float input is quantised to 8 bits first (see the module docstring).
    """
    pred = to_uint8(_check_rgb(pred, "pred"))
    gt = to_uint8(_check_rgb(gt, "gt"))
    return psnr(pred, gt, data_range=255.0)


def psnr_torch(pred: torch.Tensor, gt: torch.Tensor, data_range: float = 1.0) -> float:
    """Mean over the batch of the per-image RGB PSNR (dB), for validation during training.

    ``pred`` and ``gt`` are ``NxCxHxW`` (or ``CxHxW``) tensors on ``[0, data_range]``.
    Both are clamped to that range (a saved image would be), not quantised, and the
    arithmetic is float64. An image identical to its target contributes ``inf``.
    Use ``psnr_y``/``ssim_y`` on saved 8-bit outputs for figures comparable with papers.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"tensors differ in shape: {tuple(pred.shape)} vs {tuple(gt.shape)}")
    if pred.dim() == 3:
        pred, gt = pred.unsqueeze(0), gt.unsqueeze(0)
    if pred.dim() != 4:
        raise ValueError(f"psnr_torch expects NxCxHxW or CxHxW, got {tuple(pred.shape)}")
    import torch

    # float64 on the CPU where the device has none (MPS: "Cannot convert a MPS Tensor to
    # float64", read in an audit, as losses.py and torch_runner.py already do)
    home = pred.device if pred.device.type != "mps" else torch.device("cpu")
    p = pred.detach().to(device=home, dtype=torch.float64).clamp(0.0, data_range)
    g = gt.detach().to(device=home, dtype=torch.float64).clamp(0.0, data_range)
    mse = (p - g).pow(2).flatten(1).mean(dim=1)
    per_image = 10.0 * torch.log10(data_range**2 / mse)  # mse == 0 -> inf
    return float(per_image.mean().item())
