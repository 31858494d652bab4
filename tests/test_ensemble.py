"""The self-ensemble's copies: views of the image, each undone exactly, all different."""

from __future__ import annotations

import numpy as np
import pytest

from derain_cli import ensemble as E


def test_every_copy_is_a_view_and_undoes_to_the_image() -> None:
    img = np.arange(5 * 7 * 3, dtype=np.float32).reshape(5, 7, 3)  # not square: transposes show
    seen = set()
    for k in range(len(E.TRANSFORMS)):
        x = E.view(img, k)
        assert np.shares_memory(x, img)  # no pixels copied
        assert x.shape == ((7, 5, 3) if E.TRANSFORMS[k][0] else (5, 7, 3))
        back = E.undo(np.ascontiguousarray(x), k)  # as a network's contiguous result
        np.testing.assert_array_equal(back, img)
        seen.add(np.ascontiguousarray(x).tobytes() + bytes(x.shape))
    assert len(seen) == 8  # eight different copies of an asymmetric image


def test_the_first_copies_are_the_flips() -> None:
    img = np.arange(4 * 6 * 3).reshape(4, 6, 3)
    np.testing.assert_array_equal(E.view(img, 0), img)
    np.testing.assert_array_equal(E.view(img, 1), img[:, ::-1])  # left-right
    np.testing.assert_array_equal(E.view(img, 2), img[::-1])  # upside down
    np.testing.assert_array_equal(E.view(img, 3), img[::-1, ::-1])
    np.testing.assert_array_equal(E.view(img, 4), img.transpose(1, 0, 2))


@pytest.mark.parametrize("good", [1, 2, 4, 8, np.int64(4)])
def test_sizes_offered(good: object) -> None:
    assert E.check_size(good) == int(good) and type(E.check_size(good)) is int


@pytest.mark.parametrize("bad", [0, 3, 16, -1, True, 2.0, "4", None])
def test_other_sizes_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="1, 2, 4, 8"):
        E.check_size(bad)
