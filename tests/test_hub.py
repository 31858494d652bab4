"""derain_cli.hub against a local fake Hub (tests/hubserver.py): the real hf_hub_download path.

In-process tests pass ``endpoint=`` explicitly; the cases that depend on environment variables
huggingface_hub reads at import time (HF_ENDPOINT, HF_HUB_OFFLINE, HF_HUB_CACHE) run ``fetch``
in a fresh interpreter with those variables set.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest

from derain_cli.hub import WeightsUnavailable, fetch, sha256_file, snapshot_path

REPO = "derain/test-weights"
FILE = "semi_drdnet.safetensors"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
DATA = bytes(range(256)) * 64  # 16 KiB
SHA = hashlib.sha256(DATA).hexdigest()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _online(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process tests must not inherit HF_HUB_OFFLINE / a token from the developer's shell."""
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)


def _fetch(hub, cache: Path, revision: str = COMMIT, sha: str = SHA, **kw) -> Path:
    kw.setdefault("endpoint", hub if isinstance(hub, str) else hub.url)
    return fetch(REPO, FILE, revision, sha, cache_dir=cache, quiet=True, **kw)


def _files_in(cache: Path) -> list[Path]:
    """Regular files (and symlinks) in the cache, ignoring hf's bookkeeping."""
    skip = {".locks", ".no_exist", "refs"}
    return [
        p
        for p in cache.rglob("*")
        if (p.is_file() or p.is_symlink())
        and p.name != "CACHEDIR.TAG"
        and not skip & set(p.relative_to(cache).parts)
    ]


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# ------------------------------------------------------------------------- success / cache
def test_a_download_broken_half_way_is_said_as_such_and_leaves_nothing(hub_server, tmp_path,
                                                                        caplog):
    """The server answered, then the transfer broke: that was reported as "could not reach
    (no network, or the server is down)", and huggingface_hub's "Trying to resume
    download..." warnings came through -q (an audit)."""
    hub_server.add(REPO, COMMIT, FILE, DATA)
    hub_server.cut_bodies = True
    with caplog.at_level("WARNING"), pytest.raises(WeightsUnavailable) as e:
        _fetch(hub_server, tmp_path)
    assert e.value.kind == "network"
    assert "broke during the download" in str(e.value) and "could not reach" not in str(e.value)
    assert "when online" not in str(e.value) and "again (the server answered" in str(e.value)
    assert "resume" not in caplog.text.lower()
    assert not [p for p in _files_in(tmp_path) if p.name == FILE]
    hub_server.cut_bodies = False  # and the next try gets the file
    assert _fetch(hub_server, tmp_path).read_bytes() == DATA


def test_a_short_transfer_and_a_file_for_the_cache_folder_are_said_in_derains_words():
    """huggingface_hub's "Please retry with `force_download=True`" (its Python argument)
    came through with "update derain" first; HF_HOME naming a file said "[Errno 20] Not a
    directory: .../token", also "update derain" (an audit)."""
    import errno

    from derain_cli.hub import _Context, _explain

    ctx = _Context(REPO, FILE, COMMIT, SHA, None, "http://127.0.0.1:9", "m", None)
    short = OSError("Consistency check failed: file should be of size 16384 but has size 100 "
                    "(x.safetensors).\nThis is usually due to network issues while "
                    "downloading the file. Please retry with `force_download=True`.")
    kind, reason = _explain(short, ctx)
    assert kind == "network" and "force_download" not in reason
    assert "size 16384 but has size 100)" in reason and "faulty mirror" in reason
    said = str(ctx.unavailable(reason, kind))
    assert "run `derain download m` again" in said and "update derain" not in said
    ctx = _Context(REPO, FILE, COMMIT, SHA, None, "http://127.0.0.1:9", "m", None)
    kind, reason = _explain(NotADirectoryError(errno.ENOTDIR, "Not a directory", "/h/token"),
                            ctx)
    assert kind == "cache" and reason.startswith("/h/token: a file stands where")
    assert "update derain" not in str(ctx.unavailable(reason, kind))


def test_download_then_cache_hit_without_network(hub_server, tmp_path):
    hub_server.add(REPO, COMMIT, FILE, DATA)

    path = _fetch(hub_server, tmp_path)
    assert path.read_bytes() == DATA
    assert tmp_path in path.parents
    assert path == snapshot_path(REPO, FILE, COMMIT, cache_dir=tmp_path)
    assert len(hub_server.requests_for("GET", FILE)) == 1
    seen = len(hub_server.requests)

    again = _fetch(hub_server, tmp_path)
    assert again == path
    assert len(hub_server.requests) == seen  # no HEAD, no GET: pinned commit served from cache


