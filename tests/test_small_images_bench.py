"""benchmarks/small_images.py: the command README's "Small images" table comes from."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
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
                              "--side", "16", "--side", "64", "--threads", "1"]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if re.match(r"\| \d+ \|", r)]
    assert [r.split("|")[1].strip() for r in rows] == ["16", "64"]
    for r in rows:  # as it is, mirrored out: different inputs to the network, other results
        cells = r.split("|")
        assert cells[2] != cells[3] and re.fullmatch(r" [+-]\d+\.\d\d ", cells[4])
    assert small_images.main(["--data", str(data), "--weights", str(tiny_weights),
                              "--border", "8", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "as they are:" in out and "8 px mirrored around:" in out


def test_centre_keeps_a_shorter_axis_whole():
    a = np.zeros((30, 100, 3))
    assert small_images.centre(a, 64).shape == (30, 64, 3)
