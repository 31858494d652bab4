"""benchmarks/ensemble_cost.py runs and writes what it prints (the README quotes it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import ensemble_cost  # noqa: E402
import pytest  # noqa: E402


def test_it_times_each_pass_count_against_one_pass(tmp_path: Path, capsys,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from collections import Counter

    from derain_cli.enhancer import Derainer

    passes: Counter[int] = Counter()  # network passes, and photos, by the Derainer's
    photos: Counter[int] = Counter()  # ensemble (a test audit: every row timing one pass
    one_pass, derain_array = Derainer._one_pass, Derainer.derain_array  # still passed)

    def counted_pass(self, *a, **k):
        passes[self.ensemble] += 1
        return one_pass(self, *a, **k)

    def counted_photo(self, *a, **k):
        photos[self.ensemble] += 1
        return derain_array(self, *a, **k)

    monkeypatch.setattr(Derainer, "_one_pass", counted_pass)
    monkeypatch.setattr(Derainer, "derain_array", counted_photo)
    out = tmp_path / "cost.json"
    assert ensemble_cost.main(["-m", "semi-drdnet-tiny", "--device", "cpu", "--precision",
                               "fp32", "--megapixels", "0.05", "--passes", "1,2",
                               "--repeats", "1", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert [r["passes"] for r in got["rows"]] == [1, 2]
    one, two = got["rows"]
    assert one["vs_one_pass"] == 1.0 and one["per_pass"] == 1.0
    # the ratios are of the times it measured (not timing itself: a shared CPU is noisy)
    assert two["vs_one_pass"] == pytest.approx(two["seconds"] / one["seconds"])
    assert two["per_pass"] == pytest.approx(two["vs_one_pass"] / 2)
    assert "x one pass" in capsys.readouterr().out
    assert photos[1] > 0 and passes[1] == photos[1] and passes[2] == 2 * photos[2] > 0


def test_it_times_a_turned_pass_with_its_canvas(tmp_path: Path, capsys) -> None:
    """``--rain-angles``: one pass turned by each angle, timed against one plain pass, with
    the turned canvas's size over the photo's."""
    out = tmp_path / "turn.json"
    assert ensemble_cost.main(["-m", "semi-drdnet-tiny", "--device", "cpu", "--precision",
                               "fp32", "--megapixels", "0.05", "--passes", "1",
                               "--rain-angles", "45", "--repeats", "1", "--json",
                               str(out)]) == 0
    plain, turned = json.loads(out.read_text())["rows"]
    assert (plain["rain_angle"], plain["canvas"]) == (0.0, 1.0)
    assert turned["passes"] == 1 and turned["rain_angle"] == 45.0
    assert 1.7 < turned["canvas"] < 2.1  # a 4:3-ish photo turned 45 degrees
    assert turned["vs_one_pass"] == pytest.approx(turned["seconds"] / plain["seconds"])
    assert "45 deg" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["0", "95", "x"])
def test_a_bad_rain_angle_is_refused(bad: str, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        ensemble_cost.main(["--rain-angles", bad])
    assert stop.value.code == 2 and "--rain-angles" in capsys.readouterr().err
