"""Small file-system helpers shared by the writers of photos, weights and checkpoints."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import itertools
import logging
import os
import secrets
import stat
import sys
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path


def current_umask() -> int:
    """The process umask; read from /proc where possible, because os.umask() can only be
    queried by briefly changing it, which races with other threads creating files."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_normal_mode(tmp: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Give a temp file (``mkstemp`` makes them 0600) the permissions ``dest`` would get as
    a normal new file, or keep those of the ``dest`` it replaces; best effort. Without it,
    photos, weights and checkpoints written atomically were readable by their owner only."""
    with contextlib.suppress(OSError):
        dest = Path(dest)
        mode = dest.stat().st_mode & 0o7777 if dest.exists() else 0o666 & ~current_umask()
        os.chmod(tmp, mode)


#: Folders that operating systems and NAS boxes put beside photos (thumbnails, indexes,
#: bins), never photos of their own: a Synology's ``@eaDir`` holds a thumbnail JPEG per photo.
_SYSTEM_FOLDERS = frozenset({"@eadir", "#recycle", "@recycle", "__macosx", "$recycle.bin",
                             "system volume information", "lost+found", "#snapshot"})


#: Photo libraries that macOS shows as one file (a package) but are folders: Photos' and
#: iPhoto's originals and thumbnails, managed by their app (``derain ~/Pictures -r`` wrote
#: results into Photos' library: an audit)
_LIBRARY_PACKAGES = (".photoslibrary", ".photolibrary", ".migratedphotolibrary",
                     ".aplibrary")


def is_system_folder(name: str) -> bool:
    """Whether a folder of this name is hidden (``.name``), a system folder or a photo
    app's library package: scans do not enter it, and a dataset's layout does not count
    it."""
    low = name.lower()
    return name.startswith(".") or low in _SYSTEM_FOLDERS or low.endswith(_LIBRARY_PACKAGES)


def same_name_key(path: str | os.PathLike[str]) -> str:
    """A key under which two paths are equal when they name the same file, for paths that
    need not exist yet: the absolute, resolved path, case-folded where the file system of its
    nearest existing folder ignores case (macOS and Windows by default), and there in one
    Unicode form (NFC: macOS's file systems take ``é`` and ``e`` + accent for one name). Why:
    ``IMG_1.jpg`` and ``img_1.png --format png`` planned two results that are one file
    there; the second overwrote the first, or an original. Many paths: :class:`NameKeys`."""
    head, name = os.path.split(os.path.realpath(os.path.abspath(path)))
    return _key_in(_folder_key(head), name)


def _folder_key(real_folder: str) -> tuple[str, bool]:
    """A resolved folder's part of :func:`same_name_key`: its name as the file system
    compares it, and whether that file system (of its nearest existing folder) ignores
    case."""
    folder = Path(real_folder)
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return os.path.normcase(real_folder), _ignores_case(str(folder))


def _key_in(folder: tuple[str, bool], name: str) -> str:
    """:func:`same_name_key` of ``name`` in a folder keyed by :func:`_folder_key`."""
    key = os.path.join(folder[0], os.path.normcase(name))
    return unicodedata.normalize("NFC", key).casefold() if folder[1] else key


class NameKeys:
    """:func:`same_name_key` for many paths in few folders, each folder resolved once: a
    rerun over 20 000 photos in 20 folders spent most of its silent planning resolving
    the same folders again, path by path. For one pass (a plan): folders made, removed or
    linked afterwards are not seen."""

    def __init__(self) -> None:
        self._folders: dict[str, tuple[str, bool]] = {}

    def __call__(self, path: str | os.PathLike[str]) -> str:
        p = os.path.abspath(path)
        head, name = os.path.split(p)
        if not name or os.path.islink(p):  # the link's target decides: the slow way
            return same_name_key(p)
        known = self._folders.get(head)
        if known is None:  # what same_name_key finds for any name in it
            known = self._folders[head] = _folder_key(os.path.realpath(head))
        return _key_in(known, name)


@functools.lru_cache(maxsize=256)
def _ignores_case(folder: str) -> bool:
    """Whether the file system holding the existing ``folder`` ignores case in names: a
    name in it, its case swapped, names the same file. Names inside the folder, not the
    folder's own path: a FAT stick mounted at /media/u/STICK on a case-sensitive root was
    judged by /MEDIA/U/stick, which does not exist (an audit). Without an entry to try (an
    empty folder, names without ASCII letters): the platform's usual default."""
    try:
        with os.scandir(folder) as entries:
            for entry in itertools.islice(entries, 64):
                swapped = entry.name.swapcase()
                if swapped != entry.name and entry.name.isascii():
                    try:  # lstat: a broken link is a name like any other (and a DirEntry's
                        # stat has no inode number on Windows: a review)
                        return os.path.samestat(os.lstat(os.path.join(folder, swapped)),
                                                os.lstat(entry.path))
                    except OSError:  # no such name: case counts here
                        return False
    except OSError:
        pass
    return sys.platform in ("darwin", "win32")


#: what flock's LOCK_NB fails with where another process holds the lock
_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


def _open_folder(folder: str | os.PathLike[str]) -> int | None:
    """A descriptor of ``folder`` to lock, or None where it is missing or unreadable."""
    try:
        return os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return None


class FolderInUse(RuntimeError):
    """Another derain process holds a folder (or file) this one was about to write (see
    :func:`hold_folders`, :func:`hold_files`)."""

    def __init__(self, folder: Path) -> None:
        super().__init__(f"{folder} is in use by another derain process (it writes there "
                         "now); wait for it to end, or choose another output")
        self.folder = folder


@contextlib.contextmanager
def hold_folders(folders: Iterable[str | os.PathLike[str]], *,
                 shared: bool = False) -> Iterator[list[int]]:
    """Hold ``folders`` (those that exist) for this process while the block runs: an
    exclusive lock on each folder itself (``flock`` on its descriptor: no lock file left
    behind), or with ``shared`` one that other shared holders may take too.

    Why: two ``derain synth`` runs into one folder both passed the "already holds pairs"
    check and interleaved their pairs, a rainy image of one photo beside another's clean
    one; two ``eval --save``, ``distill`` or ``export`` runs replaced each other's results
    in silence (an audit). The caller checks its outputs again once it holds the folder.
    Raises :class:`FolderInUse` where another process holds one; where the file system has
    no such locks (some network mounts) the folder is not held, as ``train``'s lock.
    Yields the descriptors held (for :func:`only_holder`).
    """
    try:
        import fcntl
    except ImportError:  # Windows: not held
        yield []
        return
    fds: list[int] = []
    try:
        for folder in dict.fromkeys(Path(os.path.realpath(f)) for f in folders):
            fd = _open_folder(folder)
            if fd is None:  # not there (yet), or unreadable: not held
                continue
            fds.append(fd)
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in _BUSY:
                    raise FolderInUse(folder) from None
                # no locks on this file system: not held
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


@contextlib.contextmanager
def hold_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[None]:
    """Hold output files (which need not exist yet) for this process while the block runs,
    as :func:`hold_folders` holds folders, through lock files named by each file's full
    path in a folder of the system's temporary space (none left among the user's files).
    Why: holding a report's or a graph's folder refused every other run writing any file
    there (two evals with their CSVs in one folder: a review). Raises :class:`FolderInUse`
    (naming the file) where another process holds one. The lock files go when let go
    (:func:`claim_file`)."""
    releases: list[Callable[[], None]] = []
    try:
        for path in dict.fromkeys(_full_name(p) for p in paths):
            release = claim_file(path)
            if release is None:
                raise FolderInUse(path)
            releases.append(release)
        yield
    finally:
        for release in releases:
            release()


def claim_file(path: str | os.PathLike[str], *,
               wait: bool = False) -> Callable[[], None] | None:
    """Claim the output ``path`` for this process (a lock as :func:`hold_files` takes):
    the function that lets it go, or None where another process holds it (``wait``: wait
    for it instead). Why: two runs of the main job over one folder each derained every
    photo, the slower throwing its results away (an audit); with claims they split the
    photos. The lock file goes with the claim (a photo folder's worth would pile up
    otherwise): a claim counts only on the file still under the name (a review found two
    holders at once, one on a file deleted under it). Where locks are unavailable (no
    ``fcntl``; a lock folder that cannot be made, or is not this user's alone) every claim
    succeeds."""
    try:
        import fcntl
    except ImportError:  # Windows
        return lambda: None
    lock = _lock_file(_full_name(path))
    if lock is None:
        return lambda: None
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)  # never through a link
    for _ in range(100):  # each retry: the holder deleted it as it let go
        try:
            fd = os.open(lock, flags, 0o600)
        except OSError:
            return lambda: None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as e:
            os.close(fd)
            return None if e.errno in _BUSY else (
                lambda: None)
        except BaseException:  # Ctrl-C while waiting
            os.close(fd)
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock, follow_symlinks=False))
        except OSError:  # gone: deleted by the holder that let go
            same = False
        if same:
            break
        os.close(fd)
    else:
        return lambda: None
    with contextlib.suppress(OSError):  # who holds it, for a run that waits (claim_holder)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)

    def release() -> None:
        with contextlib.suppress(OSError):
            os.unlink(lock)  # while held: a run that opens it later makes a new one
        os.close(fd)

    return release


