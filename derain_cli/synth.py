"""Rain synthesis: turn clean photos into (rainy, rain layer) training pairs.

Why this exists: supervised deraining needs pairs, and the only clean images we may train
on (``clean-bsds``) have no rainy counterpart. The synthesizer renders rain the way the
evaluation sets were made (bright, thin, mostly parallel streaks over several depth
layers, optionally behind a veil of haze and mist), fast enough to run on the fly in a data
loader (a 481x321 image: 20-28 ms median per preset on one core of the AVX2 test CPU with
the other core busy, `python benchmarks/bench_synth.py`; the budget is 50 ms).

How streaks are rendered, without a Python loop over streaks: each depth layer is drawn
in a canvas rotated so that the rain falls straight down. A streak from row ``y0`` to
``y1`` in column ``x`` is written as ``+b`` at ``(y0, x)`` and ``-b`` at ``(y1, x)``;
one cumulative sum down the columns turns those impulses into vertical segments of
individual length and brightness. An anisotropic Gaussian blur in that frame sets the
streak width and softens its ends, and one affine warp rotates the layer back into the
image. Layers are screen-blended, softened by the motion blur, tinted, added to the photo
(or screen-blended over it, ``RainParams.blend``), and finally veiled by haze and patchy
mist.

Conventions: images are ``HxWx3`` float32 RGB in ``[0, 1]``. Angles are in degrees from
the vertical; a positive angle makes the rain fall towards the bottom right (streaks
look like ``\\``), a negative one towards the bottom left (``/``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from .images import LUMA

__all__ = [
    "BLENDS",
    "PRESETS",
    "PRESET_NAMES",
    "RainParams",
    "check_preset",
    "dominant_angle",
    "sample_params",
    "synthesize",
    "to_float",
]


#: the ways streaks can be composited over the photo (``RainParams.blend``)
BLENDS = ("add", "screen")


@dataclass(frozen=True)
class RainParams:
    """Everything that decides what the rain looks like; immutable so presets stay put.

    The lengths, width and brightness describe the nearest depth layer. Layer ``k``
    (``k = 0`` nearest) is scaled by ``layer_scale ** k``: far rain is shorter, thinner
    and dimmer, and, because more of it is in view, ``1 / layer_scale ** k`` times as
    dense. Motion blur, the tint and the haze apply to the whole image.
    """

    density: float = 1500.0
    """Streaks per megapixel of image area in the nearest layer (image-size independent)."""
    length: tuple[float, float] = (12.0, 30.0)
    """Streak length range in pixels (uniform per streak) for the nearest layer."""
    width: float = 1.2
    """Streak width in pixels (full width at half maximum) for the nearest layer."""
    angle: float = 0.0
    """Dominant fall direction in degrees from vertical (positive: towards bottom right)."""
    angle_jitter: float = 2.0
    """Standard deviation in degrees of each layer's direction around ``angle``."""
    brightness: float = 0.6
    """Peak opacity (0..1) of the brightest streak of the nearest layer."""
    brightness_jitter: float = 0.5
    """Per-streak brightness spread: opacity is drawn from ``brightness * [1 - j, 1]``."""
    blur: float = 0.4
    """Gaussian sigma in pixels of the final motion/defocus blur of the streak layer."""
    layers: int = 2
    """Number of depth layers (1..5)."""
    layer_scale: float = 0.65
    """Length/width/brightness factor from one depth layer to the next (0..1]."""
    haze: float = 0.0
    """Uniform veil ``t`` (0..1): ``rainy = rainy * (1 - t) + A * t``."""
    accumulation: float = 0.0
    """Extra low-frequency, patchy mist (0..1) on top of ``haze``, as in heavy rain."""
    atmospheric_light: tuple[float, float, float] = (0.92, 0.93, 0.95)
    """Colour ``A`` (RGB, 0..1) of the haze and mist."""
    tint: tuple[float, float, float] = (0.94, 0.97, 1.0)
    """RGB colour (0..1) of the streaks: neutral to slightly bluish white."""
    blend: str = "add"
    """How the streaks meet the photo: ``"add"``, ``rainy = min(clean + R, 1)``, the grey
    additive rain of Rain100L, the heavy pairs and SIRR (their rain layers are neutral, or
    for SIRR nearly, wherever they are not clipped: ``benchmarks/compare_synth_stats.py``, column
    ``colour``); or ``"screen"``, ``rainy = 1 - (1 - clean) * (1 - R)``, which adds less
    over bright areas and tints the rain layer with the photo's complement."""

    def __post_init__(self) -> None:
        """Reject parameters that would silently render nothing or garbage."""
        lo, hi = self.length
        checks = {
            "density must be >= 0": self.density >= 0,
            "length must satisfy 1 <= min <= max": 1 <= lo <= hi,
            "width must be > 0": self.width > 0,
            "angle must be within [-80, 80] degrees": -80 <= self.angle <= 80,
            "angle_jitter must be >= 0": self.angle_jitter >= 0,
            "brightness must be within [0, 1]": 0 <= self.brightness <= 1,
            "brightness_jitter must be within [0, 1]": 0 <= self.brightness_jitter <= 1,
            "blur must be >= 0": self.blur >= 0,
            "layers must be within 1..5": 1 <= self.layers <= 5,
            "layer_scale must be within (0, 1]": 0 < self.layer_scale <= 1,
            "haze must be within [0, 1]": 0 <= self.haze <= 1,
            "accumulation must be within [0, 1]": 0 <= self.accumulation <= 1,
            "atmospheric_light must be 3 values in [0, 1]": len(self.atmospheric_light) == 3
            and all(0 <= v <= 1 for v in self.atmospheric_light),
            "tint must be 3 values in [0, 1]": len(self.tint) == 3
            and all(0 <= v <= 1 for v in self.tint),
            "blend must be 'add' or 'screen'": self.blend in BLENDS,
        }
        failed = [msg for msg, ok in checks.items() if not ok]
        if failed:
            raise ValueError("invalid RainParams: " + "; ".join(failed))


