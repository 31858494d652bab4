"""The folder job: find the photos, name the outputs, derain each one, summarise.

The ``derain`` command is a thin layer over this module, so a script can run the same
job with the same guarantees::

    from derain_cli.batch import BatchOptions, collect_inputs, run_batch
    from derain_cli.enhancer import Derainer

    items = collect_inputs(["photos/"], recursive=True)
    summary = run_batch(items, Derainer(), BatchOptions(output="out"))
    print(summary.to_json())

Guarantees:

* One bad input (missing, unreadable, truncated, not an image, empty, a decompression bomb
  over ``max_pixels``) gives one :class:`FileResult` with a one-line reason; the batch goes
  on. Writes are atomic (:func:`derain_cli.images.write_image`), so nothing partial is left.
* Inputs are never overwritten, and two inputs never write the same output.
* Existing outputs are skipped unless ``overwrite``: rerunning an interrupted batch resumes it.
* Under ``torchrun`` (``WORLD_SIZE`` > 1) each rank takes ``jobs[rank::world]`` of the planned
  jobs (done ones already left out) and the
  per-rank summaries are gathered, so every rank returns the same combined :class:`Summary`.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import glob
import logging
import os
import re
import shlex
import stat
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .fileio import (
    FolderInUse,
    NameKeys,
    claim_file,
    claim_holder,
    hold_folders,
    is_system_folder,
    only_holder,
    sweep_stale_temporaries,
    why_unwritable,
)
from .images import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_SUFFIXES,
    UNREAD_PHOTO_FORMATS,
    ImageError,
    LoadedImage,
    OutputExists,
    PreparedImage,
    check_quality,
    foreign_format,
    format_for_path,
    format_name,
    is_image_path,
    prepare_image,
    read_image,
    sniff_format,
    unread_photo_format,
)
from .pairs import natural_key
from .slant import CanvasTooLarge
from .summary import FileResult, Status, Summary  # (results: kept free of numpy)
from .tiling import TilesExhausted

if TYPE_CHECKING:  # pragma: no cover
    from .enhancer import Derainer

__all__ = [
    "OUTPUT_TAG",
    "BatchOptions",
    "BatchProgress",
    "DistInfo",
    "FileResult",
    "InputItem",
    "Job",
    "barrier",
    "Summary",
    "collect_inputs",
    "gather_summaries",
    "init_distributed",
    "is_output_name",
    "output_is_file",
    "plan_jobs",
    "run_batch",
    "shutdown_distributed",
]

#: Default outputs are written beside the input as ``NAME_derained.EXT``.
OUTPUT_TAG = "_derained"
#: Hidden file left in an ``-o`` output folder that derain made or found empty (a folder
#: already holding other files is left unmarked: ``mark_output_folder``): scans skip folders
#: holding it, so a later ``derain photos/ -r`` does not derain the results of
#: ``derain photos/ -o photos/out`` again.
OUTPUT_MARKER = ".derain-output"
_MARKER_TEXT = (
    "This folder holds results written by derain. Folders holding this file are skipped when\n"
    "derain scans a parent folder for inputs; delete this file to derain them again.\n"
)
log = logging.getLogger(__name__)

#: I/O threads beside a GPU (``BatchOptions.io_workers``): one photo decoded ahead and one
#: encoded behind keep the device busy when decoding plus encoding take less than a pass.
GPU_IO_WORKERS = 2
#: Photos larger than this are not decoded ahead (bounded host memory with huge inputs).
PREFETCH_MAX_MEGAPIXELS = 50.0

#: ``--format`` value -> file suffix.
FORMAT_SUFFIX = {
    "png": ".png",
    "jpg": ".jpg",
    "jpeg": ".jpg",
    "webp": ".webp",
    "tiff": ".tif",
    "tif": ".tif",
    "bmp": ".bmp",
}

_GLOB_CHARS = frozenset("*?[")
_SUPPORTED_TEXT = "JPEG, PNG, WebP, TIFF, BMP"



# --------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class InputItem:
    """One input photo (or one input that failed before it could be read).

    ``rel`` is where the result goes under an output folder: the file name for files given
    directly, the path inside the folder for folders (so ``-r`` mirrors the tree). ``error``
    is set for inputs that cannot be processed at all (missing path, empty folder, ...).
    """

    path: Path
    rel: Path
    error: str | None = None

    @property
    def display(self) -> str:
        return str(self.path)


def is_output_name(path: str | os.PathLike[str]) -> bool:
    """True for names this tool writes by default (``*_derained.*``), skipped when scanning."""
    return Path(path).stem.endswith(OUTPUT_TAG)


def is_output_folder(folder: Path, note: bool = False) -> bool:
    """True for a folder derain wrote results into (it holds :data:`OUTPUT_MARKER`).

    A folder that cannot be looked into is not taken for one (one unreadable subfolder,
    a ``lost+found``, stopped the whole batch with "Permission denied")."""
    return _holds_file(folder, OUTPUT_MARKER, note, "it holds derain results")


def _is_run_folder(folder: Path, note: bool = False) -> bool:
    """Whether ``folder`` is a training run's (``train``/``finetune``: its lock file):
    its ``curves.png`` and a report's thumbnails are no photos, and ``derain PARENT -r``
    derained them (an audit), where training's photo readers already left them out."""
    from .pairs import RUN_LOCK

    return _holds_file(folder, RUN_LOCK, note, "a training run's folder")


def _holds_file(folder: Path, name: str, note: bool, what: str) -> bool:
    """Whether ``folder`` holds the file ``name`` (False where it cannot be looked into);
    with ``note``, a scan's warning that it skips the folder as ``what``."""
    try:
        found = (folder / name).is_file()
    except OSError:
        return False
    if found and note:
        log.warning("%s: skipped, %s (delete %s in it to include it)", folder, what, name)
    return found


