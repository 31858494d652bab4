"""Find rainy/clean image pairs in the folder layouts deraining data sets come in.

``find_pairs(root)`` recognises these layouts (folder names case-insensitive). Where two
pairs of subfolders are present (``rainy/`` + ``clean/`` beside ``rain/`` + ``norain/``),
it refuses rather than pick one: name the folders.

1. Two subfolders, rainy + clean:

   ==================  ==================  ==========================================
   rainy               clean               seen in
   ==================  ==================  ==========================================
   ``rainy/``          ``clean/``          this project's ``../shared/data``
   ``rain/``           ``norain/``         JORDER Rain100L/H, Rain200L/H (JORDER-E)
   ``input/``          ``target/``         Restormer / MPRNet test sets (Rain13K)
   ``input/``          ``gt/``             many GitHub repositories
   ``data/``           ``gt/``             many GitHub repositories
   ``rainy/``          ``gt/``             many GitHub repositories
   ``rainy_image/``    ``ground_truth/``   DDN Rain1400 / Rain12600
   ``rain/``           ``clean/``          many GitHub repositories
   ==================  ==================  ==========================================

   A subfolder with no images of its own but exactly one subfolder that has images is
   entered (JORDER-E's ``rain/X2/``).

2. PReNet style: a ``rainy/`` (or ``rain/``) subfolder of ``rain-N`` images with the
   ``norain-N`` clean images in ``root`` itself.

3. One flat folder (``root``) holding both kinds, told apart by name (other images in the
   folder are ignored): ``rain-001.png`` + ``norain-001.png`` (Rain100 / RainTrainL, also
   ``rain-1.png`` + ``norain-1.png``), or ``X_rain.png`` + ``X_clean.png``.

Within a pair of folders files are matched by the first of these rules that pairs the
most files:

* the same file name, and failing that the same stem (``001.jpg`` <-> ``001.png``);
* Rain100 numbering: rainy ``rain-N`` (or JORDER-E's ``norain-Nx2``) <-> clean
  ``norain-N``; N compared as a number, so ``rain-001`` <-> ``norain-1``;
* suffixes: rainy ``X_rain``, ``X_rainy``, ``X_in``, ``X_input`` <-> clean ``X_clean``,
  ``X_norain``, ``X_gt``, ``X_target``, ``X_groundtruth``, ``X_ground_truth``
  (``-`` works as well as ``_``; suffixes case-insensitive);
* several rainy versions of one clean image (DDN): rainy ``X_k`` <-> clean ``X``
  (e.g. ``901_1.jpg`` ... ``901_14.jpg`` <-> ``901.jpg``).

``rainy_dir`` and ``clean_dir`` name the folders explicitly instead (relative to
``root``, case-insensitive, or absolute); give one and the other is its partner in the
table above (``rain/`` -> ``norain/``), else the one usual name present (two: refused),
else ``root`` itself. Both naming the same folder means a flat folder.

Subfolders of a rainy or clean folder are not read; where they hold images, ``strict``
refuses the layout (their pairs would be left out in silence).

Every image in a rainy or clean folder must find a partner: otherwise ``PairsError``
(a ``ValueError``) says which layout was detected and lists the files left over on each
side (``strict=False`` returns the pairs found and skips the rest).

Image files: .png .jpg .jpeg .bmp .tif .tiff .webp, any case; hidden files are skipped.
Results are sorted in natural order of their names (``rain-2`` before ``rain-10``).
"""

from __future__ import annotations

import logging
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .fileio import is_system_folder

__all__ = [
    "IMAGE_SUFFIXES",
    "SUBFOLDER_LAYOUTS",
    "Pair",
    "PairDataError",
    "PairsError",
    "find_pairs",
    "list_images",
    "list_photos",
]

log = logging.getLogger(__name__)

#: the file every ``derain train`` / ``finetune`` run folder holds (``train._lock_run``)
RUN_LOCK = ".derain-run.lock"

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
)

#: (rainy, clean) subfolder names tried by ``find_pairs``, in order (case-insensitive).
SUBFOLDER_LAYOUTS: tuple[tuple[str, str], ...] = (
    ("rainy", "clean"),
    ("rain", "norain"),
    ("input", "target"),
    ("input", "gt"),
    ("data", "gt"),
    ("rainy", "gt"),
    ("rainy_image", "ground_truth"),
    ("rain", "clean"),
)

# Usual names of one side, for finding the partner of a folder given explicitly.
_RAINY_NAMES = ("rainy", "rain", "input", "data", "rainy_image")
_CLEAN_NAMES = ("clean", "norain", "target", "gt", "ground_truth")
# PReNet: rainy images in a subfolder, clean ones in the root.
_PRENET_RAINY = ("rainy", "rain")

