"""Self-ensemble: a network's results on mirrored copies of an image, averaged.

Why: the bundled networks' errors differ a little between a photo and its mirror image, so
the mean of the results is cleaner than any one of them. Measured on the default (README,
"Several passes: --ensemble"; fp32, rain100l / heavy-small / sirr-val): one pass 32.944 /
24.803 / 25.325 dB, two passes (the photo and its left-right mirror) 33.073 / 24.868 /
25.381, four (upside down and both as well) 33.118 / 24.896 / 25.398. Each pass costs a
whole pass, so this is a choice for the user who will wait (or has a GPU), never the
default.

Only flips: rain falls down the photo, flipped or not, and so does the networks' synthetic
training rain (``data.random_crop`` rotates the clean crop, then rain is made on it, within
about 30 degrees of vertical). A transposed copy turns the rain sideways: with the four
transposed copies as well, eight passes scored 30.457 / 19.423 / 24.330, far below one
pass (commit 1f660bb, ``derain eval --ensemble 8``; ``python benchmarks/self_ensemble.py
-e semi-drdnet-fast:t`` scores a transposed pass alone).

The copies are numpy views (no pixels copied); the tiler reads its tiles out of them as it
reads any array. ``TRANSFORMS[0]`` must stay the photo as it is (``Derainer`` keeps that
pass's result as the running sum). Members are taken in the order of ``TRANSFORMS``: 2
passes add the left-right mirror (rain keeps falling down, slanted the other way: the copy
most like the photo), 4 the upside-down copies too.
"""

from __future__ import annotations

import numpy as np

#: the axes of the HxWxC image each pass flips, in the order passes use them
TRANSFORMS: tuple[tuple[int, ...], ...] = ((), (1,), (0,), (0, 1))
#: the pass counts offered: each a whole group of the flips above
SIZES = (1, 2, 4)
#: the same, as a sentence says them
SIZES_TEXT = "1, 2 or 4"


def check_size(passes: object) -> int:
    """``passes`` as an int, or ``ValueError`` naming the sizes offered."""
    if isinstance(passes, bool) or not isinstance(passes, int | np.integer) \
            or int(passes) not in SIZES:
        raise ValueError(f"ensemble must be {SIZES_TEXT} passes, not {passes!r}")
    return int(passes)


def view(image: np.ndarray, k: int) -> np.ndarray:
    """Member ``k``'s copy of an HxWxC ``image``: a view, no pixels copied."""
    axes = TRANSFORMS[k]
    return np.flip(image, axes) if axes else image


def undo(result: np.ndarray, k: int) -> np.ndarray:
    """Member ``k``'s result put back the image's way round (a view of ``result``): a flip
    is its own inverse."""
    return view(result, k)
