"""derain_cli.batch: input collection, output naming, the batch loop and its summary."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from derain_cli.batch import (
    BatchInterrupted,
    BatchOptions,
    BatchProgress,
    DistInfo,
    FileResult,
    InputItem,
    Summary,
    collect_inputs,
    pending,
    pending_megapixels,
    pending_workload,
    plan_jobs,
    run_batch,
)


def _img(path: Path, w: int = 12, h: int = 10, mode: str = "RGB", seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    Image.fromarray(arr[..., 0] if channels == 1 else arr, mode).save(path)
    return path


@pytest.fixture(scope="module")
def derainer(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path):
    from derain_cli.enhancer import Derainer

    return Derainer(weights=tiny_weights, device="cpu", tile=0)


def _rels(items: list[InputItem]) -> list[str]:
    return [i.rel.as_posix() for i in items if i.error is None]


# --------------------------------------------------------------------------- collect_inputs
@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    _img(root / "a.jpg")
    _img(root / "B.PNG")  # upper-case suffix
    _img(root / "x.bmp")
    _img(root / "a_derained.jpg")  # an earlier output: skipped when scanning
    _img(root / ".hidden.png")  # dot-files are skipped
    (root / "notes.txt").write_text("not a photo")
    _img(root / "sub" / "c.webp")
    _img(root / "sub" / "deeper" / "d.tif")
    _img(root / ".git" / "e.png")  # hidden folder: not entered
    return root


def test_collect_folder_flat_and_recursive(tree: Path) -> None:
    assert _rels(collect_inputs([str(tree)])) == ["a.jpg", "B.PNG", "x.bmp"]
    # one path alone is one input: a string was walked letter by letter, "/" among them
    # (a scan of the whole file system: an audit)
    for alone in (str(tree), tree):
        assert _rels(collect_inputs(alone)) == ["a.jpg", "B.PNG", "x.bmp"]
    rec = collect_inputs([str(tree)], recursive=True)
    assert _rels(rec) == ["a.jpg", "B.PNG", "x.bmp", "sub/c.webp", "sub/deeper/d.tif"]
    assert all(i.error is None for i in rec)


@pytest.fixture
def locked(tree: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tree/locked`` (with a photo) as an ordinary user meets a folder without read or
    search permission (these tests may run as root, which permission bits do not stop)."""
    lock = tree / "locked"
    _img(lock / "z.jpg")
    real_scandir, real_stat = os.scandir, os.stat

    def denied(path):
        raise PermissionError(13, "Permission denied", os.fspath(path))

    def scandir(path="."):
        return denied(path) if Path(os.fspath(path)) == lock else real_scandir(path)

    def stat(path, *args, **kwargs):
        if isinstance(path, (str, os.PathLike)) and lock in Path(os.fspath(path)).parents:
            denied(path)
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "listdir", lambda path=".": [e.name for e in scandir(path)])
    monkeypatch.setattr(os, "stat", stat)
    return lock


def test_an_unreadable_subfolder_is_one_failure_not_the_end_of_the_batch(
        tree: Path, locked: Path) -> None:
    """A folder the user may not read (a root-owned lost+found) stopped every scan of its
    parent with "Permission denied", -r or not, before any photo was derained (audit)."""
    assert _rels(collect_inputs([str(tree)])) == ["a.jpg", "B.PNG", "x.bmp"]
    rec = collect_inputs([str(tree)], recursive=True)
    assert _rels(rec) == ["a.jpg", "B.PNG", "x.bmp", "sub/c.webp", "sub/deeper/d.tif"]
    bad, = (i for i in rec if i.error is not None)
    assert bad.path == locked and bad.rel.as_posix() == "locked"
    assert bad.error == "cannot read folder: Permission denied; its photos are left out"
    # the unreadable folder itself: why, not "no images found"
    alone, = collect_inputs([str(locked)], recursive=True)
    assert alone.error == "cannot list folder: Permission denied"


def test_photos_in_a_folder_without_search_permission_are_kept_to_fail_one_by_one(
        tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Listable, not enterable (mode 644): looking at one of its files stopped the scan."""
    _img(tree / "noexec" / "y.jpg")
    real_stat = os.stat

    def stat(path, *args, **kwargs):
        if isinstance(path, (str, os.PathLike)) and \
                (tree / "noexec") in Path(os.fspath(path)).parents:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    assert "noexec/y.jpg" in _rels(collect_inputs([str(tree)], recursive=True))
    assert _rels(collect_inputs([str(tree)])) == ["a.jpg", "B.PNG", "x.bmp"]


def test_a_pattern_over_an_unreadable_folder_says_what_it_left_out(
        tree: Path, locked: Path, caplog: pytest.LogCaptureFixture) -> None:
    items = collect_inputs([str(tree / "**" / "*.jpg")])
    assert _rels(items) == ["a.jpg"]
    assert f"{locked}: cannot read folder (Permission denied)" in caplog.text


def test_collect_files_globs_missing_and_duplicates(tree: Path, tmp_path: Path) -> None:
    items = collect_inputs([
        str(tree / "a.jpg"),
        str(tree / "a.jpg"),  # duplicate: listed once
        str(tree / "a_derained.jpg"),  # named explicitly: taken
        str(tree / "*.jpg"),  # glob: a.jpg already listed, a_derained.jpg skipped
        str(tree / "**" / "*.tif"),  # recursive glob: mirrored below its base folder
        str(tmp_path / "nope.jpg"),
        str(tree / "notes.txt"),
        str(tmp_path / "*.gif"),
    ])
    ok = [(i.path.name, i.rel.as_posix()) for i in items if i.error is None]
    assert ok == [("a.jpg", "a.jpg"), ("a_derained.jpg", "a_derained.jpg"),
                  ("d.tif", "sub/deeper/d.tif")]
    errors = {i.path.name: i.error for i in items if i.error is not None}
    assert errors["nope.jpg"] == "no such file or folder"
    assert "unsupported file type '.txt'" in errors["notes.txt"]
    assert errors["notes.txt"].endswith("(supported: JPEG, PNG, WebP, TIFF, BMP)")
    assert errors["*.gif"] == "no images match this pattern"
    # every match listed already: no failure (an audit: `derain F 'F/*.jpg'` exited 1)
    assert "*.jpg" not in errors
    again = collect_inputs([str(tree), str(tree / "*.jpg"), str(tree / "a.*")])
    assert [i.error for i in again if i.error is not None] == []
    # a photo named without its suffix: what to rename it to (an audit)
    (tmp_path / "IMG_1").write_bytes((tree / "a.jpg").read_bytes())
    (tmp_path / "IMG_2.heic").write_bytes((tree / "a.jpg").read_bytes())
    Image.new("RGB", (8, 8)).save(tmp_path / "anim.gif")  # said as a GIF, and what to do
    assert collect_inputs([str(tmp_path / "anim.gif")])[0].error == (
        "a GIF image, which derain does not read (supported: JPEG, PNG, WebP, TIFF, BMP): "
        "convert it to JPEG, PNG or TIFF")
    # a camera raw file is a TIFF inside: "name it DSC_1.tif" renamed the raw file, and
    # derain would take its small first picture (an audit)
    Image.new("RGB", (8, 8)).save(tmp_path / "DSC_1.NEF", format="TIFF")
    assert collect_inputs([str(tmp_path / "DSC_1.NEF")])[0].error == (
        "a camera raw image, which derain does not read (supported: JPEG, PNG, WebP, TIFF, "
        "BMP): export it from your raw editor as JPEG, PNG or TIFF")
    # a PNG merely named .dng is said as the PNG it holds, not as a raw file (a review)
    Image.new("RGB", (8, 8)).save(tmp_path / "notraw.dng", format="PNG")
    assert collect_inputs([str(tmp_path / "notraw.dng")])[0].error == (
        "unsupported file type '.dng', though it holds a PNG image: name it notraw.png (the "
        "suffix also picks the result's format)")
    (tmp_path / "model.safetensors").write_bytes(b"weights")  # `derain RUN/model.safetensors`
    assert collect_inputs([str(tmp_path / "model.safetensors")])[0].error == (
        f"a weights file, not a photo: to derain photos with it, pass it as --weights "
        f"{tmp_path / 'model.safetensors'}")
    named = collect_inputs([str(tmp_path / "IMG_1"), str(tmp_path / "IMG_2.heic")])
    assert [i.error for i in named] == [
        "unsupported file type (no suffix), though it holds a JPEG image: name it IMG_1.jpg "
        "(the suffix also picks the result's format)",
        "unsupported file type '.heic', though it holds a JPEG image: name it IMG_2.jpg "
        "(the suffix also picks the result's format)"]


def test_collect_empty_folder_hints_recursive(tmp_path: Path) -> None:
    _img(tmp_path / "only_sub" / "inner" / "a.png")
    (tmp_path / "empty").mkdir()
    items = collect_inputs([str(tmp_path / "only_sub"), str(tmp_path / "empty")])
    assert [i.error is not None for i in items] == [True, True]
    assert "add -r" in items[0].error
    assert "no images found" in items[1].error


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_pipe_named_like_a_photo_is_not_opened(tmp_path: Path) -> None:
    """Opening a FIFO blocks until a writer comes: the whole batch would hang."""
    _img(tmp_path / "a.png")
    os.mkfifo(tmp_path / "p.png")
    for recursive in (False, True):
        items = collect_inputs([str(tmp_path)], recursive)
        assert _rels(items) == ["a.png"]
        # reported as when named (it vanished from a scan without a word: audit)
        assert [(i.path.name, i.error) for i in items if i.error] == [
            ("p.png", "not a regular file (a pipe, socket or device)")]
    (given,) = collect_inputs([str(tmp_path / "p.png")])
    assert "not a regular file" in given.error


def test_a_broken_link_in_a_folder_is_said_as_such(tmp_path: Path, derainer) -> None:
    _img(tmp_path / "a.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "gone.png")
    s = run_batch(collect_inputs([str(tmp_path)]), derainer, BatchOptions(output=tmp_path / "o"))
    assert s.processed == 1 and [r for _, r in s.failed] == ["broken symbolic link"]


def test_a_broken_link_keeps_its_reason_where_the_output_cannot_be_written(
        tmp_path: Path, derainer, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a read-only -o, a folder's broken link failed "cannot write to ...", and after
    that was mended with another reason (an audit): its own reason, first."""
    from derain_cli import batch

    _img(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "b.png").symlink_to(tmp_path / "gone.png")
    monkeypatch.setattr(batch, "why_unwritable", lambda folder: "read-only file system")
    s = run_batch(collect_inputs([str(tmp_path / "in")]), derainer,
                  BatchOptions(output=tmp_path / "o"))
    assert dict((Path(p).name, r) for p, r in s.failed) == {
        "a.png": f"cannot write to {tmp_path / 'o'}: read-only file system",
        "b.png": "broken symbolic link"}


def test_collect_glob_matching_folders_keeps_their_names(tmp_path: Path) -> None:
    _img(tmp_path / "gl" / "x.jpg")
    _img(tmp_path / "gl" / "sub" / "x.jpg")
    items = collect_inputs([str(tmp_path / "gl" / "*")], recursive=True)
    assert sorted(_rels(items)) == ["sub/x.jpg", "x.jpg"]


def test_collect_notes_subfolders_left_out(tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="derain_cli"):
        collect_inputs([str(tree)])
    assert "1 subfolder(s) not entered; add -r" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="derain_cli"):
        collect_inputs([str(tree)], recursive=True)
    assert "not entered" not in caplog.text