_LIST_LIMIT = 10


class PairsError(ValueError):
    """The rainy/clean pairs could not be worked out (the message says why)."""


class PairDataError(PairsError):
    """Pairs found, but one cannot be scored (a damaged image, sizes that differ): a fault
    of the data, where :class:`PairsError` itself is one of the folders named (the command
    line: exit status 1 against 2)."""


@dataclass(frozen=True)
class Pair:
    """One rainy image and its clean ground truth.

    ``name`` is the rainy image's file name: unique within one ``find_pairs`` result and
    meant for naming outputs and report rows.
    """

    rainy: Path
    clean: Path
    name: str


def natural_key(text: str) -> tuple:
    """Sort key for names as people number them: p2 before p10 (case aside)."""
    parts = re.split(r"(\d+)", text)
    # Even positions are text, odd positions digits: the types line up across keys.
    key = tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts))
    return (key, text)


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not _is_hidden(path) and path.is_file()


def list_images(folder: Path, recursive: bool = False,
                unread: Counter[str] | None = None) -> list[Path]:
    """Image files in ``folder`` (and below it when ``recursive``), sorted naturally.

    Only the suffixes in ``IMAGE_SUFFIXES`` (any case) count; hidden files, and with
    ``recursive`` anything inside hidden folders, are skipped. With ``recursive``, links
    to folders are followed (a dataset is often linked into place, and ``Path.rglob``
    skipped it without a word), each real folder once: a link back up the tree, or two
    links to one folder, cannot repeat photos or loop. Raises
    ``FileNotFoundError``/``NotADirectoryError`` when ``folder`` is not a folder.
    ``unread``: counts, by format, the files named like photos derain does not read (HEIC,
    GIF, raw: ``images.unread_photo_format``) that the walk met.
    """
    from .images import unread_photo_format

    def seen(p: Path) -> bool:
        if _is_image(p):
            return True
        if unread is not None and (fmt := unread_photo_format(p)) is not None:
            unread[fmt] += 1
        return False

    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"no such folder: {folder}")
    if not folder.is_dir():
        raise NotADirectoryError(f"not a folder: {folder}")
    if not recursive:
        found = [p for p in folder.iterdir() if seen(p)]
        return sorted(found, key=lambda p: natural_key(p.name))
    found = []
    for here, filenames in _walk_tree(folder):
        found += [here / f for f in filenames if seen(here / f)]
    return sorted(found, key=lambda p: natural_key(p.relative_to(folder).as_posix()))


def list_photos(folder: Path, recursive: bool = True) -> list[Path]:
    """``list_images(folder, recursive)`` without derain's own results: files named
    ``NAME_derained.EXT``, folders below ``folder`` holding derain's results marker (as
    ``derain``'s scans leave them out) and training runs' folders (their ``RUN_LOCK``).
    For photo folders: synth's, train's, finetune's, distill's, grow's and export --int8's.
    ``derain my_rainy/`` writes its results beside the photos, and a later ``finetune
    --rainy my_rainy/`` took them for rainy photos, a run's curves.png too (audits). Says
    how many it left out."""
    from .batch import OUTPUT_MARKER, is_output_name

    folder = Path(folder)
    marked: dict[Path, bool] = {}

    def in_marked(p: Path) -> bool:
        for d in p.relative_to(folder).parents:
            if d != Path("."):
                if d not in marked:  # derain's -o folders, and train's run folders
                    marked[d] = any((folder / d / m).is_file() for m in (OUTPUT_MARKER,
                                                                         RUN_LOCK))
                if marked[d]:
                    return True
        return False

    unread: Counter[str] = Counter()
    found = list_images(folder, recursive=recursive, unread=unread)
    if unread:  # GIFs in a --rainy folder were passed over in silence (an audit)
        from .batch import _SUPPORTED_TEXT, _unread_text

        log.warning("%s: %s not read (derain reads %s): convert them to JPEG, PNG or TIFF "
                    "to include them", folder, _unread_text(unread), _SUPPORTED_TEXT)
    kept = [p for p in found if not is_output_name(p) and not in_marked(p)]
    seen: dict[str, Path] = {}
    for p in kept:  # a link to a photo of the folder was a second photo (an audit): the
        real = os.path.realpath(p)  # photo itself is kept, not the link (a review: synth
        if real not in seen or (os.path.islink(seen[real]) and not os.path.islink(p)):
            seen[real] = p  # named its pairs after the link)
    chosen = set(seen.values())
    twice = [p for p in kept if p not in chosen]
    if twice:
        log.warning("%s: %d image(s) are links to photos read already (%s), read once",
                    folder, len(twice), ", ".join(str(p.relative_to(folder))
                                                  for p in twice[:3])
                    + (", ..." if len(twice) > 3 else ""))
        kept = [p for p in kept if p in chosen]
    if len(kept) + len(twice) < len(found):
        n = len(found) - len(kept) - len(twice)
        log.warning("%s: %d of its images %s (NAME_derained.* files, or in folders "
                    "holding %s or a run's %s) and %s left out", folder, n,
                    "is a derain result" if n == 1 else "are derain results", OUTPUT_MARKER,
                    RUN_LOCK, "is" if n == 1 else "are")
    return kept


