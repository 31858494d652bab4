"""Slanted rain: the photo turned so its rain falls straight down for the network.

Why: the bundled networks learnt rain within about 30 degrees of vertical (``synth``'s
presets; training rotates the clean crop, then makes rain on it) and barely touch rain
slanted further: ``benchmarks/rain_angle.py`` measured the default's gain over the rainy
input at 8.47 dB for vertical rain, 2.29 dB at 45 degrees, 0.40 at 60. Turned by the
rain's angle, the photo's rain is vertical again, and the network removes it as it removes
vertical rain (README, "Slanted rain: --rain-angle", has the figures).

Only the rain layer is turned back: the result is the photo minus the rain the network
found on the turned canvas (the canvas minus its derained result), turned back. So the
photo's own pixels are never resampled on their way out; only the turned copy the network
sees is (bicubic), and the rain layer on its way back.

The canvas holds the whole turned photo; the corners around it are the photo mirrored
(OpenCV's ``BORDER_REFLECT_101``), so the network sees photo-like content there rather
than a black edge, and they are dropped afterwards. Its area grows with the angle: up to
twice the photo's at 45 degrees (a square photo), and the time and memory of a pass with
it (``Turn.area_factor``).

Angles are the synthesizer's convention (``derain_cli.synth``): degrees from the
vertical, positive for rain falling towards the bottom right (streaks like ``\\``),
negative towards the bottom left (``/``); 90 and -90 are the same horizontal rain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

#: the largest slant, either way: horizontal rain
LIMIT = 90.0
#: rows of the photo converted to float32 at a time when the rain layer is taken off it
_BAND_ROWS = 256


def check_angle(value: object) -> float:
    """``value`` as a float, or ``ValueError`` saying the range."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating) \
            or not -LIMIT <= float(value) <= LIMIT:  # NaN fails this too
        raise ValueError(f"rain angle must be a number of degrees from -{LIMIT:g} to "
                         f"{LIMIT:g} (0: rain falling straight down), not {value!r}")
    return float(value)


@dataclass(frozen=True)
class Turn:
    """The turn of an HxW photo that makes rain slanted ``angle`` degrees fall straight
    down, and back. ``matrix`` maps photo pixel coordinates to canvas ones (OpenCV's 2x3
    affine form); the canvas is ``canvas_height`` x ``canvas_width``."""

    angle: float
    height: int
    width: int
    canvas_height: int
    canvas_width: int
    matrix: np.ndarray

    @classmethod
    def make(cls, height: int, width: int, angle: float) -> Turn:
        """The turn for an ``height`` x ``width`` photo whose rain is slanted ``angle``."""
        angle = check_angle(angle)
        th = math.radians(angle)
        c, s = abs(math.cos(th)), abs(math.sin(th))
        # the turned photo's bounding box (a hair under a whole number is that number)
        cw = max(1, math.ceil(width * c + height * s - 1e-6))
        ch = max(1, math.ceil(width * s + height * c - 1e-6))
        # about the pixel-grid centres, so a quarter turn maps pixels onto pixels; OpenCV's
        # positive angle turns anticlockwise, which stands rain like \ upright
        m = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), -angle, 1.0)
        m[0, 2] += (cw - width) / 2
        m[1, 2] += (ch - height) / 2
        return cls(angle, int(height), int(width), int(ch), int(cw), m)

    @property
    def area_factor(self) -> float:
        """The canvas's pixels over the photo's: what a pass costs more, in time and memory."""
        return self.canvas_height * self.canvas_width / (self.height * self.width)

    def forward(self, rgb: np.ndarray) -> np.ndarray:
        """The photo (HxWx3 uint8, uint16 or float in [0, 1]) turned onto the canvas:
        float32 in [0, 1] (bicubic overshoot clipped)."""
        x = _as_float(rgb)
        out = cv2.warpAffine(x, self.matrix, (self.canvas_width, self.canvas_height),
                             flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)
        np.clip(out, 0.0, 1.0, out=out)
        return out

    def back(self, layer: np.ndarray) -> np.ndarray:
        """A canvas-sized HxWx3 float32 layer turned back onto the photo's frame."""
        return cv2.warpAffine(np.ascontiguousarray(layer, dtype=np.float32), self.matrix,
                              (self.width, self.height),
                              flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REFLECT_101)

    def take_off(self, rgb: np.ndarray, rain: np.ndarray) -> np.ndarray:
        """``rgb`` minus ``rain`` (both in the photo's frame), clipped to [0, 1], written
        into ``rain`` and returned; ``rgb`` is converted a band of rows at a time, so a large
        photo is never held as float32 twice."""
        for y in range(0, rain.shape[0], _BAND_ROWS):
            band = rain[y:y + _BAND_ROWS]
            np.subtract(_as_float(rgb[y:y + _BAND_ROWS]), band, out=band)
        np.clip(rain, 0.0, 1.0, out=rain)
        return rain


def _as_float(rgb: np.ndarray) -> np.ndarray:
    """uint8/uint16 samples scaled to float32 [0, 1]; floats as float32 (C order)."""
    if rgb.dtype.kind == "u":
        out = rgb.astype(np.float32)
        out *= np.float32(1.0 / np.iinfo(rgb.dtype).max)
        return out
    return np.ascontiguousarray(rgb, dtype=np.float32)
