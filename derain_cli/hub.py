"""Fetch pretrained weights from the Hugging Face Hub, verified against a pinned sha256.

:func:`fetch` is the one entry point: it returns a local path to a file whose sha256 matches
the manifest, or raises :class:`WeightsUnavailable` with a message meant for the end user
(what failed, and the ways out). No other exception escapes it for network, Hub or cache
trouble.

Order of operations in :func:`fetch`:

1. Cache: ``try_to_load_from_cache`` (no network). A cached file whose sha256 matches is
   returned without any request, whatever the revision (the sha256 is the real pin). A cached
   file that does not match is removed (snapshot entry and blob) and fetched again.
2. Probe: one ``HEAD`` on the file's resolve URL (:func:`file_metadata`), retried only on a
   busy server's answer (HTTP 429 or 5xx: twice, each wait its ``Retry-After`` up to
   ``RETRY_AFTER_MAX_S``, else ``PROBE_RETRY_WAITS``). Fails fast when offline
   (``HF_HUB_OFFLINE``), when the Hub cannot be reached (``hf_hub_download`` itself would retry
   with back-off for ~25 s first), or when the repo, revision or file does not exist. For LFS
   files the Hub advertises the content's sha256 as its etag: a mismatch with the manifest is
   reported before downloading anything.
3. ``hf_hub_download`` into the Hub cache (its own tqdm bar on a terminal, else one
   "downloading" line; nothing when ``quiet``).
4. Verify the sha256 (streamed); on mismatch delete the snapshot entry and its blob.

The endpoint is ``HF_ENDPOINT`` as read by ``huggingface_hub`` at import time (default
https://huggingface.co) unless ``endpoint=`` is given; offline mode is ``HF_HUB_OFFLINE``, also
read at import time.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import re
import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    FileMetadataError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import (
    are_progress_bars_disabled,
    disable_progress_bars,
    enable_progress_bars,
)
from huggingface_hub.utils import logging as hf_logging

from .fileio import sha256_file  # re-exported: the Hub's files are checked with it

log = logging.getLogger(__name__)
#: The Hugging Face Hub itself (HF_ENDPOINT unset)
_HUB = "https://huggingface.co"

try:  # huggingface_hub 2.x talks HTTP through httpx2; 1.x used httpx.
    import httpx2 as _httpx
except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
    import httpx as _httpx  # type: ignore[no-redef]

__all__ = ["WeightsUnavailable", "fetch", "file_metadata", "sha256_file", "snapshot_path"]

CHUNK_SIZE = 1 << 20  # 1 MiB
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
#: Waits (s) before the probe's retries after HTTP 429 or 5xx: the Hub's rate limit and a
#: server restarting behind its balancer pass within seconds, and one such answer ended the
#: download at once. A Retry-After longer than RETRY_AFTER_MAX_S is not waited for.
PROBE_RETRY_WAITS = (1.0, 2.0)
RETRY_AFTER_MAX_S = 10.0
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
# Connection refused, DNS failure, timeouts, broken connections, proxy trouble.
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    _httpx.TransportError,
    ConnectionError,
    TimeoutError,
)


class WeightsUnavailable(Exception):
    """Weights could not be obtained; ``str(exc)`` is a multi-line message for the user.

    ``kind`` says why, for callers that want to branch on it: ``"offline"``, ``"network"``,
    ``"not_found"``, ``"access"``, ``"http"`` (busy: try later), ``"endpoint"`` (HF_ENDPOINT
    is no Hub: another HTTP answer, or no address at all), ``"checksum"``, ``"cache"`` (the
    Hub cache cannot be written), ``"space"`` (no room left on its disk) or ``"error"``.
    """

    def __init__(self, message: str, *, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind


def snapshot_path(
    repo_id: str, filename: str, revision: str, *, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Where the Hub cache keeps ``filename`` of ``repo_id`` at commit ``revision``.

    A verified file placed there by hand is picked up by :func:`fetch` (when ``revision`` is a
    commit hash, as manifests should pin).
    """
    root = Path(cache_dir if cache_dir is not None else hf_constants.HF_HUB_CACHE)
    folder = "models--" + repo_id.replace("/", "--")
    return root / folder / "snapshots" / revision / Path(*filename.split("/"))