def claim_holder(path: str | os.PathLike[str]) -> tuple[int, bool] | None:
    """The process holding ``path``'s claim (:func:`claim_file`) and whether it is stopped
    (Ctrl-Z, SIGSTOP: Linux only), or None where unknown. A run waiting for a stopped one
    waited for ever with no word of whom (an audit)."""
    lock = _lock_file(_full_name(path))
    if lock is None:
        return None
    try:
        with open(lock, "rb") as f:
            pid = int(f.read(32).decode().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return pid, False
    return pid, state in (b"T", b"t")


def _full_name(path: str | os.PathLike[str]) -> Path:
    """``path`` with its folder resolved (the file need not exist)."""
    return Path(os.path.realpath(Path(path).parent)) / Path(path).name


def _lock_file(path: Path) -> Path | None:
    """The lock file standing for ``path`` in ``derain-locks-UID`` of the system's
    temporary folder, or None where that cannot be made."""
    where = Path(tempfile.gettempdir()) / f"derain-locks-{os.getuid()}"
    try:
        where.mkdir(mode=0o700, exist_ok=True)
        st = os.stat(where, follow_symlinks=False)
        if not (stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
                and not st.st_mode & 0o022):  # another user's, or open to others: its
            return None  # locks could make every run skip every photo (a review)
    except OSError:
        return None
    return where / (hashlib.sha256(os.fsencode(path)).hexdigest()[:32] + ".lock")


def only_holder(folder: str | os.PathLike[str], fd: int | None = None) -> bool:
    """Whether no other process holds ``folder`` (:func:`hold_folders`); ``fd``: this
    process's own shared hold on it, let go first (a lock of its own would be in the way).
    True where locks are unavailable."""
    try:
        import fcntl
    except ImportError:
        return True
    if fd is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            pass
    probe = _open_folder(folder)
    if probe is None:
        return True
    try:
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        return e.errno not in _BUSY
    finally:
        os.close(probe)  # the lock goes with it


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (weights and graphs run to hundreds of
    MB: never read whole)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(dest: str | os.PathLike[str], write: Callable[[str], object], *,
                 durable: bool = False) -> None:
    """Make ``dest`` by ``write(tmp)`` into a temporary file beside it, then a rename.

    Why: a reader (a later run, another process) never sees a half-written file, and a
    failed or interrupted write (a full disk, Ctrl-C) leaves the old file and no temporary
    one behind. The result gets the permissions of a normal new file (``mkstemp`` makes
    0600), or those of the file it replaces. ``durable``: fsynced with its folder, for what
    a crash must not lose (weights, checkpoints). Photos have their own writer
    (``images._atomic_write``: no-replace mode, error wording for the batch)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # a short name: one built from dest's could pass the 255-byte limit dest keeps to
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".derain-", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        give_normal_mode(tmp, dest)
        os.replace(tmp, dest)
    except OSError as e:  # said of the file asked for: the temporary one's hidden name
        # (".derain-8csn_lmd.tmp: Permission denied") named no file of the user's (an audit)
        if tmp not in (e.filename, e.filename2) or e.errno is None:
            raise
        raise type(e)(e.errno, e.strerror, str(dest)) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # gone after the rename; a failed write's leftover otherwise
    if durable:
        with contextlib.suppress(OSError):
            dirfd = os.open(dest.parent, os.O_RDONLY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)


def atomic_write_group(items: Sequence[tuple[Path, Callable[[str], object]]], *,
                       remove: Iterable[Path] = ()) -> None:
    """Make several files that belong together (a forward graph and the statistics graph a
    reader finds beside it by name) all or none: each ``write(tmp)`` into a temporary file
    beside its destination; only when every one is written, the renames, last item first,
    so the first (the file a reader opens) lands last. ``remove``: files of an earlier set
    that the new one lacks, taken away just before (a reader would pair them with the new
    files). Should a rename fail or Ctrl-C land among them, what was replaced or removed is
    put back; where even that is cut short, the earlier files stay under hidden
    ``.derain-*.tmp`` names rather than be deleted. Why: Ctrl-C while the second graph was
    made left the new first graph beside the old second, another network's."""
    written: list[str] = []  # the new files, in the order of ``items``
    #: (destination, where its earlier file is kept, the new file or None): recorded before
    #: each move, so a move cut short is still known
    aside: list[tuple[Path, Path, str | None]] = []
    done = False

    def set_aside(dest: Path, new: str | None) -> None:
        """Keep ``dest``'s earlier file under an unguessable hidden name: a hard link
        (``dest`` stays where readers find it until its replacement lands), or moved there
        (``new`` None: a file to take away; or where links fail)."""
        keep = dest.parent / f".derain-{secrets.token_hex(8)}.tmp"
        aside.append((dest, keep, new))
        if not os.path.lexists(dest):
            return
        if new is not None:
            try:
                os.link(dest, keep, follow_symlinks=False)
                return
            except (OSError, AttributeError, NotImplementedError):  # no links here
                pass
        os.replace(dest, keep)

    try:
        for dest, write in items:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".derain-", suffix=".tmp")
            os.close(fd)
            written.append(tmp)
            write(tmp)
            give_normal_mode(tmp, dest)
        try:
            for old in remove:
                set_aside(old, None)
            for tmp, (dest, _) in reversed(list(zip(written, items, strict=True))):
                if os.path.isdir(dest):  # os.replace would fail naming the temporary file
                    raise IsADirectoryError(f"{dest} is a folder")
                set_aside(dest, tmp)
                os.replace(tmp, dest)
        except BaseException:
            for dest, keep, new in reversed(aside):  # the earlier set back as it was
                with contextlib.suppress(OSError):
                    if os.path.lexists(keep):
                        os.replace(keep, dest)
                    elif new is not None and not os.path.lexists(new):  # it landed on a
                        os.unlink(dest)  # place that held nothing
            raise
        done = True
    finally:
        for tmp in written:
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # renamed already, or a failed set's new file
        for dest, keep, _ in aside:  # the earlier files, once replaced; after a failure
            # only a link to what is back in place (renaming a link onto its twin is a
            # no-op that leaves both)
            with contextlib.suppress(OSError):
                if done or _same_file(keep, dest):
                    os.unlink(keep)


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are links to one file (not following symbolic links)."""
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except OSError:
        return False
    return (sa.st_ino, sa.st_dev) == (sb.st_ino, sb.st_dev)


#: A temporary file this much older than now was left by a killed run, not one at work.
STALE_TEMPORARY_S = 3600.0


def sweep_stale_temporaries(folders: Iterable[Path],
                            older_than: float = STALE_TEMPORARY_S,
                            patterns: Sequence[str] = (".derain-*.tmp",)) -> None:
    """Delete the ``.derain-*.tmp`` files (or others of ``patterns``) a killed run (``kill
    -9``, power loss) left in the output folders; those younger than ``older_than`` seconds
    may belong to a run at work and stay (0, all of them: for a caller holding the folders
    alone, ``hold_folders``). Best effort: nothing here may stop the run (a batch, a
    training run) that asks."""
    now = time.time()
    for folder in folders:
        try:
            leftovers = [p for pattern in patterns for p in folder.glob(pattern)]
        except OSError:
            continue
        for tmp in leftovers:
            try:
                if tmp.is_file() and now - tmp.stat().st_mtime >= older_than:
                    tmp.unlink()
                    logging.getLogger(__name__).debug("removed %s, left by an interrupted run", tmp)
            except OSError:
                pass


def atomic_write_text(dest: str | os.PathLike[str], text: str) -> None:
    """:func:`atomic_write` of a text file (UTF-8)."""
    atomic_write(dest, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def display_text(text: str) -> str:
    """``text`` (a path, a file name) as UTF-8 text can carry it: a name's bytes that are
    not UTF-8 (Python holds them as lone surrogates, ``\\udce9``) become ``\\xe9``, as the
    shell shows them. Why: a CSV, an HTML page or a terminal line cannot encode the
    surrogates, and eval failed after scoring every pair on one such name."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # surrogates that are not escaped bytes
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def one_line_text(text: str) -> str:
    """``text`` on one line: every control character (a newline in a file name, a
    right-to-left override, an escape sequence) escaped, and a name's bytes that are not
    UTF-8 as ``\\xe9`` (:func:`display_text`), as the shell shows them."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in display_text(text))


def terminal_text(text: str) -> str:
    """``text`` (a message that may quote a file name) as a terminal may be given it: its
    line breaks kept, each line as :func:`one_line_text` (``\\x1b``: a name holding an
    escape sequence could recolour or clear the screen)."""
    return "\n".join(one_line_text(line) for line in text.split("\n"))


def missing_folders(folder: str | os.PathLike[str]) -> list[Path]:
    """The folders of ``folder``'s path (itself included) that do not exist yet, outermost
    first: what making it creates, for :func:`remove_empty_folders` to take back."""
    folder = Path(folder)
    return [d for d in (folder, *folder.parents) if not d.exists()][::-1]


def remove_empty_folders(folders: Sequence[Path]) -> None:
    """Take back folders a run made (``folders`` outermost first), those still empty: a
    failed export or a synth run that wrote nothing left them behind."""
    for d in reversed(folders):
        with contextlib.suppress(OSError):
            d.rmdir()


def why_unwritable(folder: str | os.PathLike[str]) -> str | None:
    """Why files cannot be written into ``folder`` (made first where missing), or None when
    they can, as far as the permissions say; nothing is created. Checked before any work,
    so an unwritable destination fails at once and not after minutes of deraining."""
    a = folder = Path(folder)
    while not a.exists() and a.parent != a:  # the nearest folder that exists
        if a.is_symlink():  # a link to nowhere: making the folder fails, "File exists",
            # after the work (distill trained to the end first: an audit)
            try:
                target = os.readlink(a)
            except OSError:
                target = "?"
            return (f"{a} is a link that leads nowhere (to {target}: a loop, or its target "
                    "is gone); make its target, or name another folder")
        a = a.parent
    if not a.is_dir():
        return f"{a} is a file, not a folder"
    if not os.access(a, os.W_OK | os.X_OK):
        try:  # said "no write permission" of a read-only mount, which chmod cannot mend
            read_only = bool(os.statvfs(a).f_flag & os.ST_RDONLY)  # (an audit)
        except (OSError, AttributeError):
            read_only = False
        if read_only:
            return ("it is on a read-only file system" if a == folder else
                    f"{a} is on a read-only file system")
        return "no write permission" if a == folder else f"{a} has no write permission"
    return None