def mark_output_folder(folder: Path, in_input_tree: bool = False) -> list[Path]:
    """Create ``folder`` if needed and leave :data:`OUTPUT_MARKER` in it (best effort);
    return what it created (folders outermost first, then the marker) for
    :func:`unmark_unused` to take back when no result was written.

    Only a folder derain makes, or finds empty, is marked: ``derain rainy/ -o .`` in a folder
    of the user's own photos marked it, and every later scan of a parent skipped those
    photos. A folder whose marker the user deleted is not marked again either; when such a
    folder lies in the inputs' tree (``in_input_tree``) that is a warning, not a note: the
    next ``derain PARENT -r`` derains its results again (a run into ``ph/mine`` did, with
    the note hidden at the default log level: an audit)."""
    created: list[Path] = []
    # 'new/../mine/out': 'new/..' is no folder made; 'link/../out' is where the link leads
    folder = Path(os.path.realpath(folder))
    try:
        marker = folder / OUTPUT_MARKER
        if folder.is_dir() and not marker.exists():
            if _visible_entries(folder):
                log.log(logging.WARNING if in_input_tree else logging.INFO,
                        "%s: not marked as a results folder (it holds other files), so "
                        "scans of a parent folder will take its results as inputs%s", folder,
                        " (an empty or new -o folder is marked, and skipped by them)"
                        if in_input_tree else "")
                return created
        missing = [f for f in (folder, *folder.parents) if not f.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        created += reversed(missing)
        if not os.path.lexists(marker):
            # O_EXCL: never through a link planted under the marker's name (it created the
            # file the link named: a security audit)
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            created.append(marker)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(_MARKER_TEXT)
    except OSError as e:  # a read-only marker spot must not stop the batch
        log.debug("cannot mark %s as an output folder: %s", folder, e)
    return created


def _visible_entries(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return [e.name for e in entries if not e.name.startswith(".")]


def unmark_unused(created: Sequence[Path]) -> None:
    """Take back what :func:`mark_output_folder` created where no result was written: a
    run whose every file failed left an output folder holding only the marker, and later
    scans of a parent skipped that folder for results it never held (audit). Only what is
    still empty goes (another run may have written there meanwhile); best effort."""
    for path in reversed(created):
        try:
            if path.name == OUTPUT_MARKER:
                if not _visible_entries(path.parent):
                    path.unlink()
            else:
                path.rmdir()  # fails, and stays, unless empty
        except OSError:
            return


def has_glob(text: str) -> bool:
    """Whether ``text`` is a pattern derain expands itself (``*``, ``?``, ``[``)."""
    return any(c in _GLOB_CHARS for c in text)


def _glob_base(pattern: str) -> Path:
    """The leading part of a pattern without wildcards: matches are mirrored relative to it."""
    parts = Path(pattern).parts
    base: list[str] = []
    for part in parts[:-1]:
        if has_glob(part):
            break
        base.append(part)
    return Path(*base) if base else Path(".")


def _resolved(p: Path) -> Path:
    try:
        return p.resolve()
    except (OSError, RuntimeError):  # symlink loops and the like
        return p.absolute()


class _Resolver:
    """``_resolved`` for many paths in few folders, each folder resolved once (a file that
    is no link resolves to its resolved folder and its name): planning a rerun over 20 000
    photos resolved every one's folder five times over. For one pass: folders linked or
    moved afterwards are not seen."""

    def __init__(self) -> None:
        self._folders: dict[Path, Path] = {}

    def __call__(self, p: Path) -> Path:
        if not p.name or ".." in p.parts or os.path.islink(p):  # the slow way (realpath
            # takes `..` by spelling where a folder before it is missing: a review; islink:
            # any error is no link, where Path.is_symlink raised on a name too long)
            return _resolved(p)
        folder = self._folders.get(p.parent)
        if folder is None:
            folder = self._folders[p.parent] = _resolved(p.parent)
        return folder / p.name


@dataclass
class _Scan:
    """What a folder scan found: the photos, the subfolders it did not enter and, by
    format, the files named like photos that derain does not read (HEIC, GIF, raw...)."""

    files: list[Path]
    skipped_dirs: int = 0
    unread: Counter[str] = field(default_factory=Counter)
    #: links to folders, never followed (with or without -r): not counted in skipped_dirs
    linked_dirs: int = 0
    #: subfolders -r could not list, and why: their photos are left out
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    #: pipes, sockets or devices named like photos: never opened, each reported
    special: list[Path] = field(default_factory=list)
    #: the -o folder met inside the tree without derain's marker (a folder of the user's
    #: own), with the photos it holds: left out of the scan, said
    excluded_photos: list[tuple[Path, int]] = field(default_factory=list)
    #: images named as derain names its results (``*_derained.*``): left out
    results: int = 0
    #: hidden images (``.name.jpg``; not macOS's ``._`` resource forks): left out
    hidden: int = 0
    #: of ``results``, those with no photo of the same name beside them (``x_derained.jpg``
    #: without ``x.*``): a photo of the user's named so, or a result whose photo is gone
    orphans: int = 0

    def unread_text(self) -> str:
        """``3 HEIC and 1 GIF file(s)``-style, most frequent first."""
        return _unread_text(self.unread)


def _unread_text(unread: Counter[str]) -> str:
    """Files derain does not read, by format: ``3 HEIC and 1 GIF file(s)``-style, most
    frequent first (a folder scan's, or a pattern's matches)."""
    parts = [f"{n} {fmt}" for fmt, n in unread.most_common()]
    return (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1
            else parts[0]) + " file(s)"


def _scan_folder(root: Path, recursive: bool, exclude: set[Path]) -> _Scan:
    """Image files under ``root`` (sorted, dot-files, outputs and ``exclude`` left out), the
    number of subfolders that were not entered, and the photos in formats not read."""
    found: list[Path] = []
    unread: Counter[str] = Counter()
    skipped_dirs = linked_dirs = 0
    unreadable: list[tuple[Path, str]] = []
    special: list[Path] = []
    results: list[Path] = []
    hidden = 0

    def take(p: Path) -> None:
        nonlocal hidden
        if is_image_path(p) and not is_output_name(p):
            (special if _special(p) else found).append(p)
        elif is_image_path(p):
            results.append(p)
        elif (fmt := unread_photo_format(p)) is not None:
            unread[fmt] += 1
        elif (p.name.startswith(".") and not p.name.startswith("._")
              and p.suffix.lower() in SUPPORTED_SUFFIXES):
            hidden += 1

    def cannot_list(e: OSError) -> None:
        where = Path(e.filename) if e.filename else root
        if where == root:
            raise ImageError(f"cannot list folder: {e.strerror or e}")
        unreadable.append((where, e.strerror or str(e)))

    excluded_photos: list[tuple[Path, int]] = []

    def entered(d: Path) -> bool:
        if _resolved(d) in exclude:  # the -o folder: its results are no photos
            if not is_output_folder(d):  # but one of one's own may hold photos: said
                held = _images_below(d)
                if held:
                    excluded_photos.append((d, held))
            return False
        return not is_output_folder(d, note=True) and not _is_run_folder(d, note=True)

    top = _resolved(root)
    if recursive:
        for dirpath, dirnames, filenames in os.walk(root, onerror=cannot_list):
            here = Path(dirpath)
            links = [d for d in dirnames if not is_system_folder(d)  # never walked; (a
                     and (here / d).is_symlink()]  # hidden one is passed over, as ever)
            # counted unless the folder it leads to is walked as itself (an audit)
            linked_dirs += sum(not _walked(here / d, top, exclude) for d in links)
            dirnames[:] = sorted((d for d in dirnames if d not in links
                                  and not is_system_folder(d) and entered(here / d)),
                                 key=natural_key)
            for f in sorted(filenames, key=natural_key):
                take(here / f)
    else:
        try:
            entries = sorted(root.iterdir(), key=lambda e: natural_key(e.name))
        except OSError as e:
            raise ImageError(f"cannot list folder: {e.strerror or e}") from None
        for p in entries:
            if p.is_dir():
                if is_system_folder(p.name) or is_output_folder(p) or _is_run_folder(p):
                    continue
                if p.is_symlink():  # -r would not enter it either
                    linked_dirs += 1
                else:
                    skipped_dirs += 1
            else:
                take(p)
    sources = {(p.parent, p.stem) for p in (*found, *special, *results)}  # (b_derained_
    # derained.png beside b_derained.png has its photo: it was counted as one without)
    orphans = sum((r.parent, r.stem[: -len(OUTPUT_TAG)]) not in sources for r in results)
    return _Scan(found, skipped_dirs, unread, linked_dirs, unreadable, special,
                 excluded_photos, len(results), hidden, orphans)


def _walked(link: Path, top: Path, exclude: set[Path]) -> bool:
    """Whether a recursive scan of ``top`` (resolved) walks the folder ``link`` leads to as
    itself: inside the tree, and through no hidden, system, excluded or results folder."""
    target = _resolved(link)
    if target != top and top not in target.parents:
        return False
    folder = top
    for name in target.relative_to(top).parts:
        folder = folder / name
        if (is_system_folder(name) or folder.is_symlink() or folder in exclude
                or is_output_folder(folder)):
            return False
    return True


def _images_below(folder: Path) -> int:
    """The images a recursive scan of ``folder`` would take (links, hidden and system
    folders left out, as there), without its notes; 0 where it cannot be listed."""
    held = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not is_system_folder(d)
                       and not is_output_folder(here / d)]
        held += sum(1 for f in filenames
                    if is_image_path(here / f) and not is_output_name(here / f))
    return held


def _bracket_hint(pattern: str) -> str:
    """Where ``[`` in a pattern was meant literally (a folder "[2024] trip"): how to write
    it. Said only when the pattern so written matches images (it said only "no images
    match": an audit; on Windows derain expands the patterns itself)."""
    if "[" not in pattern:
        return ""
    literal = pattern.replace("[", "[[]")
    if not any(is_image_path(m) or Path(m).is_dir() for m in expand_pattern(literal)):
        return ""
    return (f"; '[' in a pattern is a wildcard: '{literal}' matches a literal '[' (quoted, "
            "so the shell leaves it)")


def expand_pattern(pattern: str) -> list[str]:
    """The paths a pattern matches, as :func:`glob.glob` (``**`` spans folders, dot-names
    only when the pattern spells the dot) but never through a symbolic link to a folder:
    glob followed them, so a link to a parent folder nested results 40 levels deep, and two
    such links never finished. Without ``**`` glob itself is used (it cannot recurse)."""
    if "**" not in pattern:
        return glob.glob(pattern)
    base = _glob_base(pattern)
    parts = Path(pattern).parts[len(base.parts):]  # Path(".").parts is ()
    dirs_only = pattern.endswith(("/", os.sep))  # as glob: 'a/**/' matches folders only
    hidden = any(part.startswith(".") for part in parts)  # named: walk into dot-folders
    found: list[str] = []
    if all(part == "**" for part in parts) and base.parts and base.is_dir():
        found.append(str(base) + os.sep)  # as glob: 'tree/**' matches 'tree/' itself
    def cannot_list(e: OSError) -> None:  # glob skips these in silence: say so
        if hidden or not any(part.startswith(".") for part in
                             Path(e.filename or base).relative_to(base).parts):
            log.warning("%s: cannot read folder (%s); photos in it are left out",
                        e.filename or base, e.strerror or e)

    for dirpath, dirnames, filenames in os.walk(base, followlinks=False, onerror=cannot_list):
        here = Path(dirpath)
        rel = here.relative_to(base).parts
        for name in sorted(dirnames if dirs_only else dirnames + filenames):
            if _match_parts(parts, (*rel, name)):
                found.append(str(here / name) + (os.sep if dirs_only else ""))
        dirnames[:] = sorted(d for d in dirnames
                             if not is_system_folder(d) or (hidden and d.startswith(".")))
    return found


def _match_parts(pattern: tuple[str, ...], path: tuple[str, ...]) -> bool:
    """Whether ``path``'s components match ``pattern``'s (``**``: any number of folders)."""
    if not pattern:
        return not path
    head, rest = pattern[0], pattern[1:]
    if head == "**":  # any number of names, none of them hidden
        for i in range(len(path) + 1):
            if _match_parts(rest, path[i:]):
                return True
            if i < len(path) and path[i].startswith("."):
                return False
        return False
    if not path:
        return False
    name = path[0]
    if name.startswith(".") and not head.startswith("."):
        return False
    # in the file system's case (fnmatch: any case on Windows, as glob there matches)
    return fnmatch.fnmatch(name, head) and _match_parts(rest, path[1:])


def without_shell_leftovers(inputs: Sequence[str], output: Path,
                            recursive: bool = False) -> list[str]:
    """``inputs`` without what a shell added from an earlier run into the ``-o`` folder.

    ``derain * -o out/`` run again gets ``out`` from the shell too; bash's ``**`` gets
    ``out/a.png``, ``out/s`` ...; ``derain * -o res/der/`` gets ``res``, which holds no photo
    of its own. Only when other inputs are given: a folder named alone is still the user's
    choice (and refused as -o's input). An ``output`` derain did not mark (the user's own
    folder) is left out only when it holds no photo: ``mkdir out; derain * -o out/`` was
    refused as "an input folder" whose originals would be replaced, of an empty folder (an
    audit); one holding photos stays, and is refused.
    """
    if len(inputs) < 2 or not output.is_dir():
        return list(inputs)
    out = _resolved(output)
    if not is_output_folder(output):
        if _photos_in(output, recursive):
            return list(inputs)
        return [raw for raw in inputs if _resolved(Path(raw)) != out]
    kept = []
    for raw in inputs:
        p = _resolved(Path(raw))
        if p == out or out in p.parents:
            continue  # the -o folder, or a result or subfolder in it
        if p in out.parents and Path(raw).is_dir() and not recursive and not _photos_in(p):
            continue  # an ancestor of -o with no photo of its own
        kept.append(raw)
    return kept


def _photos_in(folder: Path, recursive: bool = False) -> list[Path]:
    """The photos a folder scan would take from ``folder`` itself, or with ``recursive``
    from its tree (none if unlistable)."""
    try:
        return _scan_folder(folder, recursive, set()).files
    except ImageError:
        return []


def _in_output_folder(match: Path, base: Path, excluded: set[Path],
                      known: dict[Path, bool]) -> bool:
    """Whether a pattern's match lies in (or is) a folder that holds results: the ``-o``
    folder or one marked by an earlier run. Only the folders the wildcards reached count:
    ``derain 'out/*.png'`` names ``out`` on purpose. ``known`` caches the folders seen (so
    a marked folder is looked up, and reported, once)."""
    try:
        below = match.relative_to(base).parts
    except ValueError:
        return False
    folder = base
    for i, part in enumerate(below):
        folder = folder / part
        if i == len(below) - 1 and not match.is_dir():
            break
        if folder not in known:
            known[folder] = _resolved(folder) in excluded or is_output_folder(folder, note=True)
        if known[folder]:
            return True
    return False


NOT_REGULAR = "not a regular file (a pipe, socket or device)"


def _special(p: Path) -> bool:
    """A FIFO, socket or device named like a photo: opening it would block or never end.
    (A broken link is not special: it is kept, to be reported as unreadable; so is a file
    that cannot be looked at, in a folder without search permission.)"""
    try:
        return p.exists() and not p.is_file() and not p.is_dir()
    except OSError:
        return False


def collect_inputs(
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    recursive: bool = False,
    *,
    exclude: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] = (),
) -> list[InputItem]:
    """Turn command-line inputs (files, folders, glob patterns) into a list of photos.

    * A file is taken as given (even ``*_derained.*``); a suffix other than JPEG, PNG, WebP,
      TIFF or BMP (any case) is an error item.
    * A folder contributes its images (``recursive``: its whole tree, mirrored under an
      output folder), leaving out dot-files, our own outputs (``*_derained.*``) and the
      folders in ``exclude`` (an output folder inside the input tree).
    * A pattern with ``*``, ``?`` or ``[`` that is not an existing path is expanded with
      :mod:`glob` (``**`` spans folders); matching folders are scanned as above.
    * A path that does not exist, a pattern that matches nothing and a folder without
      images become error items: reported as failures, never an exception.

    Where results go under an output folder (``rel``): a folder given alone keeps its
    images' paths inside it; a folder given beside other inputs (folders or files) puts its
    results under its own name (``-o out f1 f2`` writes ``out/f1/...`` and ``out/f2/...``,
    ``-o out a.jpg f1`` writes ``out/a.jpg`` and ``out/f1/...``, so equal file names cannot
    collide; two named folders of one name go under as many of their last path parts as
    tell them apart: ``card1/DCIM card2/DCIM`` writes ``out/card1/DCIM/...`` and
    ``out/card2/DCIM/...``); folders matched by a pattern keep their path below the
    pattern's base.

    A file reached twice is listed once. One path given alone (a ``str`` or ``Path``, not
    in a list) is one input.
    """
    inputs = [os.fspath(raw) for raw in _paths(inputs)]  # a string was walked letter by
    # letter: "photos/" scanned the whole file system from "/" (an audit)
    exclude = _paths(exclude)
    # a folder beside other inputs gets its own subfolder (a lone folder does not)
    folders = [Path(i) for i in inputs if Path(i).is_dir()] if len(inputs) > 1 else []
    collector = _Collector(recursive, {_resolved(Path(e)) for e in exclude})
    collector.prefixes = _folder_prefixes(folders)
    for given in inputs:
        collector.given(given)
    return collector.items


