"""benchmarks/ensemble_cost.py runs and writes what it prints (the README quotes it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import ensemble_cost  # noqa: E402


def test_it_times_each_pass_count_against_one_pass(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cost.json"
    assert ensemble_cost.main(["-m", "semi-drdnet-tiny", "--device", "cpu", "--precision",
                               "fp32", "--megapixels", "0.05", "--passes", "1,2",
                               "--repeats", "1", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert [r["passes"] for r in got["rows"]] == [1, 2]
    assert got["rows"][0]["vs_one_pass"] == 1.0
    assert got["rows"][1]["seconds"] > got["rows"][0]["seconds"]  # two passes, more time
    assert "x one pass" in capsys.readouterr().out
