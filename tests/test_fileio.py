"""Tests for derain_cli.fileio: the atomic writer every non-photo file goes through."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import tricky_paths
from PIL import Image

from derain_cli.fileio import atomic_write, atomic_write_text, current_umask


def test_atomic_write_names_the_file_asked_for_when_it_fails(tmp_path: Path) -> None:
    """A folder in the way, or a write that fails, was said of the hidden temporary file
    (".derain-8csn_lmd.tmp": an audit); the temporary one is gone."""
    from derain_cli.fileio import atomic_write

    (tmp_path / "model.safetensors").mkdir()
    with pytest.raises(IsADirectoryError) as e:
        atomic_write(tmp_path / "model.safetensors", lambda tmp: Path(tmp).write_bytes(b"w"))
    assert e.value.filename == str(tmp_path / "model.safetensors") and ".derain-" not in str(
        e.value), e.value

    def fails(tmp: str) -> None:
        raise PermissionError(13, "Permission denied", tmp)

    with pytest.raises(PermissionError, match=r"Permission denied: '.*last\.pt'"):
        atomic_write(tmp_path / "last.pt", fails)
    assert not list(tmp_path.glob(".derain-*"))


def test_atomic_write_replaces_and_gives_normal_permissions(tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "run.json"  # the folder is made
    atomic_write_text(dest, "one")
    assert dest.read_text() == "one"
    assert dest.stat().st_mode & 0o777 == 0o666 & ~current_umask()  # not mkstemp's 0600
    dest.chmod(0o640)
    atomic_write(dest, lambda tmp: Path(tmp).write_text("two"), durable=True)
    assert dest.read_text() == "two" and dest.stat().st_mode & 0o777 == 0o640  # kept
    assert sorted(os.listdir(dest.parent)) == ["run.json"]


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path,
                                                             error: BaseException) -> None:
    dest = tmp_path / "last.pt"
    dest.write_text("the good checkpoint")

    def half_then_fail(tmp: str) -> None:
        Path(tmp).write_text("half a check")
        raise error

    with pytest.raises(type(error)):
        atomic_write(dest, half_then_fail, durable=True)
    assert dest.read_text() == "the good checkpoint"
    assert os.listdir(tmp_path) == ["last.pt"]


def test_same_name_key_follows_the_file_systems_case_rule(tmp_path: Path, monkeypatch) -> None:
    from derain_cli import fileio

    (tmp_path / "Photos").mkdir()
    a, b = tmp_path / "Photos" / "IMG_1.jpg", tmp_path / "photos" / "img_1.jpg"
    assert not fileio._ignores_case(str(tmp_path))  # this test machine: case-sensitive
    assert fileio.same_name_key(a) != fileio.same_name_key(b)
    assert fileio.same_name_key(tmp_path / "Photos" / ".." / "Photos" / "x") == \
        fileio.same_name_key(tmp_path / "Photos" / "x")
    monkeypatch.setattr(fileio, "_ignores_case", lambda folder: True)  # APFS, NTFS
    assert fileio.same_name_key(tmp_path / "Photos" / "IMG_1.jpg") == \
        fileio.same_name_key(tmp_path / "Photos" / "img_1.JPG")
    # and one Unicode form there (macOS): é composed and e + combining accent
    assert fileio.same_name_key(tmp_path / "Photos" / "caf\u00e9.jpg") == \
        fileio.same_name_key(tmp_path / "Photos" / "cafe\u0301.jpg")


def test_case_is_judged_by_names_inside_the_folder(tmp_path: Path) -> None:
    """The folder's own path with its case swapped was tried: a FAT stick mounted at
    /media/u/STICK on a case-sensitive root read as case-sensitive, since /MEDIA does not
    exist (an audit). A name inside it is tried now: here a hard link stands in for the
    swapped name a case-insensitive file system would answer to."""
    from derain_cli import fileio

    stick = tmp_path / "STICK"
    stick.mkdir()
    (stick / "IMG_1.jpg").write_bytes(b"x")
    assert not fileio._ignores_case(str(stick))
    fat = tmp_path / "FAT"
    fat.mkdir()
    (fat / "IMG_1.jpg").write_bytes(b"x")
    os.link(fat / "IMG_1.jpg", fat / "img_1.JPG")  # what FAT answers for the swapped name
    assert fileio._ignores_case(str(fat))
    assert fileio.same_name_key(fat / "Out.png") == fileio.same_name_key(fat / "out.PNG")
    assert fileio.same_name_key(stick / "Out.png") != fileio.same_name_key(stick / "out.PNG")


def test_only_old_derain_temporaries_are_swept(tmp_path: Path) -> None:
    """A killed run's leftover goes; a young one (a run at work), a user's own files and a
    folder that looks like a temporary stay; a missing folder is no error."""
    import time

    from derain_cli.fileio import STALE_TEMPORARY_S, sweep_stale_temporaries

    names = [".derain-dead.tmp", ".derain-busy.tmp", "mine.tmp", ".derain-old.txt"]
    for name in names:
        (tmp_path / name).write_text("x")
    (tmp_path / ".derain-dir.tmp").mkdir()
    old = time.time() - STALE_TEMPORARY_S - 60
    for name in (".derain-dead.tmp", "mine.tmp", ".derain-old.txt", ".derain-dir.tmp"):
        os.utime(tmp_path / name, (old, old))
    sweep_stale_temporaries([tmp_path, tmp_path / "missing"])
    assert sorted(os.listdir(tmp_path)) == sorted(set(names + [".derain-dir.tmp"])
                                                  - {".derain-dead.tmp"})


def _writer(data: bytes):
    return lambda tmp: Path(tmp).write_bytes(data)


def test_a_group_of_files_lands_whole_or_not_at_all(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A forward graph and its statistics graph: Ctrl-C (or a failed rename) among the
    renames put the new second file beside the old first (a review); what was replaced or
    removed is put back, and no temporary file stays."""
    from derain_cli import fileio

    a, b, stale = tmp_path / "m.onnx", tmp_path / "m.stats.onnx", tmp_path / "old.onnx"
    a.write_bytes(b"A0")
    b.write_bytes(b"B0")
    stale.write_bytes(b"S0")
    real, calls = os.replace, []

    def interrupted_at_the_first_file(src, dst):  # once: the new first file's rename
        if Path(dst) == a and not calls:
            calls.append(src)
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(fileio.os, "replace", interrupted_at_the_first_file)
    with pytest.raises(KeyboardInterrupt):
        fileio.atomic_write_group([(a, _writer(b"A1")), (b, _writer(b"B1"))], remove=[stale])
    assert (a.read_bytes(), b.read_bytes(), stale.read_bytes()) == (b"A0", b"B0", b"S0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.stats.onnx", "old.onnx"]
    monkeypatch.undo()
    fileio.atomic_write_group([(a, _writer(b"A1")), (b, _writer(b"B1"))], remove=[stale])
    assert (a.read_bytes(), b.read_bytes(), stale.exists()) == (b"A1", b"B1", False)
    # a folder in the first file's place: refused naming it, the second file as it was
    (tmp_path / "d.onnx").mkdir()
    with pytest.raises(IsADirectoryError, match="d.onnx is a folder"):
        fileio.atomic_write_group([(tmp_path / "d.onnx", _writer(b"x")), (b, _writer(b"B2"))])
    assert b.read_bytes() == b"B1" and not list(tmp_path.glob(".derain-*"))
    # where hard links are missing, the earlier file is moved aside instead (review)
    monkeypatch.delattr(fileio.os, "link")
    fileio.atomic_write_group([(a, _writer(b"A2")), (b, _writer(b"B2"))])
    assert (a.read_bytes(), b.read_bytes()) == (b"A2", b"B2")
    assert not list(tmp_path.glob(".derain-*"))


