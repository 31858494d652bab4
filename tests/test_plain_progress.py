"""Plain progress lines for logs: throttled, with elapsed time and an estimate."""

from __future__ import annotations

import io

from rich.console import Console

from derain_cli.plain_progress import PlainProgress, clock


def test_clock_reads_like_richs_bars() -> None:
    assert clock(0) == "0:00:00"
    assert clock(3725.9) == "1:02:05"
    assert clock(float("nan")) == clock(-1) == "-:--:--"


def test_lines_are_throttled_and_estimate_from_the_mean_rate(monkeypatch) -> None:
    import derain_cli.plain_progress as pp

    now = [100.0]
    monkeypatch.setattr(pp.time, "monotonic", lambda: now[0])
    buf = io.StringIO()
    lines = PlainProgress(Console(file=buf, width=200), every_s=60)
    now[0] = 130.0
    assert not lines.due()  # 30 s after the start
    now[0] = 160.0
    assert lines.due() and not lines.due()  # due once, then the clock restarts
    assert lines.timing(1, 4) == "elapsed 0:01:00 ETA 0:03:00"
    assert lines.timing(0, 4) == "elapsed 0:01:00 ETA -:--:--"
    lines.print("[bold]a[/bold] line")  # printed as it is, no markup
    assert buf.getvalue() == "[bold]a[/bold] line\n"


def test_count_progress_in_a_log_and_quiet(capsys):
    """At 200 photos finetune's pseudo-clean pass was minutes of silence after one line
    (audit), and so was ``synth --count 300``: a log gets a line a minute and the last;
    quiet runs say nothing."""
    from derain_cli.plain_progress import count_progress

    with count_progress("pseudo-clean", 3, enabled=True) as done:
        for n in (1, 2, 3):
            done(n)
    err = capsys.readouterr().err
    assert "pseudo-clean 3/3 elapsed" in err and "ETA" in err
    with count_progress("pseudo-clean", 3, enabled=False) as done:
        done(3)
    assert capsys.readouterr().err == ""
    with count_progress("pairs", 5, enabled=True) as done:  # the total moved down
        for n in (1, 2, 3):
            done(n, 4 if n > 1 else 5)
        done(4, 4)
    err = capsys.readouterr().err
    assert "pairs 4/4 elapsed" in err and "/5" not in err.splitlines()[-1], err
