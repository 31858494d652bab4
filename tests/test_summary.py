"""derain_cli.summary: the totals a batch reports, as ``--json`` prints them."""

from __future__ import annotations

import json

import pytest

from derain_cli.summary import FileResult, Summary


def test_totals_add_up_every_file_processed() -> None:
    """Total megapixels and MP/s count every file derained, not the last one only (a
    mutation audit found that unpinned)."""
    s = Summary(seconds=2.0)
    s.add(FileResult("a.jpg", "a_derained.jpg", "processed", megapixels=1.5))
    s.add(FileResult("b.jpg", None, "skipped", reason="exists"))
    s.add(FileResult("c.jpg", "c_derained.jpg", "processed", megapixels=2.5))
    assert (s.processed, s.skipped, s.megapixels) == (2, 1, 4.0)
    assert s.megapixels_per_s == 2.0
    data = json.loads(s.to_json())
    assert data["megapixels"] == 4.0 and data["megapixels_per_s"] == 2.0


@pytest.mark.parametrize(("seconds", "rate"), [(0.5, 2.0), (1.0, 1.0), (0.0, 0.0)])
def test_a_batch_under_a_second_reports_its_rate(seconds: float, rate: float) -> None:
    """A batch of one small photo, done in half a second, is 2 MP/s, not 0 (a mutation
    audit); no time at all (nothing done) is 0, not a division by zero."""
    s = Summary(seconds=seconds)
    s.add(FileResult("a.jpg", "a_derained.jpg", "processed", megapixels=1.0))
    assert s.megapixels_per_s == rate
    assert json.loads(s.to_json())["megapixels_per_s"] == rate


def test_a_failure_without_a_message_still_has_a_reason() -> None:
    """An exception with no message (``KeyError()``, ``MemoryError()``) still gives its file
    a reason in --json's failed list, not an empty string (a mutation audit)."""
    s = Summary()
    s.add(FileResult("a.jpg", "a_derained.jpg", "failed", reason=None))
    s.add(FileResult("b.jpg", "b_derained.jpg", "failed", reason=""))
    s.add(FileResult("c.jpg", "c_derained.jpg", "failed", reason="cannot read c.jpg"))
    assert not s.ok
    assert json.loads(s.to_json())["failed"] == [
        {"path": "a.jpg", "reason": "failed"}, {"path": "b.jpg", "reason": "failed"},
        {"path": "c.jpg", "reason": "cannot read c.jpg"}]


def test_each_files_megapixels_are_rounded_as_the_totals_are() -> None:
    """A file's megapixels in --json are rounded to 4 places, as the totals are: a 2x2
    photo printed 4e-06 and float noise like 0.30000000000000004 (a mutation audit found
    the rounding unpinned)."""
    s = Summary()
    s.add(FileResult("a.jpg", "a_derained.jpg", "processed", megapixels=0.1 + 0.2,
                     seconds=1.23456))
    s.add(FileResult("b.jpg", "b_derained.jpg", "processed", megapixels=4e-06))
    files = json.loads(s.to_json())["files"]
    assert [f["megapixels"] for f in files] == [0.3, 0.0]
    assert files[0]["seconds"] == 1.235


def test_warnings_are_in_the_json_and_merge_in_rank_order() -> None:
    """--json carries the run's warnings (a script saw none of them: an audit); merged
    summaries keep every rank's, in rank order."""
    assert json.loads(Summary().to_json())["warnings"] == []
    a, b = Summary(warnings=["in: 1 GIF not read"]), Summary(warnings=["b.tif: first frame"])
    assert Summary.merge([a, b]).to_dict()["warnings"] == [
        "in: 1 GIF not read", "b.tif: first frame"]
