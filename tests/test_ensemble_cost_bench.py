"""benchmarks/ensemble_cost.py runs and writes what it prints (the README quotes it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import ensemble_cost  # noqa: E402
import pytest  # noqa: E402


def test_it_times_each_pass_count_against_one_pass(tmp_path: Path, capsys) -> None:
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
