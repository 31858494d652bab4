"""benchmarks/small_images.py: the command README's "Small images" table comes from."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import small_images  # noqa: E402


def _pairs(folder: Path, n: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for side in ("rainy", "clean"):
        (folder / side).mkdir(parents=True)
    for i in range(n):
        clean = rng.integers(0, 256, (90, 120, 3), np.uint8)
        rainy = np.clip(clean.astype(int) + rng.integers(0, 60, clean.shape), 0, 255)
        Image.fromarray(clean).save(folder / "clean" / f"{i}.png")
        Image.fromarray(rainy.astype(np.uint8)).save(folder / "rainy" / f"{i}.png")
    return folder


def test_it_prints_both_ways_per_side_and_the_whole_image_borders(tmp_path, tiny_weights,
                                                                  capsys):
    data = _pairs(tmp_path / "p")
    assert small_images.main(["--data", str(data), "--weights", str(tiny_weights),
                              "--side", "16", "--side", "64"]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if re.match(r"\| \d+ \|", r)]
    assert [r.split("|")[1].strip() for r in rows] == ["16", "64"]
    for r in rows:  # as it is, mirrored out: different inputs to the network, other results
        cells = r.split("|")
        assert cells[2] != cells[3] and re.fullmatch(r" [+-]\d+\.\d\d ", cells[4])
    assert small_images.main(["--data", str(data), "--weights", str(tiny_weights),
                              "--border", "8"]) == 0
    out = capsys.readouterr().out
    assert "as they are:" in out and "8 px mirrored around:" in out


class _Identity:
    """A stand-in Derainer that returns its input: the scores are then the rainy crops'."""

    small_side = 0

    def derain_array(self, x: np.ndarray) -> np.ndarray:
        return x.astype(np.float32) / 255


def test_scores_are_against_the_clean_crop_of_the_same_place(tmp_path):
    from derain_cli import data as D
    from derain_cli import metrics
    from derain_cli.pairs import find_pairs

    pairs = find_pairs(_pairs(tmp_path / "p"))
    for side in (16, 64):
        want = np.mean([metrics.psnr_y(small_images.centre(D.load_rgb_u8(p.rainy), side),
                                       small_images.centre(D.load_rgb_u8(p.clean), side))
                        for p in pairs])
        assert small_images.measure(_Identity(), pairs, side, 256)[0] == pytest.approx(want)
    whole = np.mean([metrics.psnr_y(D.load_rgb_u8(p.rainy), D.load_rgb_u8(p.clean))
                     for p in pairs])
    for border in (0, 8):  # cut back out where the image is
        assert small_images.measure_border(_Identity(), pairs, border) == pytest.approx(whole)


class _Seen(_Identity):
    """The identity, keeping what the network was given."""

    def __init__(self) -> None:
        self.given: list[np.ndarray] = []

    def derain_array(self, x: np.ndarray) -> np.ndarray:
        self.given.append(x.copy())
        return super().derain_array(x)


def test_the_border_is_mirrored_around_the_whole_image(tmp_path):
    """The identity scores the same with any border: what the network is given shows the
    border is there and mirrored (a test audit: ignoring --border still passed)."""
    from derain_cli import data as D
    from derain_cli.pairs import find_pairs

    pairs = find_pairs(_pairs(tmp_path / "p"))
    seen = _Seen()
    small_images.measure_border(seen, pairs, 8)
    for p, x in zip(pairs, seen.given, strict=True):
        rainy = D.load_rgb_u8(p.rainy)
        assert x.shape == (rainy.shape[0] + 16, rainy.shape[1] + 16, 3)
        np.testing.assert_array_equal(x[8:-8, 8:-8], rainy)
        np.testing.assert_array_equal(x[:8, 8:-8], rainy[7::-1])  # mirrored, edge repeated
        np.testing.assert_array_equal(x[8:-8, -8:], rainy[:, :-9:-1])


def test_centre_keeps_a_shorter_axis_whole():
    a = np.zeros((30, 100, 3))
    assert small_images.centre(a, 64).shape == (30, 64, 3)
