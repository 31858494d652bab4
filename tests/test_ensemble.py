"""The self-ensemble's copies: views of the image, each undone exactly, all different."""

from __future__ import annotations

import numpy as np
import pytest

from derain_cli import ensemble as E


def test_every_copy_is_a_view_and_undoes_to_the_image() -> None:
    img = np.arange(5 * 7 * 3, dtype=np.float32).reshape(5, 7, 3)
    seen = set()
    for k in range(len(E.TRANSFORMS)):
        x = E.view(img, k)
        assert np.shares_memory(x, img) and x.shape == img.shape  # no pixels copied
        np.testing.assert_array_equal(E.undo(np.ascontiguousarray(x), k), img)
        seen.add(np.ascontiguousarray(x).tobytes())
    assert len(seen) == len(E.TRANSFORMS) == max(E.SIZES)  # all different


def test_the_copies_are_the_flips_in_order_and_never_turn_the_rain_sideways() -> None:
    img = np.arange(4 * 6 * 3).reshape(4, 6, 3)
    np.testing.assert_array_equal(E.view(img, 0), img)
    np.testing.assert_array_equal(E.view(img, 1), img[:, ::-1])  # left-right
    np.testing.assert_array_equal(E.view(img, 2), img[::-1])  # upside down
    np.testing.assert_array_equal(E.view(img, 3), img[::-1, ::-1])
    # a transposed copy (rain sideways) scored far below one pass: none is offered
    assert all(E.view(img, k).shape == img.shape for k in range(len(E.TRANSFORMS)))


@pytest.mark.parametrize("good", [1, 2, 4, np.int64(4)])
def test_sizes_offered(good: object) -> None:
    assert E.check_size(good) == int(good) and type(E.check_size(good)) is int


@pytest.mark.parametrize("bad", [0, 3, 8, -1, True, 2.0, "4", None])
def test_other_sizes_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="1, 2 or 4 passes"):
        E.check_size(bad)
