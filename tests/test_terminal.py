"""derain_cli.terminal: the console's answer to a stderr that cannot take a message."""

from __future__ import annotations

import contextlib
import errno
import io
import sys

import pytest

from derain_cli.terminal import DerainConsole


class _Stream(io.StringIO):
    def __init__(self, error: OSError) -> None:
        super().__init__()
        self.error = error

    def write(self, text: str) -> int:
        raise self.error


def test_a_stderr_that_takes_nothing_is_muted_and_the_work_goes_on(monkeypatch) -> None:
    """`2>` a full disk: the first setup line failed the whole batch (an audit)."""
    monkeypatch.setattr(sys, "stderr", _Stream(OSError(errno.ENOSPC, "No space left")))
    console = DerainConsole(stderr=True)
    console.print("warning: something")
    assert console.quiet


def test_a_busy_stderr_loses_one_message_not_the_work(monkeypatch) -> None:
    """A non-blocking stderr whose pipe is full (EAGAIN) passes: the message is lost, the
    console stays on, and nothing is raised into the work (a review)."""
    monkeypatch.setattr(sys, "stderr", _Stream(BlockingIOError(errno.EAGAIN, "busy", 0)))
    console = DerainConsole(stderr=True)
    console.print("warning: something")
    assert not console.quiet


def test_stdout_still_raises() -> None:
    """stdout carries data (--json): a failure there is the command's to report."""
    console = DerainConsole(file=_Stream(OSError(errno.ENOSPC, "No space left")))
    with pytest.raises(OSError):
        console.print("{}")


def test_a_broken_stderr_leaves_stdout_to_its_file(tmp_path, monkeypatch) -> None:
    """`derain photos/ -o out --json > out.json 2> >(head -1)`: when only stderr's reader
    goes away, the process ends with 141, but stdout, the --json going to a file, still
    takes what is written (a mutation audit found it silenced too)."""
    import os

    from derain_cli.terminal import BROKEN_PIPE_STATUS

    out_path = tmp_path / "out.json"
    read_end, write_end = os.pipe()
    os.close(read_end)  # stderr's reader is gone
    stderr = os.fdopen(write_end, "w")
    stdout = open(out_path, "w")
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setattr(sys, "stdout", stdout)
    try:
        console = DerainConsole(stderr=True)
        with pytest.raises(SystemExit) as ended:
            console.print("warning: something")
        assert ended.value.code == BROKEN_PIPE_STATUS
        stdout.write('{"processed": 1}\n')
        stdout.flush()
    finally:
        monkeypatch.undo()
        stdout.close()
        with contextlib.suppress(OSError):
            stderr.close()
    assert out_path.read_text() == '{"processed": 1}\n'