def test_a_read_only_file_system_is_said_as_such(tmp_path: Path, monkeypatch) -> None:
    """A read-only mount was "no write permission", which chmod cannot mend (an audit)."""
    from types import SimpleNamespace

    from derain_cli.fileio import why_unwritable

    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: (
        False if mode & os.W_OK else real(p, mode, **kw)))
    assert why_unwritable(tmp_path) == "no write permission"
    monkeypatch.setattr(os, "statvfs", lambda p: SimpleNamespace(f_flag=os.ST_RDONLY))
    assert why_unwritable(tmp_path) == "it is on a read-only file system"
    assert why_unwritable(tmp_path / "new") == f"{tmp_path} is on a read-only file system"


def test_a_link_to_nowhere_is_said_before_the_work(tmp_path: Path) -> None:
    """distill --out through a link to nowhere trained to the end, then failed "File
    exists", its training lost; train said a raw errno (an audit)."""
    from typer.testing import CliRunner

    from derain_cli.cli import app
    from derain_cli.fileio import why_unwritable

    (tmp_path / "gone").symlink_to(tmp_path / "nowhere" / "deeper")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    for link in ("gone", "loop"):
        for asked in (tmp_path / link, tmp_path / link / "run"):
            assert why_unwritable(asked) == (
                f"{tmp_path / link} is a link that leads nowhere (to "
                f"{os.readlink(tmp_path / link)}: a loop, or its target is gone); make its "
                "target, or name another folder"), asked
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 64)).save(photos / "a.png")
    r = CliRunner().invoke(app, ["train", "-m", "semi-drdnet-tiny", "--synthetic",
                                 str(photos), "--steps", "1", "--out", str(tmp_path / "gone")])
    assert r.exit_code == 2 and "is a link that leads nowhere" in r.output, r.output
    assert not (tmp_path / "nowhere").exists()
    r = CliRunner().invoke(app, ["train", "-m", "semi-drdnet-tiny", "--synthetic",
                                 str(photos), "--steps", "1", "--out", str(tmp_path / "loop")])
    assert r.exit_code == 2 and "is a link that leads nowhere" in r.output, r.output  # (a
    # RuntimeError "Symlink loop" from resolve(): a review)