def test_branch_revision_cached_file_matching_sha_needs_no_network(hub_server, tmp_path):
    commit = hub_server.add(REPO, "main", FILE, DATA)
    path = _fetch(hub_server, tmp_path, revision="main")
    assert path.read_bytes() == DATA
    assert path.parent.name == commit
    seen = len(hub_server.requests)

    assert _fetch(hub_server, tmp_path, revision="main") == path
    assert len(hub_server.requests) == seen


def test_a_copy_cached_before_the_branch_moved_is_still_found(hub_server, tmp_path):
    """The manifest names a branch ("main"); a download of another file after a push to it
    moved the cache's refs/main, and the verified copy cached earlier was no longer found:
    offline it was "not in the local cache", online a changed file on the Hub was refused
    with "checksum mismatch" (an audit). The sha256 is the pin: the earlier copy is used."""
    from derain_cli.hub import cached_copy

    first = hub_server.add(REPO, "main", FILE, DATA)
    path = _fetch(hub_server, tmp_path, revision="main")
    later = "b" * 40
    hub_server.add(REPO, later, FILE, DATA[::-1])  # the file changed on the Hub too
    hub_server.add(REPO, later, "other.safetensors", b"other")
    hub_server.move(REPO, "main", later)
    fetch(REPO, "other.safetensors", "main", hashlib.sha256(b"other").hexdigest(),
          cache_dir=tmp_path, quiet=True, endpoint=hub_server.url)
    assert (tmp_path / f"models--{REPO.replace('/', '--')}" / "refs" / "main").read_text() \
        == later
    seen = len(hub_server.requests)
    assert _fetch(hub_server, tmp_path, revision="main") == path and path.parent.name == first
    assert len(hub_server.requests) == seen  # no request: the cache had it
    assert cached_copy(REPO, FILE, "main", SHA, cache_dir=tmp_path) == path
    assert cached_copy(REPO, FILE, "main", "0" * 64, cache_dir=tmp_path) is None


def test_a_bad_copy_at_the_branch_beside_a_verified_earlier_one_is_removed_and_said(
        hub_server, tmp_path, caplog):
    """The branch moved and its new file (other bytes) was cached too: that copy is removed
    with a warning and the verified copy of the earlier commit used, with no request (a
    mutation audit: the bad copy could be left in silence, or the file downloaded again)."""
    import logging

    first = hub_server.add(REPO, "main", FILE, DATA)
    path = _fetch(hub_server, tmp_path, revision="main")
    later = "b" * 40
    hub_server.add(REPO, later, FILE, DATA[::-1])
    hub_server.add(REPO, later, "other.safetensors", b"other")
    hub_server.move(REPO, "main", later)
    bad = fetch(REPO, FILE, later, hashlib.sha256(DATA[::-1]).hexdigest(), cache_dir=tmp_path,
                quiet=True, endpoint=hub_server.url)  # cached at the later commit, and
    fetch(REPO, "other.safetensors", "main", hashlib.sha256(b"other").hexdigest(),
          cache_dir=tmp_path, quiet=True, endpoint=hub_server.url)  # the cache's main moved
    assert bad.parent.name == later and path.exists()
    seen = len(hub_server.requests)
    with caplog.at_level(logging.WARNING):
        got = _fetch(hub_server, tmp_path, revision="main")
    assert got == path and got.parent.name == first and got.read_bytes() == DATA
    assert len(hub_server.requests) == seen  # the cache had it
    assert not os.path.lexists(bad)
    assert "A cached copy with the wrong checksum was removed" in caplog.text
    assert "A verified copy from an earlier commit is used" in caplog.text


def test_a_forced_download_that_arrives_damaged_keeps_the_good_copy(hub_server, tmp_path):
    """`derain download --force` over a verified copy: the new download, damaged in
    transit, was written over the same blob and deleted with it, leaving nothing (an
    audit). The good copy stays, and the message says so."""
    hub_server.add(REPO, COMMIT, FILE, DATA)
    path = _fetch(hub_server, tmp_path)
    corrupt = bytearray(DATA)
    corrupt[1000] ^= 0xFF
    hub_server.add(REPO, COMMIT, FILE, bytes(corrupt), etag=SHA)
    with pytest.raises(WeightsUnavailable) as info:
        _fetch(hub_server, tmp_path, force=True)
    assert info.value.kind == "checksum" and "the verified copy cached before stays" in str(
        info.value)
    assert path.read_bytes() == DATA and path.is_symlink()
    seen = len(hub_server.requests)
    assert _fetch(hub_server, tmp_path) == path and len(hub_server.requests) == seen
    assert not [p for p in _files_in(tmp_path) if ".derain-kept" in p.name]
    hub_server.add(REPO, COMMIT, FILE, DATA)  # and a forced download that works replaces it
    assert _fetch(hub_server, tmp_path, force=True).read_bytes() == DATA


