"""benchmarks/slant_auto.py runs every part and writes what it prints (the README quotes it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import slant_auto  # noqa: E402

pytest.importorskip("skimage")


def _rain(angle: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from dataclasses import replace

    from derain_cli import synth

    yy, xx = np.mgrid[0:120, 0:160].astype(np.float32)
    clean = np.dstack([0.4 + 0.2 * np.sin(xx / 17) * np.cos(yy / 13)] * 3)
    p = replace(synth.sample_params("medium", np.random.default_rng(seed)), angle=angle)
    rainy, _ = synth.synthesize(clean, p, seed=seed)
    return [(np.clip(a, 0, 1) * 255).round().astype(np.uint8) for a in (rainy, clean)]


def test_every_part_runs_and_is_written(tmp_path: Path, tiny_weights: Path, capsys) -> None:
    data = tmp_path / "data"
    rainy, clean = _rain(0.0, 1)
    for sub, img in (("rainy", rainy), ("clean", clean)):
        (data / "myset" / sub).mkdir(parents=True)
        Image.fromarray(img).save(data / "myset" / sub / "001.png")
    (data / "real-rain").mkdir()
    Image.fromarray(_rain(60.0, 2)[0]).save(data / "real-rain" / "a.png")
    out = tmp_path / "auto.json"
    assert slant_auto.main(["--weights", str(tiny_weights), "--parts",
                            "clean,synthetic,myset,real,nosuchset", "--presets", "light",
                            "--angles=-45", "--data", str(data), "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["model"] == "tiny" and set(got["clean"]) == {"astronaut", "coffee", "chelsea",
                                                            "rocket"}
    (row,) = got["synthetic"]
    assert (row["preset"], row["angle"], len(row["chosen"])) == ("light", -45.0, 4)
    assert got["myset"]["pairs"] == 1 and isinstance(got["myset"]["auto"], float)
    assert got["myset"]["time_ratio"] > 0 and got["myset"]["checked"] in (0, 1)
    assert got["real"]["photos"] == 1
    said = capsys.readouterr().out
    assert "nosuchset" in said and "skipped" in said and "myset: " in said


def test_upscale_enlarges_the_sample_photos(tiny_weights: Path, tmp_path: Path, capsys) -> None:
    """``--upscale``: the photos past 1.1 MP, so the check runs on crops (the time ratio of
    the row is the measured one)."""
    out = tmp_path / "up.json"
    assert slant_auto.main(["--weights", str(tiny_weights), "--parts", "synthetic",
                            "--presets", "light", "--angles", "60", "--upscale", "2.2",
                            "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["upscale"] == 2.2 and got["synthetic"][0]["time_ratio"] > 0
    assert "enlarged 2.2x: 1126x1126" in capsys.readouterr().out  # astronaut: 512 px