def fetch(
    repo_id: str,
    filename: str,
    revision: str,
    sha256: str,
    *,
    cache_dir: Path | None = None,
    force: bool = False,
    quiet: bool = False,
    endpoint: str | None = None,
    name: str | None = None,
    manual_path: Path | None = None,
    published: bool = True,
    size: int | None = None,
) -> Path:
    """Return a local path to ``filename`` from ``repo_id`` at ``revision``, with sha256 ``sha256``.

    ``cache_dir`` defaults to the Hub cache (``HF_HUB_CACHE``). ``force`` skips the cache and
    downloads again. ``quiet`` hides the download progress bar. ``endpoint`` overrides
    ``HF_ENDPOINT``. ``name`` (the model's name in the manifest) and ``manual_path`` (where the
    caller looks for a hand-placed copy) only improve error messages; without ``manual_path``
    the message points at the Hub-cache snapshot path (see :func:`snapshot_path`), which this
    function does pick up. ``published=False`` (the manifest says the repository is not on
    the Hub yet) still tries, since a mirror behind ``HF_ENDPOINT`` may serve it, and says so
    when that fails. ``size`` (bytes, from the manifest): a server that announces another
    size is refused before anything is downloaded (a hostile mirror could fill the disk
    before the checksum refused the file).

    Raises :class:`WeightsUnavailable` on any failure; :class:`ValueError` if ``sha256`` is not a
    64-digit hex string (a bug in the manifest, not a user problem).
    """
    expected = sha256.strip().lower()
    if not _SHA256_RE.fullmatch(expected):
        raise ValueError(f"expected sha256 must be 64 hex digits, got {sha256!r}")
    ctx = _Context(repo_id, filename, revision, expected, cache_dir, endpoint, name, manual_path)
    ctx.published = published
    ctx.size = size
    ctx.force = force
    repo_dir = _repo_folder(repo_id, cache_dir)

    note = ""
    aside: _SetAside | None = None
    if force:  # the download lands on the good copy's blob (its name is the sha256): kept
        good_copy = cached_copy(repo_id, filename, revision, expected, cache_dir=cache_dir)
        aside = _SetAside.of(good_copy, repo_dir) if good_copy is not None else None
        ctx.copy_kept = aside is not None
    else:
        cached = _cached(repo_id, filename, revision, cache_dir)
        if cached is not None and _has_sha256(cached, expected):
            return cached
        # ``revision`` a branch that moved on (another model's download did it), or that
        # now holds other bytes: a verified copy of an earlier commit is the file (an audit)
        other = _verified_snapshot(repo_dir, filename, expected, skip=cached)
        if other is not None and cached is None:
            return other
        if cached is not None:
            if not _in_cache(cached, repo_dir) and other is not None:
                log.warning("the cached copy at %s has the wrong checksum and leads out of the "
                            "cache (a link; left as it is); a verified copy from an earlier "
                            "commit is used: %s", cached, other)
                return other
            if not _in_cache(cached, repo_dir):
                raise ctx.unavailable(
                    f"the cached copy at {cached} has the wrong checksum and leads out of the "
                    f"cache's folder {repo_dir} (a link); derain deletes nothing outside it: "
                    "remove the link by hand, or point HF_HUB_CACHE at a cache of your own.",
                    "cache")
            if not _discard(cached, repo_dir):  # the download would hand back this bad copy
                raise ctx.unavailable(
                    f"the cached copy at {cached} has the wrong checksum and cannot be removed "
                    "(a read-only cache?); delete it by hand, or point HF_HUB_CACHE at a "
                    "writable folder.", "cache")
            note = f"A cached copy with the wrong checksum was removed from {cached}."
            if other is not None:
                log.warning("%s A verified copy from an earlier commit is used: %s", note,
                            other)
                return other

    try:
        return _download(ctx, repo_dir, note, force, quiet)
    finally:
        if aside is not None:
            aside.put_back()


