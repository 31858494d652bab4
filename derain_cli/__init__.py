"""derain: remove rain streaks from photos.

The library behind the ``derain`` command. ``Derainer`` is the one object most
users need; models, weights, tiling, image I/O, training and metrics each live
in their own module.
"""

__version__ = "0.1.0"
