"""derain: remove rain streaks from photos.

The library behind the ``derain`` command. ``Derainer`` is the one object most
users need; models, weights, tiling, image I/O, training and metrics each live
in their own module.

    from derain_cli import Derainer
    clean = Derainer().derain(pil_image)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Derainer", "__version__"]

if TYPE_CHECKING:
    from .enhancer import Derainer


def __getattr__(name: str) -> Any:
    # Imported on first use: ``derain --version`` and ``--help`` need no PyTorch.
    if name == "Derainer":
        from .enhancer import Derainer

        return Derainer
    raise AttributeError(f"module 'derain_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    """Lazy names too, so tab completion offers ``Derainer``."""
    return sorted({*globals(), *__all__})