def _download(ctx: _Context, repo_dir: Path, note: str, force: bool, quiet: bool) -> Path:
    """``fetch``'s download and check, once the cache had no good copy (or ``force``)."""
    expected = ctx.sha256
    _sweep_incomplete(repo_dir)
    try:
        _probe(ctx)
        ctx.reached = True
        with _progress_bars(enabled=not quiet, ctx=ctx):
            local = Path(
                huggingface_hub.hf_hub_download(
                    ctx.repo_id,
                    ctx.filename,
                    revision=ctx.revision,
                    cache_dir=ctx.cache_dir,
                    force_download=force,
                    endpoint=ctx.endpoint_given,
                )
            )
    except WeightsUnavailable:
        raise
    except Exception as exc:
        kind, reason = _explain(exc, ctx)
        if kind is None:
            raise  # not a download problem: a bug, let it surface
        if note:
            reason = f"{reason}\n{note}"
        raise ctx.unavailable(reason, kind) from exc

    if note:  # repaired: said, not only in an error (an audit)
        log.warning("%s It was downloaded again.", note)
    actual = sha256_file(local)
    if actual != expected:
        kept = "the file was not kept" if _discard(local, repo_dir) else (
            f"it could not be removed from {local}: delete it by hand")
        kept += ("; the verified copy cached before stays." if ctx.copy_kept else ".")
        raise ctx.unavailable(
            f"checksum mismatch: the downloaded file has sha256 {actual}, expected {expected}; "
            + kept,
            "checksum",
        )
    return local


#: The last line of a :class:`WeightsUnavailable` message: advice for the commands that
#: derain photos (``derain download`` leaves it out: it has no --weights)
WEIGHTS_FILE_HINT = "  - or pass --weights FILE to use a weights file you already have."


# --------------------------------------------------------------------------- internals
class _Context:
    """What is being fetched, for error messages."""

    def __init__(
        self,
        repo_id: str,
        filename: str,
        revision: str,
        sha256: str,
        cache_dir: Path | None,
        endpoint: str | None,
        name: str | None,
        manual_path: Path | None,
    ) -> None:
        self.repo_id = repo_id
        self.filename = filename
        self.revision = revision
        self.sha256 = sha256
        self.cache_dir = cache_dir
        self.endpoint = (endpoint or hf_constants.ENDPOINT).rstrip("/")
        #: as the caller gave it (None: huggingface_hub reads HF_ENDPOINT itself)
        self.endpoint_given = endpoint
        self.name = name
        self.manual_path = manual_path
        self.published = True
        #: the file's size in bytes, where the manifest gives it
        self.size: int | None = None
        #: the server answered the metadata request: a transport error after it broke a
        #: download, it did not fail to reach the server
        self.reached = False
        #: a fresh download was asked for although a copy may be cached (``--force``)
        self.force = False
        #: with ``force``: a verified cached copy is set aside, and put back on failure
        self.copy_kept = False

    @property
    def url(self) -> str:
        return f"{self.endpoint}/{self.repo_id}/resolve/{self.revision}/{self.filename}"

    def unavailable(self, reason: str, kind: str) -> WeightsUnavailable:
        target = f"{self.repo_id}/{self.filename} (revision {self.revision})"
        download = f"derain download {self.name}" if self.name else "derain download"
        first = {
            "offline": f"run `{download}` with HF_HUB_OFFLINE unset, while online",
            "network": f"run `{download}` when online (HF_ENDPOINT selects a Hub mirror)",
            "http": f"run `{download}` again later",
            "endpoint": f"check HF_ENDPOINT (it must name a Hugging Face Hub or a mirror "
                        f"of it; unset, the Hub itself), then run `{download}`",
            "access": f"log in (`hf auth login` or HF_TOKEN), then run `{download}`",
            "cache": f"make the cache writable (or set HF_HUB_CACHE), then run `{download}`",
            "space": f"free some space there (or point HF_HUB_CACHE at a disk with room), "
                     f"then run `{download}`",
        }.get(kind, "update derain (its weights manifest may be out of date) or report this")
        if kind == "network" and self.reached:  # it answered: "when online" misled (audit)
            first = f"run `{download}` again (the server answered; the transfer failed)"
        if kind == "not_found" and self.endpoint != _HUB:  # a mirror without the file is
            # the likely fault, not derain's manifest (an audit)
            first = (f"check that the mirror at HF_ENDPOINT holds {self.repo_id} (unset, "
                     f"the Hub itself), then run `{download}`")
        lines = [
            f"Cannot get pretrained weights {target}:",
            f"  {reason}".replace("\n", "\n  "),
        ]
        fixes = [first]
        if not self.published:
            lines.append(f"  (derain's manifest says {self.repo_id} is not published on the "
                         "Hub yet; only a mirror set with HF_ENDPOINT can serve it)")
            if self.manual_path is not None:  # the package's own copy went missing
                reinstall = f"reinstall derain, whose package ships {self.manual_path.name}"
                # a read-only cache or a busy mirror keeps its own advice, second
                fixes = [reinstall, first] if kind in ("cache", "space", "http") else [reinstall]
        lines += ["To fix this, do one of:", f"  - {fixes[0]};"]
        lines += [f"  - or {fix};" for fix in fixes[1:]]
        if self.manual_path is not None:
            place = self.manual_path
            lines.append(f"  - or place the file by hand at {place} (sha256 {self.sha256});")
        elif _COMMIT_RE.fullmatch(self.revision):
            place = snapshot_path(
                self.repo_id, self.filename, self.revision, cache_dir=self.cache_dir
            )
            lines.append(f"  - or place the file by hand at {place} (sha256 {self.sha256});")
        else:
            lines.append(f"  - or fetch {self.url} by hand (sha256 {self.sha256});")
        lines.append(WEIGHTS_FILE_HINT)
        return WeightsUnavailable("\n".join(lines), kind=kind)