def _walk_tree(folder: Path, links: list[tuple[Path, Path]] | None = None
               ) -> Iterator[tuple[Path, list[str]]]:
    """(folder, file names) for ``folder`` and every visible folder below it, through
    links to folders, each real folder once; each link followed is added to ``links`` as
    (the link, its real target)."""
    seen = {os.path.realpath(folder)}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        kept = []
        for d in sorted(dirnames):
            path = os.path.join(dirpath, d)
            real = os.path.realpath(path)
            if not is_system_folder(d) and real not in seen:
                seen.add(real)
                kept.append(d)
                if links is not None and os.path.islink(path):
                    links.append((Path(path), Path(real)))
        dirnames[:] = kept
        yield Path(dirpath), filenames


def reads_into(folder: str | Path, out: str | Path) -> Path | None:
    """Where a recursive read of ``folder`` (``list_images(recursive=True)``) would reach
    into ``out``, or None: ``folder`` itself when ``out`` is inside it, or a link below it
    to a folder that holds ``out``. The guards that keep a run's or synth's own output
    from being read back as photos ask this, so that following links does not walk around
    them."""
    root = Path(folder).expanduser()
    try:
        dest = Path(out).expanduser().resolve()
        real_root = root.resolve()
    except (RuntimeError, OSError):  # a link loop (Python 3.11 raises RuntimeError): not
        return None  # a folder to read into; the writability check says what it is
    if dest == real_root or real_root in dest.parents:
        return root
    if not root.is_dir():
        return None
    links: list[tuple[Path, Path]] = []
    for _ in _walk_tree(root, links):
        pass
    for link, real in links:
        if dest == real or real in dest.parents:
            return link
    return None


# --------------------------------------------------------------------------- matching


@dataclass
class _Match:
    how: str
    pairs: list[tuple[Path, Path]]
    rainy_left: list[Path]
    clean_left: list[Path]


def _nfc(text: str) -> str:
    """``text`` in Unicode's composed form: macOS writes names decomposed ('e' + accent),
    so a clean 'café.png' copied from a Mac did not match its rainy 'café.png', and the
    error listed two names that print alike (an audit)."""
    return unicodedata.normalize("NFC", text)


def _match_by_name(rainy: Sequence[Path], clean: Sequence[Path]) -> _Match:
    pairs: list[tuple[Path, Path]] = []
    used: set[Path] = set()
    rainy_left: list[Path] = list(rainy)
    # the same name first, then the same name in composed form for what is left (two
    # files whose names differ only in normalisation are two files on Linux: each keeps
    # its exact partner, and no clean file is claimed twice: a review)
    for key in (lambda p: p.name, lambda p: _nfc(p.name)):
        counts = Counter(key(p) for p in clean if p not in used)
        by_key = {key(p): p for p in clean if p not in used and counts[key(p)] == 1}
        left: list[Path] = []
        for r in rainy_left:
            c = by_key.get(key(r))
            if c is None or c in used:
                left.append(r)
            else:
                pairs.append((r, c))
                used.add(c)
        rainy_left = left
    # Same stem, different extension; then names of digits alone by their number (1.png
    # with 01.png: an audit), among what is left only, so that an exact name always keeps
    # its partner (a review)
    for key in (lambda p: _nfc(p.stem), _plain_number):
        rainy_left = _pair_by_unique_key(rainy_left, [c for c in clean if c not in used],
                                         key, pairs, used)
    return _Match("by file name", pairs, rainy_left, [c for c in clean if c not in used])


