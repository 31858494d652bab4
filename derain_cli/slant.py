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
(OpenCV's ``BORDER_REFLECT_101``; a review measured it 0.07-0.29 dB above wrapping or
repeating the edge at 45 degrees), so the network sees photo-like content there rather
than a black edge, and they are dropped afterwards. Its area grows with the angle and
with how long and narrow the photo is (``Turn.area_factor``): twice a square photo's at 45
degrees, 2.17 times a 16:9 one's, 6 times a 10:1 panorama's. A pass costs that much more
time; past ``MAX_CANVAS`` times the photo the turn is refused rather than run for minutes
on mostly mirrored pixels. An 8- or 16-bit photo is turned in its own sample type, so the
canvas costs a quarter (half) of a float32 one; the network's float32 result on the
canvas is what the turn adds to memory.

Angles are the synthesizer's convention (``derain_cli.synth``): degrees from the
vertical, positive for rain falling towards the bottom right (streaks like ``\\``),
negative towards the bottom left (``/``); 90 and -90 are the same horizontal rain.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from .images import LUMA  # the guess and the check measure brightness as gray results

#: the largest slant, either way: horizontal rain
LIMIT = 90.0
#: the most pixels a turned canvas may have, over the photo's (a 5:1 panorama at 45 degrees
#: needs 3.6; a 6:1 one, 4.08, is refused)
MAX_CANVAS = 4.0
#: rows of the photo converted to float32 at a time when the rain layer is taken off it
_BAND_ROWS = 256


def check_angle(value: object) -> float:
    """``value`` as a float, or ``ValueError`` saying the range."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating) \
            or not -LIMIT <= float(value) <= LIMIT:  # NaN fails this too
        raise ValueError(f"rain angle must be a number of degrees from -{LIMIT:g} to "
                         f"{LIMIT:g} (0: rain falling straight down), not {value!r}")
    return float(value) + 0.0  # -0.0 is 0


class CanvasTooLarge(ValueError):
    """A photo too long and narrow to turn by the angle asked (``Turn.check_size``): a
    refusal of that photo, said in one line; a folder run goes on with the next."""


#: the setting that has each photo's angle chosen (``choose_angle``)
AUTO = "auto"


def check_setting(value: object) -> float | str:
    """A rain-angle setting: ``AUTO`` (any case) or an angle (``check_angle``)."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        return check_angle(value)
    except ValueError:
        raise ValueError(f"rain angle must be {AUTO} or a number of degrees from -{LIMIT:g} "
                         f"to {LIMIT:g} (0: rain falling straight down), not {value!r}"
                         ) from None


def said(setting: float | str) -> str:
    """A setting as the banner and ``repr`` say it: 'auto', or '45' (not '45.0')."""
    return setting if isinstance(setting, str) else f"{setting:g}"


def square_factor(angle: float) -> float:
    """``Turn.area_factor`` for a square photo: what the turn adds to a job whose photos'
    shapes are not known yet (the engine choice's workload)."""
    th = math.radians(angle)
    return (abs(math.cos(th)) + abs(math.sin(th))) ** 2


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

    @property
    def too_large(self) -> bool:
        """Whether the canvas passes ``MAX_CANVAS`` times the photo: the one rule that
        ``check_size`` refuses by, ``choose_angle`` skips by and ``derain eval`` checks
        the pairs' headers by."""
        return self.area_factor > MAX_CANVAS

    def check_size(self) -> None:
        """``CanvasTooLarge`` for a canvas past ``MAX_CANVAS`` times the photo."""
        if self.too_large:
            raise CanvasTooLarge(
                f"turned {self.angle:g} degrees, this {self.width}x{self.height} photo needs a "
                f"canvas of {self.area_factor:.1f} times its pixels (at most {MAX_CANVAS:g}): "
                "derain it in shorter pieces, or without --rain-angle")

    def forward(self, rgb: np.ndarray) -> np.ndarray:
        """The photo (HxWx3 uint8, uint16, or float in [0, 1]) turned onto the canvas, in
        its own sample type (float as float32, bicubic overshoot clipped to [0, 1])."""
        x = rgb if rgb.dtype in (np.uint8, np.uint16) else _as_float(rgb)
        out = cv2.warpAffine(np.ascontiguousarray(x), self.matrix,
                             (self.canvas_width, self.canvas_height),
                             flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)
        if out.dtype == np.float32:  # integer samples saturate by themselves
            np.clip(out, 0.0, 1.0, out=out)
        return out

    @staticmethod
    def rain(canvas: np.ndarray, result: np.ndarray) -> np.ndarray:
        """What the network took off the canvas: ``canvas`` (as ``forward`` made it) minus
        its float32 ``result``, written into ``result`` a band of rows at a time."""
        for y in range(0, result.shape[0], _BAND_ROWS):
            band = result[y:y + _BAND_ROWS]
            np.subtract(_as_float(canvas[y:y + _BAND_ROWS]), band, out=band)
        return result

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


#: the slant histogram's resolution: degrees per bin, and the bins smoothed together
_BINS, _SMOOTH = 180, 9
#: photos are measured at most this long a side (streaks stay a few pixels wide)
_MEASURE_SIDE = 1024


#: the thinnest photo ``estimate_angle`` looks at: the top-hat's 5 px opening and the
#: gradients around it need a few pixels both ways to see a line's slope
MIN_SIDE = 8


