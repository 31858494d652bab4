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
__all__ = ["CanvasTooLarge", "DataError", "Derainer", "DistillError", "DistillInterrupted",
           "EvalInterrupted", "GrowError", "ImageError", "OptionError", "PairDataError",
           "PairsError", "TilesExhausted", "TrainDiverged", "TrainError", "TrainInterrupted",
           "UnknownModelError", "WeightsError", "WeightsUnavailable", "__version__"]

if TYPE_CHECKING:
    from .data import DataError
    from .distill import DistillError, DistillInterrupted
    from .enhancer import Derainer
    from .errors import OptionError
    from .evaluate import EvalInterrupted
    from .grow import GrowError
    from .hub import WeightsUnavailable
    from .images import ImageError
    from .models import UnknownModelError
    from .pairs import PairDataError, PairsError
    from .slant import CanvasTooLarge
    from .tiling import TilesExhausted
    from .train import TrainDiverged, TrainError, TrainInterrupted
    from .weights import WeightsError

#: Where each lazy name lives: imported on first use, so ``derain --version`` and
#: ``--help`` need no PyTorch.
_LAZY = {"Derainer": "enhancer", "OptionError": "errors", "UnknownModelError": "models",
         "WeightsError": "weights", "WeightsUnavailable": "hub", "ImageError": "images",
         # the errors the training, evaluation and data functions raise (an audit: a
         # notebook had to find each one's module)
         "TrainError": "train", "TrainDiverged": "train", "TrainInterrupted": "train",
         "DistillError": "distill", "DistillInterrupted": "distill",
         "EvalInterrupted": "evaluate", "GrowError": "grow", "PairsError": "pairs",
         "PairDataError": "pairs", "DataError": "data",
         # what Derainer.derain raises besides those (a photo too long to turn for
         # --rain-angle; no tile small enough for the memory): found only in their modules
         "CanvasTooLarge": "slant", "TilesExhausted": "tiling"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'derain_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names, lazy ones too, so tab completion offers ``Derainer``, and the
    submodules imported so far (``evaluate``, ``images``...), not this module's own
    imports (``Any``, ``TYPE_CHECKING``)."""
    import types

    mods = (n for n, v in globals().items()
            if isinstance(v, types.ModuleType) and v.__name__ == f"{__name__}.{n}")
    return sorted({*__all__, *mods, *(n for n in globals() if n.startswith("__"))})