def _pair_by_unique_key(rainy: Sequence[Path], clean: Sequence[Path],
                        key: Callable[[Path], Hashable | None],
                        pairs: list[tuple[Path, Path]], used: set[Path]) -> list[Path]:
    """Pair ``rainy`` with ``clean`` files whose ``key`` agrees, only where it is unique on
    both sides (1.png beside 01.png is no guess; None: no key), into ``pairs`` and
    ``used``; the rainy files left unpaired."""
    r_count = Counter(key(p) for p in rainy)
    c_count = Counter(key(p) for p in clean)
    by_key = {key(p): p for p in clean if key(p) is not None and c_count[key(p)] == 1}
    left: list[Path] = []
    for r in rainy:
        k = key(r)
        c = by_key.get(k) if k is not None and r_count[k] == 1 else None
        if c is None:
            left.append(r)
        else:
            pairs.append((r, c))
            used.add(c)
    return left


KeyFn = Callable[[Path], Hashable | None]


def _match_by_key(
    how: str,
    rainy: Sequence[Path],
    clean: Sequence[Path],
    rainy_key: KeyFn,
    clean_key: KeyFn,
    rainy_shared: bool,
    clean_shared: bool,
    many_to_one: bool = False,
) -> _Match:
    """Pair files whose keys agree. On a shared side (a folder that may hold other
    images) files without a key are ignored; on a dedicated side they are left over."""
    clean_left: list[Path] = []
    clean_by_key: dict[Hashable, Path] = {}
    for c in clean:
        k = clean_key(c)
        if k is None:
            if not clean_shared:
                clean_left.append(c)
        elif k in clean_by_key:
            clean_left.append(c)  # a second file with the same key: ambiguous
        else:
            clean_by_key[k] = c
    pairs: list[tuple[Path, Path]] = []
    rainy_left: list[Path] = []
    used: set[Path] = set()
    for r in rainy:
        k = rainy_key(r)
        if k is None:
            if not rainy_shared:
                rainy_left.append(r)
            continue
        c = clean_by_key.get(k)
        if c is None or (c in used and not many_to_one):
            rainy_left.append(r)
        else:
            pairs.append((r, c))
            used.add(c)
    clean_left += [c for c in clean_by_key.values() if c not in used]
    return _Match(how, pairs, rainy_left, clean_left)


_RAIN_N = re.compile(r"^rain[-_]?(\d+)$", re.IGNORECASE)
_RAIN_NX2 = re.compile(r"^norain[-_]?(\d+)x2$", re.IGNORECASE)
_NORAIN_N = re.compile(r"^norain[-_]?(\d+)$", re.IGNORECASE)
_RAINY_SUFFIX = re.compile(r"^(.+?)[-_](?:rain|rainy|in|input)$", re.IGNORECASE)
_CLEAN_SUFFIX = re.compile(
    r"^(.+?)[-_](?:clean|norain|gt|target|groundtruth|ground_truth)$", re.IGNORECASE
)
_VERSION_K = re.compile(r"^(.+)_(\d+)$")


def _rain_number(p: Path) -> int | None:
    m = _RAIN_N.match(p.stem) or _RAIN_NX2.match(p.stem)
    return int(m.group(1)) if m else None


def _norain_number(p: Path) -> int | None:
    m = _NORAIN_N.match(p.stem)
    return int(m.group(1)) if m else None


def _plain_number(p: Path) -> int | None:
    """A stem of digits alone as its number: ``1.png`` pairs with ``01.png`` (an audit)."""
    return int(p.stem) if p.stem.isascii() and p.stem.isdigit() else None


def _group_key(pattern: re.Pattern[str]) -> KeyFn:
    def key(p: Path) -> str | None:
        m = pattern.match(p.stem)
        return _nfc(m.group(1)) if m else None

    return key


def _match(
    rainy: Sequence[Path], clean: Sequence[Path], rainy_shared: bool, clean_shared: bool
) -> _Match:
    """Try every matching rule; keep the one pairing the most files (earliest on ties)."""
    dedicated = not rainy_shared and not clean_shared
    candidates: list[_Match] = []
    if dedicated:
        candidates.append(_match_by_name(rainy, clean))  # (and by number: 1 = 001)
    candidates.append(
        _match_by_key(
            "by rain-N / norain-N numbering",
            rainy,
            clean,
            _rain_number,
            _norain_number,
            rainy_shared,
            clean_shared,
        )
    )
    candidates.append(
        _match_by_key(
            "by X_rain / X_clean suffixes",
            rainy,
            clean,
            _group_key(_RAINY_SUFFIX),
            _group_key(_CLEAN_SUFFIX),
            rainy_shared,
            clean_shared,
        )
    )
    if dedicated:
        candidates.append(
            _match_by_key(
                "as X_k -> X (several rainy versions per clean image)",
                rainy,
                clean,
                _group_key(_VERSION_K),
                lambda p: _nfc(p.stem),
                False,
                False,
                many_to_one=True,
            )
        )
    best = candidates[0]
    for cand in candidates[1:]:
        if len(cand.pairs) > len(best.pairs):
            best = cand
    return best