def test_a_forced_download_keeps_an_old_good_copy_and_sweeps_dead_runs_copies(
        hub_server, tmp_path):
    """The copy set aside is a hard link of the cached blob, and bears its age: the sweep of
    killed runs' leftovers (older than an hour) deleted this run's own, and a damaged
    forced download of a copy cached over an hour before left nothing while saying the
    copy stayed (an audit). Copies of processes that are gone are swept."""
    hub_server.add(REPO, COMMIT, FILE, DATA)
    path = _fetch(hub_server, tmp_path)
    blob = path.resolve()
    hours_ago = time.time() - 7200
    os.utime(blob, (hours_ago, hours_ago))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    from derain_cli import hub

    left = blob.with_name(f"{blob.name}.derain-kept-{hub._KEEPER}-{dead.pid}")  # a killed
    left.write_bytes(DATA)  # --force's ...
    older = blob.with_name(f"{blob.name}.derain-kept-{dead.pid}")  # (before names had hosts)
    older.write_bytes(DATA)
    theirs = blob.with_name(f"{blob.name}.derain-kept-other-host-{dead.pid}")  # ... and one
    theirs.write_bytes(DATA)  # of another machine sharing the cache: not ours to judge ...
    gone = blob.with_name(f"{blob.name}.derain-kept-old-container-{dead.pid}")  # ... but a
    gone.write_bytes(DATA)  # day old, a leftover (a container's: a review)
    two_days = time.time() - 2 * 86400
    os.utime(gone, (two_days, two_days))
    corrupt = bytearray(DATA)
    corrupt[1000] ^= 0xFF
    hub_server.add(REPO, COMMIT, FILE, bytes(corrupt), etag=SHA)
    with pytest.raises(WeightsUnavailable, match="the verified copy cached before stays"):
        _fetch(hub_server, tmp_path, force=True)
    assert path.read_bytes() == DATA
    assert not left.exists() and not older.exists() and theirs.exists()
    assert not gone.exists()


def test_a_killed_downloads_partial_file_is_swept_once_old(hub_server, tmp_path):
    """SIGKILL mid-download left blobs/<sha>.<random>.incomplete, a new one each time,
    never removed (an audit); one younger than an hour may be a download at work."""
    hub_server.add(REPO, COMMIT, FILE, DATA)
    blobs = tmp_path / f"models--{REPO.replace('/', '--')}" / "blobs"
    blobs.mkdir(parents=True)
    old, young = blobs / f"{SHA}.a1.incomplete", blobs / f"{SHA}.b2.incomplete"
    for p in (old, young):
        p.write_bytes(b"part")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    _fetch(hub_server, tmp_path)
    assert not old.exists() and young.exists()


def test_force_downloads_again(hub_server, tmp_path):
    hub_server.add(REPO, COMMIT, FILE, DATA)
    _fetch(hub_server, tmp_path)
    assert _fetch(hub_server, tmp_path, force=True).read_bytes() == DATA
    assert len(hub_server.requests_for("GET", FILE)) == 2


def test_corrupted_cache_entry_is_replaced(hub_server, tmp_path, caplog, monkeypatch):
    hub_server.add(REPO, COMMIT, FILE, DATA)
    path = _fetch(hub_server, tmp_path)
    blob = Path(os.path.realpath(path))
    blob.chmod(0o644)
    blob.write_bytes(b"\0" * len(DATA))  # bit rot in the cache

    with caplog.at_level("WARNING", logger="derain_cli"):
        again = _fetch(hub_server, tmp_path)
    assert again.read_bytes() == DATA
    assert len(hub_server.requests_for("GET", FILE)) == 2
    # repaired in silence before (the note was in error messages only; an audit)
    assert [r.getMessage() for r in caplog.records] == [
        f"A cached copy with the wrong checksum was removed from {path}. It was downloaded "
        "again."]
    # --force while offline: the cached copy is kept, and the message says it is there
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsUnavailable) as info:
        _fetch(hub_server, tmp_path, force=True)
    assert info.value.kind == "offline" and "--force asks for a fresh download; the " \
        "cached copy is kept" in str(info.value)
    assert "not in the local cache" not in str(info.value) and again.read_bytes() == DATA