_HEAVY = RainParams(
    density=4000.0,
    length=(40.0, 130.0),
    width=1.3,
    angle_jitter=5.0,
    brightness=0.36,
    brightness_jitter=0.5,
    blur=0.25,
    layers=2,
    layer_scale=0.8,
)

PRESETS: dict[str, RainParams] = {
    # Rain100L-like (see benchmarks/synth_stats.md): sparse, thin streaks, no haze.
    "light": RainParams(
        density=1800.0,
        length=(10.0, 32.0),
        width=1.1,
        angle_jitter=1.5,
        brightness=0.45,
        brightness_jitter=0.6,
        blur=0.35,
        layers=2,
        layer_scale=0.6,
    ),
    # SIRR-like: denser, wider, softer and dimmer streaks.
    "medium": RainParams(
        density=2500.0,
        length=(20.0, 60.0),
        width=2.0,
        angle_jitter=3.0,
        brightness=0.28,
        brightness_jitter=0.5,
        blur=0.8,
        layers=3,
        layer_scale=0.65,
    ),
    # Rain100H / JORDER-E heavy-like: long, thin, very dense streaks in slightly
    # crossing directions. The heavy-small pairs have no measurable veil between the
    # streaks, so neither has this preset; "storm" adds one.
    "heavy": _HEAVY,
    # Heavy rain as photographed: the heavy streaks, softer and in more depth layers,
    # screen-blended (light that passes through a camera's tone curve) behind a veil of
    # haze and patchy mist.
    "storm": replace(_HEAVY, brightness=0.55, blur=0.5, layers=3, layer_scale=0.75, haze=0.3,
                     accumulation=0.3, atmospheric_light=(0.86, 0.88, 0.91), blend="screen"),
    # Light to medium streaks behind a veil: rain seen across a distance, the whole scene
    # washed out and few streaks standing out. No other preset veils sparse rain, and a
    # network trained on them leaves such a veil in place (sirr-val's veiled pairs). The
    # veil's strength varies widely between draws (``_HAZE_SPREAD``), so the network has to
    # read it from the image. Measured: semi-drdnet-fast on 64 px crops with it in the draw
    # learned to lift veils but not how strong, and lost on all three evaluation sets; on
    # 128 px crops, one draw in nine, it gained on sirr-val (its stage 8;
    # docs/model-history.md, "Veiled rain").
    "veiled": RainParams(
        density=2200.0,
        length=(14.0, 45.0),
        width=1.5,
        angle_jitter=2.5,
        brightness=0.32,
        brightness_jitter=0.55,
        blur=0.55,
        layers=2,
        layer_scale=0.65,
        haze=0.18,
        accumulation=0.1,
    ),
}
# Light streaks at any slant up to 80 degrees: wind-blown rain. The exact preset is light
# rain falling straight down; the slant comes from drawing it by name (``sample_params``,
# ``_ANGLE_SPREAD``). Every other preset keeps within about 30 degrees of vertical, and
# networks trained on them barely touch rain past 45 degrees (``benchmarks/rain_angle.py``;
# README, What still fails) unless the photo is turned first (``derain_cli.slant``,
# ``derain --rain-angle``).
PRESETS["slanted"] = replace(PRESETS["light"])

