"""benchmarks/rain_angle.py runs and writes what it prints (the README quotes it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import rain_angle  # noqa: E402

pytest.importorskip("skimage")


def test_it_scores_rain_turned_to_each_angle(tmp_path: Path, capsys) -> None:
    out = tmp_path / "angle.json"
    assert rain_angle.main(["-m", "semi-drdnet-tiny", "--angles", "0,80", "--seeds", "1",
                            "--photos", "chelsea", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert [r["angle"] for r in got["rows"]] == [0.0, 80.0] and got["photos"] == ["chelsea"]
    for r in got["rows"]:
        assert r["gain"] == pytest.approx(r["derained"] - r["rainy"])
    # the same streaks turned: the rainy inputs differ, so the angle reached the synthesizer
    assert got["rows"][0]["rainy"] != got["rows"][1]["rainy"]
    assert "gain dB" in capsys.readouterr().out


def test_an_angle_the_synthesizer_refuses_is_said_before_any_work(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        rain_angle.main(["-m", "semi-drdnet-tiny", "--angles", "0,90", "--photos", "chelsea"])
    assert stop.value.code == 2 and "-80 to 80" in capsys.readouterr().err


def test_it_takes_a_weights_file(tmp_path: Path, tiny_weights: Path) -> None:
    out = tmp_path / "angle.json"
    assert rain_angle.main(["--weights", str(tiny_weights), "--angles", "45", "--seeds", "1",
                            "--photos", "chelsea", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["model"] == str(tiny_weights) and len(got["rows"]) == 1