def estimate_angle(rgb: np.ndarray) -> float:
    """The photo's dominant slant of thin bright lines, in whole degrees from -90 to 89: a
    guess at its rain's, from the photo alone.

    The luma's white top-hat (what a 5 px opening removes: thin bright things, as streaks
    are) has its gradients binned by the direction of the lines they cross, weighted by
    their strength; the fullest direction, smoothed over 9 degrees, wins (to the whole
    degree: the centre of mass around it). It found the
    synthesizer's rain within a few degrees at every slant, but on photos with light rain
    horizontal edges and textures often win (``choose_angle`` checks with the network).
    A photo under ``MIN_SIDE`` pixels across either way shows no slant: 0 (a 1 px column
    was guessed sideways, -90, whatever it showed: an audit).
    """
    y = _as_float(rgb) @ LUMA
    h, w = y.shape
    if min(h, w) < MIN_SIDE:
        return 0.0
    f = min(1.0, _MEASURE_SIDE / max(h, w))
    if f < 1.0:
        y = cv2.resize(y, (max(1, round(w * f)), max(1, round(h * f))),
                       interpolation=cv2.INTER_AREA)
    top = cv2.morphologyEx(y, cv2.MORPH_TOPHAT,
                           cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    gx = cv2.Scharr(top, cv2.CV_32F, 1, 0)
    gy = cv2.Scharr(top, cv2.CV_32F, 0, 1)
    # a line slanted a (streaks along (sin a, cos a), y down) has its gradient at -a; one
    # bin per whole degree, -90 to 89 (centred on them: a line across is turned exactly)
    line = (90.5 - np.degrees(np.arctan2(gy, gx))) % 180.0 - 90.5
    hist, _ = np.histogram(line, bins=_BINS, range=(-90.5, 89.5), weights=gx * gx + gy * gy)
    k = _SMOOTH // 2
    smooth = np.convolve(np.concatenate([hist[-k:], hist, hist[:k]]),
                         np.ones(_SMOOTH) / _SMOOTH, mode="valid")
    # the smoothed peak is flat-topped (argmax takes its first bin: about 2 degrees low, a
    # review found): the raw histogram's centre of mass around it, to the whole degree
    top = int(np.argmax(smooth))
    near = np.arange(top - k, top + k + 1)
    mass = hist[near % _BINS]
    centre = top + float(np.dot(near - top, mass) / mass.sum()) if mass.sum() > 0 else top
    return float(round(centre) % _BINS - 90)  # bin 0 is -90 degrees


#: ``choose_angle``'s rule: a guess within this of vertical is not checked (the networks take
#: rain within about 30 degrees of it); turned, the network must take off this many times
#: what it takes off unturned, and this much more (mean luma, [0, 1] scale)
LEAST_ANGLE, GAIN, MARGIN = 25.0, 1.5, 0.01
#: photos up to this many pixels are checked whole; larger ones on four crops of CROP px
WHOLE_PIXELS, CROP = 1_100_000, 512


def removed(before: np.ndarray, after: np.ndarray) -> float:
    """How much a network took off a photo: the mean of the luma it lowered, on a [0, 1]
    scale (rain brightens, so what deraining takes off is mostly positive)."""
    return float(np.maximum((_as_float(before) - after) @ LUMA, 0.0).mean())


def choose_angle(rgb: np.ndarray, derain: Callable[[np.ndarray, float], np.ndarray],
                 ) -> tuple[float, float, np.ndarray | None]:
    """The angle to turn ``rgb`` by (0: none), the guess it was checked from, and, when the
    whole photo was the sample, the result at the chosen angle (to reuse).

    ``derain(image, angle)`` derains an image turned by ``angle`` (float32 [0, 1] out).
    ``estimate_angle`` guesses a slant; past ``LEAST_ANGLE`` degrees the network itself
    is asked: the sample derained as it is and turned by the guess, and the turn is taken
    only when turned it takes off ``GAIN`` times as much and ``MARGIN`` more (never for a
    photo whose turned canvas would pass ``MAX_CANVAS``). Why the
    network: the guess alone mistook horizontal edges for rain on many photos, and a wrong
    turn costs dB (the network then barely derains the real, upright rain)."""
    guess = estimate_angle(rgb)
    if abs(guess) < LEAST_ANGLE:
        return 0.0, guess, None
    h, w = rgb.shape[:2]
    if Turn.make(h, w, guess).too_large:  # a long, narrow photo: the turn
        return 0.0, guess, None  # would be refused, so it is derained as it is
    whole = h * w <= WHOLE_PIXELS
    if whole:
        crops = [rgb]
    else:
        ch, cw = min(CROP, h), min(CROP, w)
        corners = []  # the middles of the photo's four quarters, once each (a narrow
        for cy in (h // 4, 3 * h // 4):  # photo's crops can fall on the same place)
            for cx in (w // 4, 3 * w // 4):
                corner = (min(max(0, cy - ch // 2), h - ch), min(max(0, cx - cw // 2), w - cw))
                if corner not in corners:
                    corners.append(corner)
        crops = [rgb[y0:y0 + ch, x0:x0 + cw] for y0, x0 in corners]
    plain = [derain(c, 0.0) for c in crops]
    turned = [derain(c, guess) for c in crops]
    e0 = float(np.mean([removed(c, o) for c, o in zip(crops, plain, strict=True)]))
    ea = float(np.mean([removed(c, o) for c, o in zip(crops, turned, strict=True)]))
    take = ea >= GAIN * e0 and ea - e0 >= MARGIN
    angle = guess if take else 0.0
    return angle, guess, ((turned if take else plain)[0] if whole else None)
