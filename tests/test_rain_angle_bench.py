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
                            "--photos", "chelsea", "--edges", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert [r["angle"] for r in got["rows"]] == [0.0, 80.0] and got["photos"] == ["chelsea"]
    assert got["model"] == "semi-drdnet-tiny" and got["weights"].startswith("semi-drdnet-tiny")
    # the same streaks turned: the rainy inputs differ, so the angle reached the synthesizer
    assert got["rows"][0]["rainy"] != got["rows"][1]["rainy"]
    printed = capsys.readouterr().out
    assert "gain dB" in printed
    # --edges: each row's error by distance from the border, printed and written
    assert "px from the border and 16+ px inside" in printed
    assert all(len(r["plain_edges"]) == 4 and "turned_edges" not in r for r in got["rows"])


def test_edge_profile_reads_error_by_distance_from_the_border() -> None:
    import numpy as np

    clean = np.zeros((40, 50, 3), np.uint8)
    out = clean.copy()
    out[0, :] = 30  # the top row, 30 levels off
    out[:, 1] = 6  # the second column: 1 px in, except in the top and bottom rows (0 px)
    got = rain_angle.edge_profile(out, clean)
    assert got[0] == pytest.approx((49 * 30 + 2 * 6) / (2 * 50 + 2 * 38))
    assert got[1] == pytest.approx(38 * 6 / (2 * 48 + 2 * 36))
    assert got[2] == 0 and got[3] == 0


@pytest.mark.parametrize(("args", "said"), [
    (["--angles", "0,90"], "-80 to 80"), (["--photos", "cat"], "unknown cat"),
    (["--seeds", "0"], "1 to 1000"), (["--preset", "drizzle"], "drizzle"),
    (["--turn-offset", "5"], "goes with --turn"),
    (["--turn", "--angles", "80", "--turn-offset", "15"], "past 90 degrees"),
])
def test_a_bad_option_is_said_before_any_work(capsys, monkeypatch, args, said) -> None:
    from derain_cli import enhancer

    monkeypatch.setattr(enhancer, "Derainer", None)  # no model may load before the check
    with pytest.raises(SystemExit) as stop:
        rain_angle.main(["-m", "semi-drdnet-tiny", "--photos", "chelsea", *args])
    assert stop.value.code == 2 and said in capsys.readouterr().err


def test_it_takes_a_weights_file(tmp_path: Path, tiny_weights: Path) -> None:
    """The file's network runs (a random tiny one, named "tiny" inside), not the bundled
    default: its result differs from the bundled semi-drdnet-tiny's on the same rain."""
    runs = {}
    for tag, pick in (("file", ["--weights", str(tiny_weights)]),
                      ("bundled", ["-m", "semi-drdnet-tiny"])):
        out = tmp_path / f"{tag}.json"
        assert rain_angle.main([*pick, "--angles", "45", "--seeds", "1", "--photos",
                                "chelsea", "--json", str(out)]) == 0
        runs[tag] = json.loads(out.read_text())
    assert runs["file"]["model"] == "tiny" and runs["file"]["weights"] == str(tiny_weights)
    assert runs["file"]["rows"][0]["rainy"] == runs["bundled"]["rows"][0]["rainy"]
    assert runs["file"]["rows"][0]["derained"] != runs["bundled"]["rows"][0]["derained"]


def test_turn_derains_the_photo_turned_by_its_rain_angle(tmp_path: Path, capsys) -> None:
    """``--turn``: the same rainy photos derained turned (``derain --rain-angle``); at 0
    degrees nothing turns, so both columns agree; at 80 they differ and the canvas is
    larger than the photo."""
    out = tmp_path / "turn.json"
    assert rain_angle.main(["-m", "semi-drdnet-tiny", "--angles", "0,80", "--seeds", "1",
                            "--photos", "chelsea", "--turn", "--json", str(out)]) == 0
    zero, eighty = json.loads(out.read_text())["rows"]
    assert zero["turned"] == zero["derained"] and zero["canvas"] == 1.0
    assert eighty["turned"] != eighty["derained"] and eighty["canvas"] > 1.2
    assert eighty["turned_by"] == 80.0 and zero["time_ratio"] > 0 and eighty["time_ratio"] > 0
    assert eighty["turned_gain"] == pytest.approx(eighty["turned"] - eighty["rainy"])
    assert "turned dB" in capsys.readouterr().out