_MIXED = "mixed"
#: every name ``sample_params`` (and so ``--preset``) accepts
PRESET_NAMES: tuple[str, ...] = (*PRESETS, _MIXED)
# Half-width in degrees of the uniform direction variation that ``sample_params`` adds to
# each preset. Rain100L's directions spread over about [-30, 30] degrees (std 15), the
# heavy pairs' over about [-11, 14] (std 6).
_ANGLE_SPREAD = {"light": 28.0, "medium": 25.0, "heavy": 12.0, "storm": 12.0, "veiled": 25.0,
                 "slanted": 80.0}
# Half-width of the uniform haze variation per preset (others: 0.05): veiled's veils range
# from barely there to a third of the way to the sky's colour.
_HAZE_SPREAD = {"veiled": 0.14}


def check_preset(spec: str) -> tuple[str, ...]:
    """The preset names of ``spec``: one name, or a comma list such as ``"light,mixed"``.

    A list is a mixture: each image draws one of its names with equal chance (a name given
    twice is drawn twice as often). Why: under ``mixed`` alone, light rain is a small share
    of the draws and its errors are small beside heavy rain's, so a network trained on it
    learns little about light rain (README, "Training your own"). Raises ``ValueError``
    naming the unknown entry.
    """
    names = tuple(n.strip() for n in str(spec).split(","))
    bad = [n for n in names if n not in PRESET_NAMES]
    if bad:
        known = ", ".join(PRESET_NAMES)
        raise ValueError(f"unknown rain preset {bad[0]!r} in {spec!r}; choose one of: {known}, "
                         "or a comma list of them")
    return names


# Share of ``mixed`` draws composited with the screen blend (the rest add their rain, like
# the evaluation sets).
_SCREEN_SHARE = 0.3


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def _geo(a: float, b: float, t: float) -> float:
    """Geometric interpolation, for quantities that span orders of magnitude."""
    return math.exp(_lerp(math.log(a), math.log(b), t))


def _clip(v: float, lo: float, hi: float) -> float:
    return min(max(v, lo), hi)


