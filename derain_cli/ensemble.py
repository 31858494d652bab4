"""Self-ensemble: a network's results on mirrored and transposed copies of an image, averaged.

Why: the bundled networks' errors differ a little between a photo and its mirror image, so
the mean of the results is cleaner than any one of them. Measured on the default (README,
"Several passes: --ensemble"): four passes (the photo, flipped left-right, upside down and
both) scored 0.08-0.18 dB above one pass on every evaluation set. Each pass costs a whole
pass, so this is a choice for the user who will wait (or has a GPU), never the default.

The copies are numpy views (no pixels copied); the tiler reads its tiles out of them as it
reads any array. Members are taken in the order of ``TRANSFORMS``: 2 passes add the
left-right mirror (rain keeps its slant's direction upside down, so this is the copy most
like the photo), 4 all flips, 8 the transposed image's flips too.
"""

from __future__ import annotations

import numpy as np

#: (transpose first?, then flip these axes of the HxWxC image), in the order passes use them
TRANSFORMS: tuple[tuple[bool, tuple[int, ...]], ...] = (
    (False, ()), (False, (1,)), (False, (0,)), (False, (0, 1)),
    (True, ()), (True, (1,)), (True, (0,)), (True, (0, 1)),
)
#: the pass counts offered: each a whole group of the transforms above
SIZES = (1, 2, 4, 8)


def check_size(passes: object) -> int:
    """``passes`` as an int, or ``ValueError`` naming the sizes offered."""
    if isinstance(passes, bool) or not isinstance(passes, int | np.integer) \
            or int(passes) not in SIZES:
        raise ValueError(f"ensemble must be one of {', '.join(map(str, SIZES))} passes, "
                         f"not {passes!r}")
    return int(passes)


def view(image: np.ndarray, k: int) -> np.ndarray:
    """Member ``k``'s copy of an HxWxC ``image``: a view, no pixels copied."""
    transpose, axes = TRANSFORMS[k]
    x = image.transpose(1, 0, *range(2, image.ndim)) if transpose else image
    return np.flip(x, axes) if axes else x


def undo(result: np.ndarray, k: int) -> np.ndarray:
    """Member ``k``'s result put back the image's way round (a view of ``result``)."""
    transpose, axes = TRANSFORMS[k]
    y = np.flip(result, axes) if axes else result
    return y.transpose(1, 0, *range(2, y.ndim)) if transpose else y