def _paths(given: Any) -> list[Any]:
    """``given`` as a list of paths: one path alone (``str``, ``bytes``, ``PathLike``) is one."""
    return [given] if isinstance(given, str | bytes | os.PathLike) else list(given)


def _folder_prefixes(folders: Sequence[Path]) -> dict[Path, Path]:
    """Each named folder's (resolved) subfolder under an output folder: its name, or, where
    named folders share it, the fewest last parts of its path that tell it from them
    (``card1/DCIM`` and ``card2/DCIM`` both went to ``out/DCIM``, where the second's equal
    names failed as clashes on every run: an audit)."""
    paths = {_resolved(f) for f in folders}
    prefixes = {}
    for r in paths:
        parts = _named_parts(r)
        others = [_named_parts(o) for o in paths if o != r and o.name == r.name]
        k = 1
        while k < len(parts) and any(o[-k:] == parts[-k:] for o in others):
            k += 1
        prefixes[r] = Path(*parts[-k:])
    return prefixes


def _named_parts(path: Path) -> tuple[str, ...]:
    """``path``'s parts, its anchor as a plain name: a drive's letter (``E:\\DCIM`` and
    ``F:\\DCIM``, two cards, were both DCIM: a review), ``root`` for ``/``."""
    anchor = (re.sub(r"[\\/:]+", "_", path.drive).strip("_") or "root") if path.anchor else ""
    return ((anchor,) if anchor else ()) + path.parts[1 if path.anchor else 0:]