def test_an_endpoint_that_is_no_hub_is_named(hub_server, tmp_path):
    """A plain 404 was "try again later", and HF_ENDPOINT=notaurl was blamed on the network
    with a double period (an audit)."""
    hub_server.add(REPO, COMMIT, FILE, DATA)
    hub_server.status_override = 404
    with pytest.raises(WeightsUnavailable) as info:
        _fetch(hub_server, tmp_path)
    assert info.value.kind == "endpoint" and "check HF_ENDPOINT" in str(info.value)
    assert "again later" not in str(info.value)
    with pytest.raises(WeightsUnavailable) as info:
        _fetch("notaurl", tmp_path)
    assert info.value.kind == "endpoint"
    assert "HF_ENDPOINT is 'notaurl', not an http:// or https:// address." in str(info.value)
    assert "check HF_ENDPOINT" in str(info.value) and ".." not in str(info.value)


def test_a_bad_cached_copy_that_cannot_be_removed_is_said_plainly(
    hub_server, tmp_path, monkeypatch
):
    """A read-only cache: the bad copy stays, and the Hub client would hand it back; the
    message used to say a 'downloaded file' 'was not kept' (audit)."""
    hub_server.add(REPO, COMMIT, FILE, DATA)
    path = _fetch(hub_server, tmp_path)
    blob = Path(os.path.realpath(path))
    blob.chmod(0o644)
    blob.write_bytes(b"\0" * len(DATA))
    real_unlink = Path.unlink

    def read_only(self, *args, **kwargs):
        if tmp_path in self.parents:
            raise OSError(30, "Read-only file system", str(self))
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(WeightsUnavailable) as info:
        _fetch(hub_server, tmp_path)
    msg = str(info.value)
    assert info.value.kind == "cache"
    assert "cannot be removed" in msg and "HF_HUB_CACHE" in msg and "not kept" not in msg
    assert len(hub_server.requests_for("GET", FILE)) == 1  # nothing downloaded in vain


def test_a_bad_cached_entry_linked_out_of_the_cache_deletes_nothing_there(hub_server, tmp_path):
    """Security audit: a shared cache where someone planted links. A snapshot entry linking
    to a file in some other folder named blobs/, and a snapshot folder that is a link to
    another folder: deleting the "bad cached copy" deleted the user's file there."""
    hub_server.add(REPO, COMMIT, FILE, DATA)
    cache = tmp_path / "cache"
    victim = tmp_path / "victim" / "blobs" / "notes.txt"
    victim.parent.mkdir(parents=True)
    victim.write_text("mine")
    entry = snapshot_path(REPO, FILE, COMMIT, cache_dir=cache)
    entry.parent.mkdir(parents=True)
    entry.symlink_to(victim)
    assert _fetch(hub_server, cache).read_bytes() == DATA  # the link went, not the file
    assert victim.read_text() == "mine"

    cache2, mine = tmp_path / "cache2", tmp_path / "my-weights"
    mine.mkdir()
    (mine / FILE).write_bytes(b"my own fine-tuned weights")
    snap = snapshot_path(REPO, FILE, COMMIT, cache_dir=cache2).parent
    snap.parent.mkdir(parents=True)
    snap.symlink_to(mine, target_is_directory=True)
    with pytest.raises(WeightsUnavailable) as info:
        _fetch(hub_server, cache2)
    assert info.value.kind == "cache" and "leads out of the cache" in str(info.value)
    assert (mine / FILE).read_bytes() == b"my own fine-tuned weights"
    assert len(hub_server.requests_for("GET", FILE)) == 1  # the first cache's download only


def test_a_server_announcing_another_size_is_refused_before_downloading(hub_server, tmp_path):
    """Security audit: a mirror serving a huge file under the right etag was downloaded
    whole before the checksum refused it; the manifest's size now stops it at the HEAD."""
    big = DATA * 64
    hub_server.add(REPO, COMMIT, FILE, big, etag=SHA)
    with pytest.raises(WeightsUnavailable) as info:
        _fetch(hub_server, tmp_path, size=len(DATA))
    assert info.value.kind == "checksum" and "size mismatch" in str(info.value)
    assert str(len(big)) in str(info.value)
    assert hub_server.requests_for("GET") == [] and _files_in(tmp_path) == []


