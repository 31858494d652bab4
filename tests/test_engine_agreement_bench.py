"""benchmarks/engine_agreement.py: the figures it prints between two engines' outputs."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import engine_agreement  # noqa: E402


def test_agreement_counts_levels_share_and_psnr():
    a = [np.zeros((4, 5, 3), np.uint8), np.full((2, 2, 3), 200, np.uint8)]
    assert engine_agreement.agreement(a, a) == (0, 0.0, float("inf"))
    b = [x.copy() for x in a]
    b[0][0, 0, 0] = 10  # one value of 60 off by 10
    b[1][:] = 197  # every value off by 3
    most, share, psnr = engine_agreement.agreement(a, b)
    assert most == 10
    assert share == pytest.approx((1 / 60 + 1.0) / 2)
    expected = [10 * np.log10(255.0 ** 2 / (100 / 60)), 10 * np.log10(255.0 ** 2 / 9)]
    assert psnr == pytest.approx(np.mean(expected))
    # uint8 arithmetic would wrap: 0 - 10 must count 10, not 246
    assert engine_agreement.agreement([b[0]], [a[0]])[0] == 10
