"""The README's Python example for the commands as functions runs as it is printed."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("The other commands are functions too")
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert block, "the README lost its Python example for the commands"
    return block.group(1)


@pytest.mark.usefixtures("one_thread")
def test_the_python_example_for_the_commands_runs(tmp_path, monkeypatch):
    """Four of the bundled examples, downscaled, as the clean and the rainy photos."""
    for sub in ("clean", "rainy"):
        (tmp_path / sub).mkdir()
    for i, photo in enumerate(sorted((ROOT / "examples").glob("*_rain.jpg"))[:4]):
        small = Image.open(photo).convert("RGB").resize((160, 120))
        small.save(tmp_path / "clean" / f"c{i}.png")
        small.save(tmp_path / "rainy" / f"r{i}.jpg")
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(_example(), "README.md", "exec"), {})  # noqa: S102 - our own README
    lines = printed.getvalue().splitlines()
    assert (tmp_path / "runs" / "ft" / "model.safetensors").is_file()
    assert (tmp_path / "rdmc-lite.onnx").is_file() and len(list((tmp_path / "pairs").iterdir()))
    assert re.fullmatch(r"\d+\.\d\d dB, SSIM 0\.\d{3} over 4 pairs", lines[2]), lines