def test_an_unwritable_cache_is_named_as_the_cause():
    import errno

    from derain_cli import hub

    ctx = hub._Context(REPO, FILE, COMMIT, SHA, Path("/ro/cache"), None, "m", None)
    kind, reason = hub._explain(OSError(errno.EROFS, "Read-only file system"), ctx)
    assert kind == "cache" and "/ro/cache cannot be written" in reason
    assert "make the cache writable" in str(ctx.unavailable(reason, kind))
    # a full disk was "update derain (its weights manifest may be out of date)" (an audit)
    kind, reason = hub._explain(OSError(errno.ENOSPC, "No space left on device"), ctx)
    assert kind == "space" and "no space left for the download" in reason
    said = str(ctx.unavailable(reason, kind))
    assert "free some space there" in said and "update derain" not in said


def test_downloads_hide_the_hubs_python_warnings_and_retry_lines(recwarn, capsys):
    """huggingface_hub's "Not enough free disk space" UserWarning came with its source file
    and line, and its "Trying to resume download..." lines six times over (an audit);
    derain's own error says what went wrong. Off a terminal one line says what is being
    downloaded (a slow server and a stalled one were silent alike), and the download is
    read in pieces a bar can follow."""
    import logging
    import warnings

    from huggingface_hub import constants

    from derain_cli import hub

    ctx = hub._Context(REPO, FILE, COMMIT, SHA, None, "http://127.0.0.1:9", "m", None)
    ctx.size = 4_580_000
    for enabled in (False, True):
        with hub._progress_bars(enabled=enabled, ctx=ctx):
            warnings.warn_explicit("Not enough free disk space", UserWarning,
                                   "file_download.py", 1, module="huggingface_hub.file_download")
            logging.getLogger("huggingface_hub.file_download").warning("Trying to resume")
            assert constants.DOWNLOAD_CHUNK_SIZE == hub.DOWNLOAD_PIECE
    assert [str(w.message) for w in recwarn] == []
    assert constants.DOWNLOAD_CHUNK_SIZE == 10 * 1024 * 1024
    err = capsys.readouterr().err
    assert err == f"downloading {FILE} (4.6 MB) from http://127.0.0.1:9\n", err


def test_a_server_announcing_a_smaller_size_is_refused_before_downloading(hub_server,
                                                                         tmp_path):
    """Smaller as well as larger (a mutation audit: only larger was checked): refused at the
    HEAD as a size mismatch, not downloaded and then refused by the checksum."""
    hub_server.add(REPO, COMMIT, FILE, DATA[:100], etag=SHA)
    with pytest.raises(WeightsUnavailable) as info:
        _fetch(hub_server, tmp_path, size=len(DATA))
    assert info.value.kind == "checksum" and "size mismatch" in str(info.value)
    assert hub_server.requests_for("GET") == [] and _files_in(tmp_path) == []


def test_a_refused_access_is_said_as_such_for_403_as_for_401(hub_server, tmp_path):
    hub_server.add(REPO, COMMIT, FILE, DATA)
    hub_server.status_override = 403
    with pytest.raises(WeightsUnavailable) as info:
        _fetch(hub_server, tmp_path)
    assert info.value.kind == "access" and "refused access (HTTP 403)" in str(info.value)
    assert len(hub_server.requests_for("HEAD", FILE)) == 1  # not tried again