def test_a_photo_named_like_a_result_without_its_own_photo_is_said(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """holiday_derained.jpg with no holiday.* beside it was left out without a word (an
    audit); results beside their photos (of any format) are no news on a rerun."""
    for name in ("a.png", "a_derained.jpg", "b.jpg", "b_derained.png", "holiday_derained.jpg"):
        _img(tmp_path / "in" / name)
    with caplog.at_level("WARNING", logger="derain_cli"):
        items = collect_inputs([str(tmp_path / "in")])
    assert _rels(items) == ["a.png", "b.jpg"]
    assert (f"{tmp_path / 'in'}: 1 image(s) named *_derained.* with no photo of that name "
            "beside them left out") in caplog.text
    (tmp_path / "in" / "holiday_derained.jpg").unlink()
    caplog.clear()
    with caplog.at_level("WARNING", logger="derain_cli"):
        collect_inputs([str(tmp_path / "in")])
    assert "_derained" not in caplog.text
    # a result of a result has its photo (a result) beside it: not an orphan (a review)
    _img(tmp_path / "in" / "b_derained_derained.png")
    caplog.clear()
    with caplog.at_level("WARNING", logger="derain_cli"):
        collect_inputs([str(tmp_path / "in")])
    assert "_derained" not in caplog.text


def test_collect_excludes_output_folder(tree: Path) -> None:
    _img(tree / "out" / "a.jpg")
    items = collect_inputs([str(tree)], recursive=True, exclude=[tree / "out"])
    assert not any(i.rel.parts[0] == "out" for i in items)


def test_results_of_an_earlier_run_are_not_inputs_again(
    tree: Path, derainer, caplog: pytest.LogCaptureFixture
) -> None:
    """`derain photos -o photos/out`, then `derain photos -r`: photos/out is left alone."""
    first = collect_inputs([str(tree)], exclude=[tree / "out"])
    s = run_batch(first, derainer, BatchOptions(output=tree / "out"))
    assert s.processed == 3 and (tree / "out" / ".derain-output").is_file()
    with caplog.at_level("WARNING", logger="derain_cli"):
        later = collect_inputs([str(tree)], recursive=True)
    assert not any(i.rel.parts[0] == "out" for i in later)
    assert "holds derain results" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="derain_cli"):  # not counted as "add -r" either
        collect_inputs([str(tree)])
    assert "1 subfolder(s) not entered" in caplog.text
    # named on purpose, the folder is still an input
    assert len(_rels(collect_inputs([str(tree / "out")]))) == 3


def test_only_a_new_or_empty_output_folder_is_marked(tmp_path: Path, derainer,
                                                     caplog) -> None:
    """`derain rainy -o .` in a folder of the user's own photos marked it, and a later
    `derain pics -r` skipped all of pics: the user's photos and the rainy originals. Left
    unmarked inside the inputs' tree, that is a warning (a note, hidden, let the next
    `derain PARENT -r` derain the results again: an audit)."""
    pics = tmp_path / "pics"
    _img(pics / "own.jpg")
    _img(pics / "rainy" / "r.jpg", seed=1)
    with caplog.at_level(logging.WARNING, logger="derain_cli"):
        s = run_batch(collect_inputs([str(pics / "rainy")]), derainer,
                      BatchOptions(output=pics))
    assert s.processed == 1 and not (pics / ".derain-output").exists()
    assert "not marked" not in caplog.text  # pics is no folder of the inputs' tree
    (pics / "mine").mkdir()
    (pics / "mine" / "notes.txt").write_text("mine")
    with caplog.at_level(logging.WARNING, logger="derain_cli"):
        run_batch(collect_inputs([str(pics)], recursive=True), derainer,
                  BatchOptions(output=pics / "mine"))
    assert "mine: not marked as a results folder" in caplog.text
    assert not (pics / "mine" / ".derain-output").exists()
    shutil.rmtree(pics / "mine")
    later = collect_inputs([str(pics)], recursive=True)
    assert {"own.jpg", "rainy/r.jpg"} <= set(_rels(later))
    # an empty folder the user made for the results is marked, and stays marked on a rerun
    (tmp_path / "out").mkdir()
    run_batch(collect_inputs([str(pics / "rainy")]), derainer,
              BatchOptions(output=tmp_path / "out"))
    assert (tmp_path / "out" / ".derain-output").is_file()
    run_batch(collect_inputs([str(pics / "rainy")]), derainer,
              BatchOptions(output=tmp_path / "out", overwrite=True))
    assert (tmp_path / "out" / ".derain-output").is_file()
    # a marker the user deleted (to derain the results again) is not put back
    (tmp_path / "out" / ".derain-output").unlink()
    run_batch(collect_inputs([str(pics / "rainy")]), derainer,
              BatchOptions(output=tmp_path / "out", overwrite=True))
    assert not (tmp_path / "out" / ".derain-output").exists()


def test_the_marker_is_not_written_through_a_planted_link(tmp_path: Path) -> None:
    """Security audit: a link under the marker's name in an (otherwise empty) output folder
    made derain create the file the link named."""
    from derain_cli.batch import OUTPUT_MARKER, mark_output_folder

    out = tmp_path / "out"
    out.mkdir()
    (out / OUTPUT_MARKER).symlink_to(tmp_path / "planted")
    mark_output_folder(out)
    assert not os.path.lexists(tmp_path / "planted")
    fresh = tmp_path / "fresh"
    mark_output_folder(fresh)
    assert (fresh / OUTPUT_MARKER).is_file()


def test_no_marker_without_work_or_for_a_file_output(tmp_path: Path, derainer) -> None:
    src = _img(tmp_path / "in" / "a.png")
    run_batch(collect_inputs([str(src)]), derainer, BatchOptions(output=tmp_path / "o.png"))
    assert not (tmp_path / ".derain-output").exists()
    run_batch(collect_inputs([str(tmp_path / "missing.png")]), None,
              BatchOptions(output=tmp_path / "never"))
    assert not (tmp_path / "never").exists()


def test_a_run_that_wrote_nothing_leaves_no_marked_folder(tmp_path: Path, derainer) -> None:
    """Every file failing at its decode left ``-o``'s folder behind holding only the
    marker (or empty): later scans of a parent skipped it as results (audit). What the run
    made is taken back; a folder the user made stays, unmarked; a run that wrote keeps
    both."""
    from derain_cli.batch import OUTPUT_MARKER

    bad = tmp_path / "in" / "broken.jpg"
    bad.parent.mkdir()
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    (tmp_path / "in" / "empty.png").write_bytes(b"")
    for out in (tmp_path / "oc", tmp_path / "deep" / "er" / "oc"):
        s = run_batch(collect_inputs([str(tmp_path / "in")]), derainer,
                      BatchOptions(output=out))
        assert len(s.failed) == 2 and not s.processed
        assert not (tmp_path / "oc").exists() and not (tmp_path / "deep").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    run_batch(collect_inputs([str(tmp_path / "in")]), derainer, BatchOptions(output=mine))
    assert mine.is_dir() and not (mine / OUTPUT_MARKER).exists()
    # a path through a folder not made yet: 'new/..' was counted as made, and the user's
    # own empty folder on the far side of it removed (review)
    run_batch(collect_inputs([str(tmp_path / "in")]), derainer,
              BatchOptions(output=tmp_path / "new" / ".." / "mine" / "out"))
    assert mine.is_dir() and not (tmp_path / "new").exists()
    assert not (mine / "out").exists()
    (tmp_path / "deep2" / "er").mkdir(parents=True)  # through a link: where it leads
    (tmp_path / "sym").mkdir()
    (tmp_path / "sym" / "link").symlink_to(tmp_path / "deep2" / "er")
    s = run_batch(collect_inputs([str(tmp_path / "in" / "broken.jpg")]), derainer,
                  BatchOptions(output=tmp_path / "sym" / "link" / ".." / "out"))
    assert not s.processed and sorted(os.listdir(tmp_path / "deep2")) == ["er"]
    assert sorted(os.listdir(tmp_path / "sym")) == ["link"]
    _img(tmp_path / "in" / "good.png")

    class Broken:  # --debug raises a file's error: the folder made is taken back too
        device_name = "cpu"

        def derain_array(self, rgb, on_tile=None):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_batch(collect_inputs([str(tmp_path / "in" / "good.png")]), Broken(),
                  BatchOptions(output=tmp_path / "dbg", raise_errors=True))
    assert not (tmp_path / "dbg").exists()
    s = run_batch(collect_inputs([str(tmp_path / "in")]), derainer, BatchOptions(output=mine))
    assert s.processed == 1 and (mine / OUTPUT_MARKER).is_file()


def test_an_interrupted_torchrun_run_takes_back_an_empty_output_folder(tmp_path: Path) -> None:
    """Ctrl-C under torchrun before any file was done left -o marked and empty (an audit):
    the ranks' counts cannot be gathered then, so rank 0 takes back what is still empty,
    and leaves a folder another rank wrote in."""
    from derain_cli.batch import OUTPUT_MARKER, BatchInterrupted, DistInfo

    for i in range(4):
        _img(tmp_path / "in" / f"p{i}.png")

    class Stopped:
        device_name = "cpu"

        def __init__(self, other_rank_wrote: Path | None = None) -> None:
            self.wrote = other_rank_wrote

        def derain_array(self, rgb, on_tile=None):
            if self.wrote is not None:
                _img(self.wrote / "p1.png")  # rank 1's result, done meanwhile
            raise KeyboardInterrupt

    rank0 = DistInfo(rank=0, world_size=2)
    with pytest.raises(BatchInterrupted):
        run_batch(collect_inputs([str(tmp_path / "in")]), Stopped(),
                  BatchOptions(output=tmp_path / "out"), dist=rank0)
    assert not (tmp_path / "out").exists()
    with pytest.raises(BatchInterrupted):
        run_batch(collect_inputs([str(tmp_path / "in")]), Stopped(tmp_path / "out2"),
                  BatchOptions(output=tmp_path / "out2"), dist=rank0)
    assert sorted(os.listdir(tmp_path / "out2")) == [OUTPUT_MARKER, "p1.png"]


