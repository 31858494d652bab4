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


def test_a_time_budget_caps_the_estimate(monkeypatch) -> None:
    """Time-budgeted training (``--max-minutes``) ends when its budget does: the log line's
    ETA is the budget's time left where that is sooner than the rate's estimate, and the
    time left where there is no estimate yet (a mutation audit found both unpinned)."""
    import derain_cli.plain_progress as pp

    now = [100.0]
    monkeypatch.setattr(pp.time, "monotonic", lambda: now[0])
    lines = PlainProgress(Console(file=io.StringIO()), every_s=60)
    now[0] = 160.0
    assert lines.timing(1, 4) == "elapsed 0:01:00 ETA 0:03:00"  # the rate's estimate
    assert lines.timing(1, 4, left=30) == "elapsed 0:01:00 ETA 0:00:30"  # the budget's
    assert lines.timing(1, 4, left=600) == "elapsed 0:01:00 ETA 0:03:00"
    assert lines.timing(0, 4, left=30) == "elapsed 0:01:00 ETA 0:00:30"  # no rate yet


def test_count_progress_in_a_log_prints_a_line_a_minute(monkeypatch, capsys) -> None:
    """In a log, count_progress prints a line a minute and the last, not one per item
    (300 lines for ``synth --count 300``: a mutation audit found that unpinned)."""
    import derain_cli.plain_progress as pp
    from derain_cli.plain_progress import count_progress

    now = [100.0]
    monkeypatch.setattr(pp.time, "monotonic", lambda: now[0])
    with count_progress("pairs", 5, enabled=True) as done:
        for n in (1, 2, 3):
            now[0] += 1
            done(n)
        now[0] += 60
        done(4)  # a minute after the start
        done(5)  # the last
    said = capsys.readouterr().err.splitlines()
    assert [line.split(" elapsed")[0] for line in said] == ["pairs 4/5", "pairs 5/5"], said


def test_count_progress_on_a_terminal_moves_the_bars_total(monkeypatch, capsys) -> None:
    """On a terminal ``done(n, total)`` lowers the bar's total (synth's, by each photo it
    cannot read): the bar stopped at 5/6 (an audit), and a mutation audit found the total
    dropped again unnoticed."""
    from rich.progress import Progress

    import derain_cli.terminal as terminal
    from derain_cli.plain_progress import count_progress

    monkeypatch.setattr(terminal, "live_display", lambda console: True)
    shown: list[tuple[float, float | None]] = []
    real_stop = Progress.stop

    def stop(self: Progress) -> None:  # what the bar showed last
        shown.extend((t.completed, t.total) for t in self.tasks)
        real_stop(self)

    monkeypatch.setattr(Progress, "stop", stop)
    with count_progress("pairs", 5, enabled=True) as done:
        done(1)
        done(2, 4)
        done(4)
    assert shown == [(4, 4)]