def _broken_link(path: Path) -> str:
    """Why a symbolic link leads to no file: a loop is said as one (it was "broken")."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symbolic link loop (it leads back to itself)"
    return "broken symbolic link"


def _unsupported(path: Path) -> str:
    """Why a named file whose suffix derain does not read is refused; where its first bytes
    show an image derain reads, what to rename it to (the suffix also picks the output's
    format, so it is not guessed)."""
    shown = f"'{path.suffix}'" if path.suffix else "(no suffix)"
    if path.suffix.lower() in (".safetensors", ".pt", ".pth", ".ckpt"):  # `derain RUN/model
        # .safetensors`: "unsupported file type" said nothing of --weights (an audit)
        return (f"a weights file, not a photo: to derain photos with it, pass it as --weights "
                f"{path}")
    fmt = sniff_format(path)
    if unread_photo_format(path) == "camera raw" and fmt in (None, "TIFF"):  # a TIFF
        # container: "name it x.tif" would rename the raw file and derain only its small
        # first picture (an audit); a PNG or JPEG merely named .dng is said as one (a review)
        return (f"a camera raw image, which derain does not read (supported: "
                f"{_SUPPORTED_TEXT}): export it from your raw editor as JPEG, PNG or TIFF")
    if fmt is None:
        other = foreign_format(path)  # a GIF named as such had no hint (an audit)
        if other is not None:
            return (f"a {other} image, which derain does not read (supported: "
                    f"{_SUPPORTED_TEXT}): convert it to JPEG, PNG or TIFF")
        return f"unsupported file type {shown} (supported: {_SUPPORTED_TEXT})"
    renamed = (path.stem if path.suffix else path.name) + FORMAT_SUFFIX[fmt.lower()]
    return (f"unsupported file type {shown}, though it holds a {format_name(fmt)} image: name it "
            f"{renamed} (the suffix also picks the result's format)")


class _Collector:
    """``collect_inputs``' list in the making: the items, and the files already listed."""

    def __init__(self, recursive: bool, excluded: set[Path]) -> None:
        self.recursive, self.excluded = recursive, excluded
        self.resolved = _Resolver()
        #: named folders' subfolders under -o (see ``_folder_prefixes``); none when alone
        self.prefixes: dict[Path, Path] = {}
        self.items: list[InputItem] = []
        #: each file listed (resolved) -> its place in ``items``, and whether it was
        #: reached through a link below the folder scanned
        self.seen: dict[Path, int] = {}
        self.linked: dict[Path, bool] = {}
        #: images offered to ``add``, those already listed too (a pattern whose every
        #: match an earlier input listed matched something: it is no failure)
        self.offered = 0

    def add(self, path: Path, rel: Path, root: Path | None = None) -> None:
        """List ``path`` (found under the folder ``root``, or named itself: None) unless the
        file is listed already; reached first through a link, it takes its own place."""
        self.offered += 1
        key = self.resolved(path)
        at = self.seen.get(key)
        linked = _through_link(path, root)
        if at is None:
            self.seen[key] = len(self.items)
            self.items.append(InputItem(path, rel))
            self.linked[key] = linked
        elif self.linked[key] and not linked:
            # the file's own place in the mirror, not a link's that sorted first (an audit:
            # real/x.jpg's result was written as other/xlink.jpg only)
            self.items[at] = InputItem(path, rel)
            self.linked[key] = False

    def failed(self, path: Path, rel: Path, why: str) -> None:
        self.items.append(InputItem(path, rel, why))

    def given(self, given: str) -> None:
        """One command-line input: a folder, a file, a pattern, or an error item."""
        path = Path(given)
        if path.is_dir() and _is_run_folder(path):  # named where its model was meant:
            # its loss chart was derained into it in silence (an audit)
            model = path / "model.safetensors"
            self.failed(path, Path(path.name), "a training run's folder, not photos"
                        + (f" (its model: --weights {shlex.quote(str(model))})"
                           if model.is_file() else ""))
        elif path.is_dir():
            self.folder(path, self.prefixes.get(_resolved(path), Path()))
        elif path.exists():
            if _special(path):
                self.failed(path, Path(path.name), NOT_REGULAR)
            elif path.suffix.lower() in SUPPORTED_SUFFIXES:
                self.add(path, Path(path.name))
            else:
                self.failed(path, Path(path.name), _unsupported(path))
        elif has_glob(given):
            self.pattern(given)
        elif path.is_symlink():
            self.failed(path, Path(path.name), _broken_link(path))
        else:
            self.failed(path, Path(path.name), "no such file or folder")

    def pattern(self, given: str) -> None:
        """A glob pattern's matches: folders scanned, images listed below its base."""
        base = _glob_base(given)
        before, offered = len(self.items), self.offered
        known: dict[Path, bool] = {}
        unread: Counter[str] = Counter()  # matches derain does not read, by format
        for m in sorted(expand_pattern(given), key=natural_key):
            mp = Path(m)
            if _in_output_folder(mp, base, self.excluded, known):
                continue  # an earlier run's results, matched by a wildcard
            if (fmt := unread_photo_format(mp)) is not None and not mp.is_dir():
                unread[fmt] += 1
            if mp.is_dir() and _is_run_folder(mp, note=True):  # as a scan skips it: a
                continue  # pattern derained a run's curves.png (a review)
            if mp.is_dir():
                try:
                    prefix = mp.relative_to(base)
                except ValueError:
                    prefix = _folder_name(mp)
                self.folder(mp, prefix, matched=given, root=base)
            elif is_image_path(mp) and not is_output_name(mp) and not _special(mp):
                try:
                    rel = mp.relative_to(base)
                except ValueError:
                    rel = Path(mp.name)
                self.add(mp, rel, base)
        if len(self.items) == before and self.offered == offered:
            said = _unread_text(unread) if unread else ""
            self.failed(Path(given), Path(Path(given).name), "no images match this pattern" + (
                f" ({said} match it, which derain does not read: convert them to JPEG, PNG "
                "or TIFF)" if said else "") + _bracket_hint(given))  # "no images" of GIFs
        elif unread:  # beside readable matches they were passed over in silence (an audit)
            log.warning("%s: %s matching it not read (derain reads %s): convert them to JPEG, "
                        "PNG or TIFF to include them", given, _unread_text(unread),
                        _SUPPORTED_TEXT)

    def folder(self, folder: Path, prefix: Path = Path(), matched: str | None = None,
               root: Path | None = None) -> None:
        """A folder's images. ``matched``: the pattern that found this folder (then no images
        in it is no error, and under ``**`` its subfolders are matched themselves: no "add
        -r" warning)."""
        try:
            scan = _scan_folder(folder, self.recursive, self.excluded)
        except ImageError as e:
            self.failed(folder, Path(folder.name), str(e))
            return
        files, skipped_dirs = scan.files, scan.skipped_dirs
        for sub, why in scan.unreadable:  # one failure line each; the batch goes on
            self.failed(sub, prefix / sub.relative_to(folder),
                        f"cannot read folder: {why}; its photos are left out")
        for odd in scan.special:  # as when named: a FIFO vanished from a scan in silence
            self.failed(odd, prefix / odd.relative_to(folder), NOT_REGULAR)
        for out, held in scan.excluded_photos:
            log.warning("%s: the output folder is not scanned (derain never takes an output "
                        "folder's images for photos): its %d image(s) are left out (photos "
                        "of yours, or results of an earlier run); to derain photos of yours "
                        "in it, choose an output folder outside %s", out, held, folder)
        if scan.linked_dirs:
            log.warning("%s: %d link(s) to folders not followed (derain never follows them, "
                        "so that no folder is derained twice); name the folders themselves "
                        "to include them", folder, scan.linked_dirs)
        if scan.unread and files:
            log.warning("%s: %s not read (derain reads %s): convert them to JPEG, PNG or "
                        "TIFF to include them", folder, scan.unread_text(), _SUPPORTED_TEXT)
        if scan.orphans and files:  # a photo of one's own named so was left out without a
            # word (an audit); a result beside its photo is no news on a rerun
            log.warning("%s: %d image(s) named *%s.* with no photo of that name beside them "
                        "left out, as derain's earlier results are; rename them to include "
                        "them", folder, scan.orphans, OUTPUT_TAG)
        if matched is not None:
            if "**" in matched:
                skipped_dirs = 0
            if not files:
                if skipped_dirs:
                    log.warning("%s: %d subfolder(s) not entered; add -r to include them",
                                folder, skipped_dirs)
                return
        if not files and scan.unreadable:
            return  # said above: the photos are in the folders that could not be read
        if not files:
            hint = f"; it has {skipped_dirs} subfolder(s): add -r to include them" if (
                skipped_dirs) else ""
            if scan.unread:
                hint += (f"; {scan.unread_text()} here are not read: convert them to JPEG, "
                         "PNG or TIFF")
            if scan.results:  # "no images found" of a folder of them (an audit)
                hint += (f"; {scan.results} image(s) named *{OUTPUT_TAG}.* here are left "
                         "out as results of an earlier run: name one to derain it")
            if scan.hidden:  # said nothing of them (an audit)
                hint += (f"; {scan.hidden} hidden image(s) (names starting with '.') are "
                         "left out: name one to derain it")
            self.failed(folder, Path(folder.name),
                        f"no images found ({_SUPPORTED_TEXT}){hint}")
        elif skipped_dirs:
            log.warning("%s: %d subfolder(s) not entered; add -r to include them",
                        folder, skipped_dirs)
        for f in files:
            # links judged below ``root`` (a pattern's base: a folder it matched through a
            # link is a link's place; a review), or below the folder itself
            self.add(f, prefix / f.relative_to(folder), root or folder)


def _through_link(path: Path, root: Path | None) -> bool:
    """Whether ``path`` is a link, or reaches its file through a linked folder below
    ``root`` (the folder scanned; None: ``path`` was named itself). Not above it: under a
    folder that is itself a link (~/Photos on a NAS) every file would count (a review)."""
    try:
        if path.is_symlink():
            return True
        if root is None:
            return False
        inner = path.parent.relative_to(root).parts
        folder = root
        for name in inner:
            folder = folder / name
            if folder.is_symlink():
                return True
    except (OSError, ValueError):  # a folder that cannot be entered: the file is kept, to
        return False  # fail on its own line (a CI run caught this raising)
    return False


def _folder_name(folder: Path) -> Path:
    return Path(_resolved(folder).name or "root")


# --------------------------------------------------------------------------- planning
@dataclass
class BatchOptions:
    """How to name and write outputs.

    ``output``: None writes ``NAME_derained.EXT`` beside each input; a folder receives
    ``NAME.EXT`` at each input's ``rel`` path; a file (``output_file=True``, or a path with an
    image suffix that is not an existing folder) takes the single input's result.
    ``format``: png/jpg/webp/tiff/bmp changes the suffix (None keeps the input's).
    ``max_pixels``: inputs larger than this are refused (None: no limit).
    ``raise_errors``: re-raise unexpected per-file exceptions (debugging) instead of
    recording them as failures.
    ``io_workers``: threads that decode the next photos and encode finished ones while the
    network runs (0: all in line); None: ``GPU_IO_WORKERS`` on a GPU, where decoding and
    encoding would otherwise leave it idle, and 0 on the CPU, whose cores the network
    already uses.
    ``started``: when the run began (``time.time()``): a result written since then is
    another run's, left to it with ``overwrite`` and said as its without (None: when
    ``run_batch`` is called;
    the CLI sets it before its model loads, which on a GPU takes seconds in which a run
    started earlier writes results: a review).
    """

    output: Path | None = None
    output_file: bool | None = None
    format: str | None = None
    quality: int = 95
    overwrite: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    raise_errors: bool = False
    io_workers: int | None = None
    started: float | None = None

    def __post_init__(self) -> None:
        if self.output is not None:
            self.output = Path(self.output)
        if self.format is not None:
            fmt = self.format.lower().lstrip(".")
            if fmt not in FORMAT_SUFFIX:
                raise ValueError(
                    f"unknown output format {self.format!r}; use png, jpg, webp, tiff or bmp"
                )
            self.format = fmt
        check_quality(self.quality)  # as write_image (90.5 failed every photo after its
        # work: a review)


#: suffixes of image (or document) files derain cannot write: ``-o out.gif`` is a mistake, not
#: a folder name (every photo format derain does not read, and other image files)
FOREIGN_IMAGE_SUFFIXES = frozenset(UNREAD_PHOTO_FORMATS) | frozenset({
    ".ico", ".psd", ".tga", ".ppm", ".pgm", ".pbm", ".pnm", ".raw", ".svg", ".pdf", ".eps",
    ".exr", ".hdr",
})


def output_is_file(output: Path) -> bool:
    """Whether ``-o PATH`` names a file: not an existing folder, and an image suffix."""
    return not output.is_dir() and output.suffix.lower() in SUPPORTED_SUFFIXES


@dataclass(frozen=True)
class Job:
    """An input with its planned output; ``error`` set when it must fail without work."""

    item: InputItem
    output: Path | None
    error: str | None = None


def _writes_one_file(options: BatchOptions) -> bool:
    """Whether ``options.output`` is a single output file (else a folder, or None)."""
    return options.output is not None and (
        options.output_file if options.output_file is not None else output_is_file(options.output)
    )