def cached_copy(repo_id: str, filename: str, revision: str, sha256: str, *,
                cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """A copy of ``filename`` in the Hub cache whose sha256 is ``sha256``: the one of
    ``revision``, or else of any commit cached (a branch the manifest names moves on when
    another file of the repository is downloaded; the sha256 is the real pin). None when
    there is none; nothing is downloaded or deleted."""
    expected = sha256.strip().lower()
    cache = Path(cache_dir) if cache_dir is not None else None
    cached = _cached(repo_id, filename, revision, cache)
    if cached is not None and _has_sha256(cached, expected):
        return cached
    return _verified_snapshot(_repo_folder(repo_id, cache), filename, expected, skip=cached)


def _has_sha256(path: Path, expected: str) -> bool:
    try:
        return sha256_file(path) == expected
    except OSError:  # unreadable cache entry: treat like a bad one
        return False


def _verified_snapshot(repo_dir: Path, filename: str, expected: str,
                       skip: Path | None = None) -> Path | None:
    """``filename`` in any cached commit of ``repo_dir`` with sha256 ``expected``, most
    recently made first; ``skip`` (the entry already judged) left out."""
    snapshots = repo_dir / "snapshots"
    try:
        commits = sorted(os.scandir(snapshots), key=_mtime, reverse=True)
    except OSError:
        return None
    for commit in commits:
        entry = snapshots / commit.name / Path(*filename.split("/"))
        if entry == skip or not entry.is_file() or not _in_cache(entry, repo_dir):
            continue
        if _within(entry, repo_dir) and _has_sha256(entry, expected):
            return entry
    return None


def _sweep_incomplete(repo_dir: Path) -> None:
    """Delete the partial downloads killed runs left in ``repo_dir``'s blobs
    (``*.incomplete``, a new one for each run killed with SIGKILL: an audit), once older
    than :data:`fileio.STALE_TEMPORARY_S` (a download at work keeps its own fresh), and
    copies ``_SetAside`` kept for a ``--force`` whose process is gone: such a copy is a
    hard link of the cached blob and bears its age, and a sweep by age deleted a running
    ``--force``'s own, the good copy lost while the error said it stayed (an audit). Not
    through a ``blobs`` that is a link out of the cache (a review)."""
    from .fileio import STALE_TEMPORARY_S

    blobs = repo_dir / "blobs"
    if blobs.is_symlink():
        return
    now = time.time()
    try:
        with os.scandir(blobs) as entries:
            for e in entries:
                if not e.is_file(follow_symlinks=False):
                    continue
                try:
                    if e.name.endswith(".incomplete"):
                        if now - e.stat(follow_symlinks=False).st_mtime > STALE_TEMPORARY_S:
                            os.unlink(e.path)
                    elif ".derain-kept-" in e.name and not _kept_by_live_process(
                            e.name, now - e.stat(follow_symlinks=False).st_mtime):
                        os.unlink(e.path)
                except OSError:
                    pass
    except OSError:
        pass


def _host_tag() -> str:
    """This machine's name as a file name's part (letters, digits, ``-``)."""
    import socket

    try:
        host = socket.gethostname()
    except OSError:
        host = ""
    return re.sub(r"[^A-Za-z0-9-]+", "-", host).strip("-")[:40] or "host"


#: The machine part of a ``_SetAside`` copy's name (``BLOB.derain-kept-HOST-PID``)
_KEEPER = _host_tag()


#: A set-aside copy of another machine (or on Windows) is taken for a leftover after this
#: long: a --force download does not last a day
KEPT_COPY_STALE_S = 86400.0


def _kept_by_live_process(name: str, age: float = 0.0) -> bool:
    """Whether a ``_SetAside`` copy (``BLOB.derain-kept-HOST-PID``, ``age`` seconds old)
    may be at work: its process runs; or it is another machine's (a cache shared by
    several, a container's: a pid gone here says nothing of theirs) or this is Windows (no
    harmless probe of a pid: ``os.kill`` ends the process there, a review), and it is
    younger than ``KEPT_COPY_STALE_S``. A pid reused by another process keeps a stale copy
    a while longer, no more."""
    tail = name.rpartition(".derain-kept-")[2]
    host, _, pid = tail.rpartition("-")
    if not pid.isdigit():
        return False  # not one of ours: a leftover
    if (host and host != _KEEPER) or os.name == "nt":
        return age < KEPT_COPY_STALE_S
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # another user's process (EPERM): alive
        return True
    return True


def _mtime(entry: os.DirEntry[str]) -> float:
    try:
        return entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return 0.0


class _SetAside:
    """A verified cached copy kept through a forced download: huggingface_hub writes the
    new file over the same blob (named by the sha256), and a download that arrived damaged
    was then deleted along with the good copy (an audit). A hard link (or a copy) of the
    blob is made first and put back, with the snapshot's link to it, unless the download
    left a good file there."""

    def __init__(self, entry: Path, real: Path, keep: Path, sha256: str) -> None:
        self.entry, self.real, self.keep, self.sha256 = entry, real, keep, sha256

    @classmethod
    def of(cls, entry: Path, repo_dir: Path) -> _SetAside | None:
        real = Path(os.path.realpath(entry))
        if not _within(real, repo_dir):  # a link out of the cache: nothing made or replaced
            return None  # beside a file there (a review)
        # of this process: two --force downloads at once took each other's (a review); of
        # this machine too (a cache shared by several: another's process is not ours to
        # judge gone)
        keep = real.with_name(f"{real.name}.derain-kept-{_KEEPER}-{os.getpid()}")
        try:
            sha = sha256_file(real)
            keep.unlink(missing_ok=True)
            try:
                os.link(real, keep)
            except OSError:  # a file system without hard links
                shutil.copy2(real, keep)
            with contextlib.suppress(OSError):  # dated now (a hard link bore the blob's
                os.utime(keep)  # age, and the sweep took a live copy for a leftover)
        except OSError:  # a read-only cache: nothing can be overwritten there either
            return None
        return cls(entry, real, keep, sha)

    def put_back(self) -> None:
        try:
            if not _has_sha256(self.real, self.sha256):
                self.real.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.keep, self.real)
            if self.entry != self.real and not os.path.lexists(self.entry):
                self.entry.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(os.path.relpath(self.real, self.entry.parent), self.entry)
        except OSError as e:
            log.warning("could not restore the cached copy %s after the failed download: %s",
                        self.entry, e)
        finally:
            try:
                self.keep.unlink(missing_ok=True)
            except OSError:
                pass


