"""Progress for a log file: a plain line now and then instead of a live bar.

Why: rich draws its live bars only on a terminal. Where stderr is a file (``nohup``, a
CI job, ``derain photos/ -o out 2> log``) it shows nothing until the end, so a run of
hours would be silent. :class:`PlainProgress` prints at most one line every ``every_s``
seconds, with the elapsed time and an estimate of what is left; ``derain`` (files and
large photos), ``derain train`` / ``finetune`` / ``distill`` (steps) and
:func:`count_progress` (finetune's pseudo-clean pass, ``derain synth``) use it there.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from typing import Any


def clock(seconds: float) -> str:
    """H:MM:SS, as rich's bars show time; ``-:--:--`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "-:--:--"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class PlainProgress:
    """Throttled progress lines on a rich console (``every_s`` apart at most)."""

    def __init__(self, console: Any, every_s: float = 60.0) -> None:
        self.console = console
        self.every_s = every_s
        self.t0 = self._last = time.monotonic()

    def due(self) -> bool:
        """True (and the clock restarted) when ``every_s`` have passed since the last line."""
        now = time.monotonic()
        if now - self._last < self.every_s:
            return False
        self._last = now
        return True

    def timing(self, done: float, total: float, left: float | None = None,
               eta: float | None = None) -> str:
        """``elapsed H:MM:SS ETA H:MM:SS``, the ETA from the mean rate so far (or the
        caller's ``eta``), or ``left`` seconds (a time budget's) where that is sooner."""
        elapsed = time.monotonic() - self.t0
        if eta is None:
            eta = elapsed * (total - done) / done if done > 0 else float("nan")
        if left is not None:
            eta = left if not math.isfinite(eta) else min(eta, left)
        return f"elapsed {clock(elapsed)} ETA {clock(eta)}"

    def print(self, msg: str) -> None:
        self.console.print(msg, highlight=False, markup=False, soft_wrap=True)


@contextlib.contextmanager
def count_progress(label: str, total: int, enabled: bool,
                   ) -> Iterator[Callable[..., None]]:
    """A bar on a terminal, or a line a minute in a log, for ``total`` items of work, as
    ``done(n)`` reports them; ``done(n, total)`` also moves the total (synth's shrinks by
    each photo it cannot read: its bar stopped at 5/6, its log line never came, an audit).
    Why: finetune's pseudo-clean pass at 200 photos and ``derain synth --count 300`` were
    minutes of silence (audits)."""
    if not enabled:
        yield lambda n, total=None: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from .terminal import DerainConsole, live_display

    console = DerainConsole(stderr=True)
    if not live_display(console):
        lines = PlainProgress(console, 60.0)
        whole = total

        def said(n: int, total: int | None = None) -> None:
            nonlocal whole
            whole = whole if total is None else total
            if lines.due() or n == whole:
                lines.print(f"{label} {n}/{whole} {lines.timing(n, whole)}")

        yield said
        return
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(),
                  TextColumn("ETA"), TimeRemainingColumn(), console=console,
                  transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n, total=None: bar.update(task, completed=n, total=total)