def test_a_local_entry_missing_while_online_is_no_offline_mode(tmp_path):
    """The Hub client raises LocalEntryNotFoundError when the server stops answering between
    derain's check and the download; online, that is not "offline mode is on"."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    from derain_cli.hub import _Context, _explain

    ctx = _Context(REPO, FILE, COMMIT, SHA, tmp_path, "http://127.0.0.1:9", None, None)
    kind, why = _explain(LocalEntryNotFoundError(
        "An error happened while trying to locate the file on the Hub"), ctx)
    assert kind != "offline" and "HF_HUB_OFFLINE" not in why


def test_hand_placed_file_is_used_without_network(tmp_path):
    target = snapshot_path(REPO, FILE, COMMIT, cache_dir=tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(DATA)
    assert _fetch(_closed_port_url(), tmp_path) == target


# ------------------------------------------------------------------------------- checksum
def test_checksum_mismatch_advertised_by_hub_downloads_nothing(hub_server, tmp_path):
    hub_server.add(REPO, COMMIT, FILE, DATA[::-1])  # different content, honest etag

    with pytest.raises(WeightsUnavailable) as info:
        _fetch(hub_server, tmp_path)
    assert info.value.kind == "checksum"
    assert "checksum mismatch" in str(info.value)
    assert SHA in str(info.value)
    assert hub_server.requests_for("GET") == []
    assert _files_in(tmp_path) == []


def test_checksum_mismatch_after_download_file_not_kept(hub_server, tmp_path):
    corrupt = bytearray(DATA)
    corrupt[1000] ^= 0xFF
    # The server advertises the expected sha256 but serves different bytes (same size).
    hub_server.add(REPO, COMMIT, FILE, bytes(corrupt), etag=SHA)

    with pytest.raises(WeightsUnavailable) as info:
        _fetch(hub_server, tmp_path)
    msg = str(info.value)
    assert info.value.kind == "checksum"
    assert "checksum mismatch" in msg and "not kept" in msg
    assert "stays" not in msg  # no verified copy was cached before: none is said to stay
    assert len(hub_server.requests_for("GET", FILE)) == 1
    assert not os.path.lexists(snapshot_path(REPO, FILE, COMMIT, cache_dir=tmp_path))
    assert _files_in(tmp_path) == []  # snapshot entry and blob both gone


# ---------------------------------------------------------------------------------- errors
def test_unknown_file_is_not_found(hub_server, tmp_path):
    hub_server.add(REPO, COMMIT, "other.safetensors", DATA)
    with pytest.raises(WeightsUnavailable) as info:
        _fetch(hub_server, tmp_path)
    assert info.value.kind == "not_found"
    assert f"{FILE!r} does not exist in {REPO}" in str(info.value)


def test_unknown_revision_is_not_found(hub_server, tmp_path):
    hub_server.add(REPO, "main", FILE, DATA)
    with pytest.raises(WeightsUnavailable) as info:
        _fetch(hub_server, tmp_path, revision="v9")
    assert info.value.kind == "not_found"
    assert "revision 'v9' does not exist" in str(info.value)


def test_unknown_repo_is_not_found(hub_server, tmp_path):
    with pytest.raises(WeightsUnavailable) as info:
        _fetch(hub_server, tmp_path)
    assert info.value.kind == "not_found"
    assert f"repository {REPO} was not found" in str(info.value)
    # from a mirror: the mirror's fault, not derain's manifest (an audit)
    assert "check that the mirror at HF_ENDPOINT holds" in str(info.value)
    assert "update derain" not in str(info.value)


def test_server_error_fails_fast(hub_server, tmp_path):
    """A server that keeps answering 503 is tried three times (about 3 s), no more."""
    hub_server.add(REPO, COMMIT, FILE, DATA)
    hub_server.status_override = 503
    start = time.monotonic()
    with pytest.raises(WeightsUnavailable) as info:
        _fetch(hub_server, tmp_path)
    assert time.monotonic() - start < 5
    assert info.value.kind == "http"
    assert "HTTP 503, 3 tries" in str(info.value)
    assert len(hub_server.requests_for("HEAD", FILE)) == 3
    assert not hub_server.requests_for("GET", FILE)


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_a_busy_server_is_tried_again(hub_server, tmp_path, status):
    """One 429 (the Hub's rate limit) or 5xx ended the download at once; the probe now
    waits a second and asks again (its Retry-After where it gives one)."""
    hub_server.add(REPO, COMMIT, FILE, DATA)
    hub_server.status_override, hub_server.override_count = status, 2
    hub_server.override_headers = {"Retry-After": "0"} if status == 429 else {}
    start = time.monotonic()
    path = _fetch(hub_server, tmp_path)
    assert path.read_bytes() == DATA
    assert len(hub_server.requests_for("HEAD", FILE)) >= 3  # two refused, then served
    assert time.monotonic() - start < (1 if status == 429 else 5)  # Retry-After: 0 waited


def test_a_long_retry_after_is_not_waited_for(hub_server, tmp_path):
    hub_server.add(REPO, COMMIT, FILE, DATA)
    hub_server.status_override = 429
    hub_server.override_headers = {"Retry-After": "3600"}
    start = time.monotonic()
    with pytest.raises(WeightsUnavailable, match=r"HTTP 429\); try again later"):
        _fetch(hub_server, tmp_path)  # one try, said as one (review: "3 tries")
    assert time.monotonic() - start < 1
    assert len(hub_server.requests_for("HEAD", FILE)) == 1


def test_a_retry_after_that_is_no_number_waits_the_default(hub_server, tmp_path):
    """Retry-After: nan made time.sleep raise a bare ValueError out of fetch (review)."""
    hub_server.add(REPO, COMMIT, FILE, DATA)
    hub_server.status_override, hub_server.override_count = 503, 1
    hub_server.override_headers = {"Retry-After": "nan"}
    assert _fetch(hub_server, tmp_path).read_bytes() == DATA


def test_a_negative_retry_after_is_tried_again_at_once(hub_server, tmp_path):
    """Retry-After: -1 reached time.sleep, a bare ValueError out of fetch (a mutation
    audit: only 0, 3600 and nan were tried)."""
    hub_server.add(REPO, COMMIT, FILE, DATA)
    hub_server.status_override, hub_server.override_count = 503, 1
    hub_server.override_headers = {"Retry-After": "-1"}
    start = time.monotonic()
    assert _fetch(hub_server, tmp_path).read_bytes() == DATA
    assert time.monotonic() - start < 5


def test_an_upper_case_sha256_is_the_same_pin(hub_server, tmp_path):
    """A manifest's sha256 in capitals (as PowerShell's Get-FileHash prints it) pins the
    same file (a mutation audit)."""
    hub_server.add(REPO, COMMIT, FILE, DATA)
    assert _fetch(hub_server, tmp_path, sha=f" {SHA.upper()} ").read_bytes() == DATA


def test_not_found_is_not_tried_again(hub_server, tmp_path):
    hub_server.add(REPO, COMMIT, FILE, DATA)
    with pytest.raises(WeightsUnavailable):
        fetch(REPO, "missing.safetensors", COMMIT, SHA, cache_dir=tmp_path, quiet=True,
              endpoint=hub_server.url)
    assert len(hub_server.requests_for("HEAD", "missing.safetensors")) == 1


def test_server_down_is_a_network_error(tmp_path):
    start = time.monotonic()
    with pytest.raises(WeightsUnavailable) as info:
        _fetch(_closed_port_url(), tmp_path)
    assert time.monotonic() - start < 5  # no 25 s of back-off retries
    msg = str(info.value)
    assert info.value.kind == "network"
    assert "could not reach" in msg
    # The message says what to do.
    assert "derain download" in msg and "--weights FILE" in msg
    assert str(snapshot_path(REPO, FILE, COMMIT, cache_dir=tmp_path)) in msg and SHA in msg


def test_error_message_uses_model_name(tmp_path):
    with pytest.raises(WeightsUnavailable, match="derain download semi-drdnet"):
        _fetch(_closed_port_url(), tmp_path, name="semi-drdnet")


def test_error_message_points_at_callers_manual_path(tmp_path):
    manual = tmp_path / "weights" / "semi_drdnet.safetensors"
    with pytest.raises(WeightsUnavailable) as info:
        _fetch(_closed_port_url(), tmp_path, manual_path=manual)
    assert f"place the file by hand at {manual} (sha256 {SHA})" in str(info.value)


def test_unpublished_repository_says_so_and_points_at_the_package(tmp_path):
    manual = tmp_path / "weights" / "semi_drdnet.safetensors"
    with pytest.raises(WeightsUnavailable) as info:
        _fetch(_closed_port_url(), tmp_path, manual_path=manual, published=False)
    msg = str(info.value)
    assert "not published on the Hub yet" in msg and "HF_ENDPOINT" in msg
    assert "reinstall derain, whose package ships semi_drdnet.safetensors" in msg
    assert "when online" not in msg  # downloading again cannot help
    assert f"place the file by hand at {manual}" in msg


def test_invalid_expected_sha_is_a_bug(tmp_path):
    with pytest.raises(ValueError):
        fetch(REPO, FILE, COMMIT, "abc", cache_dir=tmp_path)


def test_sha256_file_streams(tmp_path):
    big = os.urandom(3 * (1 << 20) + 17)
    p = tmp_path / "f.bin"
    p.write_bytes(big)
    assert sha256_file(p) == hashlib.sha256(big).hexdigest()


# ----------------------------------------------- environment variables (fresh interpreter)
_SCRIPT = """
import json, sys
from derain_cli.hub import WeightsUnavailable, fetch
try:
    path = fetch(*sys.argv[1:5], quiet=True)