# --------------------------------------------------------------------------- layouts

#: Hints worded for both audiences: CLI users type ``--rainy-dir``, library users
#: ``rainy_dir=``, and only the library has ``strict=False``.
NAME_FOLDERS_HINT = (
    "Name the folders explicitly with --rainy-dir and --clean-dir "
    "(rainy_dir= and clean_dir= in Python)"
)
_UNMATCHED_HINT = (
    "Add the missing partners, or move the unmatched files out of the folder or rename "
    "them to match; in Python, find_pairs(..., strict=False) uses only the matched pairs."
)


def _fmt_names(names: Sequence[str]) -> str:
    text = ", ".join(names[:_LIST_LIMIT])
    if len(names) > _LIST_LIMIT:
        text += f", and {len(names) - _LIST_LIMIT} more"
    return text


def _fmt_list(paths: Sequence[Path]) -> str:
    return _fmt_names([p.name for p in paths])


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _subdirs(root: Path) -> list[Path]:
    return sorted(
        (d for d in root.iterdir() if d.is_dir() and not is_system_folder(d.name)),
        key=lambda d: natural_key(d.name),
    )


def _find_subdir(root: Path, name: str) -> Path | None:
    """``root/name`` if it exists, else a subfolder whose name matches case-insensitively."""
    exact = root / name
    if exact.is_dir():
        return exact
    for d in _subdirs(root):
        if d.name.lower() == name.lower():
            return d
    return None


def _side_images(folder: Path) -> tuple[Path, list[Path], list[Path]]:
    """Images of one side, and the subfolders holding images that are not read; a folder
    without images but with exactly one subfolder that has images (JORDER-E ``rain/X2/``)
    stands for that subfolder."""
    images = list_images(folder)
    with_images = [d for d in _subdirs(folder) if list_images(d, recursive=True)]
    if not images and len(with_images) == 1:
        entered = with_images[0]
        return entered, list_images(entered), [
            d for d in _subdirs(entered) if list_images(d, recursive=True)]
    return folder, images, with_images


def _rel(path: Path, root: Path) -> str:
    try:
        text = path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
    return "the root folder" if text == "." else f"'{text}/'"


def _pair_up(
    root: Path,
    layout: str,
    rainy_folder: Path,
    clean_folder: Path,
    rainy_shared: bool,
    clean_shared: bool,
    strict: bool,
) -> list[Pair]:
    nested: list[Path] = []
    if rainy_folder == clean_folder:
        rainy_files = clean_files = list_images(rainy_folder)
    else:
        rainy_folder, rainy_files, r_nested = _side_images(rainy_folder)
        clean_folder, clean_files, c_nested = _side_images(clean_folder)
        # (a shared side is the root: its subfolders are the layout's own folders)
        nested = (r_nested if not rainy_shared else []) + (c_nested if not clean_shared else [])
    where = f"{root}: layout {layout}"
    if strict and nested:  # their pairs were left out without a word
        raise PairsError(
            f"{where}, but {_plural(len(nested), 'subfolder')} of it hold images, which are "
            f"not read: {_fmt_names([_rel(d, root) for d in nested])}. Move those images up "
            "into their rainy/clean folders, or give each such pair of subfolders as its "
            "own data folder."
        )
    if not rainy_files or not clean_files:
        empty = [
            f"{_rel(f, root)} ({f})"
            for f, files in ((rainy_folder, rainy_files), (clean_folder, clean_files))
            if not files
        ]
        raise PairsError(f"{where}, but no images in {' and '.join(empty)}")
    m = _match(rainy_files, clean_files, rainy_shared, clean_shared)
    if not m.pairs:
        cased = sorted({f.stem.lower() for f in rainy_files}
                       & {f.stem.lower() for f in clean_files}
                       if rainy_folder != clean_folder else ())
        if cased:  # A.PNG and a.png: it said to name the folders, found already (an audit)
            rainy_name = next(f.name for f in rainy_files if f.stem.lower() == cased[0])
            clean_name = next(f.name for f in clean_files if f.stem.lower() == cased[0])
            raise PairsError(  # (both names as they are: the lower-cased stem was neither's)
                f"{where}, but the rainy and clean file names differ in case only (as "
                f"{rainy_name!r} and {clean_name!r}): names are matched exactly; rename one "
                "side to match the other")
        raise PairsError(
            f"{where}, but no rainy image matches a clean one by file name, by number "
            "(1 = 001), by rain-N / norain-N numbering, by X_rain / X_clean suffixes or as "
            "X_k -> X.\n"
            f"  rainy ({_plural(len(rainy_files), 'image')} in {_rel(rainy_folder, root)}): "
            f"{_fmt_list(rainy_files)}\n"
            f"  clean ({_plural(len(clean_files), 'image')} in {_rel(clean_folder, root)}): "
            f"{_fmt_list(clean_files)}\n"
            + ("--rainy-dir and --clean-dir name the same folder, read as one folder of "
               "rain-N / norain-N (or X_rain / X_clean) files: a typo in one of them?"
               if layout.startswith("flat folder") and layout.endswith("(given)") else
               "The folders were named; it is the file names that do not match: rename one "
               "side to match the other." if layout.endswith("(given)") else
               "It is the file names that do not match: rename one side to match the "
               "other; if these are not the rainy and clean folders, n"
               + NAME_FOLDERS_HINT[1:] + ".")  # (it said only to name the folders, which
        # were found: an audit)
        )
    if strict and (m.rainy_left or m.clean_left):
        lines = [f"{where}, matched {m.how}: {_plural(len(m.pairs), 'pair')}, but"]
        if m.rainy_left:
            lines.append(
                f"  {_plural(len(m.rainy_left), 'rainy image')} in {_rel(rainy_folder, root)} "
                f"without a clean partner: {_fmt_list(m.rainy_left)}"
            )
        if m.clean_left:
            lines.append(
                f"  {_plural(len(m.clean_left), 'clean image')} in {_rel(clean_folder, root)} "
                f"without a rainy partner: {_fmt_list(m.clean_left)}"
            )
        lines.append(_UNMATCHED_HINT)
        raise PairsError("\n".join(lines))
    pairs = [Pair(rainy=r, clean=c, name=r.name) for r, c in m.pairs]
    return sorted(pairs, key=lambda p: (natural_key(p.name), str(p.rainy)))


