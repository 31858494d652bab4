"""benchmarks/folder_e2e.py's timeline: the split the next GPU lease reads its 59 % from."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from folder_e2e import StandIn, Timeline, io_stand_in  # noqa: E402

from derain_cli import batch  # noqa: E402
from derain_cli.batch import BatchOptions, collect_inputs, run_batch  # noqa: E402


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    folder.mkdir()
    for n in range(3):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), np.uint8)).save(folder / f"p{n}.jpg")
    return folder


class _Threads(StandIn):
    """The stand-in, also noting which thread derains."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.threads: set[str] = set()

    def derain_array(self, rgb: np.ndarray, on_tile=None) -> np.ndarray:  # noqa: ANN001
        self.threads.add(threading.current_thread().name)
        return super().derain_array(rgb, on_tile)


@pytest.mark.parametrize("workers", [0, 2])
def test_the_timeline_times_every_step_of_every_photo_and_restores_batch(
        photos: Path, tmp_path: Path, workers: int) -> None:
    originals = {name: getattr(batch, name) for name in Timeline.STEPS}
    derainer = _Threads(0.05)
    opts = BatchOptions(output=tmp_path / "out", io_workers=workers, overwrite=True)
    with Timeline().installed() as timeline:
        summary = run_batch(collect_inputs([str(photos)]), derainer, opts)
    assert summary.processed == 3
    assert {name: getattr(batch, name) for name in Timeline.STEPS} == originals
    steps = [s for s, _, _ in timeline.spans]
    assert sorted(set(steps)) == ["derain", "encode", "quantise", "read"]
    assert all(steps.count(s) == 3 for s in set(steps))
    on_main = {s: m for s, m, _ in timeline.spans}
    assert on_main["derain"] and derainer.threads == {threading.main_thread().name}
    assert on_main["encode"] == (workers == 0)  # the writes go to the I/O threads

    per = timeline.per_photo(3, summary.seconds)
    assert per["derain"] >= 0.05  # the stand-in's wait, on the main thread
    assert per["read"] > 0 and per["quantise"] > 0 and per["write"] > 0
    if workers == 0:  # all in line: the steps and the waits add up to the wall time
        total = per["read"] + per["derain"] + per["quantise"] + per["write"] + per["main waits"]
        assert total == pytest.approx(summary.seconds / 3, rel=1e-6)
        assert per["main waits"] < 0.05


def test_the_io_stand_in_replaces_reading_and_writing_by_waits_and_writes_nothing(
        photos: Path, tmp_path: Path) -> None:
    originals = {name: getattr(batch, name) for name in Timeline.STEPS}
    opts = BatchOptions(output=tmp_path / "out", io_workers=0, overwrite=True)
    with io_stand_in(0.02, 0.03), Timeline().installed() as timeline:
        summary = run_batch(collect_inputs([str(photos)]), StandIn(0.01), opts)
    assert {name: getattr(batch, name) for name in Timeline.STEPS} == originals
    assert summary.processed == 3 and summary.megapixels == pytest.approx(3 * 48 * 64 / 1e6)
    per = timeline.per_photo(3, summary.seconds)
    assert per["read"] >= 0.02 and per["write"] >= 0.03 and per["quantise"] == 0
    assert not any((tmp_path / "out").glob("*.jpg"))  # the write only waited