except WeightsUnavailable as exc:
    print(json.dumps({"error": str(exc), "kind": exc.kind}))
else:
    print(json.dumps({"path": str(path)}))
"""


def _fetch_in_subprocess(tmp_path: Path, revision: str = COMMIT, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    clean.pop("TRANSFORMERS_OFFLINE", None)
    clean.update(
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_CACHE=str(tmp_path / "cache"),
        HF_HUB_DISABLE_TELEMETRY="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        **env,
    )
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, REPO, FILE, revision, SHA],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_hf_endpoint_env_then_offline_with_cached_file(hub_server, tmp_path):
    hub_server.add(REPO, COMMIT, FILE, DATA)

    out = _fetch_in_subprocess(tmp_path, HF_ENDPOINT=hub_server.url)
    assert "path" in out, out
    path = Path(out["path"])
    assert path.read_bytes() == DATA
    assert (tmp_path / "cache") in path.parents
    assert len(hub_server.requests_for("GET", FILE)) == 1
    seen = len(hub_server.requests)

    out = _fetch_in_subprocess(tmp_path, HF_ENDPOINT=hub_server.url, HF_HUB_OFFLINE="1")
    assert out == {"path": str(path)}
    assert len(hub_server.requests) == seen


def test_offline_with_empty_cache(hub_server, tmp_path):
    hub_server.add(REPO, COMMIT, FILE, DATA)
    out = _fetch_in_subprocess(tmp_path, HF_ENDPOINT=hub_server.url, HF_HUB_OFFLINE="1")
    assert out.get("kind") == "offline", out
    msg = out["error"]
    assert "offline" in msg and "HF_HUB_OFFLINE" in msg
    assert "derain download" in msg and "--weights FILE" in msg
    assert str(tmp_path / "cache") in msg and SHA in msg
    # the cache it looked in, named in the reason itself (the CLI passes no cache_dir)
    assert f"not in the local cache ({tmp_path / 'cache'})" in msg
    assert hub_server.requests == []


def test_an_unpublished_bundled_file_keeps_the_advice_of_its_failure():
    """For a bundled file gone missing, "reinstall derain" came first and replaced the
    advice for the failure itself (a read-only cache: make it writable); both are given."""
    from derain_cli.hub import _Context

    ctx = _Context(REPO, FILE, COMMIT, SHA, None, "http://127.0.0.1:9", "tiny",
                   Path("/pkg/weights") / FILE)
    ctx.published = False
    msg = str(ctx.unavailable("the cache cannot be written", "cache"))
    assert "  - reinstall derain, whose package ships" in msg
    assert "  - or make the cache writable (or set HF_HUB_CACHE)" in msg
    msg = str(ctx.unavailable("could not reach it", "network"))  # no Hub to retry from
    assert "reinstall derain" in msg and "when online" not in msg


def test_a_plain_file_server_as_the_endpoint_is_named_not_retried(tmp_path):
    """A static file server (`python -m http.server`) as HF_ENDPOINT serves the file but no
    Hub headers: it was "the connection broke during the download; run the command again",
    which can never work (an audit). The endpoint is named, with what to check."""
    import functools
    import http.server
    import threading

    www = tmp_path / "www" / REPO / "resolve" / COMMIT
    www.mkdir(parents=True)
    (www / FILE).write_bytes(DATA)
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path / "www"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(WeightsUnavailable) as info:
            _fetch(f"http://127.0.0.1:{server.server_address[1]}", tmp_path / "cache")
    finally:
        server.shutdown()
        server.server_close()
    assert info.value.kind == "endpoint", str(info.value)
    assert "did not answer like a Hugging Face Hub" in str(info.value)
    assert "run the command again" not in str(info.value), str(info.value)


def test_a_captive_portals_page_is_not_blamed_on_the_manifest(tmp_path):
    """A captive portal answering every request with 200 and its own page: the page's size
    was "size mismatch ... update derain (its weights manifest may be out of date)" (an
    audit). No commit hash: not a Hub, said as such."""
    import http.server
    import threading

    class Portal(http.server.BaseHTTPRequestHandler):
        def _page(self, body: bool) -> None:
            page = b"<html><body>Please log in to the Wi-Fi</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            if body:
                self.wfile.write(page)

        def do_HEAD(self) -> None:  # noqa: N802 - http.server's names
            self._page(False)

        def do_GET(self) -> None:  # noqa: N802
            self._page(True)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Portal)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(WeightsUnavailable) as info:  # (the manifest knows the size)
            _fetch(f"http://127.0.0.1:{server.server_address[1]}", tmp_path / "cache",
                   size=len(DATA))
    finally:
        server.shutdown()
        server.server_close()
    said = str(info.value)
    assert info.value.kind == "endpoint" and "did not answer like a Hugging Face Hub" in said
    assert "size mismatch" not in said and "manifest" not in said, said