def sample_params(preset: str, rng: np.random.Generator) -> RainParams:
    """Draw rain parameters so that training never sees the same rain twice.

    ``"mixed"`` draws an overall intensity uniformly between ``light`` and ``heavy`` and
    interpolates every streak parameter there, with independent noise on each, a
    direction uniform in [-30, 30] degrees, and haze plus mist (up to ``storm``'s) on
    about a third of the draws; it is the default for training. A preset name returns
    that preset with small variations (density +-20 %, length +-15 %, width +-15 %,
    brightness +-10 %, haze +-0.05, for veiled +-0.14), and a direction drawn around the
    preset's within +-28 (light), +-25 (medium, veiled) or +-12 (heavy, storm) degrees, the
    spread of the matching evaluation sets, or +-80 (slanted: every slant). Use
    ``PRESETS[name]`` for the exact preset. A comma list (``"light,mixed"``, see
    ``check_preset``) first draws one of its names.
    """
    names = check_preset(preset)  # also what train/synth checked: " light" is light
    preset = names[0] if len(names) == 1 else names[int(rng.integers(len(names)))]
    u = rng.uniform
    if preset == _MIXED:
        light, heavy, storm = PRESETS["light"], PRESETS["heavy"], PRESETS["storm"]
        t = float(u(0.0, 1.0))

        def mix(a: float, b: float, noise: float = 0.15, geo: bool = False) -> float:
            base = _geo(a, b, t) if geo else _lerp(a, b, t)
            return base * float(u(1 - noise, 1 + noise))

        lo = mix(light.length[0], heavy.length[0], geo=True)
        hi = max(lo * 1.5, mix(light.length[1], heavy.length[1], geo=True))
        hazy = t > 0.3 and float(u(0.0, 1.0)) < 0.45
        return RainParams(
            density=mix(light.density, heavy.density, noise=0.25, geo=True),
            length=(lo, hi),
            width=mix(light.width, heavy.width),
            angle=float(u(-30.0, 30.0)),
            angle_jitter=_clip(mix(light.angle_jitter, heavy.angle_jitter, noise=0.5), 0, 20),
            brightness=_clip(mix(light.brightness, heavy.brightness), 0.2, 1.0),
            brightness_jitter=float(u(0.3, 0.7)),
            blur=mix(light.blur, heavy.blur, noise=0.3),
            layers=int(rng.integers(1, 4)) if t < 0.5 else int(rng.integers(2, 5)),
            layer_scale=float(u(0.55, 0.75)),
            haze=float(u(0.05, storm.haze)) if hazy else 0.0,
            accumulation=float(u(0.0, storm.accumulation)) if hazy else 0.0,
            atmospheric_light=_random_light(rng),
            tint=_random_tint(rng),
            blend="screen" if float(u(0.0, 1.0)) < _SCREEN_SHARE else "add",
        )
    if preset not in PRESETS:
        known = ", ".join(PRESET_NAMES)
        raise ValueError(f"unknown rain preset {preset!r}; choose one of: {known}")
    p = PRESETS[preset]

    def vary(v: float, rel: float) -> float:
        return v * float(u(1 - rel, 1 + rel))

    k = float(u(0.85, 1.15))
    spread = _ANGLE_SPREAD.get(preset, 15.0)
    hs = _HAZE_SPREAD.get(preset, 0.05)
    return replace(
        p,
        density=vary(p.density, 0.2),
        length=(max(p.length[0] * k, 1.0), max(p.length[1] * k, 1.0)),
        width=vary(p.width, 0.15),
        angle=_clip(p.angle + float(u(-spread, spread)), -80.0, 80.0),
        brightness=_clip(vary(p.brightness, 0.1), 0.0, 1.0),
        blur=vary(p.blur, 0.2),
        haze=_clip(p.haze + float(u(-hs, hs)), 0.0, 1.0) if p.haze > 0 else 0.0,
        accumulation=_clip(vary(p.accumulation, 0.3), 0.0, 1.0),
        atmospheric_light=_random_light(rng) if p.haze > 0 else p.atmospheric_light,
        tint=_random_tint(rng),
    )


def _random_light(rng: np.random.Generator) -> tuple[float, float, float]:
    """Overcast sky colour: bright grey with a slight blue cast."""
    g = float(rng.uniform(0.82, 0.98))
    blue = float(rng.uniform(0.0, 0.04))
    return (g - blue, g - blue / 2, min(g + blue, 1.0))