# --------------------------------------------------------------------------- planning
def test_output_names(tree: Path, tmp_path: Path) -> None:
    items = collect_inputs([str(tree)], recursive=True)
    beside = {j.item.rel.as_posix(): j.output for j in plan_jobs(items, BatchOptions())}
    assert beside["a.jpg"] == tree / "a_derained.jpg"
    assert beside["sub/c.webp"] == tree / "sub" / "c_derained.webp"

    out = tmp_path / "out"
    mirrored = {j.item.rel.as_posix(): j.output
                for j in plan_jobs(items, BatchOptions(output=out, format="png"))}
    assert mirrored["B.PNG"] == out / "B.png"
    assert mirrored["sub/deeper/d.tif"] == out / "sub" / "deeper" / "d.png"

    single = collect_inputs([str(tree / "a.jpg")])
    (job,) = plan_jobs(single, BatchOptions(output=tmp_path / "result.webp"))
    assert job.output == tmp_path / "result.webp" and job.error is None


def test_plan_refuses_overwriting_inputs_and_collisions(tmp_path: Path) -> None:
    a = _img(tmp_path / "a" / "x.png")
    _img(tmp_path / "b" / "x.png")
    (job,) = plan_jobs(collect_inputs([str(a)]), BatchOptions(output=a))
    assert "overwrite the input" in job.error

    _img(tmp_path / "a" / "x.jpg")  # x.png and x.jpg both become out/x.png
    items = collect_inputs([str(tmp_path / "a")])
    jobs = plan_jobs(items, BatchOptions(output=tmp_path / "out", format="png"))
    # neither: the first sorted took it, and a rerun after a new clashing photo skipped
    # that one as done with the other's result (an audit)
    assert [j.output is not None and "writes the same output" in j.error for j in jobs] == [
        True, True]
    assert f"{tmp_path / 'a' / 'x.png'} writes the same output" in jobs[0].error

    # several folders: each one's results under its own name, so equal names never collide
    items = collect_inputs([str(tmp_path / "a"), str(tmp_path / "b")])
    jobs = plan_jobs(items, BatchOptions(output=tmp_path / "out"))
    assert [j.error for j in jobs] == [None, None, None]
    assert sorted(j.output.relative_to(tmp_path / "out").as_posix() for j in jobs) == [
        "a/x.jpg", "a/x.png", "b/x.png"]

    # a folder beside a file: the same (a/x.png used to collide with the file x.png)
    items = collect_inputs([str(tmp_path / "b" / "x.png"), str(tmp_path / "a")])
    jobs = plan_jobs(items, BatchOptions(output=tmp_path / "out"))
    assert [j.error for j in jobs] == [None, None, None]
    assert sorted(j.output.relative_to(tmp_path / "out").as_posix() for j in jobs) == [
        "a/x.jpg", "a/x.png", "x.png"]

    with pytest.raises(ValueError, match="is a file"):
        plan_jobs(items, BatchOptions(output=tmp_path / "one.png"))
    with pytest.raises(ValueError, match="unknown output format"):
        BatchOptions(format="gif")


def test_a_rerun_given_by_the_shell_resumes_instead_of_deraining_results(
    tmp_path: Path, derainer
) -> None:
    """`derain *.png` twice: the shell now also passes a_derained.png (found by an audit:
    it became a_derained_derained.png and a.png failed as "another input")."""
    a = _img(tmp_path / "a.png")
    run_batch(collect_inputs([str(a)]), derainer, BatchOptions())
    again = collect_inputs([str(a), str(tmp_path / "a_derained.png")])
    (job,) = plan_jobs(again, BatchOptions())
    assert job.item.path == a and job.error is None
    s = run_batch(again, derainer, BatchOptions())
    assert (s.processed, s.skipped, len(s.failed)) == (0, 1, 0)
    assert not (tmp_path / "a_derained_derained.png").exists()

    # the same with -o DIR and bash's ** (the earlier result comes from the marked folder)
    out = tmp_path / "out"
    run_batch(collect_inputs([str(a)]), derainer, BatchOptions(output=out))
    jobs = plan_jobs(collect_inputs([str(a), str(out / "a.png")]), BatchOptions(output=out))
    assert [(j.item.path, j.error) for j in jobs] == [(a, None)]

    # a result of another --format is an earlier result too (`derain *` after
    # `derain *.png --format jpg`)
    other = _img(tmp_path / "a_derained.jpg", seed=2)
    jobs = plan_jobs(collect_inputs([str(a), str(other)]), BatchOptions())
    assert [j.item.path for j in jobs] == [a]
    # ... while alone it is a photo like any other
    (job,) = plan_jobs(collect_inputs([str(other)]), BatchOptions())
    assert job.item.path == other and job.error is None
    # and into -o after a run beside the inputs: `derain *.png -o out/` following
    # `derain *.png` derained a_derained.png again into out/ (a README audit)
    into = BatchOptions(output=tmp_path / "o2")
    jobs = plan_jobs(collect_inputs([str(a), str(tmp_path / "a_derained.png")]), into)
    assert [j.item.path for j in jobs] == [a]
    (job,) = plan_jobs(collect_inputs([str(tmp_path / "a_derained.png")]), into)  # alone: kept
    assert job.error is None

    # but a user's own photo that another input would write over is kept, and refused
    theirs = _img(tmp_path / "mine" / "a.png", seed=1)
    jobs = plan_jobs(collect_inputs([str(a), str(theirs)]),
                     BatchOptions(output=tmp_path / "mine"))
    assert "another input" in jobs[0].error and "overwrite the input" in jobs[1].error


def test_a_pattern_skips_earlier_output_folders_and_empty_matched_folders(
    tmp_path: Path, derainer, caplog: pytest.LogCaptureFixture
) -> None:
    shots = tmp_path / "shots"
    _img(shots / "day1" / "a.png")
    _img(shots / "q.png")
    _img(shots / "s1" / "deep" / "p.png")  # s1 itself holds no photo
    pattern, out = str(tmp_path / "**" / "*.png"), tmp_path / "derained"
    first = collect_inputs([pattern], exclude=[out])
    s = run_batch(first, derainer, BatchOptions(output=out))
    assert s.processed == 3
    # the rerun (with or without -o naming the folder) does not take derained/ as input,
    # and says so once, not once per file in it
    for exclude in ([out], []):
        caplog.clear()
        with caplog.at_level("WARNING", logger="derain_cli"):
            again = collect_inputs([pattern], exclude=exclude)
        assert sorted(_rels(again)) == sorted(_rels(first))
        assert caplog.text.count("holds derain results") == (0 if exclude else 1), caplog.text
    s = run_batch(collect_inputs([pattern], exclude=[out]), derainer, BatchOptions(output=out))
    assert (s.processed, s.skipped, len(s.failed)) == (0, 3, 0)
    assert not (out / "derained").exists()
    # named on purpose, the output folder is an input again
    assert len(_rels(collect_inputs([str(out / "*" / "*" / "*.png")]))) == 1

    # a folder matched by a pattern with no photo directly in it is no failure; under **
    # its subfolders are matched themselves, so no "add -r" either
    with caplog.at_level("WARNING", logger="derain_cli"):
        items = collect_inputs([str(shots / "**")])
    assert [i.error for i in items if i.error] == []
    assert sorted(_rels(items)) == ["day1/a.png", "q.png", "s1/deep/p.png"]
    assert "not entered" not in caplog.text
    with caplog.at_level("WARNING", logger="derain_cli"):
        items = collect_inputs([str(shots / "*")])
    assert [i.error for i in items if i.error] == []
    assert "s1: 1 subfolder(s) not entered" in caplog.text


# --------------------------------------------------------------------------- running
class Recorder(BatchProgress):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def start(self, total: int) -> None:
        self.events.append(("start", total))

    def tile(self, done: int, total: int) -> None:
        self.events.append(("tile", done, total))

    def file_done(self, job, result: FileResult) -> None:
        self.events.append(("done", job.item.path.name, result.status))


@pytest.mark.parametrize("io_workers", [0, 2])
def test_run_batch_resume_overwrite_and_progress(tmp_path: Path, derainer, io_workers) -> None:
    for i in range(3):
        _img(tmp_path / f"p{i}.png", seed=i)
    items = collect_inputs([str(tmp_path)])
    rec = Recorder()
    s = run_batch(items, derainer, BatchOptions(io_workers=io_workers), rec)
    assert (s.processed, s.skipped, s.failed) == (3, 0, [])
    assert s.megapixels == pytest.approx(3 * 12 * 10 / 1e6)
    assert s.seconds > 0 and s.megapixels_per_s > 0
    assert rec.events[0] == ("start", 3)
    # one piece, all done: its 12x10 pixels mirrored out to 256 x 256 (tiling.pad_small)
    assert ("tile", 256 * 256, 256 * 256) in rec.events
    assert [e[1:] for e in rec.events if e[0] == "done"] == [
        ("p0.png", "processed"), ("p1.png", "processed"), ("p2.png", "processed")]

    again = collect_inputs([str(tmp_path)])  # outputs are not picked up as inputs
    assert len(again) == 3
    opts = BatchOptions()
    assert pending(plan_jobs(again, opts), opts) == 0
    s2 = run_batch(again, None, opts)  # nothing to do: no model needed
    assert (s2.processed, s2.skipped) == (0, 3)

    s3 = run_batch(again, derainer, BatchOptions(overwrite=True, io_workers=io_workers))
    assert (s3.processed, s3.skipped) == (3, 0)


@pytest.mark.parametrize("io_workers", [0, 2])
def test_a_full_disk_stops_the_network_for_the_photos_bound_there(
        tmp_path: Path, derainer, monkeypatch, io_workers) -> None:
    """With the disk full, every remaining photo was derained (minutes each on a CPU), then
    failed to write (an audit). Now the first failure says the disk's error and the photos
    for that disk fail without a network pass; a rerun with room does them."""
    import errno

    from derain_cli import images

    for i in range(4):
        _img(tmp_path / "in" / f"p{i}.png", seed=i)
    passes: list[int] = []
    real_pass = derainer.derain_array
    monkeypatch.setattr(derainer, "derain_array",
                        lambda *a, **kw: passes.append(1) or real_pass(*a, **kw))
    real_place = images._place_new

    def full(tmp, dest):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(images, "_place_new", full)
    items = collect_inputs([str(tmp_path / "in")])
    out = tmp_path / "out"
    s = run_batch(items, derainer, BatchOptions(output=out, io_workers=io_workers))
    assert s.processed == 0 and len(s.failed) == 4
    reasons = [dict(s.failed)[str(tmp_path / "in" / f"p{i}.png")] for i in range(4)]
    assert "No space left on device" in reasons[0]
    said = f"not derained: no space left on the disk of {out}"
    # the pipeline may have derained the next ones (io_workers) before p0's write failed
    assert all("No space left on device" in r or said in r for r in reasons[1:])
    assert all(said in r for r in reasons[1 + io_workers:])
    assert len(passes) <= 1 + io_workers
    assert not [p for p in out.rglob("*") if p.is_file() and p.name != ".derain-output"]
    monkeypatch.setattr(images, "_place_new", real_place)  # room again: the rerun does all
    s = run_batch(collect_inputs([str(tmp_path / "in")]), derainer,
                  BatchOptions(output=out, io_workers=io_workers))
    assert (s.processed, s.failed) == (4, [])