def _resolve_override(root: Path, value: str | Path, side: str) -> Path:
    path = Path(value)
    if path.is_absolute():
        if not path.is_dir():
            raise PairsError(f"{side} folder {str(path)!r} does not exist or is not a folder")
        return path
    found = _find_subdir(root, str(path)) if len(path.parts) == 1 else None
    if found is None and (root / path).is_dir():
        found = root / path
    if found is None:
        raise PairsError(
            f"{side} folder {str(value)!r} not found in {root} "
            f"(subfolders there: {', '.join(d.name for d in _subdirs(root)) or 'none'})"
        )
    return found


def _layout_partners(root: Path) -> dict[Path, Path]:
    """Each subfolder of ``root`` that completes a layout, with its partner, the table's
    order deciding where folders could pair two ways (``clean/`` with ``rainy/`` before
    ``rain/``); keys and values resolved."""
    pairs: dict[Path, Path] = {}
    for rainy_name, clean_name in SUBFOLDER_LAYOUTS:
        r, c = _find_subdir(root, rainy_name), _find_subdir(root, clean_name)
        if r is None or c is None:
            continue
        r, c = r.resolve(), c.resolve()
        if r != c and r not in pairs and c not in pairs:
            pairs[r], pairs[c] = c, r
    return pairs


def _partner(root: Path, given: Path, names: Sequence[str],
             given_is_rainy: bool) -> tuple[Path, bool] | None:
    """The folder holding the other side: ``given``'s partner in ``SUBFOLDER_LAYOUTS``
    (``rain/`` -> ``norain/``, not the ``clean/`` of the ``rainy/`` beside it), else the
    one usual name present, else ``root`` if it has images. Where two folders could be
    the partner (``input/`` beside ``target/`` and ``gt/``), or the table's partners
    belong to other sets: refused (a guess paired one set with another's images)."""
    side, flag = ("clean", "--clean-dir") if given_is_rainy else ("rainy", "--rainy-dir")
    assigned = _layout_partners(root)
    table: list[Path] = []  # the table's partners of ``given`` present, as found
    in_table = False
    for rainy_name, clean_name in SUBFOLDER_LAYOUTS:
        mine, other = (rainy_name, clean_name) if given_is_rainy else (clean_name, rainy_name)
        if mine == given.name.lower():
            in_table = True
            d = _find_subdir(root, other)
            if d is not None and d.resolve() != given.resolve() and \
                    all(d.resolve() != t.resolve() for t in table):
                table.append(d)
    own = assigned.get(given.resolve())
    found = [d for d in table if d.resolve() == own or d.resolve() not in assigned]
    if not found and table:
        raise PairsError(
            f"{root}: {_rel(given, root)} given, but the {side} folders beside it "
            f"({', '.join(_rel(d, root) for d in table)}) belong to another set there; "
            f"name its {side} folder with {flag} ({side}_dir= in Python)")
    if not in_table or not table:  # not a name of the table, or its table partner is not
        # there (--clean-dir ground_truth beside rainy/: "no rainy folder (rainy/, ...)",
        # an audit): a usual name present, not another set's
        usual = [d for d in (_find_subdir(root, n) for n in names)
                 if d is not None and d.resolve() != given.resolve()]
        found = [d for d in usual if d.resolve() not in assigned]
        if not found and usual:
            raise PairsError(
                f"{root}: {_rel(given, root)} given, but the {side} folders beside it "
                f"({', '.join(_rel(d, root) for d in usual)}) belong to another set there; "
                f"name its {side} folder with {flag} ({side}_dir= in Python)")
    if len(found) > 1:
        raise PairsError(
            f"{root}: {_rel(given, root)} given, and {len(found)} folders could hold its "
            f"{side} partners ({', '.join(_rel(d, root) for d in found)}); name one with "
            f"{flag} ({side}_dir= in Python)")
    if found:
        return found[0], False
    if given.resolve() != root.resolve() and list_images(root):
        return root, True
    return None