def test_folders_are_held_exclusively_or_shared(tmp_path: Path) -> None:
    """hold_folders: exclusive holds exclude any other; shared ones each other's shared
    but not an exclusive; only_holder says whether anyone else holds it."""
    from derain_cli.fileio import FolderInUse, hold_folders, only_holder

    a = tmp_path / "a"
    a.mkdir()
    with hold_folders([a, tmp_path / "not-yet"]):  # a missing folder is not held
        with pytest.raises(FolderInUse, match=r"a is in use by another derain process"):
            with hold_folders([a]):
                pass
        assert not only_holder(a)
    assert only_holder(a)
    with hold_folders([a], shared=True) as (mine,), hold_folders([a], shared=True):
        with pytest.raises(FolderInUse):
            with hold_folders([a]):
                pass
        assert not only_holder(a, mine)  # the other shared holder is still there
    with hold_folders([a], shared=True) as (mine,):
        assert only_holder(a, mine)  # its own hold let go first


def test_files_are_held_by_their_full_names(tmp_path: Path) -> None:
    """hold_files: one name excludes itself (spelt another way too), not its neighbours,
    and leaves nothing beside the files."""
    from derain_cli.fileio import FolderInUse, hold_files

    (tmp_path / "d").mkdir()
    with hold_files([tmp_path / "d" / "a.csv"]):
        with pytest.raises(FolderInUse, match=r"a.csv is in use by another derain process"):
            with hold_files([tmp_path / "d" / ".." / "d" / "a.csv"]):
                pass
        with hold_files([tmp_path / "d" / "b.csv"]):
            pass
    with hold_files([tmp_path / "d" / "a.csv"]):  # let go at the end of the block
        pass
    assert list((tmp_path / "d").iterdir()) == []


def test_a_claim_on_a_lock_file_deleted_under_it_does_not_count(tmp_path: Path,
                                                               monkeypatch) -> None:
    """A holder deletes its lock file as it lets go: a run that had opened the file just
    before locked the deleted one, while a third locked a new one: two holders at once (a
    review). A claim counts only on the file still under the name."""
    import os

    from derain_cli import fileio

    target = tmp_path / "a.png"
    first = fileio.claim_file(target)
    assert first is not None
    lock = fileio._lock_file(fileio._full_name(target))
    stale = os.open(lock, os.O_RDWR)  # opened before the holder let go
    first()  # deleted and let go
    real_open = os.open
    opened: list[int] = []

    def open_stale_first(path, flags, mode=0o777):
        opened.append(1)
        return stale if len(opened) == 1 else real_open(path, flags, mode)

    monkeypatch.setattr(fileio.os, "open", open_stale_first)
    second = fileio.claim_file(target)  # locks the deleted file, sees it, opens anew
    monkeypatch.setattr(fileio.os, "open", real_open)
    assert second is not None and len(opened) == 2
    assert fileio.claim_file(target) is None  # the claim is on the file under the name
    second()
    third = fileio.claim_file(target)
    assert third is not None
    third()