def _random_tint(rng: np.random.Generator) -> tuple[float, float, float]:
    """Streak colour: white to slightly bluish white."""
    blue = float(rng.uniform(0.0, 0.08))
    return (1.0 - blue, 1.0 - blue / 2, 1.0)


def to_float(img: np.ndarray) -> np.ndarray:
    """Convert an image to the synthesizer's format: ``HxWx3`` float32 RGB in [0, 1].

    Accepts uint8 (/255), uint16 (/65535) and float input (clipped to [0, 1]: a float
    image of 0..255 values, or holding NaN, is refused, as ``images.write_image`` refuses
    them: it came back near white in silence, an audit); grey ``HxW`` / ``HxWx1`` is
    replicated to three channels and an alpha channel is dropped. The channel order is
    left alone (pass RGB; OpenCV's BGR must be converted first).
    """
    a = np.asarray(img)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or not a.shape[0] or not a.shape[1]:
        raise ValueError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {a.shape}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 4:
        a = a[..., :3]
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(255.0)
    if a.dtype == np.uint16:
        return a.astype(np.float32) / np.float32(65535.0)
    if np.issubdtype(a.dtype, np.floating):
        top = float(np.max(a))
        if not np.isfinite(top) or not np.isfinite(float(np.min(a))):
            raise ValueError("the image holds NaN or infinite values")
        if top > 2.0:  # (a little above 1: a filter's overshoot, clipped as before)
            raise ValueError(f"a float image's values run from 0 to 1; this one reaches "
                             f"{top:g} (0..255 values: divide by 255, or pass uint8)")
        return np.clip(a, 0.0, 1.0).astype(np.float32, copy=False)
    raise TypeError(f"unsupported image dtype {a.dtype}; use uint8, uint16 or float")


def _render_layer(
    h: int,
    w: int,
    rng: np.random.Generator,
    *,
    angle: float,
    density: float,
    length: tuple[float, float],
    width: float,
    brightness: float,
    brightness_jitter: float,
) -> np.ndarray:
    """One depth layer of parallel streaks as an HxW float32 opacity map in [0, 1]."""
    th = math.radians(angle)
    c, s = math.cos(th), math.sin(th)
    pad = 4
    # Canvas rotated so that the rain falls straight down; it covers the whole image.
    wc = int(math.ceil(w * abs(c) + h * abs(s))) + 2 * pad
    hc = int(math.ceil(w * abs(s) + h * abs(c))) + 2 * pad
    lo, hi = length
    n = int(rng.poisson(density * wc * (hc + hi) / 1e6))
    out = np.zeros((h, w), np.float32)
    if n == 0 or brightness <= 0:
        return out

    # Streak k spans rows [y0, y1) of column x (sub-pixel x split over two columns).
    lengths = rng.uniform(lo, hi, n)
    y0 = rng.uniform(-hi, hc, n)
    y1 = y0 + lengths
    x = rng.uniform(0.0, wc - 1.001, n)
    b = brightness * (1.0 - brightness_jitter * rng.uniform(0.0, 1.0, n))
    r0 = np.clip(np.rint(y0), 0, hc).astype(np.intp)
    r1 = np.clip(np.rint(y1), 0, hc).astype(np.intp)
    xi = x.astype(np.intp)
    fx = x - xi
    # xi + 1 <= wc - 1, so rows need no spare column; row hc collects the ends that fall
    # below the canvas.
    i0, i1 = r0 * wc + xi, r1 * wc + xi
    idx = np.concatenate([i0, i0 + 1, i1, i1 + 1])
    wts = np.concatenate([b * (1 - fx), b * fx, -b * (1 - fx), -b * fx])
    impulses = np.bincount(idx, weights=wts, minlength=(hc + 1) * wc).astype(np.float32)
    impulses = impulses.reshape(hc + 1, wc)
    canvas = np.cumsum(impulses[:hc], axis=0, out=impulses[:hc])

    # Width across the streak (renormalised so that `brightness` stays the peak opacity)
    # and soft ends along it.
    sigma_w = max(width / 2.355, 0.3)
    sigma_l = max(0.08 * lo, 0.8)
    kx = cv2.getGaussianKernel(2 * int(math.ceil(3 * sigma_w)) + 1, sigma_w, cv2.CV_32F)
    ky = cv2.getGaussianKernel(2 * int(math.ceil(3 * sigma_l)) + 1, sigma_l, cv2.CV_32F)
    canvas = cv2.sepFilter2D(canvas, -1, kx, ky, borderType=cv2.BORDER_CONSTANT)
    canvas *= np.float32(1.0 / float(kx.max()))

    # Image pixel p -> canvas (u, v): u across the rain, v along it (down the canvas).
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    cu, cv_ = (wc - 1) / 2.0, (hc - 1) / 2.0
    m = np.array(
        [[c, -s, cu - (c * cx - s * cy)], [s, c, cv_ - (s * cx + c * cy)]], dtype=np.float64
    )
    cv2.warpAffine(
        canvas,
        m,
        (w, h),
        dst=out,
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0.0,
    )
    np.maximum(out, 0.0, out=out)  # float32 cumsum leaves ~1e-7 where streaks ended
    np.minimum(out, 1.0, out=out)
    return out