def _with_overrides(
    root: Path, rainy_dir: str | Path | None, clean_dir: str | Path | None, strict: bool
) -> list[Pair]:
    rainy = _resolve_override(root, rainy_dir, "rainy") if rainy_dir is not None else None
    clean = _resolve_override(root, clean_dir, "clean") if clean_dir is not None else None
    if rainy is not None and clean is not None:
        if rainy.resolve() == clean.resolve():
            return _pair_up(
                root,
                f"flat folder {_rel(rainy, root)} (given)",
                rainy,
                rainy,
                True,
                True,
                strict,
            )
        return _pair_up(
            root,
            f"{_rel(rainy, root)} + {_rel(clean, root)} (given)",
            rainy,
            clean,
            False,
            False,
            strict,
        )
    if rainy is not None:
        found = _partner(root, rainy, _CLEAN_NAMES, given_is_rainy=True)
        if found is None:
            raise PairsError(
                f"{root}: rainy folder {_rel(rainy, root)} given, but no clean folder "
                f"({', '.join(n + '/' for n in _CLEAN_NAMES)}) and no images in the root; "
                "name it with --clean-dir (clean_dir= in Python)"
            )
        clean, clean_shared = found
        return _pair_up(
            root,
            f"{_rel(rainy, root)} (given) + {_rel(clean, root)}",
            rainy,
            clean,
            False,
            clean_shared,
            strict,
        )
    assert clean is not None
    found = _partner(root, clean, _RAINY_NAMES, given_is_rainy=False)
    if found is None:
        raise PairsError(
            f"{root}: clean folder {_rel(clean, root)} given, but no rainy folder "
            f"({', '.join(n + '/' for n in _RAINY_NAMES)}) and no images in the root; "
            "name it with --rainy-dir (rainy_dir= in Python)"
        )
    rainy, rainy_shared = found
    return _pair_up(
        root,
        f"{_rel(rainy, root)} + {_rel(clean, root)} (given)",
        rainy,
        clean,
        rainy_shared,
        False,
        strict,
    )


def pair_folders(root: Path) -> list[tuple[Path, Path]]:
    """The (rainy, clean) subfolders of each layout ``root`` holds (any case), where either
    side holds images, whether or not their names pair up."""
    present = []
    for rainy_name, clean_name in SUBFOLDER_LAYOUTS:
        rainy = _find_subdir(root, rainy_name)
        clean = _find_subdir(root, clean_name)
        if rainy is not None and clean is not None and \
                (list_images(rainy, recursive=True) or list_images(clean, recursive=True)):
            present.append((rainy, clean))
    return present


def pairs_held(folder: Path) -> str:
    """How ``folder`` holds a set of pairs, as ``derain eval`` reads it ("10 pairs"; "pairs'
    folders" where a layout's side folders hold images whose names do not pair), or "".
    Why: a pair set given where photos are wanted (``synth``'s clean photos, ``train
    --synthetic`` or ``--unlabeled``) had its rainy and clean images mixed up in silence."""
    if not folder.is_dir():  # (a missing folder is its reader's to report)
        return ""
    try:
        held = len(find_pairs(folder, strict=False))
    except (PairsError, OSError):
        held = 0
    try:
        return f"{held} pairs" if held else "pairs' folders" if pair_folders(folder) else ""
    except OSError:  # an unreadable subfolder: its reader says so
        return ""