def _cached(repo_id: str, filename: str, revision: str, cache_dir: Path | None) -> Path | None:
    try:
        found = huggingface_hub.try_to_load_from_cache(
            repo_id, filename, cache_dir=cache_dir, revision=revision
        )
    except (OSError, ValueError):  # unreadable cache, invalid repo id or filename
        return None
    # A string is a path; None means not cached; a sentinel means "known not to exist" there.
    return Path(found) if isinstance(found, str) else None


def _repo_folder(repo_id: str, cache_dir: Path | None) -> Path:
    """The Hub cache's folder of ``repo_id`` (``models--ORG--NAME``)."""
    root = Path(cache_dir if cache_dir is not None else hf_constants.HF_HUB_CACHE)
    return root / ("models--" + repo_id.replace("/", "--"))


def _in_cache(path: Path, repo_dir: Path) -> bool:
    """Whether the snapshot entry ``path`` lies in ``repo_dir``'s snapshots, its folders
    resolved: a ``snapshots/<commit>`` planted as a link to another folder would otherwise
    make deleting a bad entry delete a file there (a shared cache on a cluster)."""
    return _within(path.parent, repo_dir / "snapshots")


def _within(path: Path, folder: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def _discard(path: Path, repo_dir: Path) -> bool:
    """Delete a cache entry: the snapshot entry and, if it links into the repository's
    ``blobs/``, the blob. False when the entry is still there (a read-only cache) or lies
    outside ``repo_dir`` (see :func:`_in_cache`), where nothing is deleted."""
    if not _in_cache(path, repo_dir):
        return False
    blob = None
    if path.is_symlink():
        target = Path(os.path.realpath(path))
        if _within(target, repo_dir / "blobs"):  # never follow a link out of the cache
            blob = target
    for p in (path, blob):
        if p is not None:
            try:
                p.unlink(missing_ok=True)
            except OSError:
                pass
    return not path.exists() and not path.is_symlink()


def file_metadata(url: str, endpoint: str | None = None) -> huggingface_hub.HfFileMetadata:
    """``get_hf_file_metadata`` (one HEAD), retried after ``PROBE_RETRY_WAITS`` where the
    server answers 429 or 5xx (waiting its Retry-After instead, up to RETRY_AFTER_MAX_S).
    Anything else (offline, unreachable, not found) raises at once: the Hub client's own
    download retries an unreachable server for ~25 s."""
    for tries, wait in enumerate((*PROBE_RETRY_WAITS, None), start=1):
        try:
            return huggingface_hub.get_hf_file_metadata(url, endpoint=endpoint)
        except HfHubHTTPError as exc:
            exc.derain_tries = tries  # type: ignore[attr-defined]  # for the message
            status = exc.response.status_code if exc.response is not None else None
            if wait is None or status is None or not (status == 429 or status >= 500):
                raise
            after = _retry_after(exc.response.headers.get("Retry-After"))
            if after is not None and after > RETRY_AFTER_MAX_S:
                raise
            time.sleep(wait if after is None else after)
    raise AssertionError("unreachable")  # pragma: no cover - the last try raises or returns


def _retry_after(value: str | None) -> float | None:
    """A Retry-After header's seconds, 0 or more (None: absent, not a number such as an
    HTTP date, not worth parsing, or NaN, which made time.sleep raise)."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return None if seconds is None or math.isnan(seconds) else max(seconds, 0.0)


def _probe(ctx: _Context) -> None:
    """One HEAD request (retried on a busy server's answer): raises the Hub client's errors,
    or a checksum mismatch."""
    url = huggingface_hub.hf_hub_url(
        ctx.repo_id, ctx.filename, revision=ctx.revision, endpoint=ctx.endpoint
    )
    meta = file_metadata(url, endpoint=ctx.endpoint)
    if meta.commit_hash is None:  # a captive portal's page, a plain web server: no Hub's
        # answer, and a size that matched nothing was blamed on derain's manifest (an audit)
        raise FileMetadataError("it sent no commit hash (X-Repo-Commit)")
    if ctx.size is not None and meta.size is not None and meta.size != ctx.size:
        raise ctx.unavailable(
            f"size mismatch: the server's copy has {meta.size} bytes, expected {ctx.size}; "
            "nothing was downloaded. The file changed on the Hub, the manifest is out of "
            "date, or the server (HF_ENDPOINT) is not serving derain's weights.",
            "checksum",
        )
    etag = (meta.etag or "").lower()
    if _SHA256_RE.fullmatch(etag) and etag != ctx.sha256:
        raise ctx.unavailable(
            f"checksum mismatch: the Hub's copy has sha256 {etag}, expected {ctx.sha256}; "
            "nothing was downloaded. The file changed on the Hub or the manifest is out of date.",
            "checksum",
        )


def _explain(exc: BaseException, ctx: _Context) -> tuple[str | None, str]:
    """Map an exception from huggingface_hub to (kind, user-facing reason); kind None: unknown."""
    where = f"{ctx.endpoint}"
    offline = isinstance(exc, OfflineModeIsEnabled) or (
        isinstance(exc, LocalEntryNotFoundError) and hf_constants.is_offline_mode()
    )
    if offline:
        cached = _cached(ctx.repo_id, ctx.filename, ctx.revision, ctx.cache_dir) \
            if ctx.force else None
        if cached is not None:  # it said "not in the local cache" of a cached file (audit)
            try:
                good = sha256_file(cached) == ctx.sha256
            except OSError:
                good = False
            return "offline", (
                "offline mode is on (HF_HUB_OFFLINE is set) and --force asks for a fresh "
                "download; the cached copy is kept" + (
                    " (and used without --force)." if good else
                    ", though its checksum is wrong: it needs a download."))
        return "offline", (
            "offline mode is on (HF_HUB_OFFLINE is set) and the file is not in the local cache "
            f"({ctx.cache_dir or hf_constants.HF_HUB_CACHE})."
        )
    if isinstance(exc, RevisionNotFoundError):
        return "not_found", f"revision {ctx.revision!r} does not exist in {ctx.repo_id} on {where}."
    if isinstance(exc, RemoteEntryNotFoundError):
        return "not_found", (
            f"{ctx.filename!r} does not exist in {ctx.repo_id} "
            f"at revision {ctx.revision!r} on {where}."
        )
    if isinstance(exc, GatedRepoError):
        return "access", (
            f"{ctx.repo_id} is gated: accept its terms on the Hub, then log in "
            "(`hf auth login`) or set HF_TOKEN."
        )
    if isinstance(exc, RepositoryNotFoundError):
        return "not_found", (
            f"repository {ctx.repo_id} was not found on {where} "
            "(or it is private and no valid token was sent)."
        )
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            return "access", f"{where} refused access (HTTP {status}); check HF_TOKEN."
        if status is not None and (status == 429 or status >= 500):
            tries = getattr(exc, "derain_tries", 1)
            return "http", (f"{where} is unavailable right now (HTTP {status}"
                            + (f", {tries} tries" if tries > 1 else "") + "); try again later.")
        # from a mirror: the mirror is the likely fault; from the Hub itself, derain's
        return ("endpoint" if ctx.endpoint != _HUB else "error"), (
            f"{where} answered HTTP {status} for {ctx.url}.")
    if isinstance(exc, FileMetadataError) or isinstance(exc.__cause__, FileMetadataError):
        # (huggingface_hub raises it as the cause of a LocalEntryNotFoundError: a plain file
        # server as HF_ENDPOINT was "the connection broke; run the command again": an audit)
        meta = exc if isinstance(exc, FileMetadataError) else exc.__cause__
        lines = str(meta).strip().splitlines()
        detail = f" ({lines[0].split('. ')[0].rstrip('.')})" if lines else ""  # its first
        # sentence: the rest is its own advice, said below
        return ("endpoint" if ctx.endpoint != _HUB else "network"), (
            f"{where} did not answer like a Hugging Face Hub{detail}; check HF_ENDPOINT, "
            "proxy, firewall.")
    no_url = not ctx.endpoint.lower().startswith(("http://", "https://"))
    if no_url and isinstance(exc, (LocalEntryNotFoundError, _httpx.HTTPError,
                                   *_TRANSPORT_ERRORS)):  # a setting's mistake, blamed on
        # the network (an audit)
        return "endpoint", (f"HF_ENDPOINT is {ctx.endpoint!r}, not an http:// or https:// "
                            "address.")
    if isinstance(exc, (LocalEntryNotFoundError, *_TRANSPORT_ERRORS)):
        detail = str(exc.__cause__ or exc).strip().splitlines()
        first = (detail[0] if detail else type(exc).__name__).rstrip(".")
        if ctx.reached:  # it answered, then the transfer broke (retried already)
            return "network", (f"the connection to {where} broke during the download "
                               f"({first}); run the command again to retry.")
        return "network", (
            f"could not reach {where} (no network, or the server is down): {first}."
        )
    if isinstance(exc, _httpx.HTTPError):  # too many redirects, undecodable response, ...
        return "network", f"talking to {where} failed: {type(exc).__name__}: {exc}."
    if isinstance(exc, HFValidationError):
        return "error", f"invalid repository id or revision in the manifest: {exc}"
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        cache = ctx.cache_dir or hf_constants.HF_HUB_CACHE
        return "cache", (
            f"the Hugging Face cache {cache} cannot be written ({exc.strerror or exc}); point "
            "HF_HUB_CACHE at a writable folder.")
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        cache = ctx.cache_dir or hf_constants.HF_HUB_CACHE
        return "space", f"no space left for the download in the Hugging Face cache {cache}."
    if isinstance(exc, OSError) and exc.errno == errno.ENOTDIR:  # HF_HOME=a file: "update
        return "cache", (  # derain" was the advice (an audit)
            f"{exc.filename or exc}: a file stands where the Hugging Face cache needs a folder "
            "(HF_HOME or HF_HUB_CACHE names a file?).")
    if isinstance(exc, OSError) and "consistency check failed" in str(exc).lower():
        # its advice was huggingface_hub's Python argument, "retry with force_download=True"
        first = str(exc).strip().splitlines()[0].split("(")[0].strip().rstrip(".:")
        ctx.reached = True
        return "network", (f"the download from {where} arrived with another size than the "
                           f"server announced ({first}): a broken transfer or a faulty "
                           "mirror; nothing was kept.")
    if isinstance(exc, OSError):
        return "error", f"the download failed: {exc}"
    return None, ""


#: The pieces a download is read in (huggingface_hub's are 10 MiB, more than any derain
#: weights file: its bar sat at 0 % until the end, a stalled server alike: an audit)
DOWNLOAD_PIECE = 256 * 1024


@contextmanager
def _progress_bars(*, enabled: bool, ctx: _Context | None = None) -> Iterator[None]:
    """huggingface_hub's progress bar inside the block on a terminal where ``enabled``, and
    nothing else of its output: its "Trying to resume download..." lines (six of them
    before derain's own error, which says what went wrong; the resume is not kept) and its
    "Not enough free disk space" UserWarning with its source line (an audit). Off a
    terminal, where its bar drew one line at the end, one line says the download began
    (``ctx``: of what, from where): a slow server and a stalled one were silent alike."""
    import sys

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    terminal = enabled and sys.stderr is not None and sys.stderr.isatty()
    bars = not terminal and not are_progress_bars_disabled()
    if bars:
        disable_progress_bars()
    piece = hf_constants.DOWNLOAD_CHUNK_SIZE
    hf_constants.DOWNLOAD_CHUNK_SIZE = min(piece, DOWNLOAD_PIECE)
    if enabled and not terminal and ctx is not None and sys.stderr is not None:
        size = f" ({ctx.size / 1e6:.1f} MB)" if ctx.size else ""
        print(f"downloading {ctx.filename}{size} from {ctx.endpoint}", file=sys.stderr,
              flush=True)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"huggingface_hub\.")
            yield
    finally:
        hf_constants.DOWNLOAD_CHUNK_SIZE = piece
        if bars:
            enable_progress_bars()
        hf_logging.set_verbosity(verbosity)
