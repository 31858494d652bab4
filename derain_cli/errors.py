"""Errors shared by the library's layers.

:class:`OptionError` marks a bad setting (``--device``, ``--precision``, ``--backend``,
``--tile``...) as opposed to a failure while working: command-line front ends turn it into a
usage error (exit status 2), whichever subcommand met it. It is a ``ValueError``, so library
callers that catch those keep working.
"""

from __future__ import annotations

__all__ = ["OptionError"]


class OptionError(ValueError):
    """A setting that cannot be used as given (on this machine, or at all)."""
