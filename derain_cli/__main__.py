"""``python -m derain_cli`` and the ``derain`` console script (torchrun launches the former).

The command's own module is imported inside :func:`run`, so a Ctrl-C in the first tenth of
a second, while Typer and rich are still loading, ends like one during the work (exit 130,
no traceback) instead of printing Python's ``KeyboardInterrupt`` traceback.
"""

from __future__ import annotations

import sys


def run() -> None:
    """Entry point: import the command, then run it."""
    try:
        from derain_cli.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        raise SystemExit(130) from None
    main()


if __name__ == "__main__":
    run()