def _mist(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth, patchy field in [0, 1] (a few blobs per image) for rain accumulation."""
    gh, gw = 3 + int(rng.integers(0, 3)), 4 + int(rng.integers(0, 3))
    grid = rng.uniform(0.0, 1.0, (gh, gw)).astype(np.float32)
    field = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(field, 0.0, 1.0)


def _is_gray(img: np.ndarray) -> bool:
    """True for an HxWx3 image whose three channels are equal everywhere."""
    return bool(img.ndim == 3 and img.shape[2] == 3
                and np.array_equal(img[..., 0], img[..., 1])
                and np.array_equal(img[..., 1], img[..., 2]))


def _neutral(rgb: tuple[float, float, float]) -> np.ndarray:
    """The grey of the same brightness as ``rgb``: its channels' mean, thrice."""
    return np.full(3, float(np.mean(rgb)), np.float32)


def synthesize(
    clean: np.ndarray,
    params: RainParams | str = "mixed",
    seed: int | np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render rain over a clean photo and return ``(rainy, rain_layer)``.

    Why the two outputs: ``rainy`` is the network input and ``rain_layer`` the target of
    models that predict the residual.

    ``clean`` is ``HxWx3`` RGB, ideally float32 in [0, 1]; anything ``to_float`` accepts
    (uint8 included) is converted first. ``params`` is a ``RainParams`` (used as is), a
    preset name (a key of ``PRESETS``: that preset with the small variations of
    ``sample_params``) or ``"mixed"`` (random rain from light to heavy, sometimes hazy).
    ``seed`` (int or Generator) makes the result reproducible: the same seed gives
    identical output on the same machine; the rain does not depend on the image content.

    Composition: the streak opacity ``S`` (depth layers screen-blended, then blurred) is
    tinted to ``R`` and added, ``rainy = min(clean + R, 1)``, or screen-blended,
    ``rainy = 1 - (1 - clean) * (1 - R)`` (``RainParams.blend``); both only brighten. Haze
    and mist then veil it: ``rainy = rainy * (1 - t) + A * t``.

    ``rainy`` is float32 in [0, 1]. ``rain_layer`` is the exact signed residual
    ``rainy - clean`` (float32, so ``clean + rain_layer == rainy`` up to float rounding,
    about 1e-7), where ``clean`` means ``to_float(clean)``. It lies in [-1, 1]: it is >= 0
    wherever there is no haze, and is negative only where the veil's light ``A`` is darker
    than the scene (bright highlights under heavy haze), which is what happens
    physically and is small in practice because ``A`` is a bright grey.

    A grayscale photo (all three channels equal) gets grey rain and a grey veil (the
    means of ``tint`` and ``atmospheric_light``), so ``rainy`` stays grayscale: a tinted
    rainy image beside its grey clean one is a pair of unlike images, which eval and
    train warn about.
    """
    rng = np.random.default_rng(seed)
    clean_f = to_float(clean)
    p = sample_params(params, rng) if isinstance(params, str) else params
    if not isinstance(p, RainParams):
        raise TypeError(f"params must be RainParams or a preset name, got {type(params)}")
    h, w = clean_f.shape[:2]

    # Screen blend of the layers, kept as the product of their transmissions (1 - opacity):
    # overlapping semi-transparent streaks never exceed full opacity.
    clear = np.ones((h, w), np.float32)
    for k in range(p.layers):
        scale = p.layer_scale**k
        layer = _render_layer(
            h,
            w,
            rng,
            angle=_clip(p.angle + float(rng.normal(0.0, p.angle_jitter)), -85.0, 85.0),
            density=p.density / scale,
            length=(max(p.length[0] * scale, 1.0), max(p.length[1] * scale, 1.0)),
            width=p.width * scale,
            brightness=p.brightness * scale,
            brightness_jitter=p.brightness_jitter,
        )
        np.subtract(1.0, layer, out=layer)
        clear *= layer
    if p.blur > 0:
        clear = cv2.GaussianBlur(clear, (0, 0), p.blur)

    gray = _is_gray(clean_f)
    tint = _neutral(p.tint) if gray else np.asarray(p.tint, np.float32)
    if p.blend == "add":  # rainy = clean + R (clipped below), R = tint * (1 - clear)
        rainy = (1.0 - clear)[..., None] * tint
        rainy += clean_f
    else:  # rainy = 1 - (1 - clean) * (1 - R), computed in place
        rain_clear = (1.0 - clear)[..., None] * -tint
        rain_clear += 1.0
        rainy = 1.0 - clean_f
        rainy *= rain_clear
        np.subtract(1.0, rainy, out=rainy)

    if p.haze > 0 or p.accumulation > 0:
        t = np.full((h, w), p.haze, np.float32)
        if p.accumulation > 0:
            mist = np.float32(p.accumulation) * _mist(h, w, rng)
            t = 1.0 - (1.0 - t) * (1.0 - mist)
        t = t[..., None]
        a = (_neutral(p.atmospheric_light) if gray
             else np.asarray(p.atmospheric_light, np.float32))
        rainy *= 1.0 - t
        rainy += a * t

    np.maximum(rainy, 0.0, out=rainy)
    np.minimum(rainy, 1.0, out=rainy)
    rain_layer = rainy - clean_f
    return rainy, rain_layer


def dominant_angle(layer: np.ndarray) -> float:
    """Dominant streak direction of a rain layer, in this module's angle convention.

    Why: tests and the statistics benchmark check that rendered rain falls the way it
    was asked to, and compare with the evaluation sets. Uses the structure tensor of the
    layer's positive luminance: streaks run perpendicular to the dominant gradient.
    Returns degrees in (-90, 90]; 0 means vertical, positive means towards bottom right.
    """
    a = np.asarray(layer, dtype=np.float32)
    if a.ndim == 3:
        a = a @ LUMA
    a = np.maximum(a, 0.0)
    # Scharr rather than Sobel: Sobel's anisotropy biases thin diagonal lines ~2 degrees
    # towards the axes.
    gx = cv2.Scharr(a, cv2.CV_32F, 1, 0)
    gy = cv2.Scharr(a, cv2.CV_32F, 0, 1)
    jxx = float(np.sum(gx * gx, dtype=np.float64))
    jyy = float(np.sum(gy * gy, dtype=np.float64))
    jxy = float(np.sum(gx * gy, dtype=np.float64))
    # Gradient direction phi (from +x, y down); streaks along (sin a, cos a) have their
    # gradient along (cos a, -sin a), i.e. phi = -a.
    phi = 0.5 * math.degrees(math.atan2(2.0 * jxy, jxx - jyy))
    ang = -phi
    if ang <= -90.0:
        ang += 180.0
    elif ang > 90.0:
        ang -= 180.0
    return ang
