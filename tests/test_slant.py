"""derain_cli.slant: the turn that stands slanted rain upright, and back."""

from __future__ import annotations

import math

import numpy as np
import pytest

from derain_cli import slant, synth


@pytest.mark.parametrize("good", [0, -90, 90, 45.5, np.float32(12), np.int64(-30)])
def test_angles_within_a_quarter_turn_are_taken(good) -> None:
    assert slant.check_angle(good) == float(good)


def test_minus_zero_is_zero() -> None:  # else repr and --json said -0
    assert math.copysign(1.0, slant.check_angle(-0.0)) == 1.0


@pytest.mark.parametrize("bad", [90.5, -91, float("nan"), float("inf"), True, "45", None])
def test_other_angles_are_refused_with_the_range(bad) -> None:
    with pytest.raises(ValueError, match="from -90 to 90"):
        slant.check_angle(bad)


def test_the_canvas_holds_the_whole_turned_photo() -> None:
    t = slant.Turn.make(100, 100, 0)
    assert (t.canvas_height, t.canvas_width, t.area_factor) == (100, 100, 1.0)
    t = slant.Turn.make(30, 80, 90)  # a quarter turn swaps the sides
    assert (t.canvas_height, t.canvas_width) == (80, 30)
    t = slant.Turn.make(100, 100, -45)
    assert t.canvas_height == t.canvas_width == math.ceil(100 * math.sqrt(2))
    assert t.area_factor == pytest.approx(2.0, abs=0.03)
    assert slant.square_factor(-45) == pytest.approx(2.0) and slant.square_factor(0) == 1.0
    assert slant.Turn.make(900, 1600, 45).area_factor == pytest.approx(2.17, abs=0.01)


def test_a_canvas_many_times_the_photo_is_refused() -> None:
    """A long, narrow photo turned 45 degrees would make a canvas of mostly mirrored pixels:
    refused past MAX_CANVAS, saying how large and what to do."""
    slant.Turn.make(900, 1600, 45).check_size()  # 16:9: fine
    slant.Turn.make(600, 3000, 45).check_size()  # 5:1: 3.6x
    with pytest.raises(slant.CanvasTooLarge, match="3000x400 photo needs a canvas of 4.8 "
                                                  "times its pixels \\(at most 4\\): derain it"):
        slant.Turn.make(400, 3000, 45).check_size()
    slant.Turn.make(400, 3000, 10).check_size()  # a small angle turns it little


def test_a_quarter_turn_moves_pixels_onto_pixels() -> None:
    """About the pixel-grid centres: no interpolation blur at 90 degrees, and the turn is
    clockwise for rain falling towards the bottom right (it stands upright)."""
    x = np.random.default_rng(0).integers(0, 256, (7, 12, 3), dtype=np.uint8)
    t = slant.Turn.make(7, 12, 90)
    assert np.array_equal(t.forward(x), np.rot90(x, k=-1))
    assert np.array_equal(slant.Turn.make(7, 12, -90).forward(x), np.rot90(x, k=1))
    f = x.astype(np.float32) / 255
    np.testing.assert_allclose(t.forward(f), np.rot90(f, k=-1), atol=1e-6)