def find_pairs(
    root: Path,
    rainy_dir: str | Path | None = None,
    clean_dir: str | Path | None = None,
    *,
    strict: bool = True,
) -> list[Pair]:
    """Rainy/clean pairs under ``root``, sorted naturally by ``Pair.name``.

    The layouts and matching rules are listed in the module docstring. ``rainy_dir`` /
    ``clean_dir`` name the folders explicitly (relative to ``root``, case-insensitive,
    or absolute). Raises ``PairsError`` (a ``ValueError``) when no layout is found, a
    folder is missing or empty, or (with ``strict``, the default) any image is left
    without a partner; the message names the layout and lists the leftover files.
    """
    root = Path(root)
    if not root.exists():  # worded as list_images words it (--synthetic, --rainy, ...)
        raise PairsError(f"no such folder: {root}")
    if not root.is_dir():
        raise PairsError(f"not a folder: {root}")
    if rainy_dir is not None or clean_dir is not None:
        return _with_overrides(root, rainy_dir, clean_dir, strict)

    present = pair_folders(root)
    if len(present) > 1:  # the first won in silence, and the other set was left out
        sets = " and ".join(f"'{r.name}/' + '{c.name}/'" for r, c in present)
        raise PairsError(f"{root} holds more than one set of pair folders: {sets}. "
                         f"{NAME_FOLDERS_HINT}.")
    if present:
        rainy, clean = present[0]
        layout = f"subfolders '{rainy.name}/' + '{clean.name}/'"
        return _pair_up(root, layout, rainy, clean, False, False, strict)

    root_images = list_images(root)
    if root_images:
        for rainy_name in _PRENET_RAINY:
            rainy = _find_subdir(root, rainy_name)
            if rainy is None:
                continue
            _, rainy_files, _ = _side_images(rainy)
            m = _match(rainy_files, root_images, False, True)
            if m.pairs:
                layout = f"'{rainy.name}/' + norain-N images in the root folder (PReNet)"
                return _pair_up(root, layout, rainy, root, False, True, strict)
        m = _match(root_images, root_images, True, True)
        if m.pairs:
            return _pair_up(root, "flat folder", root, root, True, True, strict)

    for rainy_name, clean_name in SUBFOLDER_LAYOUTS:  # found, but empty: "no layout
        rainy, clean = _find_subdir(root, rainy_name), _find_subdir(root, clean_name)
        if rainy is not None and clean is not None:  # found" named them (an audit)
            raise PairsError(f"{root}: its folders '{rainy.name}/' and '{clean.name}/' hold "
                             "no images")
    subdirs = [d.name + "/" for d in _subdirs(root)]
    sets = [d for d in _subdirs(root) if pair_folders(d)]  # (one level: no walk of a tree)
    if sets:  # pair sets one level down: "name --rainy-dir" was the wrong way out (audit)
        names = ", ".join(f"'{d.name}/'" for d in sets)
        raise PairsError(f"{root} holds no pairs itself, but its subfolder(s) {names} are pair "
                         "sets: give each one (train: --pairs " + " --pairs ".join(
                             str(root / d.name) for d in sets[:3]) + "; eval: one set a run, "
                         f"derain eval {root / sets[0].name})")  # (train's alone: an audit)
    parent = root.resolve().parent
    if any(root.resolve() in (r.resolve(), c.resolve()) for r, c in pair_folders(parent)):
        # one side of a set given (its rainy/): "name the folders" was the wrong way out
        raise PairsError(f"{root} is one side of the pairs in {parent}: give that "
                         "folder")  # (an audit; resolved: `.` named `.` itself, a review)
    looked_for = ", ".join(f"{r}/ + {c}/" for r, c in SUBFOLDER_LAYOUTS)
    raise PairsError(
        f"{root}: no rainy/clean layout found. Looked for subfolders {looked_for} "
        "(case-insensitive); rainy/ or rain/ with norain-N images in the root (PReNet); "
        "a flat folder of rain-N + norain-N or X_rain + X_clean images.\n"
        f"  found: {_plural(len(subdirs), 'subfolder')}"
        + (f" ({_fmt_names(subdirs)})" if subdirs else "")
        + f", {_plural(len(root_images), 'image')} in the root"
        + (f" ({_fmt_list(root_images)})" if root_images else "")
        + f"\n{NAME_FOLDERS_HINT}."
    )
