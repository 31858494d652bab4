"""The console derain writes its messages through, and what it does when nobody reads.

A command-line tool whose reader goes away (``derain models | head -1``, ``derain folder/ -o
out/ 2>&1 | head``) should end as others end there, killed by SIGPIPE: quietly, status 141.
Python turns SIGPIPE into ``BrokenPipeError``; derain's own handlers turn that into 141
(``cli.main``), but rich catches it first when it writes and ends the process with status 1
(``Console.on_broken_pipe``). :class:`DerainConsole` ends it with 141 instead.
"""

from __future__ import annotations

import contextlib
import os
import sys

from rich.console import Console

__all__ = ["BROKEN_PIPE_STATUS", "DerainConsole", "silence_stdout", "stdout_gone"]

#: The exit status when the reader of derain's output went away (``derain ... --json |
#: true``): a process ended by SIGPIPE's, as other command-line tools end there, not
#: "error: Broken pipe" and 1, the status of a failed photo
BROKEN_PIPE_STATUS = 128 + 13


def stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has gone (a BrokenPipeError from anywhere
    else, a data loader's pipe, is an error to report, not the end of the output)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):
        return True  # closed or replaced: nothing more can be shown there
    try:
        import select

        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (ImportError, AttributeError, OSError):  # no poll (Windows): assume it is stdout
        return True


def _silence(stream: object) -> None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())  # type: ignore[attr-defined]


def silence_stdout() -> None:
    """Send what is still written to stdout nowhere (its reader is gone), so flushing it at
    exit raises nothing more."""
    _silence(sys.stdout)


class DerainConsole(Console):
    """A rich ``Console`` that ends the process quietly with :data:`BROKEN_PIPE_STATUS`
    when its reader goes away (rich's own ends it with status 1)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        _silence(self.file)  # its stream, stdout or stderr: flushed at exit, nowhere
        if self.file is not sys.stdout and stdout_gone():  # `2>&1 | head`: the same pipe
            silence_stdout()
        raise SystemExit(BROKEN_PIPE_STATUS)

    def _check_buffer(self) -> None:
        """Messages that stderr cannot take (``2>`` a full disk, ``2>/dev/full``) are
        dropped, and the work goes on: the first setup line failed the whole batch before
        any photo was derained (an audit). What cannot be shown is not worth the photos;
        the exit status still tells. stdout (data: ``--json``) still raises."""
        try:
            super()._check_buffer()
        except OSError as e:
            if self.file is not sys.stderr:
                raise
            if isinstance(e, (BlockingIOError, InterruptedError)):
                return  # a passing state: this message is lost, the next may go through
            self.quiet = True
            _silence(sys.stderr)


def live_display(console: Console) -> bool:
    """Whether ``console`` shows rich's live bars: a terminal, not a dumb one (``TERM=dumb``
    or ``unknown``: rich draws nothing there, and derain showed no progress at all: an
    audit). Elsewhere the plain lines of ``plain_progress`` stand in."""
    return bool(console.is_terminal and not console.is_dumb_terminal)