def test_a_full_disk_is_known_by_its_free_space_where_the_error_has_no_errno(
        tmp_path: Path, derainer, monkeypatch) -> None:
    """Where the JPEG encoder writes itself, a full disk is "broken data stream when writing
    image file", no errno (a review): the disk's free space tells."""
    import shutil
    from collections import namedtuple

    from derain_cli import images

    for i in range(3):
        _img(tmp_path / "in" / f"p{i}.png", seed=i)

    def broken(tmp, dest):
        raise OSError("broken data stream when writing image file")

    monkeypatch.setattr(images, "_place_new", broken)
    usage = namedtuple("usage", "total used free")
    room = {"free": 10**12}
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**12, 0, room["free"]))
    items = collect_inputs([str(tmp_path / "in")])
    s = run_batch(items, derainer, BatchOptions(output=tmp_path / "o1"))
    assert all("broken data stream" in r for _, r in s.failed)  # room: not a full disk
    room["free"] = 100  # less than a 12x10 photo's 360 bytes
    s = run_batch(items, derainer, BatchOptions(output=tmp_path / "o2"))
    assert [("broken data stream" in r, "not derained" in r) for _, r in s.failed] == [
        (True, False), (False, True), (False, True)]


@pytest.mark.parametrize("io_workers", [0, 2])
def test_a_result_another_run_wrote_meanwhile_is_not_derained_again(
        tmp_path: Path, derainer, monkeypatch, io_workers) -> None:
    """Two runs on one folder: the pipelined loop (GPU) looked for results once, at its
    start, so it derained every photo the other run had done since (an audit)."""
    for i in range(3):
        _img(tmp_path / "in" / f"p{i}.png", seed=i)
    out = tmp_path / "out"
    passes: list[int] = []
    real_pass = derainer.derain_array

    def other_run_writes_p2(*a, **kw):
        passes.append(1)
        (out / "p2.png").parent.mkdir(parents=True, exist_ok=True)
        (out / "p2.png").write_bytes(b"the other run's result")
        return real_pass(*a, **kw)

    monkeypatch.setattr(derainer, "derain_array", other_run_writes_p2)
    from derain_cli.batch import CLAIMED

    s = run_batch(collect_inputs([str(tmp_path / "in")]), derainer,  # started: None, as a
                  BatchOptions(output=out, io_workers=io_workers))  # library caller's (review)
    assert (s.processed, s.skipped, s.failed) == (2, 1, []) and len(passes) == 2
    assert (out / "p2.png").read_bytes() == b"the other run's result"
    # said as the other run's, not as an earlier result (an audit: "output exists")
    assert [f.reason for f in s.files if f.status == "skipped"] == [CLAIMED]


def test_an_unwritable_output_folder_fails_before_any_deraining(
        tmp_path: Path, monkeypatch) -> None:
    """Results beside photos in a read-only folder failed one by one after the network had
    run on each (a minute a 12 MP photo on a laptop CPU). They now fail while planning: no
    model is needed, and the reason names the folder."""
    ro = tmp_path / "card"
    for i in range(2):
        _img(ro / f"p{i}.jpg", seed=i)
    ro.chmod(0o555)
    if os.geteuid() == 0:  # root ignores permission bits: answer as for an ordinary user
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: (
            False if ro in (Path(p), *Path(p).parents) and mode & os.W_OK
            else real(p, mode, **kw)))
    try:
        items = collect_inputs([str(ro)])
        opts = BatchOptions()
        assert pending(plan_jobs(items, opts), opts) == 0
        s = run_batch(items, None, opts)  # would raise if a file needed the model
        assert s.processed == 0 and len(s.failed) == 2
        assert all(f"cannot write to {ro}: no write permission; write the results elsewhere "
                   "with -o DIR" in r for _, r in s.failed)
        # into a new folder below it: the nearest existing folder is the one named
        s = run_batch(items, None, BatchOptions(output=ro / "new" / "deeper"))
        assert all(r.endswith(f"cannot write to {ro / 'new' / 'deeper'}: {ro} has no write "
                              "permission") for _, r in s.failed)
        # and a writable -o elsewhere needs the model
        opts = BatchOptions(output=tmp_path / "out")
        assert pending(plan_jobs(items, opts), opts) == 2
    finally:
        ro.chmod(0o755)


def test_a_broken_link_at_the_output_path_fails_before_deraining(tmp_path: Path,
                                                                 derainer) -> None:
    """The photo was derained, then "skipped: output appeared meanwhile", nothing written,
    and every rerun did the work again (audit)."""
    src = _img(tmp_path / "in" / "p.jpg")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "p.jpg").symlink_to(tmp_path / "nowhere" / "zzz.jpg")
    items = collect_inputs([str(src)])
    opts = BatchOptions(output=tmp_path / "out")
    assert pending(plan_jobs(items, opts), opts) == 0
    s = run_batch(items, None, opts)  # would raise if the file needed the model
    (_, why), = s.failed
    assert "is a broken symbolic link; remove it, or --overwrite" in why
    s = run_batch(items, derainer, BatchOptions(output=tmp_path / "out", overwrite=True))
    assert s.processed == 1 and not (tmp_path / "out" / "p.jpg").is_symlink()


def test_an_empty_file_at_the_output_path_is_no_result(tmp_path: Path, derainer) -> None:
    """A zero-byte file there passed for a finished result on every rerun (an audit)."""
    src = _img(tmp_path / "in" / "p.jpg")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "p.jpg").touch()
    items = collect_inputs([str(src)])
    s = run_batch(items, None, BatchOptions(output=tmp_path / "out"))  # no model needed
    (_, why), = s.failed
    assert "exists but is empty; --overwrite replaces it" in why and s.skipped == 0
    s = run_batch(items, derainer, BatchOptions(output=tmp_path / "out", overwrite=True))
    assert s.processed == 1 and (tmp_path / "out" / "p.jpg").stat().st_size > 0


def test_a_folder_at_the_output_path_fails_without_the_model(tmp_path: Path) -> None:
    """A folder named as the result passed for a finished one, skipped, exit 0 (a mutation
    audit: no test held the check)."""
    src = _img(tmp_path / "in" / "p.jpg")
    (tmp_path / "out" / "p.jpg").mkdir(parents=True)
    items = collect_inputs([str(src)])
    for overwrite in (False, True):
        s = run_batch(items, None, BatchOptions(output=tmp_path / "out", overwrite=overwrite))
        (_, why), = s.failed
        assert why == f"the output {tmp_path / 'out' / 'p.jpg'} is a folder" and not s.skipped


def test_result_names_and_what_a_scan_leaves_out(tmp_path: Path) -> None:
    """Only names ending in _derained are earlier results (street_derained_v2.png is the
    user's photo); --format tiff and tif, jpeg and jpg name results alike, so a rerun with
    the other spelling finds them (mutation audit survivors)."""
    from derain_cli.batch import is_output_name

    _img(tmp_path / "in" / "street_derained_v2.png")
    _img(tmp_path / "in" / "street_derained.png")
    assert _rels(collect_inputs([str(tmp_path / "in")])) == ["street_derained_v2.png"]
    assert is_output_name("a_derained.jpg") and not is_output_name("a_derained_v2.jpg")
    item, = collect_inputs([str(tmp_path / "in" / "street_derained_v2.png")])
    for a, b in (("tiff", "tif"), ("jpeg", "jpg")):
        names = {plan_jobs([item], BatchOptions(output=tmp_path / "o", format=f))[0].output.name
                 for f in (a, b)}
        assert names == {f"street_derained_v2.{b}"}, names


@pytest.mark.parametrize("io_workers", [0, 2])
def test_bad_inputs_fail_one_by_one(tmp_path: Path, derainer, io_workers) -> None:
    good = _img(tmp_path / "good.png")
    trunc = tmp_path / "trunc.jpg"
    _img(tmp_path / "full.jpg", 64, 64)
    trunc.write_bytes((tmp_path / "full.jpg").read_bytes()[:300])
    (tmp_path / "full.jpg").unlink()
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello, I am not a PNG")
    big = _img(tmp_path / "big.png", 40, 30)

    items = collect_inputs([str(tmp_path), str(tmp_path / "missing.jpg")])
    s = run_batch(items, derainer, BatchOptions(max_pixels=1000, io_workers=io_workers))
    reasons = {Path(p).name: r for p, r in s.failed}
    assert s.processed == 1 and (tmp_path / "good_derained.png").exists()
    assert set(reasons) == {"trunc.jpg", "empty.png", "text.png", "big.png", "missing.jpg"}
    assert "truncated image: the file ends" in reasons["trunc.jpg"]
    assert "empty file" in reasons["empty.png"]
    assert "not an image" in reasons["text.png"]
    assert "max-pixels" in reasons["big.png"]
    assert reasons["missing.jpg"] == "no such file or folder"
    assert all("\n" not in r for r in reasons.values())
    # nothing partial: only the inputs and the one result, no temporary files
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["good.png", "good_derained.png", "trunc.jpg", "empty.png", "text.png", big.name])
    assert good.exists()


class SlowDerainer:
    """Stands in for a Derainer on a GPU: a fixed time per image, on whatever thread calls it
    (what the pipelined loop overlaps the decoding and encoding with)."""

    def __init__(self, seconds: float, device_name: str = "cuda:0",
                 interrupt_at: int | None = None) -> None:
        self.seconds, self.device_name, self.interrupt_at = seconds, device_name, interrupt_at
        self.calls: list[tuple[str, float, float]] = []

    def derain_array(self, rgb, on_tile=None):
        import threading
        import time

        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        t0 = time.perf_counter()
        time.sleep(self.seconds)
        self.calls.append((threading.current_thread().name, t0, time.perf_counter()))
        return 1.0 - rgb.astype(np.float32) / 255.0