def test_a_lock_folder_not_this_users_alone_is_not_used(tmp_path: Path, monkeypatch) -> None:
    """A derain-locks folder open to others (or another user's) could make every run skip
    every photo as claimed (a review): claims then always succeed, as without locks."""
    import tempfile

    from derain_cli import fileio

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    where = tmp_path / f"derain-locks-{os.getuid()}"
    where.mkdir(mode=0o777)
    where.chmod(0o777)
    assert fileio._lock_file(tmp_path / "x.png") is None
    first = fileio.claim_file(tmp_path / "x.png")
    assert first is not None and fileio.claim_file(tmp_path / "x.png") is not None
    where.chmod(0o700)
    assert fileio._lock_file(tmp_path / "x.png") is not None


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="Linux's /proc")
def test_a_claims_holder_is_named_and_found_stopped(tmp_path: Path) -> None:
    """A run waiting for a claim whose holder was stopped (Ctrl-Z) waited for ever without
    a word of whom (an audit): the holder's process, and whether it is stopped."""
    import signal
    import subprocess
    import sys
    import time

    from derain_cli import fileio

    target = tmp_path / "a.png"
    release = fileio.claim_file(target)
    assert release is not None
    assert fileio.claim_holder(target) == (os.getpid(), False)
    release()
    code = ("import sys, time\nfrom derain_cli import fileio\n"
            "assert fileio.claim_file(sys.argv[1]) is not None\nprint('held', flush=True)\n"
            "time.sleep(60)\n")
    other = subprocess.Popen([sys.executable, "-c", code, str(target)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "held"
        assert fileio.claim_file(target) is None
        assert fileio.claim_holder(target) == (other.pid, False)
        other.send_signal(signal.SIGSTOP)
        for _ in range(100):  # the stop lands at once, all but always
            if fileio.claim_holder(target) == (other.pid, True):
                break
            time.sleep(0.05)
        assert fileio.claim_holder(target) == (other.pid, True)
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize("case_blind", [False, True])
def test_name_keys_are_same_name_keys(tmp_path: Path, monkeypatch, case_blind: bool) -> None:
    """NameKeys (one folder resolved once, for a plan over thousands of photos) gives the
    key same_name_key gives, path by path, links and loops included."""
    from derain_cli import fileio

    monkeypatch.chdir(tmp_path)
    if case_blind:
        monkeypatch.setattr(fileio, "_ignores_case", lambda folder: True)  # APFS, NTFS
    paths = tricky_paths(tmp_path)
    keys = fileio.NameKeys()
    for p in paths * 2:  # the second time from what it keeps
        assert keys(p) == fileio.same_name_key(p), p


def test_folders_a_run_made_are_taken_back_innermost_first(tmp_path: Path) -> None:
    """`-o a/b/c` of a failed run left a/b behind when the outermost was tried first (a
    mutation audit); a folder holding a file stays."""
    from derain_cli.fileio import remove_empty_folders

    made = [tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"]
    made[-1].mkdir(parents=True)
    remove_empty_folders(made)
    assert not (tmp_path / "a").exists()
    made[-1].mkdir(parents=True)
    (made[1] / "keep.txt").write_text("x")
    remove_empty_folders(made)
    assert not made[-1].exists() and (made[1] / "keep.txt").exists()


def test_a_group_lands_its_first_file_last(tmp_path: Path, monkeypatch) -> None:
    """The file a reader opens (the first) is renamed into place after the others, so a
    reader never pairs a new first file with an old second one (a mutation audit)."""
    from derain_cli import fileio

    landed: list[str] = []
    replace = os.replace

    def spy(src, dst):
        landed.append(Path(dst).name)
        return replace(src, dst)

    monkeypatch.setattr(fileio.os, "replace", spy)
    fileio.atomic_write_group([(tmp_path / name, lambda t, n=name: Path(t).write_text(n))
                               for name in ("main.onnx", "stats.onnx", "third.onnx")])
    assert landed == ["third.onnx", "stats.onnx", "main.onnx"]
    assert (tmp_path / "main.onnx").read_text() == "main.onnx"


# --- what a mutation audit of fileio.py found unpinned

def test_a_failed_group_leaves_no_new_file_where_none_was(tmp_path, monkeypatch):
    """All or none: an interrupted first export left a new stats graph without its forward
    graph (the rollback removed only files that had an older version)."""
    from derain_cli import fileio

    a, b = tmp_path / "m.onnx", tmp_path / "m.stats.onnx"
    real = os.replace

    def fail_first(src, dst):
        if Path(dst) == a:
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(fileio.os, "replace", fail_first)
    with pytest.raises(KeyboardInterrupt):
        fileio.atomic_write_group([(a, lambda t: Path(t).write_bytes(b"A")),
                                   (b, lambda t: Path(t).write_bytes(b"B"))])
    assert list(tmp_path.iterdir()) == []


def test_missing_folders_lists_the_outermost_first(tmp_path):
    from derain_cli.fileio import missing_folders

    c = tmp_path / "a" / "b" / "c"
    assert missing_folders(c) == [tmp_path / "a", tmp_path / "a" / "b", c]


def test_terminal_text_keeps_line_breaks_and_escapes_controls():
    """Multi-line errors (pairs' unmatched files) were printed as one line with literal \\n."""
    from derain_cli.fileio import terminal_text

    assert terminal_text("a.png: bad\nb\x1b[2J.png: bad") == "a.png: bad\nb\\x1b[2J.png: bad"