def _output_for(item: InputItem, options: BatchOptions, to_file: bool) -> Path:
    suffix = FORMAT_SUFFIX[options.format] if options.format else item.path.suffix
    if options.output is None:
        return item.path.with_name(f"{item.path.stem}{OUTPUT_TAG}{suffix}")
    if to_file:
        return options.output
    return options.output / item.rel.parent / f"{item.rel.stem}{suffix}"


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return _resolved(a) == _resolved(b)


def plan_jobs(items: Sequence[InputItem], options: BatchOptions) -> list[Job]:
    """The output of every input, refusing outputs that are an input or are claimed twice."""
    to_file = _writes_one_file(options)
    if to_file:
        real = [i for i in items if i.error is None]
        if len(real) > 1:
            raise ValueError(
                f"-o {options.output} is a file, but there are {len(real)} inputs; "
                "give a folder to write several results"
            )
    items = _without_earlier_results(items, options, to_file)
    # compared as the file system compares names: one file on macOS and Windows may have
    # two spellings here (IMG_1.jpg, img_1.jpg)
    keys = NameKeys()
    inputs = {keys(i.path) for i in items if i.error is None}
    planned: list[tuple[InputItem, Path | None, str | None, bool]] = []
    claims: dict[str, list[InputItem]] = {}  # an output's key -> the inputs that write it
    for item in items:
        if item.error is not None:
            planned.append((item, None, None, False))
            continue
        out = _output_for(item, options, to_file)
        key = keys(out)
        itself = _same_file(out, item.path)
        if not itself and key not in inputs:
            claims.setdefault(key, []).append(item)
        planned.append((item, out, key, itself))
    jobs: list[Job] = []
    for item, out, key, itself in planned:
        if out is None or key is None:
            jobs.append(Job(item, None, item.error))
        elif itself:
            jobs.append(Job(item, out, "the output would overwrite the input; choose another -o"))
        elif key in inputs:
            jobs.append(Job(item, out, f"the output {out} is another input of this batch"))
        elif len(claims[key]) > 1:  # none of them: the first one sorted took it, and a
            # rerun after a new clashing photo skipped that one as done with the other's
            # result (an audit); every rerun fails them alike: say the way out
            others = ", ".join(str(o.path) for o in claims[key] if o is not item)
            jobs.append(Job(item, out, f"{others} writes the same output {out}; rename one "
                                       "of them, or derain it into another -o"))
        else:
            jobs.append(Job(item, out))
    return jobs


def _without_earlier_results(
    items: Sequence[InputItem], options: BatchOptions, to_file: bool
) -> list[InputItem]:
    """Leave out inputs that are another input's result from an earlier run.

    ``derain *.jpg`` run twice gets ``a.jpg a_derained.jpg`` from the shell the second time:
    ``a_derained.jpg`` is a's result, to be skipped as done (or redone with --overwrite), not a
    new photo to derain into ``a_derained_derained.jpg``. Only files that look like results
    (``*_derained.*``, or in a folder derain marked as its output) are left out: a user's
    photo that another input would write over stays an input, and its clash is reported.
    """
    resolved = _Resolver()
    real = {id(i): resolved(i.path) for i in items if i.error is None}
    made_by_another: set[Path] = set()
    for i in items:
        if i.error is None:
            out = resolved(_output_for(i, options, to_file))
            if out != real[id(i)]:
                made_by_another.add(out)

    # results written beside their inputs, of any --format, are earlier results too (a.jpg's
    # a_derained.png when `derain *` follows `derain *.jpg --format png`)
    stems = {(resolved(i.path.parent), i.path.stem) for i in items if i.error is None}

    def earlier_result(item: InputItem) -> bool:
        if item.error is not None:
            return False
        key = real[id(item)]
        if key not in made_by_another:
            source_stem = item.path.stem[: -len(OUTPUT_TAG)]
            # under -o too: `derain *.jpg -o out/` after `derain *.jpg` passes a_derained.jpg
            return (is_output_name(item.path)
                    and (resolved(item.path.parent), source_stem) in stems)
        return is_output_name(item.path) or is_output_folder(key.parent)

    kept = [i for i in items if not earlier_result(i)]
    if len(kept) < len(items):
        log.info("left out %d input(s) that are results of other inputs (earlier runs)",
                 len(items) - len(kept))
    return kept


def _needs_model(j: Job, options: BatchOptions) -> bool:
    """Not failing upfront, and its output missing (or to be overwritten)."""
    return _upfront(j, options) is None


def pending(jobs: Sequence[Job], options: BatchOptions) -> int:
    """How many jobs need the model (not failing upfront, output missing or overwrite)."""
    return len(pending_jobs(jobs, options))


def pending_jobs(jobs: Sequence[Job], options: BatchOptions) -> list[Job]:
    """The jobs that need the model: those whose results this run writes."""
    return [j for j in jobs if _needs_model(j, options)]


def pending_megapixels(jobs: Sequence[Job], options: BatchOptions,
                       enough: float | None = None) -> float:
    """Megapixels the pending jobs will send through the model, from the image headers
    (unreadable files count 0). Stops counting past ``enough`` (large folders)."""
    return pending_workload(jobs, options, enough)[0]


def pending_workload(jobs: Sequence[Job], options: BatchOptions,
                     enough: float | None = None, *,
                     done_too: bool = False) -> tuple[float, int]:
    """``pending_megapixels`` and how many readable images they were counted over (their
    mean size is what tiling costs: ``engine_choice``). ``done_too``: the photos whose
    results exist count as well, so that a rerun that redoes a few of a folder's photos
    costs the job as the first run did, and picks the same engine (whose pixels differ
    from the other's: README, "int8 or bf16")."""
    total, images = 0.0, 0
    for j in jobs:
        upfront = _upfront(j, options)  # None: needs the model
        if upfront is not None and not (done_too and upfront[0] == "skipped"
                                        and upfront[1].startswith("output exists")):
            continue
        mp = _header_megapixels(j.item.path)
        if mp:
            total += mp
            images += 1
        if enough is not None and total > enough:
            break
    return total, images


def _suffix_format(path: Path) -> str | None:
    try:
        return format_for_path(path)
    except ImageError:
        return None


def _header_megapixels(path: Path) -> float | None:
    """An image's size from its header (no decoding); None when unreadable (the batch
    reports unreadable files itself, when it reads them)."""
    size = _header_size(path)
    return size[0] * size[1] / 1e6 if size else None


def _header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from an image's header (no decoding), None when unreadable."""
    import warnings

    from PIL import Image

    from .images import _PIL_LIMIT

    try:  # quietly: the read itself reports a file's problems (e.g. corrupt EXIF) once
        with warnings.catch_warnings(), _PIL_LIMIT.disabled():  # --max-pixels decides that
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                return im.width, im.height
    except Exception:  # noqa: BLE001
        return None