def _timed_io(monkeypatch: pytest.MonkeyPatch,
              seconds: float) -> list[tuple[str, str, float, float]]:
    """Make reads and writes take ``seconds`` each and record (what, thread, start, end)."""
    import threading
    import time

    import derain_cli.batch as B

    log: list[tuple[str, str, float, float]] = []
    read, prepare = B.read_image, B.prepare_image

    def slow_read(path, **kw):
        t0 = time.perf_counter()
        time.sleep(seconds)
        out = read(path, **kw)
        log.append(("read", threading.current_thread().name, t0, time.perf_counter()))
        return out

    def slow_prepare(*a, **kw):
        t0 = time.perf_counter()
        time.sleep(seconds)
        out = prepare(*a, **kw)
        log.append(("write", threading.current_thread().name, t0, time.perf_counter()))
        return out

    monkeypatch.setattr(B, "read_image", slow_read)
    monkeypatch.setattr(B, "prepare_image", slow_prepare)
    return log


def test_gpu_batches_decode_and_encode_beside_the_network(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU (io_workers defaults to 2 there) the next photo is decoded and the last one
    encoded while the network runs: the batch takes about one network pass per photo, not
    read + pass + write; results, order and outputs are those of the serial loop."""
    n, step = 6, 0.15
    for i in range(n):
        _img(tmp_path / "in" / f"p{i}.png", seed=i)
    items = collect_inputs([str(tmp_path / "in")])
    io = _timed_io(monkeypatch, step)

    serial = SlowDerainer(step, device_name="cpu")  # io_workers default: 0 on the CPU
    rec0 = Recorder()
    s0 = run_batch(items, serial, BatchOptions(output=tmp_path / "serial"), rec0)
    assert {t for what, t, *_ in io} == {"MainThread"}

    io.clear()
    gpu = SlowDerainer(step)
    rec = Recorder()
    s = run_batch(items, gpu, BatchOptions(output=tmp_path / "piped"), rec)
    assert s.processed == s0.processed == n
    assert [e for e in rec.events if e[0] == "done"] == [
        e for e in rec0.events if e[0] == "done"]
    assert [r.input for r in s.files] == [r.input for r in s0.files]
    for i in range(n):
        a = np.asarray(Image.open(tmp_path / "serial" / f"p{i}.png"))
        b = np.asarray(Image.open(tmp_path / "piped" / f"p{i}.png"))
        np.testing.assert_array_equal(a, b)
    assert {t for t, *_ in gpu.calls} == {"MainThread"}
    io_threads = {t for what, t, *_ in io}
    assert io_threads and all(t.startswith("derain-io") for t in io_threads - {"MainThread"})
    # decoding of later photos happened while the network ran on earlier ones
    overlapped = sum(1 for what, _, r0, r1 in io if any(
        r0 < c1 and c0 < r1 for _, c0, c1 in gpu.calls))
    assert overlapped >= n
    # serial: about 3 steps a photo; pipelined: about 1 (plus the first read, last write)
    assert s.seconds < 0.7 * s0.seconds


def test_interrupted_pipeline_writes_what_was_derained(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during the fourth photo: the three derained ones are written whole (two may
    still be waiting for a writer then), nothing else is, and the interrupt goes on up."""
    for i in range(5):
        _img(tmp_path / f"p{i}.png", seed=i)
    items = collect_inputs([str(tmp_path)])
    _timed_io(monkeypatch, 0.05)
    with pytest.raises(KeyboardInterrupt) as stop:
        run_batch(items, SlowDerainer(0.05, interrupt_at=3), BatchOptions())
    done = sorted(p.name for p in tmp_path.iterdir() if "_derained" in p.name)
    assert done == ["p0_derained.png", "p1_derained.png", "p2_derained.png"]
    summary = stop.value.summary  # what was done, for --json
    assert summary.interrupted and summary.processed == 3 and summary.to_dict()["interrupted"]
    for name in done:  # whole images, and no temporary files left beside them
        assert np.asarray(Image.open(tmp_path / name)).shape == (10, 12, 3)
    assert len(list(tmp_path.iterdir())) == 5 + 3


def test_interrupted_plain_loop_reports_the_files_done(tmp_path: Path) -> None:
    for i in range(4):
        _img(tmp_path / f"p{i}.png", seed=i)
    items = collect_inputs([str(tmp_path)])
    with pytest.raises(BatchInterrupted) as stop:
        run_batch(items, SlowDerainer(0.0, device_name="cpu", interrupt_at=2), BatchOptions())
    summary = stop.value.summary
    assert summary.interrupted and summary.processed == 2
    assert [Path(f.input).name for f in summary.files] == ["p0.png", "p1.png"]


def test_huge_photos_are_not_decoded_ahead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import derain_cli.batch as B

    for i in range(3):
        _img(tmp_path / f"p{i}.png", seed=i)
    io = _timed_io(monkeypatch, 0.0)
    monkeypatch.setattr(B, "PREFETCH_MAX_MEGAPIXELS", 1e-5)  # 12x10 px is "huge" now
    s = run_batch(collect_inputs([str(tmp_path)]), SlowDerainer(0.0), BatchOptions())
    assert s.processed == 3
    assert [t for what, t, *_ in io if what == "read"] == ["MainThread"] * 3
    assert all(t.startswith("derain-io") for what, t, *_ in io if what == "write")


def test_summary_json_and_merge() -> None:
    a = Summary()
    a.add(FileResult("x.png", "x_derained.png", "processed", megapixels=1.5, rank=0,
                     seconds=5.118999979458749e-06))
    a.add(FileResult("y.png", None, "failed", "empty file (0 bytes)", rank=0))
    a.seconds = 2.0
    b = Summary(engine={"backend": "torch"})  # ranks run the same engine: one is kept
    b.add(FileResult("z.png", "z_derained.png", "skipped", "output exists", rank=1))
    b.seconds = 3.0
    m = Summary.merge([a, b])
    assert (m.processed, m.skipped, m.world_size, m.seconds) == (1, 1, 2, 3.0)
    assert m.failed == [("y.png", "empty file (0 bytes)")]
    d = json.loads(m.to_json())
    assert d["megapixels_per_s"] == pytest.approx(0.5)
    assert d["failed"] == [{"path": "y.png", "reason": "empty file (0 bytes)"}]
    assert [f["input"] for f in d["files"]] == ["x.png", "y.png", "z.png"]
    assert d["files"][0]["seconds"] == 0.0  # rounded as the totals (an audit)
    # rank 1's engine, and each rank's in rank order
    assert d["engine"] == {"backend": "torch", "ranks": [None, {"backend": "torch"}]}
    assert Summary().to_dict()["engine"] is None


def test_dist_info_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not DistInfo.from_env().enabled
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = DistInfo.from_env()
    assert (info.rank, info.world_size, info.local_rank, info.is_main) == (3, 4, 1, False)


def test_shard_takes_every_nth(tmp_path: Path, derainer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each rank processes items[rank::world]; gathering is stubbed (one process here)."""
    import derain_cli.batch as batch

    for i in range(5):
        _img(tmp_path / f"p{i}.png", seed=i)
    items = collect_inputs([str(tmp_path)])
    monkeypatch.setattr(batch, "gather_summaries", lambda s, info: [s])
    s = run_batch(items, derainer, BatchOptions(), dist=DistInfo(rank=1, world_size=2))
    assert sorted(Path(f.input).name for f in s.files) == ["p1.png", "p3.png"]
    assert all(f.rank == 1 for f in s.files)


def test_pending_megapixels_counts_headers_of_pending_work(tmp_path: Path) -> None:
    """What the CLI tells the engine choice: only files still to do, unreadable ones as 0."""
    _img(tmp_path / "a.png", w=1000, h=500)
    _img(tmp_path / "b.png", w=200, h=100)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    opts = BatchOptions()
    jobs = plan_jobs(collect_inputs([str(tmp_path)]), opts)
    assert pending_megapixels(jobs, opts) == pytest.approx(0.52)
    assert pending_megapixels(jobs, opts, enough=0.1) == pytest.approx(0.5)  # stops early
    _img(tmp_path / "a_derained.png", w=8, h=8)  # a's result exists: only b is pending
    assert pending_megapixels(jobs, opts) == pytest.approx(0.02)
    assert pending_megapixels(jobs, BatchOptions(overwrite=True)) == pytest.approx(0.52)
    mp, n = pending_workload(jobs, BatchOptions(overwrite=True))  # the broken one not counted
    assert (mp, n) == (pytest.approx(0.52), 2)
    # the whole job, done photos too (the CLI's engine choice: a rerun costs it as the
    # first run did); the broken one still not
    assert pending_workload(jobs, opts, done_too=True) == (pytest.approx(0.52), 2)


def test_pending_workload_reads_headers_past_pillows_bomb_limit(tmp_path: Path) -> None:
    """A 181 MP photo (over Pillow's decompression-bomb limit, under derain's --max-pixels)
    counts as 181 MP, not as unreadable: only its header is read."""
    import struct
    import zlib

    from PIL import Image

    small = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1)).save(small)
    data = bytearray(small.read_bytes())
    ihdr = struct.pack(">II", 15500, 11700) + bytes(data[24:29])  # 8-bit RGB, as saved
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    big = tmp_path / "big.png"
    big.write_bytes(bytes(data))
    assert 2 * Image.MAX_IMAGE_PIXELS < 15500 * 11700  # Pillow alone would refuse it
    opts = BatchOptions()
    jobs = plan_jobs(collect_inputs([str(big)]), opts)
    assert pending_workload(jobs, opts) == (pytest.approx(181.35), 1)


def test_links_to_folders_are_said_not_followed_not_counted_for_r(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A link to a folder was counted in "N subfolder(s) not entered; add -r", but -r never
    follows links, and said nothing of it (an audit)."""
    root = tmp_path / "photos"
    _img(root / "a.jpg")
    _img(tmp_path / "elsewhere" / "b.jpg")
    (root / "linked").symlink_to(tmp_path / "elsewhere")
    for recursive in (False, True):
        caplog.clear()
        with caplog.at_level("WARNING", logger="derain_cli"):
            assert _rels(collect_inputs([str(root)], recursive=recursive)) == ["a.jpg"]
        assert "1 link(s) to folders not followed" in caplog.text
        assert "add -r" not in caplog.text
    (root / "real").mkdir()
    caplog.clear()
    with caplog.at_level("WARNING", logger="derain_cli"):
        collect_inputs([str(root)])
    assert "1 subfolder(s) not entered; add -r" in caplog.text


def test_a_file_reached_by_a_link_first_keeps_its_own_place(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """other/xlink.jpg -> ../real/x.jpg sorted first, and x.jpg's only result went to the
    link's place (an audit); a link to a folder of the same tree is walked as itself, so it
    is not among the links "to name to include"."""
    root = tmp_path / "sl"
    _img(root / "real" / "x.jpg")
    _img(root / "other" / "y.jpg")
    (root / "other" / "xlink.jpg").symlink_to("../real/x.jpg")
    (root / "other" / "reallink").symlink_to("../real")
    with caplog.at_level("WARNING", logger="derain_cli"):
        items = collect_inputs([str(root)], recursive=True)
    assert sorted(_rels(items)) == ["other/y.jpg", "real/x.jpg"]
    assert "not followed" not in caplog.text
    assert _rels(collect_inputs([str(root / "other" / "xlink.jpg")])) == ["xlink.jpg"]
    # named through a link itself (~/Photos on a NAS): every path in it passed for one
    # reached through a link, and the link's place won again (a review)
    (tmp_path / "named").symlink_to(root)
    items = collect_inputs([str(tmp_path / "named")], recursive=True)
    assert sorted(_rels(items)) == ["other/y.jpg", "real/x.jpg"]
    # a folder a pattern matched through a link is a link's place too (a review): "other"'s
    # files and "real"'s, "alink" sorting first
    (root / "alink").symlink_to("real")
    items = collect_inputs([str(root / "*")], recursive=True)
    assert sorted(_rels(items)) == ["other/y.jpg", "real/x.jpg"]
    (root / "alink").unlink()
    # a link to a folder the scan does not enter (hidden) is still said (a review); a
    # link hidden itself is passed over, as the folders it stands beside
    _img(root / ".hidden" / "p.jpg")
    (root / "vis").symlink_to(".hidden")
    (root / ".cache").symlink_to(tmp_path / "named")
    caplog.clear()
    with caplog.at_level("WARNING", logger="derain_cli"):
        collect_inputs([str(root)], recursive=True)
    assert "1 link(s) to folders not followed" in caplog.text


def test_an_output_folder_of_ones_own_photos_in_the_tree_is_said(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`derain -r t4 -o t4/sub` left t4/sub's own photos out without a word (an audit)."""
    from derain_cli.batch import OUTPUT_MARKER

    _img(tmp_path / "a.jpg")
    _img(tmp_path / "sub" / "c.jpg")
    _img(tmp_path / "sub" / "deeper" / "d.jpg")
    with caplog.at_level("WARNING", logger="derain_cli"):
        items = collect_inputs([str(tmp_path)], recursive=True, exclude=[tmp_path / "sub"])
    assert _rels(items) == ["a.jpg"]
    assert "its 2 image(s) are left out (photos of yours, or results of an earlier run)" in (
        caplog.text)
    caplog.clear()
    _img(tmp_path / "sub" / "old" / "e.jpg")  # an earlier run's results folder in it: its
    (tmp_path / "sub" / "old" / OUTPUT_MARKER).touch()  # images are no photos of one's own
    with caplog.at_level("WARNING", logger="derain_cli"):
        collect_inputs([str(tmp_path)], recursive=True, exclude=[tmp_path / "sub"])
    assert "its 2 image(s) are left out" in caplog.text
    caplog.clear()
    (tmp_path / "sub" / OUTPUT_MARKER).touch()  # derain's own results folder: nothing to say
    with caplog.at_level("WARNING", logger="derain_cli"):
        collect_inputs([str(tmp_path)], recursive=True, exclude=[tmp_path / "sub"])
    assert "left out" not in caplog.text


def test_a_double_star_pattern_does_not_follow_folder_links(tmp_path: Path) -> None:
    """glob followed a link to a parent folder (results nested 40 levels deep) and never
    finished with two such links (audit); `-r` never followed them."""
    root = tmp_path / "loop"
    _img(root / "a.png")
    _img(root / "sub" / "b.png")
    (root / "sub" / "up").symlink_to("..")
    (root / "self").symlink_to(".")
    items = collect_inputs([str(root / "**" / "*.png")])
    assert sorted(_rels(items)) == ["a.png", "sub/b.png"]
    # the same matches as glob where there is no link to follow
    (root / "sub" / "up").unlink()
    (root / "self").unlink()
    import glob as globmod

    from derain_cli.batch import expand_pattern

    _img(root / "sub" / ".thumbs" / "t.png")
    _img(root / "sub" / "2024-05" / "x.png")
    _img(root / "sub" / "2024-note.png")
    for pattern in ("**/*.png", "**", "sub/**", "**/sub", "**/.thumbs/*.png", "**/.*/*.png",
                    "sub/**/2024*/", "**/"):  # named dot-folders, folders-only patterns
        full = str(root / pattern)
        assert sorted(expand_pattern(full)) == sorted(globmod.glob(full, recursive=True)), pattern


class _Sneaky:
    """A derainer during whose work another run writes the output (audit: replaced)."""

    def __init__(self, real, output: Path) -> None:
        self.real, self.output = real, output

    def derain_array(self, pixels, on_tile=None):
        self.output.write_bytes(b"written by another run")
        return self.real.derain_array(pixels, on_tile=on_tile)


@pytest.mark.parametrize("io_workers", [0, 2])
def test_a_result_that_appears_while_deraining_is_kept(tmp_path: Path, derainer,
                                                       io_workers) -> None:
    a = _img(tmp_path / "a.png")
    out = tmp_path / "a_derained.png"
    s = run_batch(collect_inputs([str(a)]), _Sneaky(derainer, out),
                  BatchOptions(io_workers=io_workers))
    assert (s.processed, s.skipped, len(s.failed)) == (0, 1, 0)
    assert out.read_bytes() == b"written by another run"
    assert "appeared meanwhile" in (s.files[0].reason or "")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    if not io_workers:  # the summary said "already exists (--overwrite redoes them)"
        import io

        from rich.console import Console

        from derain_cli.cli import _print_summary

        buf = io.StringIO()
        _print_summary(Console(file=buf, width=200), s, BatchOptions())
        said = " ".join(buf.getvalue().split())
        assert "skipped 1 file(s) whose result another run wrote while this one derained " \
            "them" in said and "--overwrite redoes them" not in said, said

    s = run_batch(collect_inputs([str(a)]), _Sneaky(derainer, out),
                  BatchOptions(io_workers=io_workers, overwrite=True))
    assert s.processed == 1 and Image.open(out).size == (12, 10)  # --overwrite: replaced


@pytest.mark.parametrize("io_workers", [0, 2])
def test_a_photo_another_run_is_deraining_is_left_to_it(tmp_path: Path, derainer,
                                                        io_workers) -> None:
    """Two runs over one folder each derained every photo, the slower throwing its results
    away (an audit): a photo whose result another run claimed is left to it while this run
    does the rest, then waited for; derained here if that run left it undone (stopped or
    killed: the survivor said "all done" with a photo missing, a review)."""
    import io
    import threading

    from rich.console import Console

    from derain_cli.batch import CLAIMED
    from derain_cli.cli import _print_summary
    from derain_cli.fileio import claim_file

    a, b = _img(tmp_path / "a.png"), _img(tmp_path / "b.png")
    out_a = tmp_path / "a_derained.png"
    calls: list[str] = []
    reached_b = threading.Event()  # a was put off: this run is at b

    class Counting:
        def __getattr__(self, name):
            return getattr(derainer, name)

        def derain_array(self, pixels, on_tile=None):
            calls.append("derain")
            reached_b.set()
            return derainer.derain_array(pixels, on_tile=on_tile)

    for other_finishes in (True, False):
        out_a.unlink(missing_ok=True)
        (tmp_path / "b_derained.png").unlink(missing_ok=True)
        calls.clear()
        other = claim_file(out_a)  # as another process's claim, on a's result
        assert other is not None

        reached_b.clear()

        def the_other_run(finishes: bool, let_go) -> None:
            reached_b.wait(60)  # (a sleep flaked where the run started late: a review)
            if finishes:
                out_a.write_bytes(b"the other run's result")
            let_go()  # done, or stopped without a result

        t = threading.Thread(target=the_other_run, args=(other_finishes, other))
        t.start()
        s = run_batch(collect_inputs([str(a), str(b)]), Counting(),
                      BatchOptions(io_workers=io_workers))
        t.join()
        if other_finishes:  # left to it: no network pass for a here
            assert (s.processed, s.skipped, len(calls)) == (1, 1, 1)
            assert out_a.read_bytes() == b"the other run's result"
            (skip,) = [f for f in s.files if f.status == "skipped"]
            assert skip.reason == CLAIMED
            buf = io.StringIO()
            _print_summary(Console(file=buf, width=200), s, BatchOptions())
            assert "skipped 1 file(s) another derain run took" in " ".join(
                buf.getvalue().split())
        else:  # the other run stopped: this one derains a too
            assert (s.processed, s.skipped, len(calls)) == (2, 0, 2)
            assert Image.open(out_a).size == (12, 10)
    release = claim_file(tmp_path / "b_derained.png")  # this run's claims let go
    assert release is not None
    release()

def test_a_killed_runs_temporary_file_is_swept_by_the_next_run(tmp_path: Path,
                                                              derainer) -> None:
    """kill -9 during a write left a hidden temporary file that no rerun removed (audit);
    a fresh one may belong to a run at work and stays."""
    a = _img(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    old, fresh = out / ".derain-dead1234.tmp", out / ".derain-busy5678.tmp"
    for f in (old, fresh):
        f.write_bytes(b"half a photo")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    s = run_batch(collect_inputs([str(a)]), derainer, BatchOptions(output=out))
    assert s.processed == 1 and not old.exists() and fresh.exists()


def test_what_a_shell_adds_from_an_earlier_run_into_o_is_left_out(tmp_path: Path) -> None:
    """bash's ** after `derain ** -o out/` passes out/a.png, out/s ... and `derain * -o
    res/der/` passes res (no photo of its own): both failed the rerun (audit)."""
    from derain_cli.batch import mark_output_folder, without_shell_leftovers

    _img(tmp_path / "a.png")
    _img(tmp_path / "s" / "c.png")
    out = tmp_path / "out"
    given = [str(tmp_path / n) for n in ("a.png", "out", "out/a.png", "out/s", "s")]
    assert without_shell_leftovers(given, out) == given  # no such folder yet
    out.mkdir()  # made empty by the user for the run: no photo to take from it
    assert without_shell_leftovers(given, out) == [g for g in given if g != str(out)]
    mine = tmp_path / "mine"  # the user's own folder, named as -o: never marked
    _img(mine / "s" / "c.png")
    mark_output_folder(mine)
    on_mine = [str(tmp_path / n) for n in ("a.png", "mine", "mine/s", "s")]
    assert without_shell_leftovers(on_mine, mine, recursive=True) == on_mine  # photos: kept
    # without -r it gives no photo (they are in mine/s): left out as an empty one is
    assert without_shell_leftovers(on_mine, mine) == [g for g in on_mine if g != str(mine)]
    mark_output_folder(out)  # an earlier run made it, then wrote into it
    _img(out / "s" / "c.png")
    assert without_shell_leftovers(given, out) == [given[0], given[4]]
    assert without_shell_leftovers([str(out)], out) == [str(out)]  # alone: refused later
    nested = tmp_path / "res" / "der"
    mark_output_folder(nested)
    res = [str(tmp_path / "a.png"), str(tmp_path / "res")]
    assert without_shell_leftovers(res, nested) == res[:1]
    assert without_shell_leftovers(res, nested, recursive=True) == res  # -r: its tree
    _img(tmp_path / "res" / "own.png")
    assert without_shell_leftovers(res, nested) == res  # a photo of its own: kept


def test_an_output_name_past_the_limit_fails_that_file_only(tmp_path: Path, derainer) -> None:
    """Its `out.is_dir()` raised 'File name too long' and stopped the whole batch (audit)."""
    ok = _img(tmp_path / "ok.png")
    long = _img(tmp_path / ("x" * 247 + ".png"))  # fits; NAME_derained.png does not
    s = run_batch(collect_inputs([str(ok), str(long)]), derainer, BatchOptions())
    assert s.processed == 1 and len(s.failed) == 1
    assert "cannot use the output name" in s.failed[0][1]
    assert s.failed[0][1].endswith("with -o DIR results keep their inputs' names (no "
                                   "_derained suffix)")  # a way out (an audit)
    s = run_batch(collect_inputs([str(long)]), derainer, BatchOptions(output=tmp_path / "o"))
    assert s.processed == 1  # and it is one


def test_photos_in_formats_not_read_are_named(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """HEIC, GIF or raw files in a folder are not passed over in silence; sidecars and
    other files are no photos and go unmentioned."""
    _img(tmp_path / "a.png")
    sub = tmp_path / "sub"
    sub.mkdir()
    for name in ("IMG_1.HEIC", "IMG_2.heic", "anim.gif", ".hidden.heic", "notes.txt",
                 "a.xmp", "sub/IMG_3.CR2"):
        (tmp_path / name).write_bytes(b"x")
    with caplog.at_level("WARNING", logger="derain_cli"):
        items = collect_inputs([tmp_path])
    assert [i.path.name for i in items] == ["a.png"] and items[0].error is None
    assert "2 HEIC and 1 GIF file(s) not read" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="derain_cli"):
        collect_inputs([tmp_path], recursive=True)  # the tree's raw file counts too
    assert "2 HEIC, 1 GIF and 1 camera raw file(s) not read" in caplog.text
    items = collect_inputs([sub])  # none readable: the error says why
    assert "no images found" in items[0].error
    assert "1 camera raw file(s) here are not read: convert them" in items[0].error


def test_a_photo_too_wide_for_webp_fails_before_the_model(tmp_path: Path) -> None:
    """WebP's 16383 px limit failed the encoder after the network had run (audit)."""
    src = tmp_path / "pano.png"
    Image.new("RGB", (16400, 4)).save(src)
    items = collect_inputs([str(src)])
    opts = BatchOptions(output=tmp_path / "out", format="webp")
    assert pending(plan_jobs(items, opts), opts) == 0
    s = run_batch(items, None, opts)  # would raise if the file needed the model
    (_, why), = s.failed
    assert "WebP holds at most 16383 px a side and this photo is 16400x4" in why
    assert pending(plan_jobs(items, BatchOptions(output=tmp_path / "out")), opts) == 1


def test_a_file_whose_suffix_lies_is_said_to_change_format(
        tmp_path: Path, derainer, caplog: pytest.LogCaptureFixture) -> None:
    """A 16-bit PNG named .jpg came out an 8-bit lossy JPEG without a word (audit)."""
    src = tmp_path / "lie.jpg"
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(src, format="PNG")
    with caplog.at_level("WARNING", logger="derain_cli"):
        s = run_batch(collect_inputs([str(src)]), derainer, BatchOptions())
    assert s.processed == 1
    assert ("lie.jpg is a PNG file named like a JPEG one: the result is written as JPEG, by "
            "its name (--format png keeps PNG)") in caplog.text


def test_system_folders_are_not_scanned(tmp_path: Path) -> None:
    _img(tmp_path / "a.jpg")
    _img(tmp_path / "@eaDir" / "a.jpg" / "SYNOPHOTO_THUMB_XL.jpg")
    # macOS Photos' library, a folder shown as one file (results were written in it: audit)
    _img(tmp_path / "Photos Library.photoslibrary" / "originals" / "A" / "x.jpg")
    _img(tmp_path / "sub" / "b.jpg")
    assert _rels(collect_inputs([str(tmp_path)], recursive=True)) == ["a.jpg", "sub/b.jpg"]
    assert _rels(collect_inputs([str(tmp_path / "**" / "*.jpg")])) == ["a.jpg", "sub/b.jpg"]


def test_a_webp_named_input_too_large_for_webp_fails_before_the_model(tmp_path: Path) -> None:
    src = tmp_path / "pano.webp"  # a PNG by content: the suffix said nothing of its size
    Image.new("RGB", (16400, 4)).save(src, format="PNG")
    items = collect_inputs([str(src)])
    opts = BatchOptions(output=tmp_path / "out")
    assert pending(plan_jobs(items, opts), opts) == 0


def test_outputs_one_file_where_case_is_ignored_are_a_collision(tmp_path: Path,
                                                                monkeypatch) -> None:
    """On macOS and Windows IMG_1.jpg + img_1.png --format png wrote one file twice: the
    second result replaced the first or was 'skipped' (review)."""
    from derain_cli import fileio

    a, b = _img(tmp_path / "IMG_1.jpg"), _img(tmp_path / "img_1.png")
    opts = BatchOptions(format="png")
    assert all(j.error is None for j in plan_jobs(collect_inputs([str(a), str(b)]), opts))
    monkeypatch.setattr(fileio, "_ignores_case", lambda folder: True)
    jobs = plan_jobs(collect_inputs([str(a), str(b)]), opts)
    assert all("writes the same output" in j.error for j in jobs)


def test_a_folder_is_derained_in_the_order_people_number_photos(tmp_path: Path) -> None:
    """p1, p2, p10 (and folders s2 before s10), not p1, p10, p2: an interrupted run's
    outputs looked out of order (audit); the listing of pairs and photos sorts so too."""
    for name in ("p10.png", "p2.png", "P1.png", "s10/a.png", "s2/a.png"):
        _img(tmp_path / "in" / name)
    flat = [i.rel.as_posix() for i in collect_inputs([str(tmp_path / "in")])]
    assert flat == ["P1.png", "p2.png", "p10.png"]
    deep = [i.rel.as_posix() for i in collect_inputs([str(tmp_path / "in")], recursive=True)]
    assert deep == ["P1.png", "p2.png", "p10.png", "s2/a.png", "s10/a.png"]
    matched = [i.path.name for i in collect_inputs([str(tmp_path / "in" / "*.png")])]
    assert matched == ["P1.png", "p2.png", "p10.png"]  # a quoted pattern's matches too


def test_what_a_scan_left_out_is_said_where_nothing_is_left(tmp_path: Path) -> None:
    """A folder of *_derained.* photos alone said "no images found"; a pattern matching GIFs
    alone, "no images match"; a link to itself was "broken" (an audit)."""
    _img(tmp_path / "r" / "storm_derained.png")
    _img(tmp_path / "r" / ".hidden.png")
    _img(tmp_path / "r" / "._storm.png")  # macOS's resource fork: no photo
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "a.gif").write_bytes(b"GIF89a" + bytes(20))
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "gone").symlink_to(tmp_path / "nothing")
    items = collect_inputs([str(tmp_path / "r"), str(tmp_path / "g" / "*.gif"),
                            str(tmp_path / "loop"), str(tmp_path / "gone")])
    why = [i.error for i in items]
    assert why[0].endswith("; 1 image(s) named *_derained.* here are left out as results "
                           "of an earlier run: name one to derain it; 1 hidden image(s) "
                           "(names starting with '.') are left out: name one to derain it")
    assert why[1] == ("no images match this pattern (1 GIF file(s) match it, which derain "
                      "does not read: convert them to JPEG, PNG or TIFF)")
    assert why[2:] == ["symbolic link loop (it leads back to itself)", "broken symbolic link"]


def test_unread_matches_of_a_pattern_beside_photos_are_counted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A quoted 'ext/*' matching a JPEG, a HEIC and a GIF derained the JPEG and passed the
    others over in silence, where a scan of ext/ counts them (an audit)."""
    _img(tmp_path / "ext" / "a.jpg")
    (tmp_path / "ext" / "b.heic").write_bytes(b"xx")
    (tmp_path / "ext" / "c.gif").write_bytes(b"GIF89a" + bytes(20))
    with caplog.at_level("WARNING", logger="derain_cli"):
        items = collect_inputs([str(tmp_path / "ext" / "*")])
    assert [i.path.name for i in items] == ["a.jpg"]
    assert (f"{tmp_path / 'ext' / '*'}: 1 HEIC and 1 GIF file(s) matching it not read "
            "(derain reads JPEG, PNG, WebP, TIFF, BMP): convert them") in caplog.text, caplog.text


def test_named_folders_of_one_name_get_their_own_subfolders(tmp_path: Path) -> None:
    """`derain card1/DCIM card2/DCIM -o out` wrote both into out/DCIM, where equal file
    names failed as clashes on every run (an audit): as many path parts as tell them apart."""
    for card in ("card1", "card2", "x/card1"):
        _img(tmp_path / card / "DCIM" / "IMG_1.jpg")
    _img(tmp_path / "other" / "a.jpg")
    got = _rels(collect_inputs([str(tmp_path / c / "DCIM") for c in ("card1", "card2")]
                               + [str(tmp_path / "other")]))
    assert got == ["card1/DCIM/IMG_1.jpg", "card2/DCIM/IMG_1.jpg", "other/a.jpg"]
    got = _rels(collect_inputs([str(tmp_path / "card1" / "DCIM"),
                                str(tmp_path / "x" / "card1" / "DCIM")]))
    assert got == [f"{tmp_path.name}/card1/DCIM/IMG_1.jpg", "x/card1/DCIM/IMG_1.jpg"]
    # the same folder twice is one folder, under its name
    assert _rels(collect_inputs([str(tmp_path / "other"), str(tmp_path / "other" / ".")])) \
        == ["other/a.jpg"]
    # two cards' DCIM on Windows drives: the drive letter tells them apart (a review)
    from pathlib import PureWindowsPath

    from derain_cli.batch import _named_parts

    assert _named_parts(PureWindowsPath(r"E:\DCIM")) == ("E", "DCIM")
    assert _named_parts(PureWindowsPath(r"\\nas\photos\DCIM")) == ("nas_photos", "DCIM")
    assert _named_parts(Path("/")) == ("root",)


def test_a_bracket_meant_literally_in_a_pattern_is_explained(tmp_path: Path) -> None:
    """'[2024] trip/*.jpg' with that folder there said only "no images match this pattern"
    ([2024] is a character class to glob): the pattern that matches is shown (an audit)."""
    _img(tmp_path / "[2024] trip" / "a.jpg")
    (item,) = collect_inputs([str(tmp_path / "[2024] trip" / "*.jpg")])
    literal = str(tmp_path / "[[]2024] trip" / "*.jpg")
    assert item.error is not None and item.error.endswith(
        f"; '[' in a pattern is a wildcard: '{literal}' matches a literal '[' (quoted, so "
        "the shell leaves it)")
    assert _rels(collect_inputs([literal])) == ["[2024] trip/a.jpg"]
    (item,) = collect_inputs([str(tmp_path / "[x]" / "*.jpg")])  # nothing either way
    assert item.error == "no images match this pattern"


def test_a_run_that_wrote_nothing_keeps_the_marker_another_run_writes_under(
        tmp_path: Path, derainer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs into one new -o: the first, stopped before its first result, took back the
    marker (and the folder) the second was writing under, whose results a later scan of a
    parent then took for photos (an audit). It is taken back only where no other run holds
    the folder; alone, as before."""
    import contextlib

    from derain_cli import batch
    from derain_cli.batch import OUTPUT_MARKER
    from derain_cli.fileio import hold_folders

    _img(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    other = contextlib.ExitStack()

    def stopped(job, *args, **kwargs):  # the other run starts, then this one is stopped
        other.enter_context(hold_folders([out], shared=True))
        raise KeyboardInterrupt

    monkeypatch.setattr(batch, "_process", stopped)
    with other, pytest.raises(KeyboardInterrupt):
        run_batch(collect_inputs([str(tmp_path / "in")]), derainer, BatchOptions(output=out))
    assert (out / OUTPUT_MARKER).is_file()
    (out / OUTPUT_MARKER).unlink()
    out.rmdir()
    monkeypatch.setattr(batch, "_process", lambda *a, **k: (_ for _ in ()).throw(
        KeyboardInterrupt))  # alone: taken back, as before
    with pytest.raises(KeyboardInterrupt):
        run_batch(collect_inputs([str(tmp_path / "in")]), derainer, BatchOptions(output=out))
    assert not out.exists()


def test_a_training_runs_folder_is_not_scanned_for_photos(tmp_path: Path, caplog) -> None:
    """`derain PARENT -r` derained a run folder's curves.png (training's photo readers
    already left run folders out: an audit)."""
    _img(tmp_path / "a.jpg")
    _img(tmp_path / "runs" / "ft" / "curves.png")
    (tmp_path / "runs" / "ft" / ".derain-run.lock").write_text("")
    with caplog.at_level("WARNING", logger="derain_cli"):
        assert _rels(collect_inputs([str(tmp_path)], recursive=True)) == ["a.jpg"]
    assert "ft: skipped, a training run's folder" in caplog.text
    # named itself (where --weights RUN/model.safetensors was meant): its chart was
    # derained into it in silence (an audit)
    run = tmp_path / "runs" / "ft"
    (run / "model.safetensors").write_bytes(b"x")
    [item] = collect_inputs(run)
    assert item.error == (f"a training run's folder, not photos (its model: --weights "
                          f"{run / 'model.safetensors'})")
    # matched by a pattern, it is skipped as a scan skips it (it was derained: a review)
    _img(tmp_path / "runs" / "b.jpg")
    assert _rels(collect_inputs([str(tmp_path / "runs" / "*")])) == ["b.jpg"]


@pytest.mark.parametrize("io_workers", [0, 2])
def test_overwrite_leaves_results_written_since_the_start_and_redoes_a_stopped_runs(
        tmp_path: Path, derainer, io_workers) -> None:
    """--overwrite: a result another run wrote since this run started (its model loading
    included) is that run's, left to it; an older one under another run's claim was not
    waited for, and stayed when that run stopped (a review)."""
    import threading

    from derain_cli.batch import CLAIMED
    from derain_cli.fileio import claim_file

    a, b = _img(tmp_path / "a.png"), _img(tmp_path / "b.png")
    out_a, out_b = tmp_path / "a_derained.png", tmp_path / "b_derained.png"
    hour_ago = time.time() - 3600
    for out in (out_a, out_b):
        out.write_bytes(b"old result")
        os.utime(out, (hour_ago, hour_ago))
    put_off: list[str] = []

    class Recording(BatchProgress):
        def file_left(self, job):
            put_off.append(job.item.path.name)

    other = claim_file(out_a)  # another run on a, stopped without a result
    assert other is not None
    threading.Timer(0.3, other).start()
    s = run_batch(collect_inputs([str(a), str(b)]), derainer,
                  BatchOptions(io_workers=io_workers, overwrite=True), Recording())
    assert (s.processed, s.skipped) == (2, 0) and put_off == ["a.png"]
    assert Image.open(out_a).size == (12, 10)  # redone, not the old result left
    out_a.write_bytes(b"another run's, written after this run started")
    os.utime(out_b, (hour_ago, hour_ago))  # b's: older than the start, replaced
    s = run_batch(collect_inputs([str(a), str(b)]), derainer,
                  BatchOptions(io_workers=io_workers, overwrite=True,
                               started=time.time() - 10))
    assert (s.processed, s.skipped) == (1, 1)
    assert [f.reason for f in s.files if f.status == "skipped"] == [CLAIMED]
    assert out_a.read_bytes() == b"another run's, written after this run started"


def test_a_photo_too_large_for_memory_is_not_told_to_shrink_the_tile(tmp_path: Path,
                                                                     derainer) -> None:
    """A host array that could not fit (the photo's float32 result) was said with "try a
    smaller --tile", which cannot help (an audit): the photo's arrays are named, with what
    can help."""
    class Short:
        def __getattr__(self, name):
            return getattr(derainer, name)

        def derain_array(self, pixels, on_tile=None):
            raise MemoryError("Unable to allocate 2.19 GiB for an array with shape "
                              "(14000, 14000, 3) and data type float32")

    s = run_batch(collect_inputs([str(_img(tmp_path / "a.png"))]), Short(),
                  BatchOptions(output=tmp_path / "o"))
    ((_, reason),) = s.failed
    assert reason.startswith("out of memory (Unable to allocate 2.19 GiB") and \
        "--max-pixels" in reason and "try a smaller --tile" not in reason, reason


def test_a_result_dated_in_the_future_is_not_another_runs(tmp_path: Path, derainer) -> None:
    """A result whose time is ahead of this clock (a server's clock ahead, a copy that kept
    its times) was called another run's: skipped as "another derain run took it", and
    --overwrite never replaced it (a review)."""
    import time

    from derain_cli.batch import CLAIMED

    src = _img(tmp_path / "a.png")
    out = tmp_path / "o"
    run_batch(collect_inputs([str(src)]), derainer, BatchOptions(output=out))
    ahead = time.time() + 3600
    os.utime(out / "a.png", (ahead, ahead))
    s = run_batch(collect_inputs([str(src)]), derainer,
                  BatchOptions(output=out, started=time.time()))
    assert [f.reason for f in s.files] == ["output exists"] and CLAIMED not in s.files[0].reason
    s = run_batch(collect_inputs([str(src)]), derainer,
                  BatchOptions(output=out, started=time.time(), overwrite=True))
    assert s.processed == 1 and (out / "a.png").stat().st_mtime < ahead - 60


@pytest.mark.parametrize("quality", [90.5, True, 0])
def test_a_quality_that_write_image_refuses_is_refused_up_front(quality: object) -> None:
    """90.5 passed BatchOptions and failed every photo after its work (a review)."""
    with pytest.raises(ValueError, match="quality must be a whole number 1..100"):
        BatchOptions(quality=quality)  # type: ignore[arg-type]


def test_run_batch_takes_the_jobs_its_caller_planned(tmp_path: Path) -> None:
    """The CLI plans the jobs to count the work before the model loads; run_batch planned
    them again (6 s more on a rerun over 20000 photos: an audit). Given, they are used."""
    from dataclasses import replace as with_error

    _img(tmp_path / "in" / "a.png")
    items = collect_inputs([str(tmp_path / "in")])
    opts = BatchOptions(output=tmp_path / "out")
    jobs = [with_error(j, error="as planned") for j in plan_jobs(items, opts)]
    s = run_batch(items, None, opts, jobs=jobs)
    assert s.failed == [(str(tmp_path / "in" / "a.png"), "as planned")]


def test_an_empty_file_fails_before_any_work(tmp_path: Path) -> None:
    """A folder of empty .jpg files loaded the model, then failed each (an audit at 10000
    files): an empty file is no work."""
    (tmp_path / "in").mkdir()
    for i in range(3):
        (tmp_path / "in" / f"e{i}.jpg").write_bytes(b"")
    items = collect_inputs([str(tmp_path / "in")])
    opts = BatchOptions(output=tmp_path / "out")
    assert pending(plan_jobs(items, opts), opts) == 0
    s = run_batch(items, None, opts)
    assert [r for _, r in s.failed] == ["empty file (0 bytes)"] * 3


def test_the_planners_resolver_resolves_as_resolved(tmp_path: Path, monkeypatch) -> None:
    """_Resolver (one folder resolved once, for a plan over thousands of photos) gives
    what _resolved gives, path by path, links and loops included."""
    from helpers import tricky_paths

    from derain_cli.batch import _resolved, _Resolver

    monkeypatch.chdir(tmp_path)
    resolved = _Resolver()
    for p in tricky_paths(tmp_path) * 2:  # the second time from what it keeps
        assert resolved(p) == _resolved(p), p


def test_upper_case_names_and_formats_are_taken_as_lower_case(tmp_path: Path) -> None:
    """`-o RESULT.JPG` is a file, not a folder to make; `BatchOptions(format="PNG")`
    the PNG format (a mutation audit: neither was pinned down)."""
    from derain_cli.batch import output_is_file

    assert output_is_file(tmp_path / "RESULT.JPG") and output_is_file(tmp_path / "x.Png")
    assert not output_is_file(tmp_path / "results")
    assert BatchOptions(output=tmp_path, format="PNG").format == "png"
    assert BatchOptions(output=tmp_path, format=".WebP").format == "webp"