@pytest.mark.parametrize("angle", [-60.0, -35.0, 40.0, 75.0])
def test_turned_rain_falls_straight_down(angle: float) -> None:
    """Rain drawn by the synthesizer at ``angle`` is vertical on the canvas (by the
    synthesizer's own measure of a layer's slant)."""
    rng = np.random.default_rng(1)
    p = synth.sample_params("medium", rng)
    from dataclasses import replace

    p = replace(p, angle=angle, angle_jitter=0.0)
    clean = np.full((160, 200, 3), 0.3, np.float32)
    _, layer = synth.synthesize(clean, p, seed=2)
    rainy = np.clip(clean + layer, 0, 1)

    def middle(a: np.ndarray) -> np.ndarray:  # inside the photo: the corners mirror it,
        h, w = a.shape[:2]  # and mirrored rain slants the other way
        return a[h // 3:h - h // 3, w // 3:w - w // 3] - 0.3

    upright = middle(slant.Turn.make(160, 200, angle).forward(rainy))
    assert abs(synth.dominant_angle(upright)) < 4
    # turned the wrong way the slant doubles (a line's angle is taken modulo 180)
    wrong = middle(slant.Turn.make(160, 200, -angle).forward(rainy))
    assert abs((synth.dominant_angle(wrong) - 2 * angle + 90) % 180 - 90) < 5


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_the_rain_found_is_taken_off_the_photo_itself(dtype) -> None:
    """The canvas keeps the photo's sample type (a quarter of float32's memory for 8 bits);
    the rain found is the canvas, scaled to [0, 1], minus the network's result; taking it
    off subtracts it from the photo's own samples, clipped (a photo taller than one band of
    rows, converted band by band: one row past a band, whose last row was once left out by
    a mutation an audit made)."""
    rng = np.random.default_rng(3)
    hi = {np.uint8: 255, np.uint16: 65535}.get(dtype)
    rows = slant._BAND_ROWS + 1
    x = rng.integers(0, hi + 1, (rows, 41, 3)).astype(dtype) if hi else \
        rng.random((rows, 41, 3), dtype=np.float32)
    unit = x.astype(np.float32) / (hi or 1)
    t = slant.Turn.make(rows, 41, 33)
    canvas = t.forward(x)
    assert canvas.dtype == (dtype if hi else np.float32)
    assert canvas.shape == (t.canvas_height, t.canvas_width, 3)
    result = rng.random(canvas.shape, dtype=np.float32)
    want = canvas.astype(np.float32) / (hi or 1) - result
    np.testing.assert_allclose(slant.Turn.rain(canvas, result.copy()), want, atol=1e-6)
    layer = (rng.random(x.shape, dtype=np.float32) - 0.5) * 0.2
    np.testing.assert_allclose(t.take_off(x, layer.copy()), np.clip(unit - layer, 0, 1),
                               atol=1e-6)


def test_a_layer_turned_and_back_lands_where_it_was() -> None:
    """A smooth layer survives the turn and the turn back (bicubic twice) inside the
    photo, so the rain found on the canvas is taken off where it lies."""
    yy, xx = np.mgrid[0:90, 0:120].astype(np.float32)
    layer = np.dstack([0.5 + 0.4 * np.sin(xx / 9) * np.cos(yy / 7)] * 3)
    for angle in (20.0, -45.0, 70.0):
        t = slant.Turn.make(90, 120, angle)
        back = t.back(t.forward(layer))
        assert back.shape == layer.shape
        assert np.abs(back - layer)[3:-3, 3:-3].max() < 0.01, angle


def _rainy(angle: float, h: int = 200, w: int = 260, seed: int = 4) -> np.ndarray:
    """Smooth gray shading with the synthesizer's medium rain at ``angle``, 8-bit."""
    from dataclasses import replace

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    clean = np.dstack([0.3 + 0.2 * np.sin(xx / 40) * np.cos(yy / 30)] * 3)
    p = replace(synth.sample_params("medium", np.random.default_rng(seed)), angle=angle)
    rainy, _ = synth.synthesize(clean, p, seed=seed)
    return (np.clip(rainy, 0, 1) * 255).round().astype(np.uint8)


@pytest.mark.parametrize("angle", [-60.0, 0.0, 35.0, 70.0])
def test_the_guess_finds_the_synthesizers_slant(angle: float) -> None:
    assert abs(slant.estimate_angle(_rainy(angle)) - angle) <= 3


@pytest.mark.parametrize("shape", [(120, 1, 3), (1, 120, 3), (7, 200, 3), (200, 7, 3)])
def test_a_photo_too_thin_to_show_a_slant_is_not_turned(shape) -> None:
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    assert slant.estimate_angle(img) == 0.0


def test_lines_across_are_guessed_at_exactly_90_degrees() -> None:
    img = np.full((96, 128, 3), 50, np.uint8)
    img[15::30] = 230
    assert slant.estimate_angle(img) == -90.0  # the same turn as 90: pixels onto pixels


def _remover(removes_at: float, amount: float = 0.1, calls: list | None = None):
    """A stand-in ``derain(image, angle)``: takes ``amount`` off when turned by
    ``removes_at`` (a network that sees the rain only then), a tenth of it otherwise."""
    def derain(img: np.ndarray, angle: float) -> np.ndarray:
        if calls is not None:
            calls.append((img.shape, angle))
        x = img.astype(np.float32) / 255
        return np.clip(x - (amount if angle == removes_at else amount / 10), 0, 1)
    return derain


def test_a_near_vertical_guess_is_not_checked() -> None:
    calls: list = []
    angle, guess, reuse = slant.choose_angle(_rainy(5.0), _remover(5.0, calls=calls))
    assert angle == 0.0 and abs(guess - 5) < 5 and reuse is None and calls == []


def test_a_slant_is_taken_only_when_turning_takes_off_clearly_more() -> None:
    img = _rainy(50.0)
    guess = slant.estimate_angle(img)
    calls: list = []
    angle, got, reuse = slant.choose_angle(img, _remover(guess, calls=calls))
    assert angle == got == guess and reuse is not None  # the whole photo was the sample:
    np.testing.assert_allclose(reuse, np.clip(img / 255 - 0.1, 0, 1), atol=1e-6)  # reused
    assert [a for _, a in calls] == [0.0, guess]
    # the same when turned as not (a network that takes off as much either way): no turn
    angle, _, reuse = slant.choose_angle(img, lambda x, a: np.clip(x / 255 - 0.1, 0, 1))
    assert angle == 0.0 and reuse is not None
    # ten times as much, but less than MARGIN more in all: no turn
    angle, _, _ = slant.choose_angle(img, _remover(guess, amount=0.004))
    assert angle == 0.0
    # MARGIN more, but only 1.4 times as much (under GAIN): no turn, and the photo's
    # result reused is the unturned one (a mutation audit: the turned one passed)
    angle, _, reuse = slant.choose_angle(img, lambda x, a: np.clip(
        x / 255 - (0.07 if a == guess else 0.05), 0, 1))
    assert angle == 0.0
    np.testing.assert_allclose(reuse, np.clip(img / 255 - 0.05, 0, 1), atol=1e-6)
    # 1.6 times as much and MARGIN more: turned
    angle, _, _ = slant.choose_angle(img, lambda x, a: np.clip(
        x / 255 - (0.08 if a == guess else 0.05), 0, 1))
    assert angle == guess


def test_a_photo_too_long_to_turn_is_derained_as_it_is() -> None:
    """Its canvas would be refused (``MAX_CANVAS``): no check, no turn, no error."""
    img = np.tile(_rainy(50.0, h=100, w=250), (1, 6, 1))  # 100 x 1500
    calls: list = []
    angle, guess, reuse = slant.choose_angle(img, _remover(50.0, calls=calls))
    assert angle == 0.0 and abs(guess) >= slant.LEAST_ANGLE and reuse is None
    assert calls == []


def test_a_wide_photo_is_checked_on_distinct_crops() -> None:
    """Under 512 px tall, the four quarters' crops fall on two places: each checked once."""
    img = np.tile(_rainy(50.0, h=500, w=230), (1, 10, 1))  # 500 x 2300: past WHOLE_PIXELS
    calls: list = []
    slant.choose_angle(img, _remover(slant.estimate_angle(img), calls=calls))
    assert [s for s, _ in calls] == [(500, slant.CROP, 3)] * 4


def test_a_large_photo_is_checked_on_four_crops() -> None:
    img = np.tile(_rainy(50.0, h=250, w=260), (5, 5, 1))  # 1250 x 1300: past WHOLE_PIXELS
    guess = slant.estimate_angle(img)
    calls: list = []
    angle, _, reuse = slant.choose_angle(img, _remover(guess, calls=calls))
    assert angle == guess and reuse is None  # to be derained whole by the caller
    assert [s for s, _ in calls] == [(slant.CROP, slant.CROP, 3)] * 8


@pytest.mark.parametrize(("value", "want"), [("auto", "auto"), (" AUTO ", "auto"), (30, 30.0)])
def test_a_setting_is_auto_or_an_angle(value, want) -> None:
    assert slant.check_setting(value) == want
    with pytest.raises(ValueError, match="auto or a number of degrees from -90 to 90"):
        slant.check_setting("sideways")


def test_the_auto_check_takes_its_share_of_the_progress_bar(tiny_weights, monkeypatch) -> None:
    """``rain_angle="auto"`` checks its guess with a pass as it is and one turned, then
    runs the photo's own passes: one job on one bar, each pass its share of it. With two
    ensemble passes, four passes over the photo's pixels: the photo's own start half way,
    and each later pass a quarter on (a mutation audit found nothing failing when the
    check's share counted one pass: the bar stood at two thirds with half the work left).
    """
    from derain_cli.enhancer import Derainer

    monkeypatch.setattr(slant, "estimate_angle", lambda rgb: 40.0)  # checked
    d = Derainer(weights=tiny_weights, device="cpu", tile=0, backend="torch",
                 rain_angle="auto", ensemble=2)
    events: list = []
    real = Derainer._one_pass

    def one_pass(self, rgb, on_tile):
        events.append("pass")
        return real(self, rgb, on_tile)

    monkeypatch.setattr(Derainer, "_one_pass", one_pass)
    photo = _rainy(40.0, h=60, w=80)
    d.derain(photo, on_tile=lambda done, total: events.append(done / total))
    starts = [i for i, e in enumerate(events) if e == "pass"]
    assert len(starts) == 4, events  # the check's two, then the photo's two
    at_start = [next((e for e in reversed(events[:i]) if e != "pass"), 0.0) for i in starts]
    assert at_start == pytest.approx([0.0, 0.25, 0.5, 0.75], abs=1e-6), events
    assert events[-1] == 1.0


# --- what a mutation audit of slant.py found unpinned

def test_the_rain_layer_is_canvas_minus_result_past_the_first_band():
    """Rain is taken band by band (``_BAND_ROWS``): below the first band the derained image
    itself was subtracted as rain, unseen, as every checked photo was smaller."""
    t = slant.Turn.make(300, 300, 37)
    canvas = t.forward(np.random.default_rng(1).integers(0, 256, (300, 300, 3), dtype=np.uint8))
    assert canvas.shape[0] > slant._BAND_ROWS
    result = np.random.default_rng(2).random(canvas.shape, dtype=np.float32)
    want = canvas.astype(np.float32) / 255 - result
    np.testing.assert_allclose(slant.Turn.rain(canvas, result.copy()), want, atol=1e-6)


def test_the_canvas_corners_are_the_photo_mirrored_not_black():
    t = slant.Turn.make(40, 60, 30)
    assert (t.forward(np.full((40, 60, 3), 200, np.uint8)) == 200).all()


def test_a_uniform_layer_turns_back_uniform_to_the_corners():
    t = slant.Turn.make(40, 60, 30)
    back = t.back(np.ones((t.canvas_height, t.canvas_width, 3), np.float32))
    np.testing.assert_allclose(back, 1, atol=1e-5)


@pytest.mark.parametrize(("guess", "checked"), [(24.0, False), (-24.0, False), (25.0, True),
                                                (-25.0, True)])
def test_auto_checks_a_guess_from_least_angle_on(monkeypatch, guess, checked):
    """Guesses under LEAST_ANGLE (25) are left alone without a network pass; from it on they
    are checked."""
    assert slant.LEAST_ANGLE == 25.0
    monkeypatch.setattr(slant, "estimate_angle", lambda rgb: guess)
    calls = []
    slant.choose_angle(np.zeros((32, 32, 3), np.uint8),
                       lambda x, a: calls.append(a) or x.astype(np.float32) / 255)
    assert bool(calls) == checked


def test_removed_counts_only_what_the_network_lowered():
    """A brightened area does not cancel rain taken off elsewhere."""
    before = np.full((2, 2, 3), 0.5, np.float32)
    after = before.copy()
    after[0], after[1] = 0.3, 0.9
    assert slant.removed(before, after) == pytest.approx(0.1, abs=1e-6)


def test_a_photo_8_px_across_is_measured():
    img = np.zeros((8, 64, 3), np.uint8)
    for x in range(0, 64, 6):
        for y in range(8):
            if x + y < 64:
                img[y, x + y] = 255
    assert slant.estimate_angle(img) != 0.0


def test_a_large_photos_check_crops_are_centred_on_its_quarters(monkeypatch):
    monkeypatch.setattr(slant, "estimate_angle", lambda rgb: 50.0)
    h, w = 1250, 1300
    img = np.broadcast_to(np.arange(h, dtype=np.int32)[:, None, None] // 5, (h, w, 3)
                          ).astype(np.uint8)  # each row's value says which row it is
    seen = []
    slant.choose_angle(img, lambda x, a: seen.append(int(x[0, 0, 0]))
                       or x.astype(np.float32) / 255)
    # 512 px crops from h // 4 - 256 = 56 and 3 h // 4 - 256 = 681
    assert sorted(set(seen)) == [56 // 5, 681 // 5]