# --------------------------------------------------------------------------- results
def engine_record(derainer: Any) -> dict[str, Any] | None:
    """What ran the network, for ``--json`` and scripts: model, device, engine, precision,
    tile and its overlap, tiles per forward pass (``tile_batch``), strength, passes averaged
    (``ensemble``), the rain's slant the photos are turned by (``rain_angle``: 0 for none,
    or "auto", each file's own in its record) and why that engine
    (``Derainer.engine_note``: a measured choice, or empty)."""
    if derainer is None:
        return None
    return {k: getattr(derainer, attr, None) for k, attr in (
        ("model", "model_name"), ("device", "device_name"), ("backend", "backend"),
        ("precision", "precision"), ("tile", "tile"), ("tile_overlap", "overlap_used"),
        ("tile_batch", "tile_batch"), ("strength", "strength"),
        ("ensemble", "ensemble"), ("rain_angle", "rain_angle"), ("note", "engine_note"))}


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run_batch`; ``summary`` holds this process's files done so far."""

    def __init__(self, summary: Summary) -> None:
        super().__init__()
        self.summary = summary


class BatchProgress:
    """Hooks called by :func:`run_batch`; the base class does nothing (subclass to report)."""

    def start(self, total: int) -> None:
        """The batch begins with ``total`` jobs (this rank's share)."""

    def file_start(self, job: Job) -> None:
        """About to work on ``job`` (also called for jobs that will be skipped or fail)."""

    def file_left(self, job: Job) -> None:
        """``job``, started, is put off to the end (another run is deraining it): its
        ``file_start`` comes again then, before its ``file_done``."""

    def tile(self, done: int, total: int) -> None:
        """Work through the network on the current image: ``done`` of ``total``, counted in
        pixels (``derain_cli.enhancer.TileCallback``), not tiles: only the ratio means
        anything."""

    def file_done(self, job: Job, result: FileResult) -> None:
        """``job`` finished with ``result`` (processed, skipped or failed)."""


# --------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class DistInfo:
    """This process's place in a ``torchrun`` job (world_size 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistInfo:
        def num(name: str, default: int) -> int:
            try:
                return int(os.environ.get(name, default))
            except ValueError:
                return default

        world = num("WORLD_SIZE", 1)
        if world <= 1:
            return cls()
        return cls(num("RANK", 0), world, num("LOCAL_RANK", 0))


def init_distributed(device: str = "auto") -> tuple[DistInfo, str]:
    """Join the ``torchrun`` process group if ``WORLD_SIZE`` > 1.

    Returns this rank's :class:`DistInfo` and the device it should use: on CUDA
    (``device`` auto or cuda with a GPU present) ``cuda:LOCAL_RANK`` with the NCCL backend
    (gloo if there are fewer GPUs than local ranks), otherwise the CPU with gloo. An explicit
    ``cuda:N`` is kept. Without torchrun: ``(DistInfo(), device)`` unchanged.
    """
    info = DistInfo.from_env()
    if not info.enabled:
        return info, device
    # as every device option is read (--device CUDA took gloo and no set_device here)
    device = device.strip().lower()
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    use_cuda = torch.cuda.is_available() and (device == "auto" or device.startswith("cuda"))
    if use_cuda:
        from .torch_runner import check_one_gpu_each

        count = torch.cuda.device_count()
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size) or 1)
        check_one_gpu_each(device, local_world, count)
        dev = f"cuda:{info.local_rank % count}" if device in ("auto", "cuda") else device
        torch.cuda.set_device(torch.device(dev))
        # NCCL needs one GPU per rank; with more ranks than GPUs the (tiny) control traffic
        # of this module goes over gloo instead (Windows' PyTorch has no NCCL).
        backend = "nccl" if count >= local_world and sys.platform != "win32" else "gloo"
    else:
        dev = "cpu" if device == "auto" else device
        backend = "gloo"
    if not dist.is_initialized():
        # Ranks finish their shares at different times and then wait in all_gather for the
        # slowest one: the default 10-30 min collective timeout is too short for big folders.
        # (If a rank dies, torchrun tears the others down anyway.)
        dist.init_process_group(backend=backend, timeout=timedelta(hours=24))
    return info, dev


def gather_summaries(summary: Summary, info: DistInfo) -> list[Summary]:
    """Every rank's summary, on every rank (``all_gather_object``); just ``[summary]`` alone."""
    if not info.enabled:
        return [summary]
    import torch.distributed as dist

    parts: list[Summary | None] = [None] * info.world_size
    dist.all_gather_object(parts, summary)
    return [p for p in parts if p is not None]


def share_from_main(info: DistInfo, value: Any) -> Any:
    """Rank 0's ``value`` on every rank (``broadcast_object_list``); ``value`` alone."""
    if not info.enabled:
        return value
    import torch.distributed as dist

    box = [value if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    """Wait for every rank (e.g. so none exits while rank 0 still prints); no-op alone."""
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def shutdown_distributed() -> None:
    """Leave the process group, if one was joined."""
    dist = sys.modules.get("torch.distributed")  # never joined if never imported: no torch
    if dist is None:
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------- running
def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    return first or type(e).__name__


class _FileFailed(Exception):
    """One file's failure, with the line the summary shows (``status`` "skipped" for a
    result another run wrote meanwhile)."""

    def __init__(self, reason: str, status: Status = "failed") -> None:
        super().__init__(reason)
        self.status: Status = status


class _DiskFull(_FileFailed):
    """A result that could not be written for want of space: every later photo bound for
    the same disk fails before its network pass (``_FullDisks``)."""

    def __init__(self, reason: str, device: int | None) -> None:
        super().__init__(reason)
        self.device = device


def _device_of(path: Path) -> int | None:
    """The file system (``st_dev``) ``path`` is or would be on: its nearest existing folder's."""
    for p in (path, *path.parents):
        try:
            return os.stat(p).st_dev
        except OSError:
            continue
    return None


def _looks_full(folder: Path, need: int) -> bool:
    """Whether the disk of ``folder`` has less room than ``need`` bytes (an uncompressed
    8-bit photo's, more than its result takes) or no free inode."""
    import shutil

    for p in (folder, *folder.parents):
        try:
            if shutil.disk_usage(p).free < need:
                return True
            fs = os.statvfs(p) if hasattr(os, "statvfs") else None
            return fs is not None and fs.f_files > 0 and fs.f_favail == 0
        except OSError:
            continue
    return False


class _FullDisks:
    """Disks a result could not be written to (ENOSPC, EDQUOT). Why: with the disk full,
    every remaining photo was derained (minutes each on a CPU) and then failed to write
    (an audit); now those bound for a full disk fail at once, and a rerun after freeing
    space does them."""

    def __init__(self) -> None:
        self.devices: dict[int, str] = {}  # st_dev -> the folder that was full

    def note(self, e: _DiskFull, folder: Path) -> None:
        if e.device is not None:
            self.devices.setdefault(e.device, str(folder))

    def problem(self, job: Job) -> str | None:
        """Why ``job`` is not derained (its result's disk is full), else None."""
        if not self.devices or job.output is None:
            return None
        folder = self.devices.get(_device_of(job.output.parent))  # type: ignore[arg-type]
        if folder is None:
            return None
        return (f"not derained: no space left on the disk of {folder} (an earlier result "
                "could not be written there); free some space and run again, the finished "
                "results are kept")


#: A skip's reason where the file in the result's place may be the user's own: the -o
#: folder held other files, so derain did not mark it as its results folder (an audit:
#: the summary's "--overwrite redoes them" replaced a photo of the user's)
EXISTS_UNMARKED = "output exists, in a folder derain did not mark as its results"
#: a skip's reason where another derain run claimed the photo's result (``claim_file``),
#: or wrote it since this run started
CLAIMED = "another derain run took it (the result comes from that run)"


def _in_unmarked_folder(options: BatchOptions) -> bool:
    """Whether results go into an -o folder without derain's marker (it held other files
    when first used): a file there in a result's place may be a photo of the user's."""
    return (options.output is not None and not _writes_one_file(options)
            and not is_output_folder(options.output))


#: errors of a stat that Path.exists reads as "no such file" (a link loop included)
_NO_SUCH_FILE = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)


def _upfront(job: Job, options: BatchOptions) -> tuple[Status, str] | None:
    """The result of a job that needs no model (failed to plan, or output kept), else None."""
    out = job.output
    if job.error is not None or out is None:
        return "failed", job.error or "no output path"
    try:
        try:  # one stat (a rerun over 20 000 done photos made six of them each, twice)
            st: os.stat_result | None = out.stat()
        except OSError as e:  # what Path.exists takes for "no such file"; others raise
            if e.errno not in _NO_SUCH_FILE and getattr(e, "winerror", None) not in (
                    21, 123, 1921):  # Windows' own, which Path.exists takes alike (a review)
                raise
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            return "failed", f"the output {out} is a folder"
        if st is not None and not options.overwrite:
            if stat.S_ISREG(st.st_mode) and st.st_size == 0:  # no result (derain's writes
                # are whole or absent), yet it passed for one on every rerun (an audit)
                return "failed", (f"the output {out} exists but is empty; --overwrite "
                                  "replaces it (or delete it)")
            if _in_unmarked_folder(options):
                return "skipped", EXISTS_UNMARKED
            if _written_since(st.st_mtime, options.started):
                return "skipped", CLAIMED  # written since this run started: another run's
                # (counted as an earlier result, "--overwrite redoes them": an audit)
            return "skipped", "output exists"
        if st is None and out.is_symlink() and not options.overwrite:  # a link to nothing:
            # the write would find the name taken after the network ran, on every rerun
            return "failed", (f"the output {out} is a broken symbolic link; remove it, or "
                              "--overwrite to replace the link")
    except OSError as e:  # e.g. a name past the file system's limit: this file only
        hint = ("; with -o DIR results keep their inputs' names (no _derained suffix)" if
                e.errno == errno.ENAMETOOLONG and options.output is None else "")
        return "failed", f"cannot use the output name {out}: {e.strerror or e}{hint}"
    src = job.item.path
    if not os.path.exists(src):  # its own reason, not the output's: a broken link in a
        # folder failed "cannot write to ..." (a read-only -o), "no space left" (an audit)
        return "failed", (_broken_link(src) if os.path.islink(src) else
                          "no such file or folder (gone since the folder was listed?)")
    with contextlib.suppress(OSError):  # no photo: said before the model loads (a folder
        if os.path.isfile(src) and os.path.getsize(src) == 0:  # of empty files loaded it)
            return "failed", "empty file (0 bytes)"
    why = why_unwritable(out.parent)  # before the model runs, not after
    if why is not None:
        hint = ("; write the results elsewhere with -o DIR" if options.output is None else "")
        return "failed", f"cannot write to {out.parent}: {why}{hint}"
    too_big = _side_limit_problem(job.item.path, out)
    if too_big:  # the encoder failed after the network had run
        return "failed", too_big
    return None


def _side_limit_problem(src: Path, out: Path) -> str | None:
    """Why the photo cannot be written in ``out``'s format (WebP's 16383 px a side), from
    its header; for a JPEG result read only where the input is not named as a JPEG (a JPEG
    always fits a JPEG; WebP results are rare enough to read every header)."""
    from .images import MAX_SIDE, side_limit_problem

    try:
        fmt = format_for_path(out)
    except ImageError:
        return None
    if fmt not in MAX_SIDE or (fmt == "JPEG" and _suffix_format(src) == fmt):
        return None
    size = _header_size(src)
    return side_limit_problem(fmt, *size) if size else None


def _guarded(fn: Callable[[], Any], options: BatchOptions) -> Any:
    """``fn()``, with a per-file problem turned into ``_FileFailed`` and its one-line reason."""
    try:
        return fn()
    except _FileFailed:
        raise
    except OutputExists as e:
        raise _FileFailed(f"output appeared meanwhile (another run?), kept: {e}",
                          "skipped") from None
    except (ImageError, CanvasTooLarge) as e:
        raise _FileFailed(_one_line(e)) from None
    except TilesExhausted as e:  # the enhancer already shrank the tiles to the floor
        raise _FileFailed(f"out of memory: {_one_line(e)}") from None
    except MemoryError as e:  # a host array (the network's own shortage is the tiles'
        # shrinking, TilesExhausted): "try a smaller --tile" could not help (an audit)
        raise _FileFailed(f"out of memory ({_one_line(e)}): the photo's full-size arrays "
                          "(the decoded photo and its float32 result, 15 bytes a pixel "
                          "and more, whatever the tile) may not fit; free some memory, or "
                          "leave such photos out with --max-pixels (a smaller --tile "
                          "shrinks only the network's share)") from None
    except Exception as e:
        if options.raise_errors:
            raise
        raise _FileFailed(f"{type(e).__name__}: {_one_line(e)}") from None


def _read(job: Job, options: BatchOptions) -> LoadedImage:
    return _guarded(lambda: read_image(job.item.path, max_pixels=options.max_pixels), options)


def _prepare(job: Job, loaded: LoadedImage, options: BatchOptions) -> PreparedImage:
    """The output quantised for its format (``loaded.pixels`` is the derained image)."""
    def prepare() -> PreparedImage:
        out = job.output
        assert out is not None
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ImageError(f"cannot create folder {out.parent}: {e.strerror or e}") from None
        fmt = format_for_path(out, options.format)
        if options.format is None and loaded.format != fmt and \
                _suffix_format(job.item.path) == fmt:  # "same as the input" is by name
            log.warning("%s is a %s file named like a %s one: the result is written as %s, "
                        "by its name (--format %s keeps %s)", job.item.path,
                        loaded.format, fmt, fmt, loaded.format.lower(), loaded.format)
        return prepare_image(out, loaded.pixels, like=loaded, format=fmt,
                             quality=options.quality)

    return _guarded(prepare, options)


def _encode(job: Job, box: list[LoadedImage], options: BatchOptions) -> float:
    """Encode and write the derained image held in ``box`` (emptied first, so the float32
    result, 12 bytes a pixel, is freed before encoding); returns its megapixels."""
    loaded = box.pop()
    h, w = loaded.pixels.shape[:2]
    prepared = _prepare(job, loaded, options)
    del loaded

    def write() -> None:
        try:
            prepared.write(replace=options.overwrite)
        except ImageError as e:
            cause, folder = e.__cause__, job.output.parent  # type: ignore[union-attr]
            # the errno is lost where the JPEG encoder writes itself ("broken data stream")
            # or the temporary file could not be made: the free space tells (a review)
            if (isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)) \
                    or _looks_full(folder, 3 * h * w):
                raise _DiskFull(_one_line(e), _device_of(folder)) from None
            raise

    _guarded(write, options)
    return h * w / 1e6


def _derain(job: Job, loaded: LoadedImage, derainer: Derainer,
            options: BatchOptions, progress: BatchProgress) -> LoadedImage:
    """The derained image, with the input's metadata; the input samples are let go."""
    rgb = _guarded(lambda: derainer.derain_array(loaded.pixels, on_tile=progress.tile), options)
    # Let go of the input samples before encoding (240 MB for an 80 MP 8-bit photo).
    return replace(loaded, pixels=rgb)


def _result(job: Job, t0: float, rank: int, status: Status, reason: str | None = None,
            mp: float = 0.0, rain_angle: float | None = None) -> FileResult:
    """``job``'s :class:`FileResult`, timed from ``t0``."""
    out = None if job.output is None else str(job.output)
    return FileResult(job.item.display, out, status, reason, mp, time.perf_counter() - t0, rank,
                      rain_angle)


def _process(
    job: Job,
    derainer: Derainer | None,
    options: BatchOptions,
    progress: BatchProgress,
    rank: int,
    full: _FullDisks | None = None,
    since: float | None = None,
    wait: bool = False,
) -> FileResult:
    """One file, start to end, on this thread. ``since``: when the run started (with
    ``--overwrite``, a result written since then is another run's); ``wait``: wait for
    another run's claim on the result instead of skipping the photo."""
    t0 = time.perf_counter()
    full = full or _FullDisks()
    early = _upfront(job, options)
    if early is not None:
        if wait and early[0] == "skipped":  # a photo left to another run: it finished it
            return _result(job, t0, rank, "skipped", CLAIMED)
        return _result(job, t0, rank, *early)
    if derainer is None:
        raise ValueError("run_batch needs a Derainer: there are images to process")
    no_room = full.problem(job)
    if no_room is not None:
        return _result(job, t0, rank, "failed", no_room)
    release = _claim(job, options.overwrite, since, wait)
    if release is None:
        return _result(job, t0, rank, "skipped", CLAIMED)
    try:
        loaded = _derain(job, _read(job, options), derainer, options, progress)
        angle = getattr(derainer, "last_rain_angle", None)
        mp = _encode(job, [loaded], options)
    except _FileFailed as e:
        if isinstance(e, _DiskFull):
            assert job.output is not None
            full.note(e, job.output.parent)
        return _result(job, t0, rank, e.status, str(e))
    finally:
        release()
    return _result(job, t0, rank, "processed", mp=mp, rain_angle=angle)


def _claim(job: Job, overwrite: bool = False, since: float | None = None,
           wait: bool = False) -> Callable[[], None] | None:
    """``fileio.claim_file`` of the job's result (``wait``: waiting for another run's):
    its release, or None where another run claimed it, or has written it (two runs over
    one folder split the photos instead of each deraining every one: an audit); with
    ``overwrite``, a result written since ``since`` (this run's start) is another run's."""
    if job.output is None:
        return lambda: None
    release = claim_file(job.output, wait=wait)
    if release is not None and _done_by_another(job, overwrite, since):
        release()  # the other run finished it between the look before and the claim
        return None
    return release


def _done_by_another(job: Job, overwrite: bool, since: float | None) -> bool:
    """Whether the job's result is there, written by another run: any result without
    ``overwrite``; with it, one written since ``since`` (an older one is what
    ``--overwrite`` replaces: the photo was not waited for, and a stopped run's old result
    stayed: a review)."""
    try:
        there = os.stat(job.output) if job.output is not None else None
    except OSError:
        return False
    return there is not None and (not overwrite or _written_since(there.st_mtime, since))


#: How far ahead of this machine's clock a file's time may be and still count as written
#: now (a file system's coarser times: FAT's 2 s)
_CLOCK_SLACK_S = 3.0


def _written_since(mtime: float, since: float | None) -> bool:
    """Whether a file with this modification time was written since ``since`` (this run's
    start), by another run: not one dated in the future (another clock's: a server ahead,
    a copy that kept its times), which --overwrite then never replaced and a rerun called
    another run's (a review)."""
    return since is not None and since <= mtime <= time.time() + _CLOCK_SLACK_S


def _finish_left(left: Sequence[Job], derainer: Derainer | None, options: BatchOptions,
                 progress: BatchProgress, rank: int, full: _FullDisks, since: float,
                 summary: Summary) -> None:
    """The photos another run took while this one went through the folder, once this
    one is done with the rest: each waited for (the other run's claim), then derained
    here if that run left it undone (it was stopped or killed: the survivor said "all
    done" with a photo missing, a review)."""
    for job in left:
        progress.file_start(job)
        if job.output is not None:  # said: a stopped (SIGSTOP) run would hold it forever
            probe = claim_file(job.output)
            if probe is None:
                holder = claim_holder(job.output)
                who = f" (process {holder[0]})" if holder else ""
                stopped = (f"; that process is stopped (Ctrl-Z, SIGSTOP): resume it (fg, "
                           f"or kill -CONT {holder[0]}), or end it and this run derains the "
                           "photo" if holder and holder[1] else "")
                log.warning("%s: waiting for the other derain run%s that is deraining it%s",
                            job.item.path, who, stopped)
            else:
                probe()
        r = _process(job, derainer, options, progress, rank, full, since, wait=True)
        summary.add(r)
        progress.file_done(job, r)


def resolve_io_workers(options: BatchOptions, derainer: Derainer | None) -> int:
    """Threads that decode and encode beside the network (``BatchOptions.io_workers``)."""
    if options.io_workers is not None:
        return max(0, options.io_workers)
    device = getattr(derainer, "device_name", "cpu") or "cpu"
    return GPU_IO_WORKERS if device.split(":")[0] in ("cuda", "mps") else 0


def _run_pipelined(
    jobs: Sequence[Job],
    derainer: Derainer | None,
    options: BatchOptions,
    progress: BatchProgress,
    rank: int,
    workers: int,
    summary: Summary,
    full: _FullDisks | None = None,
    since: float | None = None,
) -> None:
    """``run_batch``'s loop with decoding and encoding on ``workers`` threads.

    The main thread only derains: the next photos are decoded ahead (at most ``workers``,
    and only photos of at most ``PREFETCH_MAX_MEGAPIXELS``, so memory stays bounded), and
    each result is encoded and written while the next photo is derained (at most
    ``workers`` writes waiting). Results are reported in input order, as the serial loop
    does. On an interrupt, the photos already derained are still written (the network's
    work is the expensive part; each write is atomic) and the reads ahead are dropped.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    full = full or _FullDisks()
    early = [_upfront(j, options) for j in jobs]  # results of jobs that need no model
    todo = [e is None for e in early]
    if any(todo) and derainer is None:
        raise ValueError("run_batch needs a Derainer: there are images to process")
    pool = ThreadPoolExecutor(workers, thread_name_prefix="derain-io")
    reads: dict[int, Future[LoadedImage]] = {}
    pending: deque[tuple[Job, Future[FileResult]]] = deque()  # in input order
    left: list[Job] = []  # photos another run took: looked at again at the end
    nxt = 0  # next job index to consider for reading ahead

    def read_ahead(current: int) -> None:
        nonlocal nxt
        nxt = max(nxt, current + 1)
        while nxt < len(jobs) and sum(1 for k in reads if k > current) < workers:
            if todo[nxt] and _prefetchable(jobs[nxt]):
                reads[nxt] = pool.submit(_read, jobs[nxt], options)
            nxt += 1

    def report(block: bool) -> None:
        while pending and (block or pending[0][1].done()):
            job, fut = pending.popleft()
            r = fut.result()
            summary.add(r)
            progress.file_done(job, r)

    def finished(job: Job, r: FileResult) -> None:  # queued in order behind the writes
        fut: Future[FileResult] = Future()
        fut.set_result(r)
        pending.append((job, fut))
        report(block=False)

    def write(job: Job, t0: float, box: list[LoadedImage], angle: float | None,
              release: Callable[[], None]) -> FileResult:
        try:
            mp = _encode(job, box, options)
        except _FileFailed as e:
            if isinstance(e, _DiskFull):  # (one dict insert: safe across the threads)
                assert job.output is not None
                full.note(e, job.output.parent)
            return _result(job, t0, rank, e.status, str(e))
        finally:
            release()  # the claim, taken before the derain, goes with the write
        return _result(job, t0, rank, "processed", mp=mp, rain_angle=angle)

    try:
        for i, job in enumerate(jobs):
            t0 = time.perf_counter()
            progress.file_start(job)
            if early[i] is not None:
                finished(job, _result(job, t0, rank, *early[i]))
                continue
            no_room = full.problem(job)
            meanwhile = not options.overwrite and job.output is not None and \
                os.path.exists(job.output)  # another run's (the serial loop looks just
            # before too; os.path's: an unreadable name is not the end of the batch)
            release = (None if no_room is not None or meanwhile else
                       _claim(job, options.overwrite, since))
            if release is None:
                old = reads.pop(i, None)
                if old is not None:
                    old.cancel()
                if no_room is None and not meanwhile and not _done_by_another(
                        job, options.overwrite, since):
                    progress.file_left(job)
                    left.append(job)  # another run's now: looked at again at the end
                    continue
                finished(job, _result(job, t0, rank, "failed", no_room) if no_room else
                         _result(job, t0, rank, "skipped", CLAIMED))  # (written by another
                # run since this one started: it did not derain it, as the reason said)
                continue
            try:
                read = reads.pop(i, None)
                read_ahead(i)
                if read is not None:  # the future would hold the input until the next file
                    loaded, read = read.result(), None
                else:
                    loaded = _read(job, options)
                loaded = _derain(job, loaded, derainer, options, progress)
            except _FileFailed as e:
                release()
                finished(job, _result(job, t0, rank, "failed", str(e)))
                continue
            except BaseException:
                release()
                raise
            try:
                while len(pending) >= workers:  # bounded: finished images wait in memory
                    pending[0][1].result()
                    report(block=False)
                pending.append((job, pool.submit(write, job, t0, [loaded],
                                                 getattr(derainer, "last_rain_angle", None),
                                                 release)))
            except BaseException:
                release()
                raise
            del loaded
            report(block=False)
        report(block=True)
        _finish_left(left, derainer, options, progress, rank, full, since or time.time(),
                     summary)
    finally:
        for fut in reads.values():  # reads ahead are dropped; derained photos are written
            fut.cancel()
        pool.shutdown(wait=True)
        while pending:  # interrupted: the writes that finished still count as done
            job, fut = pending.popleft()
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                summary.add(fut.result())


def _prefetchable(job: Job) -> bool:
    """Small enough to decode ahead (``PREFETCH_MAX_MEGAPIXELS``); an unreadable header is
    read in line, where its failure is reported."""
    mp = _header_megapixels(job.item.path)
    return mp is not None and mp <= PREFETCH_MAX_MEGAPIXELS


def run_batch(
    items: Sequence[InputItem],
    derainer: Derainer | None,
    options: BatchOptions | None = None,
    progress: BatchProgress | None = None,
    dist: DistInfo | None = None,
    jobs: Sequence[Job] | None = None,
) -> Summary:
    """Derain every input and return the :class:`Summary`.

    ``jobs``: ``plan_jobs(items, options)`` where the caller made it already (the CLI, to
    count the work before the model loads: planned twice, a rerun over 20000 photos
    spent 6 s more, an audit).

    ``derainer`` may be None when nothing needs processing (every output exists, or every
    input failed upfront; see :func:`plan_jobs` / :func:`pending`). With ``dist`` enabled
    (see :func:`init_distributed`) this rank takes ``jobs[rank::world_size]`` and the
    returned summary combines all ranks (a collective call: every rank must make it).
    Per-file problems never raise; Ctrl-C raises :class:`BatchInterrupted` (a
    ``KeyboardInterrupt``) carrying the summary of the files finished so far, which stay done.
    """
    options = options or BatchOptions()
    progress = progress or BatchProgress()
    dist = dist or DistInfo()
    if options.started is None:  # now, for every check that reads it (_upfront's too: a
        options = replace(options, started=time.time())  # library caller's was None: a review)
    since = options.started
    jobs = list(jobs) if jobs is not None else plan_jobs(items, options)
    to_folder = options.output is not None and not _writes_one_file(options)
    created: list[Path] = []
    if (to_folder and any(j.error is None for j in jobs) and dist.is_main
            and why_unwritable(options.output) is None):
        out = Path(os.path.realpath(options.output))
        folders = {os.path.realpath(j.item.path.parent) for j in jobs}
        created = mark_output_folder(options.output,
                                     in_input_tree=any(out.is_relative_to(f) for f in folders))
    if options.overwrite and to_folder and dist.is_main and _in_unmarked_folder(options):
        there = sum(1 for j in jobs if j.error is None and j.output is not None
                    and j.output.is_file())
        if there:  # replaced in silence, photos of the user's among them maybe (an audit)
            log.warning("--overwrite replaces %d file(s) already in %s, a folder derain did "
                        "not mark as its results (it held other files when first used, or "
                        "its marker was deleted): results of an "
                        "earlier run, or photos of yours with the same names", there,
                        options.output)
    # the main process alone holds: under torchrun the other ranks' holds kept rank 0 from
    # taking back a folder the job wrote nothing into (a review)
    with _shared_hold(options.output if to_folder and dist.is_main else None) as held:
        return _run_jobs(jobs, derainer, options, progress, dist, created, held, since)


@contextlib.contextmanager
def _shared_hold(folder: Path | None) -> Iterator[int | None]:
    """A shared hold on the ``-o`` folder (``fileio.hold_folders``) for the run: a run
    that wrote nothing takes its marker back only where no other derain run holds the
    folder (one killed before its first result removed the marker, and the folder, that
    a second run was writing into: an audit). Yields the descriptor held, or None."""
    if folder is None:
        yield None
        return
    try:
        with hold_folders([folder], shared=True) as fds:
            yield fds[0] if fds else None
    except FolderInUse:  # an eval, synth or export writing there: results have their own
        yield None  # names and are never replaced unless --overwrite; not held


def _take_back(created: list[Path], options: BatchOptions, held: int | None) -> None:
    """``unmark_unused(created)`` where no other derain run holds the ``-o`` folder."""
    if created and (options.output is None or only_holder(options.output, held)):
        unmark_unused(created)


def _run_jobs(jobs: list[Job], derainer: Any, options: BatchOptions, progress: BatchProgress,
              dist: DistInfo, created: list[Path], held: int | None,
              since: float) -> Summary:
    """``run_batch`` once the output folder is marked and held."""
    if dist.enabled:
        jobs = jobs[dist.rank :: dist.world_size]
    sweep_stale_temporaries({j.output.parent for j in jobs if j.output is not None})
    summary = Summary(world_size=dist.world_size)
    progress.start(len(jobs))
    t0 = time.perf_counter()
    workers = resolve_io_workers(options, derainer)
    full = _FullDisks()
    try:
        if workers > 0:
            _run_pipelined(jobs, derainer, options, progress, dist.rank, workers, summary,
                           full, since)
        else:
            left: list[Job] = []  # photos another run took: looked at again at the end
            for job in jobs:
                progress.file_start(job)
                r = _process(job, derainer, options, progress, dist.rank, full, since)
                if r.status == "skipped" and r.reason == CLAIMED and not _done_by_another(
                        job, options.overwrite, since):
                    progress.file_left(job)
                    left.append(job)
                    continue
                summary.add(r)
                progress.file_done(job, r)
            _finish_left(left, derainer, options, progress, dist.rank, full, since, summary)
    except KeyboardInterrupt:
        summary.seconds = time.perf_counter() - t0
        summary.interrupted = True
        summary.engine = engine_record(derainer)
        # under torchrun the ranks' counts cannot be gathered now: rank 0 (which marked)
        # takes back only what is still empty (an audit: a marked, empty -o was left)
        if dist.enabled or not summary.processed:
            _take_back(created, options, held)
        raise BatchInterrupted(summary) from None
    except BaseException:  # --debug's raised file error, or anything else: as for Ctrl-C
        if dist.enabled or not summary.processed:
            _take_back(created, options, held)
        raise
    summary.seconds = time.perf_counter() - t0
    summary.engine = engine_record(derainer)  # at the end: out of memory shrinks the tile
    if dist.enabled:
        summary = Summary.merge(gather_summaries(summary, dist))
    if not summary.processed:  # every rank's files counted: only the main one marked
        _take_back(created, options, held)
    return summary
