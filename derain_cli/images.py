"""Image reading and writing the way a careful photo tool does it.

Why this module is more than ``Image.open(...).convert("RGB")``:

* The colour data handed to a model is always ``HxWx3`` RGB, whatever the source was (8/16
  bit, grayscale, palette, CMYK, with or without alpha), so the inference code has exactly one
  case to handle: ``LoadedImage.pixels`` keeps the decoded uint8/uint16 samples (the tiler
  scales them tile by tile, so a photo is never held as float32: 3 or 6 bytes a pixel, not
  12), and ``LoadedImage.rgb`` gives them as float32 in ``[0, 1]``.
* Everything the model must not touch -- alpha, bit depth, EXIF, ICC profile, DPI, "this was a
  grayscale photo" -- is kept on the side in :class:`LoadedImage` and put back by
  :func:`write_image`, so a derained photo is the same kind of file as the original.
* Bad input fails early with one clear line (:class:`ImageError`) instead of a traceback or a
  silently half-grey picture: missing/empty/non-image files, truncated files and decompression
  bombs (checked from the header, before any pixel is decoded).
* Writing is atomic: a crash, a full disk or Ctrl-C never leaves a half-written photo and never
  destroys the previous file at the destination.

Pillow cannot hold 16-bit colour (it silently reduces 48/64-bit PNG and TIFF to 8 bits), so such
files are decoded with OpenCV and written with small dedicated PNG/TIFF writers that also carry
the metadata OpenCV would drop.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import os
import re
import struct
import tempfile
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
from PIL import (
    Image,
    ImageCms,
    ImageOps,
    PngImagePlugin,
    TiffImagePlugin,
    TiffTags,
    UnidentifiedImageError,
)

from .fileio import give_normal_mode

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SUPPORTED_SUFFIXES",
    "ImageError",
    "LoadedImage",
    "OutputExists",
    "format_for_path",
    "format_name",
    "is_image_path",
    "read_image",
    "sniff_format",
    "unread_photo_format",
    "warnings_to_log",
    "write_image",
]

#: Largest image (width * height) read by default. Generous for photos (a 10000x8000 = 80 MP
#: camera frame passes) yet stops decompression bombs, whose pixels would need many GB of RAM.
DEFAULT_MAX_PIXELS = 200_000_000

#: File name suffixes (lowercase) this module reads and writes.
SUPPORTED_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".tif",
                                ".tiff", ".bmp"})

_SUFFIX_FORMAT = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".jpe": "JPEG",
    ".jfif": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
}
_FORMAT_ALIASES = {"JPG": "JPEG", "TIF": "TIFF"}
_WRITE_FORMATS = frozenset(_SUFFIX_FORMAT.values())
# Pillow plugins we let parse untrusted files; MPO is how Pillow reports multi-picture JPEGs.
_READ_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP")
_NOT_AN_IMAGE = "not an image file (supported: JPEG, PNG, WebP, TIFF, BMP)"
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF


def format_name(fmt: str) -> str:
    """A format as messages name it ("WebP", not Pillow's "WEBP")."""
    return "WebP" if fmt == "WEBP" else fmt


def sniff_format(path: str | os.PathLike[str]) -> str | None:
    """The format one of the readable kinds of file announces in its first bytes ("JPEG",
    "PNG", "WEBP", "TIFF", "BMP"), whatever its name; None for anything else or unreadable.
    Says what a file is when its name or its damage hides it."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return None
    if head[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] in _TIFF_MAGIC:
        return "TIFF"
    if head[:2] == b"BM" and head[6:10] == bytes(4):  # a text file may start "BM": the
        # header's reserved bytes are zero
        return "BMP"
    return None


#: ISO base media brands (bytes 8-12 after "ftyp") of the image formats phones write
_HEIF_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"hevc": "HEIC", b"heim": "HEIC",
                b"heis": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF", b"avif": "AVIF",
                b"avis": "AVIF"}


def foreign_format(path: str | os.PathLike[str]) -> str | None:
    """The image format derain does not read that a file announces in its first bytes
    (GIF, HEIC, HEIF, AVIF, JPEG XL, PSD), whatever its name; None otherwise. Why: a phone's
    HEIC or a GIF named .jpg was "not an image file"."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return _HEIF_BRANDS[head[8:12]]
    if head[:2] == b"\xff\x0a" or head[:12] == b"\0\0\0\x0cJXL \r\n\x87\n":
        return "JPEG XL"
    if head[:4] == b"8BPS":
        return "PSD"
    return None


def _tiff_directory_past_end(p: Path) -> bool:
    """True when the TIFF header at ``p`` points at a first directory beyond the file's
    end: the file was cut short (Pillow writes the directory after the pixels, so a cut
    compressed TIFF was "damaged, or a layout such as...": an audit)."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(16)
            size = os.fstat(fh.fileno()).st_size
    except OSError:
        return False
    e = "<" if head[:2] == b"II" else ">"
    if len(head) < 8 or head[:2] not in (b"II", b"MM"):
        return False
    version = struct.unpack_from(e + "H", head, 2)[0]
    if version == 42:
        first = struct.unpack_from(e + "I", head, 4)[0]
    elif version == 43 and len(head) == 16:  # BigTIFF
        first = struct.unpack_from(e + "Q", head, 8)[0]
    else:
        return False
    return first >= size


def _unidentified(p: Path) -> str:
    """Why Pillow could not open ``p``: a file that starts like a JPEG, PNG... is a damaged
    one (its reader's own reason said), not "not an image" (a PNG with one bad checksum in a
    text chunk read so)."""
    fmt = sniff_format(p)
    if fmt is None:
        other = foreign_format(p)
        if other is not None:
            return (f"a {other} image, whatever its name, which derain does not read "
                    "(supported: JPEG, PNG, WebP, TIFF, BMP): convert it to JPEG or PNG")
        return _NOT_AN_IMAGE
    if fmt == "TIFF":
        if _tiff_directory_past_end(p):
            return ("cut short: the TIFF's directory lies past the end of the file "
                    "(an interrupted copy or download?)")
        return ("a TIFF that cannot be decoded here: damaged, or a layout such as 16-bit "
                "gray with alpha or floating-point RGB (save it as 8- or 16-bit RGB)")
    reason = "cut short, or corrupt"
    Image.init()
    opener = Image.OPEN.get(fmt)
    if opener is not None:  # the format's own reader says why; Image.open only says "cannot"
        try:
            with open(p, "rb") as fh:
                opener[0](fh).close()
        except SyntaxError as e:  # Pillow's parsers word their refusals so; it also wraps
            # struct's "unpack requires a buffer...", a file cut short
            text = str(e).strip()
            checksum = re.search(r"checksum in b'(\w{4})'", text)
            if checksum:
                reason = (f"the checksum of its {checksum[1]} chunk is wrong: a bit changed "
                          "in storage or transfer")
            elif text and not re.search(r"unpack|buffer", text):
                reason = text.splitlines()[0]
        except Exception:  # noqa: BLE001, S110 - only the wording depends on it
            pass
    return f"a damaged {format_name(fmt)} file: its header cannot be read ({reason})"

_ALPHA_FORMATS = frozenset({"PNG", "WEBP", "TIFF"})
_SIXTEEN_BIT_FORMATS = frozenset({"PNG", "TIFF"})
_EXIF_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "TIFF"})
_ICC_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "TIFF"})
_DPI_FORMATS = frozenset({"JPEG", "PNG", "TIFF", "BMP"})
_XMP_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "TIFF"})

_EXIF_HEADER = b"Exif\x00\x00"
_ORIENTATION = 0x0112
#: The largest side each output format can hold (the encoders fail past it).
MAX_SIDE = {"JPEG": 65500, "WEBP": 16383}  # libjpeg's limit, below the format's 65535
_JPEG_MAX_EXIF = 65533  # one APP1 segment
_JPEG_MAX_XMP = 65504  # one APP1 segment less its "http://ns.adobe.com/xap/1.0/\0" header
#: ITU-R BT.601 luma weights, as PIL's "L": every gray result, and the brightness that
#: ``slant`` and ``synth`` measure, use these (four copies of them before)
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class OutputExists(Exception):
    """``write(replace=False)`` found a file at the destination when it came to put the
    photo there (another run wrote it meanwhile); that file is left as it is."""


class ImageError(Exception):
    """A one-line, user-facing reason why an image cannot be read or written.

    The CLI prints ``str(err)`` next to the file name and moves on to the next photo, so the
    message must make sense to someone who has never seen a traceback.
    """


@dataclass
class LoadedImage:
    """Pixels ready for processing plus everything needed to write the result back faithfully.

    ``pixels`` is what the model sees; the other fields describe the source so that
    :func:`write_image` can produce the same kind of file (bit depth, grayscale, alpha, EXIF,
    colour profile, DPI) from the processed colour.
    """

    #: HxWx3 samples as decoded, upright (EXIF orientation already applied): uint8 or
    #: uint16 (gray repeated into the three channels); float32 in [0, 1] is accepted too.
    pixels: np.ndarray
    #: HxW alpha in its original dtype (uint8 or uint16), never processed; None if opaque.
    alpha: np.ndarray | None
    #: 8 or 16: the precision of the source samples, and of the output where the format allows.
    bit_depth: int
    #: True if the source was single-channel (L, I;16, LA, 1): written back single-channel.
    grayscale: bool
    #: The PIL mode of the file as opened (before any conversion), e.g. "RGB", "P", "I;16".
    mode: str
    #: The source container format as PIL names it: "JPEG", "PNG", "WEBP", "TIFF", "BMP".
    format: str
    #: Raw EXIF block ("Exif\\0\\0" + TIFF structure), orientation reset to 1, thumbnail dropped.
    exif: bytes | None = None
    #: Embedded ICC colour profile, kept so colours do not shift (e.g. Adobe RGB, Display P3).
    icc_profile: bytes | None = None
    #: (x, y) dots per inch, if the file recorded it.
    dpi: tuple[float, float] | None = None
    #: XMP packet (captions, ratings, copyright, edits from Lightroom and the like), its
    #: ``tiff:Orientation`` reset to 1 like the EXIF one.
    xmp: bytes | None = None
    #: A PNG's text chunks (title, author, comments...) other than XMP, for a PNG output.
    text: dict[str, str] | None = None
    #: The source was a lossless WebP: a WebP output is written lossless too.
    lossless: bool = False
    #: A PNG's gAMA / cHRM / sRGB chunks as (type, data): how its numbers map to colours when
    #: it has no ICC profile; written back into a PNG output that has none either.
    png_colour: tuple[tuple[bytes, bytes], ...] | None = None
    #: A JPEG's comment (COM segment), for a JPEG output.
    comment: bytes | None = None
    #: A JPEG's Photoshop APP13 segments (IPTC caption, keywords, copyright: what newsroom
    #: and photo-library tools write) as raw payloads, for a JPEG output.
    app13: tuple[bytes, ...] | None = None
    #: The source was a progressive JPEG (it shows coarse-to-fine while loading on the web):
    #: a JPEG output is written progressive too.
    progressive: bool = False
    #: A JPEG's extended XMP (APP1 segments of the ``xmp/extension`` namespace, the part of
    #: its XMP too large for one segment: phones' depth maps, editors' history) as raw
    #: payloads; the main XMP names it (``HasExtendedXMP``). For a JPEG output.
    xmp_extension: tuple[bytes, ...] | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), in PIL's order."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])

    @property
    def rgb(self) -> np.ndarray:
        """``pixels`` as HxWx3 float32 in [0, 1]: a new array (12 bytes a pixel) from 8- or
        16-bit samples, ``pixels`` itself when they are float32 already."""
        px = self.pixels
        if px.dtype.kind != "u":
            return px.astype(np.float32, copy=False)
        out = px.astype(np.float32)
        out *= np.float32(1.0 / np.iinfo(px.dtype).max)
        return out

    @property
    def has_alpha(self) -> bool:
        return self.alpha is not None


# --------------------------------------------------------------------------------------------
# small helpers


def is_image_path(path: str | os.PathLike[str]) -> bool:
    """True if the name ends in a suffix we can read (case-insensitive); does not open the file.

    Used to pick photos out of a folder; dot-files (e.g. our own temporary files and macOS
    ``._photo.jpg`` resource forks) are skipped.
    """
    p = Path(path)
    return p.suffix.lower() in SUPPORTED_SUFFIXES and not p.name.startswith(".")


#: Photo formats people have in their folders that derain does not read, by suffix: a
#: folder scan names them instead of passing them over in silence (``batch``).
UNREAD_PHOTO_FORMATS = {
    ".heic": "HEIC", ".heif": "HEIC", ".avif": "AVIF", ".gif": "GIF", ".jxl": "JPEG XL",
    ".jp2": "JPEG 2000", ".j2k": "JPEG 2000", ".mpo": "MPO (stereo)",
    **dict.fromkeys((".dng", ".cr2", ".cr3", ".nef", ".nrw", ".arw", ".orf", ".rw2", ".raf",
                     ".pef", ".srw"), "camera raw"),
}


def unread_photo_format(path: str | os.PathLike[str]) -> str | None:
    """The format's name if ``path`` is named like a photo derain does not read (HEIC, GIF,
    camera raw...), else None: sidecars and other files are not photos left out."""
    p = Path(path)
    return None if p.name.startswith(".") else UNREAD_PHOTO_FORMATS.get(p.suffix.lower())


def side_limit_problem(fmt: str, width: int, height: int) -> str | None:
    """Why a ``width`` x ``height`` image cannot be written as ``fmt``, or None."""
    limit = MAX_SIDE.get(fmt)
    if limit is None or max(width, height) <= limit:
        return None
    return (f"{format_name(fmt)} holds at most {limit} px a side and this photo is "
            f"{width}x{height}: write PNG or TIFF (--format png)")


def format_for_path(path: str | os.PathLike[str], format: str | None = None) -> str:
    """Output format name ("JPEG", "PNG", ...) from an explicit ``format`` or the file suffix."""
    if format is not None:
        name = format.upper().lstrip(".")
        name = _FORMAT_ALIASES.get(name, name)
        if name not in _WRITE_FORMATS:
            raise ImageError(f"unsupported output format {format!r} (use JPEG, PNG, WebP, "
                             "TIFF or BMP)")
        return name
    suffix = Path(path).suffix.lower()
    try:
        return _SUFFIX_FORMAT[suffix]
    except KeyError:
        shown = f"'{suffix}'" if suffix else "(no suffix)"
        raise ImageError(
            f"unknown output file type {shown} (use .jpg, .png, .webp, .tif or .bmp)"
        ) from None


def _fmt_pixels(n: int) -> str:
    """``n`` pixels for a message: megapixels to 1 decimal, or as many as tell ``n`` from
    a neighbour ("0.1 megapixels, more than 0.1" was said of 135,300 and 100,000)."""
    if n < 100_000:
        return f"{n} pixels"
    text = f"{n / 1e6:.1f}"
    return f"{text} megapixels" if abs(float(text) * 1e6 - n) < 1 else f"{n:,} pixels"


def _check_pixels(width: int, height: int, max_pixels: int | None) -> None:
    n = width * height
    if max_pixels is not None and n > max_pixels:
        raise ImageError(
            f"image is {_fmt_pixels(n)} ({width}x{height}), more than --max-pixels "
            f"({_fmt_pixels(max_pixels)})"
        )


class _PilLimit:
    """Switch off PIL's global decompression-bomb limit while any read_image call runs.

    We apply our own, per-call ``max_pixels`` from the header instead. ``Image.MAX_IMAGE_PIXELS``
    is process-global, so concurrent readers share one reference count: the first one in saves
    the old value, the last one out restores it, and decoding is never serialised.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._saved: int | None = None

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self._saved = Image.MAX_IMAGE_PIXELS
                Image.MAX_IMAGE_PIXELS = None
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    Image.MAX_IMAGE_PIXELS = self._saved


_PIL_LIMIT = _PilLimit()

# The file each thread is reading, so a decoder's warning can name it (see warnings_to_log).
_READING = threading.local()


@contextlib.contextmanager
def warnings_to_log(logger: logging.Logger = log) -> Iterator[None]:
    """Show decoders' warnings (Pillow's "Corrupt EXIF data", OpenCV's libtiff notes) as one
    ``FILE: message`` log line each instead of Python's two-line ``path:line: UserWarning``.

    For command-line tools: it replaces the process-wide ``warnings.showwarning`` and lowers
    OpenCV's own console logging to errors while active (both restored on exit). Deprecation
    notices go to the debug level. Safe with reader threads: the file name is per thread.
    """
    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: object = None, line: str | None = None) -> None:
        level = logging.DEBUG if issubclass(category, DeprecationWarning | FutureWarning) \
            else logging.WARNING
        where = getattr(_READING, "path", None)
        text = " ".join(str(message).split()[:60]) or category.__name__  # Pillow's "Corrupt
        # EXIF data.  Expecting..." has two spaces
        logger.log(level, "%s", f"{where}: {text}" if where else text)

    saved_show = warnings.showwarning
    # OpenCV before 4.13 has no cv2.utils.logging (every photo failed on it): its own notes
    # then reach stderr as they are
    cv_log = getattr(cv2.utils, "logging", None)
    saved_cv2 = cv_log.getLogLevel() if cv_log is not None else None
    warnings.showwarning = show
    if cv_log is not None:
        cv_log.setLogLevel(cv_log.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        warnings.showwarning = saved_show
        if cv_log is not None:
            cv_log.setLogLevel(saved_cv2)


def _reset_exif_orientation(exif: bytes, turned: bool = False) -> bytes | None:
    """EXIF with Orientation set to 1 and the thumbnail (IFD1) unlinked; None if unparseable.

    Patched in place rather than re-serialised so maker notes and other offset-sensitive blocks
    survive byte for byte. The embedded thumbnail shows the unprocessed, unrotated photo, so
    keeping it would make file browsers show the rain (sideways) -- it is unlinked.
    ``turned`` (the pixels were turned by 90 degrees): the Exif IFD's PixelXDimension and
    PixelYDimension, and IFD0's ImageWidth and ImageLength, are swapped to match them.
    """
    body = exif[len(_EXIF_HEADER):] if exif.startswith(_EXIF_HEADER) else exif
    if len(body) < 8 or body[:2] not in (b"II", b"MM"):
        return None
    e = "<" if body[:2] == b"II" else ">"
    if struct.unpack_from(e + "H", body, 2)[0] != 42:
        return None
    ifd0 = struct.unpack_from(e + "I", body, 4)[0]
    if ifd0 < 8 or ifd0 + 2 > len(body):
        return None
    count = struct.unpack_from(e + "H", body, ifd0)[0]
    next_ifd = ifd0 + 2 + 12 * count
    if next_ifd + 4 > len(body):
        return None
    buf = bytearray(body)
    ifd0_values = _single_values(buf, e, ifd0)
    if _ORIENTATION in ifd0_values:
        entry, typ, _ = ifd0_values[_ORIENTATION]
        struct.pack_into(e + _SHORT_LONG[typ], buf, entry + 8, 1)
    struct.pack_into(e + "I", buf, next_ifd, 0)
    if turned:  # width and height follow the turned pixels
        _swap_pixel_dimensions(buf, e, ifd0, _IMAGE_WIDTH, _IMAGE_LENGTH)
        if _EXIF_IFD in ifd0_values:
            _swap_pixel_dimensions(buf, e, ifd0_values[_EXIF_IFD][2])
    return _EXIF_HEADER + bytes(buf)


def _readable_exif(raw: bytes, turned: bool, path: object) -> bytes | None:
    """The tags Pillow can read of an EXIF block too damaged to patch in place (an IFD
    whose entry count runs past its end: the whole block was dropped in silence, an
    audit), written again with Orientation 1 (and sizes swapped where ``turned``); None
    when nothing can be read. Said either way: the maker note may not survive."""
    kept = None
    try:
        with warnings.catch_warnings():  # Pillow's "Corrupt EXIF data" was said on reading
            warnings.simplefilter("ignore")
            parsed = Image.Exif()
            parsed.load(raw)
            if _ORIENTATION in parsed:
                parsed[_ORIENTATION] = 1
            if turned:
                for ifd, x, y in ((parsed, _IMAGE_WIDTH, _IMAGE_LENGTH),
                                  (parsed.get_ifd(_EXIF_IFD), _PIXEL_X, _PIXEL_Y)):
                    if x in ifd and y in ifd:
                        ifd[x], ifd[y] = ifd[y], ifd[x]
            if any(tag != _ORIENTATION for tag in parsed):
                kept = parsed.tobytes()
    except Exception:  # noqa: BLE001 - nothing readable: left out, as said below
        kept = None
    if kept is None:
        log.warning("%s: the EXIF metadata is damaged and cannot be read; left out", path)
    else:
        log.warning("%s: the EXIF metadata is damaged; the tags that could be read are kept",
                    path)
    return kept


_EXIF_IFD, _PIXEL_X, _PIXEL_Y, _MAKER_NOTE = 0x8769, 0xA002, 0xA003, 0x927C
_IMAGE_WIDTH, _IMAGE_LENGTH, _X_RESOLUTION, _RESOLUTION_UNIT = 0x0100, 0x0101, 0x011A, 0x0128
#: the TIFF field types that hold one integer in an IFD entry: SHORT (as the standard says
#: for orientation) and LONG (seen in the wild)
_SHORT_LONG = {3: "H", 4: "I"}


def _single_values(buf: bytearray, e: str, ifd: int) -> dict[int, tuple[int, int, int]]:
    """The IFD at ``ifd`` of the TIFF body ``buf`` (byte order ``e``): tag -> (entry offset,
    type, value) for its entries holding one SHORT or LONG; empty when it lies outside."""
    if ifd < 8 or ifd + 2 > len(buf):
        return {}
    count = struct.unpack_from(e + "H", buf, ifd)[0]
    if ifd + 2 + 12 * count > len(buf):
        return {}
    found = {}
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag, typ, n = struct.unpack_from(e + "HHI", buf, entry)
        if typ in _SHORT_LONG and n == 1:
            found[tag] = (entry, typ, struct.unpack_from(e + _SHORT_LONG[typ], buf, entry + 8)[0])
    return found


def _swap_pixel_dimensions(buf: bytearray, e: str, ifd: int, x_tag: int = _PIXEL_X,
                           y_tag: int = _PIXEL_Y) -> None:
    """Swap the width and height tags (the Exif IFD's PixelXDimension and PixelYDimension,
    or IFD0's ImageWidth and ImageLength) in the IFD at ``ifd``, in place; nothing when
    either is missing. Each keeps its own type where the other's value fits."""
    found = _single_values(buf, e, ifd)
    if x_tag not in found or y_tag not in found:
        return
    (ex, tx, vx), (ey, ty, vy) = found[x_tag], found[y_tag]
    if (tx == 3 and vy > 0xFFFF) or (ty == 3 and vx > 0xFFFF):
        return
    for entry, typ, value in ((ex, tx, vy), (ey, ty, vx)):
        buf[entry + 8:entry + 12] = bytes(4)  # a SHORT sits left-aligned in the field
        struct.pack_into(e + _SHORT_LONG[typ], buf, entry + 8, value)


def _clean_dpi(value: object) -> tuple[float, float] | None:
    """(x, y) dpi as floats, snapped to integers when off only by ppm rounding; None if bogus."""
    if not isinstance(value, tuple | list) or len(value) != 2:
        return None
    try:
        xy = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    if not all(np.isfinite(v) and v > 0 for v in xy):
        return None
    # PNG/BMP store pixels per metre: 300 dpi comes back as 299.9994.
    snapped = [float(round(v)) if abs(v - round(v)) < 0.03 else v for v in xy]
    return snapped[0], snapped[1]


def _icc_colour_space(icc: bytes | None) -> bytes | None:
    if not icc or len(icc) < 128:
        return None
    return bytes(icc[16:20])


def _is_srgb_profile(icc: bytes | None) -> bool:
    """Whether ``icc`` is an sRGB profile (by its description, as cameras and editors name
    it): a file without a profile is read as sRGB, so leaving this one out changes nothing."""
    if _icc_colour_space(icc) != b"RGB ":
        return False
    try:
        from PIL import ImageCms

        text = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc)))
    except Exception:  # noqa: BLE001 - an unreadable profile: not known to be sRGB
        return False
    text = text.lower()  # "sRGB IEC61966-2.1", "sRGB built-in", "Compact sRGB"; not "Linear
    # sRGB" or "esRGB", whose colours differ (a review)
    return re.search(r"(?<![a-z])srgb(?![a-z])", text) is not None and "linear" not in text


def _tile_rawmode(im: Image.Image) -> str:
    """The raw (on-disk) sample layout PIL will decode, e.g. "RGB;16B" for a 48-bit PNG."""
    if not im.tile:
        return ""
    args = im.tile[0][3]  # (codec, extents, offset, args); a plain tuple before Pillow 11
    if isinstance(args, tuple) and args:
        args = args[0]
    return args if isinstance(args, str) else ""


# Orientation value -> how to make the pixels upright (same table as ImageOps.exif_transpose).
def _orient_array(a: np.ndarray, orientation: int) -> np.ndarray:
    if orientation == 2:
        a = a[:, ::-1]
    elif orientation == 3:
        a = a[::-1, ::-1]
    elif orientation == 4:
        a = a[::-1]
    elif orientation == 5:
        a = a.swapaxes(0, 1)
    elif orientation == 6:
        a = np.rot90(a, -1)
    elif orientation == 7:
        a = np.rot90(a, 2).swapaxes(0, 1)
    elif orientation == 8:
        a = np.rot90(a, 1)
    return np.ascontiguousarray(a)


# --------------------------------------------------------------------------------------------
# reading


def read_image(
    path: str | os.PathLike[str], max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> LoadedImage:
    """Read a JPEG, PNG, WebP, TIFF or BMP file into a :class:`LoadedImage`.

    The whole file is decoded here (not lazily) so a truncated or corrupt file fails now with a
    clear :class:`ImageError`, not halfway through processing. ``max_pixels`` is checked from
    the header before any pixel is decoded; ``None`` disables the check. Only the first frame
    of animated/multi-page files is read.
    """
    p = Path(path)
    _READING.path = p
    try:
        return _read_checked(p, max_pixels)
    finally:
        _READING.path = None


def _read_checked(p: Path, max_pixels: int | None) -> LoadedImage:
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ImageError("broken symbolic link" if p.is_symlink() else "file not found") \
            from None
    except OSError as e:
        raise ImageError(f"cannot read file: {e.strerror or e}") from None
    if p.is_dir():
        raise ImageError("is a folder, not an image file")
    if st.st_size == 0:
        raise ImageError("empty file (0 bytes)")

    with _PIL_LIMIT.disabled():
        try:
            try:
                return _read(p, max_pixels)
            except OSError as e:
                whole = _jpeg_lacking_only_its_end(p) if "truncated" in str(e).lower() else None
                if whole is None:
                    raise
            log.warning("%s lacks its JPEG end marker; all its blocks decode, so it is "
                        "derained as it is (were a few bytes missing too, its last block "
                        "may be off)", p)
            return _read(p, max_pixels, whole)
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageError(f"image too large (decompression bomb check): {e}") from None
        except UnidentifiedImageError:
            raise ImageError(_unidentified(p)) from None
        except PermissionError:
            raise ImageError("cannot read file: permission denied") from None
        except MemoryError:
            raise ImageError("not enough memory to decode this image") from None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as e:
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if "truncated" in detail.lower():  # Pillow: "image file is truncated (N bytes not..."
                raise ImageError("truncated image: the file ends before the picture does "
                                 "(an interrupted download or copy, or a damaged file)") \
                    from None  # (Pillow says "truncated" of junk after a header too: audit)
            if detail in _DECODER_JARGON:
                detail = _DECODER_JARGON[detail]
            elif "MAX_TEXT_CHUNK" in detail:  # Pillow's own names (an audit)
                detail = ("a metadata chunk too large to read (a damaged file, or one made "
                          "to exhaust memory)")
            raise ImageError(f"truncated or corrupt image: {detail}") from None


#: Entropy-coded bytes (no 0xFF, so no marker) that a JPEG decoder would take as picture
#: data: alternate bits (valid codes of the standard Huffman tables) and a scramble
_JPEG_FILLERS = (b"\x55" * 4096, bytes((i * 97 + 13) % 255 for i in range(4096)))


def _jpeg_lacking_only_its_end(p: Path) -> bytes | None:
    """The bytes of ``p`` with the JPEG end marker (FF D9) added, where that marker is all
    it lacks (Pillow refuses such a file as truncated; viewers and OpenCV open it: an
    audit); None for any other file. A file cut short inside its picture data decodes
    differently when more data follows the cut; a whole one does not, the decoder taking
    nothing after its last block: so its decodes with the marker right after the file and
    after each of two fillers are compared. (A file a few bytes short can pass where the
    decoder needs none of the fillers' bits: tried on photos, its last 8x8 or 16x16 block
    then differed, as viewers show it too.)"""
    data = _read_bytes(p)
    if data is None or not data.startswith(b"\xff\xd8") or data.endswith(b"\xff\xd9"):
        return None
    base = data[:-1] if data.endswith(b"\xff") else data  # cut between FF and D9
    if not _jpeg_scans_complete(base):  # a progressive file cut between two scans: every
        return None  # block decodes, from the coarse scans alone (a review)

    def decoded(extra: bytes) -> bytes:
        with Image.open(io.BytesIO(base + extra + b"\xff\xd9"), formats=["JPEG"]) as im:
            im.load()
            return im.tobytes()

    try:
        plain = decoded(b"")
        whole = all(decoded(filler) == plain for filler in _JPEG_FILLERS)
    except (OSError, SyntaxError, ValueError, MemoryError, Image.DecompressionBombError):
        return None
    return base + b"\xff\xd9" if whole else None


#: (x0, y0, dx, dy) of the seven Adam7 passes of an interlaced PNG
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _check_png_data_size(source: Path | bytes) -> None:
    """``ImageError`` where a PNG's picture data (its IDAT chunks) unpacks to fewer bytes
    than its header's rows need: Pillow decodes such a file without a word, the missing
    rows black (an audit), and with ``--max-pixels 0`` a small file claiming 50000 x 50000
    was decoded to 15 GB before failing. Counted by unpacking without keeping (a fraction
    of a second for 12 MP); a stream zlib cannot read is left to Pillow to say."""
    data = source if isinstance(source, bytes) else _read_bytes(source)
    if data is None or not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return
    pos, header, got = 8, None, 0
    unpack = zlib.decompressobj()
    try:
        while pos + 8 <= len(data):
            length, kind = struct.unpack(">I4s", data[pos:pos + 8])
            body = data[pos + 8:pos + 8 + length]
            if kind == b"IHDR":
                header = body
            elif kind == b"IDAT":
                while body:
                    got += len(unpack.decompress(body, 1 << 20))
                    body = unpack.unconsumed_tail
            elif kind == b"IEND":
                break
            pos += 12 + length
        got += len(unpack.flush())
    except zlib.error:
        return
    if header is None or len(header) < 13:
        return
    width, height, depth, colour, _, _, interlaced = struct.unpack(">IIBBBBB", header[:13])
    channels = _PNG_CHANNELS.get(colour)
    if channels is None:
        return

    def rows(w: int, h: int) -> int:
        return 0 if w <= 0 or h <= 0 else h * (1 + (w * channels * depth + 7) // 8)

    need = (sum(rows((width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy)
                for x0, y0, dx, dy in _ADAM7) if interlaced else rows(width, height))
    if got < need:
        raise ImageError("truncated image: the file ends before the picture does (an "
                         "interrupted download or copy, or a damaged file; its picture data "
                         "stops short of its last row)")


def _read_bytes(p: Path) -> bytes | None:
    try:
        return p.read_bytes()
    except OSError:
        return None


def _check_jpeg_data_size(im: Image.Image, source: bytes | Path) -> None:
    """``ImageError`` for a Huffman-coded JPEG whose file is too small for its picture: every
    8x8 block costs at least one bit (a flat photo takes two or more). Why: a 675-byte JPEG
    whose header claims 14000x14000 pixels (its end marker present, so nothing seems cut)
    decoded to a flat gray picture, minutes and gigabytes later (an audit)."""
    size = len(source) if isinstance(source, bytes) else source.stat().st_size
    blocks = ((im.width + 7) // 8) * ((im.height + 7) // 8)
    if size * 8 >= blocks:
        return
    if isinstance(source, bytes):
        head = source[:1 << 20]
    else:
        with open(source, "rb") as f:
            head = f.read(1 << 20)
    if _jpeg_frame_marker(head) not in (0xC0, 0xC1, 0xC2):  # arithmetic-coded (or
        return  # lossless) files can be smaller: not judged
    raise ImageError(f"truncated or corrupt image: its {size} bytes cannot hold the "
                     f"{im.width}x{im.height} picture its header claims")


def _jpeg_frame_marker(data: bytes) -> int | None:
    """The start-of-frame marker of the JPEG whose first bytes are ``data`` (0xC0 baseline,
    0xC2 progressive, ...), or None where none is found before the first scan. Bytes
    between segments are skipped, as decoders skip them (one junk byte before the frame
    header let a hostile file pass: a review)."""
    for marker, _ in _jpeg_segments(data, skip_junk=True):
        if marker in _SOF_SEQUENTIAL or marker in _SOF_PROGRESSIVE:
            return marker
        if marker in (0xDA, _BROKEN):
            return None
    return None


#: What :func:`_jpeg_segments` yields for a segment it cannot read (cut short, or a byte
#: where a marker should begin)
_BROKEN = -1


def _jpeg_segments(data: bytes, skip_junk: bool = False) -> Iterator[tuple[int, bytes]]:
    """(marker, body) of each segment of the JPEG whose bytes (maybe cut short) are
    ``data``, after its start marker, up to its end marker or the end of ``data``; a scan's
    coded data is skipped (its segment gives the scan's header). A segment cut short ends
    the walk with ``(_BROKEN, b"")``, and so does a byte where a marker should begin unless
    ``skip_junk`` (decoders skip such bytes). One walk for both checks below."""
    i, n = 2, len(data)
    while i + 1 < n:
        if data[i] != 0xFF:
            if not skip_junk:
                yield _BROKEN, b""
                return
            i += 1
            continue
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:
            return
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        body = data[i + 4:i + 2 + length]
        if i + 4 > n or length < 2 or len(body) < length - 2:
            yield _BROKEN, b""
            return
        i += 2 + length
        yield marker, body
        if marker == 0xDA:  # the coded data, to the next marker (or the end of the file)
            while i + 1 < n and not (data[i] == 0xFF and data[i + 1] != 0
                                     and not 0xD0 <= data[i + 1] <= 0xD7):
                i += 1


#: Start-of-frame markers: sequential (baseline, extended, lossless) and progressive ones
_SOF_SEQUENTIAL = frozenset({0xC0, 0xC1, 0xC3, 0xC5, 0xC7, 0xC9, 0xCB, 0xCD, 0xCF})
_SOF_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})


def _jpeg_scans_complete(data: bytes) -> bool:
    """Whether the scans in ``data`` (a JPEG's bytes, maybe cut short) cover the whole
    picture: every component in a scan of a sequential JPEG; every component's 64
    coefficients down to their last bit (successive approximation ``Al`` 0) in a
    progressive one. Read from the segment headers, skipping each scan's coded data."""
    sof, components, scans = None, [], []
    for marker, segment in _jpeg_segments(data):
        if marker == _BROKEN:
            return False
        if marker in _SOF_SEQUENTIAL or marker in _SOF_PROGRESSIVE:
            if len(segment) < 6:
                return False
            sof = marker
            components = [segment[6 + 3 * k] for k in range(segment[5])
                          if 6 + 3 * k < len(segment)]
        if marker == 0xDA:  # start of scan: its components, spectral band, last bit
            count = segment[0] if segment else 0
            if len(segment) < 4 + 2 * count:
                return False
            ss, se, al = segment[1 + 2 * count], segment[2 + 2 * count], segment[3 + 2 * count]
            scans.append(({segment[1 + 2 * k] for k in range(count)}, ss, se, al & 0x0F))
    if sof is None or not components or not scans:
        return False
    if sof in _SOF_SEQUENTIAL:
        return all(any(c in cs for cs, *_ in scans) for c in components)
    return all(any(c in cs and ss <= k <= se and al == 0 for cs, ss, se, al in scans)
               for c in components for k in range(64))


#: Decoders' refusals that say nothing to a photographer, and what they mean
_DECODER_JARGON = {"could not create decoder object": "the WebP decoder cannot read its data"}


def _read(p: Path, max_pixels: int | None, data: bytes | None = None) -> LoadedImage:
    """The photo at ``p`` (or, where given, in ``data``: the file's bytes, mended)."""
    # Opened from a file object, not a path: given a path, Pillow memory-maps uncompressed
    # single-strip files, and Pillow 13 maps a TIFF whose orientation turns it by 90 degrees
    # (5-8) with the turned size, which scrambles L, P, RGBA and CMYK pixels.
    source = io.BytesIO(data) if data is not None else open(p, "rb")  # noqa: SIM115
    with source as fh, Image.open(fh, formats=_READ_FORMATS) as im:
        fmt = "JPEG" if im.format == "MPO" else str(im.format)
        mode = im.mode
        _check_pixels(im.width, im.height, max_pixels)
        rawmode = _tile_rawmode(im)
        # Pillow inverts an 8-bit "MinIsWhite" TIFF (rawmode "L;I") but reads a 16-bit one as
        # MinIsBlack: the photo came out as its negative.
        min_is_white16 = (fmt == "TIFF" and rawmode.startswith("I;16")
                          and getattr(im, "tag_v2", {}).get(262) == 0)
        if fmt == "TIFF":
            _check_tiff_samples(im)
        if fmt == "JPEG":
            _check_jpeg_data_size(im, data if data is not None else p)
        if fmt == "PNG":
            _check_png_data_size(data if data is not None else p)
        frames = int(getattr(im, "n_frames", 1) or 1)
        if frames > 1 and fmt != "JPEG":
            log.warning("%s has %d pages/frames; only the first is derained", p, frames)
        elif frames > 1 and _mpo_holds_views(im):  # not a phone's preview or gain map
            log.warning("%s holds %d views (a stereo pair or panorama set); only the first "
                        "is derained", p, frames)
        # Read before load(): PIL's TIFF loader applies (and deletes) the orientation itself.
        orientation = im.getexif().get(_ORIENTATION, 1)
        tiff_exif = _tiff_exif(im) if fmt == "TIFF" else None
        if not isinstance(orientation, int) or not 1 <= orientation <= 8:
            orientation = 1
        im.load()  # full decode: raises on truncated data (LOAD_TRUNCATED_IMAGES stays False)

        png_exif = _png_raw_profile_exif(im) if fmt == "PNG" else None  # ImageMagick's
        raw_exif = im.info.get("exif") or tiff_exif or png_exif
        exif = (_reset_exif_orientation(raw_exif, turned=orientation >= 5)
                if isinstance(raw_exif, bytes) else None)
        if exif is None and isinstance(raw_exif, bytes) and raw_exif.strip(b"\0"):
            exif = _readable_exif(raw_exif, orientation >= 5, p)
        xmp = _read_xmp(im, fmt, turned=orientation >= 5)
        text = _png_text(im, without_exif=png_exif is not None) if fmt == "PNG" else None
        png_colour = _png_colour(im) if fmt == "PNG" else None
        lossless = fmt == "WEBP" and _webp_is_lossless(p)
        comment, app13 = _jpeg_comment_and_app13(im) if fmt == "JPEG" else (None, None)
        xmp_extension = _jpeg_xmp_extension(im) if fmt == "JPEG" and xmp else None
        progressive = fmt == "JPEG" and bool(im.info.get("progressive")
                                              or im.info.get("progression"))
        icc = im.info.get("icc_profile") or None
        dpi = None
        if fmt != "TIFF" or TiffImagePlugin.X_RESOLUTION in getattr(im, "tag_v2", {}):
            dpi = _clean_dpi(im.info.get("dpi"))
        if fmt == "JPEG" and im.info.get("jfif_unit") not in (1, 2) and not (
                {_X_RESOLUTION, _RESOLUTION_UNIT} <= set(im.getexif())):  # (Pillow's 72
            # stands in where EXIF lacks either: a review)
            dpi = None  # Pillow's stand-in of 72 dpi (a JPEG with EXIF, no resolution in
            # it, its JFIF an aspect ratio): written out as if the photo said it (an audit)
        if dpi is not None and orientation >= 5:  # rotated by 90 degrees
            dpi = (dpi[1], dpi[0])

        ImageOps.exif_transpose(im, in_place=True)  # no-op if absent or already applied

        # PIL reduces 16-bit colour and gray+alpha (opened as RGBA or LA) to 8 bits: decode
        # those again with OpenCV, checked against PIL's decode.
        if ";16" in rawmode and mode in ("RGB", "RGBA", "LA"):
            gray = rawmode.startswith("L")
            pixels16 = _decode_16bit_cv2(p, fmt, np.asarray(im), orientation)
            if pixels16 is not None and fmt == "TIFF" and mode == "RGB" and \
                    pixels16.shape[2] == 4:
                # a fourth sample PIL did not call alpha (ExtraSamples "unspecified", e.g. a
                # saved selection): dropped, as PIL drops it at 8 bits; OpenCV's alpha made
                # the selection's outside see-through
                pixels16 = pixels16[..., :3]
            if pixels16 is not None:
                loaded = _from_16bit(pixels16, gray, mode, fmt, exif, icc, dpi)
                loaded.xmp, loaded.text, loaded.png_colour = xmp, text, png_colour
                return loaded  # PNG or TIFF: no JPEG comment or APP13
            if gray:  # OpenCV failed: keep PIL's 8-bit decode (still the right picture)
                im = im.convert("LA")

        im, icc = _normalise_mode(im, icc)

    arr = np.asarray(im)
    alpha: np.ndarray | None = None
    key = im.info.get("transparency")
    if im.mode.startswith("I;16") and isinstance(key, int):  # tRNS colour key, 16-bit gray
        alpha = np.where(arr == key, 0, 65535).astype(np.uint16)
    if im.mode in ("RGBA", "LA"):
        alpha = np.ascontiguousarray(arr[..., -1])
        arr = arr[..., :-1]
        if im.mode == "LA":
            arr = arr[..., 0]
    if arr.dtype == np.uint8:
        bit_depth = 8
    else:  # I;16 variants (possibly big-endian) and I: 16-bit gray
        arr = np.clip(arr, 0, 65535).astype(np.uint16) if arr.dtype.kind == "i" else arr
        arr = arr.astype(np.uint16, copy=False)
        bit_depth = 16
        if min_is_white16:
            arr = 65535 - arr
    grayscale = arr.ndim == 2
    return LoadedImage(_rgb_samples(arr), alpha, bit_depth, grayscale, mode, fmt, exif, icc, dpi,
                       xmp, text, lossless, png_colour, comment, app13, progressive,
                       xmp_extension)


def _check_tiff_samples(im: Image.Image) -> None:
    """Refuse TIFF sample layouts that Pillow would decode into a wrong picture without error.

    Pillow reads signed integers as unsigned (or clips them), wraps 32-bit unsigned samples, and
    reads 16-bit colour stored plane by plane (PlanarConfiguration 2) as 8-bit noise; OpenCV
    misreads the latter too. Better one clear line than a plausible-looking broken result.
    """
    tags = getattr(im, "tag_v2", {})
    bits = tags.get(258, (8,))
    bits = bits if isinstance(bits, tuple) else (bits,)
    sample_format = tags.get(339, (1,))
    sample_format = sample_format if isinstance(sample_format, tuple) else (sample_format,)
    if 2 in sample_format:
        raise ImageError("TIFF with signed-integer samples is not supported (save it as "
                         "unsigned 8 or 16 bit)")
    if 3 in sample_format and im.mode != "F":
        raise ImageError("TIFF with floating-point samples is not supported")
    if im.mode != "F" and max(bits, default=8) > 16:
        raise ImageError(f"TIFF with {max(bits)}-bit samples is not supported (8 or 16 bit are)")
    if tags.get(284) == 2 and max(bits, default=8) == 16 and len(bits) > 1:
        raise ImageError("16-bit TIFF with separate colour planes is not supported (save it "
                         "with contiguous/interleaved planes)")


def _mpo_holds_views(im: Image.Image) -> bool:
    """Whether a multi-picture JPEG's other images are views of their own (a stereo
    camera's second eye, a panorama's parts) rather than a preview, depth or gain map that
    phones add, which the result need not carry."""
    entries = (getattr(im, "mpinfo", None) or {}).get(0xB002) or []
    return any("Multi-Frame" in str((e.get("Attribute") or {}).get("MPType", ""))
               for e in entries[1:] if isinstance(e, dict))


def _jpeg_comment_and_app13(im: Image.Image) -> tuple[bytes | None, tuple[bytes, ...] | None]:
    """A JPEG's COM text and its Photoshop APP13 payloads (IPTC), as they were."""
    comment = im.info.get("comment")
    app13 = tuple(data for marker, data in getattr(im, "applist", [])
                  if marker == "APP13" and data.startswith(b"Photoshop 3.0\0"))
    return (bytes(comment) if comment else None), (app13 or None)


_XMP_EXTENSION = b"http://ns.adobe.com/xmp/extension/\0"


def _jpeg_xmp_extension(im: Image.Image) -> tuple[bytes, ...] | None:
    """A JPEG's extended XMP segments (raw APP1 payloads), as they were: Pillow gives the
    main packet alone, and these were dropped in silence (an audit)."""
    parts = tuple(data for marker, data in getattr(im, "applist", [])
                  if marker == "APP1" and data.startswith(_XMP_EXTENSION))
    return parts or None


def _latin1(s: str) -> bool:
    """PNG tEXt chunks (and every chunk keyword) are Latin-1; other text needs iTXt."""
    try:
        s.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _png_text(im: Image.Image, without_exif: bool = False) -> dict[str, str] | None:
    """A PNG's tEXt/zTXt/iTXt chunks as text, XMP left out (it travels as ``xmp``), and
    with ``without_exif`` ImageMagick's EXIF chunk too (read, it travels as ``exif``, its
    orientation reset: copied as it was, viewers turned the upright result once more)."""
    chunks = getattr(im, "text", None) or {}
    skip = {_XMP_PNG_KEY}
    if without_exif:
        skip.add(_PNG_RAW_EXIF_KEY)
    text = {str(k): str(v) for k, v in chunks.items() if k not in skip}
    return text or None


_PNG_RAW_EXIF_KEY = "Raw profile type exif"


def _png_raw_profile_exif(im: Image.Image) -> bytes | None:
    """EXIF from the text chunk ImageMagick and GraphicsMagick write into PNGs
    (``\\nexif\\n  LENGTH\\nHEX...``, as Pillow's ``getexif`` reads it), or None."""
    value = (getattr(im, "text", None) or {}).get(_PNG_RAW_EXIF_KEY)
    if not isinstance(value, str):
        return None
    try:
        data = bytes.fromhex("".join(value.split("\n")[3:]))
    except ValueError:
        return None
    while data.startswith(_EXIF_HEADER):  # once as written; Pillow also reads it twice
        data = data[len(_EXIF_HEADER):]
    return _EXIF_HEADER + data if data[:2] in (b"II", b"MM") else None


def _png_colour(im: Image.Image) -> tuple[tuple[bytes, bytes], ...] | None:
    """The gAMA, cHRM and sRGB chunks, rebuilt from the values Pillow parsed into ``info``."""
    info, chunks = im.info, []
    with contextlib.suppress(TypeError, ValueError, struct.error):
        if "srgb" in info:
            chunks.append((b"sRGB", bytes([int(info["srgb"])])))
        if "gamma" in info:
            chunks.append((b"gAMA", struct.pack(">I", round(float(info["gamma"]) * 100000))))
        if "chromaticity" in info and len(info["chromaticity"]) == 8:
            chunks.append((b"cHRM", struct.pack(
                ">8I", *(round(float(v) * 100000) for v in info["chromaticity"]))))
    return tuple(chunks) or None


def _webp_is_lossless(p: Path) -> bool:
    """Whether the WebP's image data is VP8L (lossless) rather than VP8 (lossy): walks the
    RIFF chunk headers only (metadata chunks such as ICCP or EXIF may come first)."""
    try:
        with open(p, "rb") as f:
            if f.read(12)[8:12] != b"WEBP":
                return False
            while True:
                head = f.read(8)
                if len(head) < 8:
                    return False
                fourcc, size = head[:4], struct.unpack("<I", head[4:])[0]
                if fourcc in (b"VP8L", b"VP8 "):
                    return fourcc == b"VP8L"
                if fourcc == b"ANMF":  # an animation frame: 16 bytes of header, then its
                    f.seek(16, os.SEEK_CUR)  # own image chunks, which decide
                    continue
                f.seek(size + (size & 1), os.SEEK_CUR)
    except OSError:
        return False


def _tiff_exif(im: Image.Image) -> bytes | None:
    """A TIFF keeps its camera tags (make, model, date, the Exif and GPS sub-IFDs) in its own
    IFD, not in an EXIF block: gather them into one, leaving out the tags that describe the
    file's layout (they belong to whatever file is written next)."""
    src = im.getexif()
    out = Image.Exif()
    for tag in src:
        if tag in _TIFF_LAYOUT_TAGS or tag == _XMP_TIFF_TAG:
            continue
        if tag in TiffTags.TAGS_V2_GROUPS:
            sub = src.get_ifd(tag)
            if sub:
                out[tag] = dict(sub)
            continue
        out[tag] = src[tag]
    if not any(tag != _ORIENTATION for tag in out):
        return None
    try:
        return out.tobytes()
    except (ValueError, TypeError, struct.error):  # a tag Pillow cannot write back
        return None


_XMP_PNG_KEY = "XML:com.adobe.xmp"
_XMP_TIFF_TAG = 700
_XMP_ORIENTATION = re.compile(
    rb'(tiff:Orientation\s*=\s*["\'])[1-8](["\'])|(<tiff:Orientation>)\s*[1-8]\s*(</tiff:Orientation>)')


#: XMP's pixel sizes, attributes or elements: their X and Y swap with a quarter turn, as
#: do tiff:ImageWidth and tiff:ImageLength
_XMP_PIXEL_SIZE = re.compile(rb"(exif:Pixel)([XY])(Dimension)")
_XMP_IMAGE_SIZE = re.compile(rb"(tiff:Image)(Width|Length)\b")


def _read_xmp(im: Image.Image, fmt: str, turned: bool = False) -> bytes | None:
    """The file's XMP packet, if any, with its orientation reset (the pixels are upright)
    and, where they were ``turned`` by a quarter, its pixel width and height swapped, as
    EXIF's are (they disagreed with the EXIF block: an audit)."""
    if fmt == "PNG":
        raw = im.info.get(_XMP_PNG_KEY)
    elif fmt == "TIFF":
        raw = getattr(im, "tag_v2", {}).get(_XMP_TIFF_TAG)
    else:
        raw = im.info.get("xmp")
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    elif isinstance(raw, tuple):  # some TIFF readers give the BYTE tag as a tuple of ints
        raw = bytes(raw)
    if not isinstance(raw, bytes) or not raw.strip():
        return None
    raw = _XMP_ORIENTATION.sub(
        lambda m: (m.group(1) + b"1" + m.group(2)) if m.group(1) else
        (m.group(3) + b"1" + m.group(4)), raw)
    if turned:
        raw = _XMP_PIXEL_SIZE.sub(
            lambda m: m.group(1) + (b"Y" if m.group(2) == b"X" else b"X") + m.group(3), raw)
        raw = _XMP_IMAGE_SIZE.sub(
            lambda m: m.group(1) + (b"Length" if m.group(2) == b"Width" else b"Width"), raw)
    return raw


def check_quality(quality: object) -> int:
    """``quality`` as the int Pillow takes (it refuses numpy's integers); ``ValueError``
    unless it is a whole number 1..100 (90.5 reached Pillow's "Invalid quality setting",
    True was 1: an audit). ``write_image`` and ``BatchOptions`` check with it."""
    if isinstance(quality, bool) or not isinstance(quality, int | np.integer) or \
            not 1 <= quality <= 100:
        raise ValueError(f"quality must be a whole number 1..100, got {quality!r}")
    return int(quality)


def is_grayscale_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``read_image`` gives this file as grayscale (its mode, from the header: 1,
    L, LA, I, I;16), so that its result is written as grayscale; False where it cannot be
    opened."""
    try:
        with Image.open(path) as im:
            mode = im.mode
    except Exception:  # noqa: BLE001 - unreadable: read_image says why, elsewhere
        return False
    return mode in ("1", "L", "LA", "La", "I") or mode.startswith("I;16")


def _normalise_mode(im: Image.Image, icc: bytes | None) -> tuple[Image.Image, bytes | None]:
    """Convert any PIL mode to one of RGB, RGBA, L, LA, I;16*, I (and fix the ICC to match)."""
    mode = im.mode
    if mode in ("RGB", "RGBA", "L", "LA", "I") or mode.startswith("I;16"):
        if mode in ("RGB", "L") and "transparency" in im.info:  # tRNS colour key
            im = im.convert(mode + "A" if mode == "L" else "RGBA")
        return im, icc
    if mode == "1":
        return im.convert("L"), icc
    if mode in ("P", "PA"):
        transparent = mode == "PA" or "transparency" in im.info
        return im.convert("RGBA" if transparent else "RGB"), icc
    if mode == "CMYK":
        return _cmyk_to_rgb(im, icc)
    if mode == "RGBa":
        return im.convert("RGBA"), icc
    if mode == "La":
        return im.convert("LA"), icc
    if mode in ("RGBX", "YCbCr"):
        return im.convert("RGB"), icc
    if mode == "F":
        raise ImageError("32-bit floating-point images are not supported")
    try:
        return im.convert("RGB"), None
    except ValueError:
        raise ImageError(f"unsupported colour mode {mode}") from None


def _cmyk_to_rgb(im: Image.Image, icc: bytes | None) -> tuple[Image.Image, bytes | None]:
    """CMYK -> RGB through the embedded profile when there is one (to sRGB), else naively.

    The CMYK profile cannot describe RGB output, so it is replaced by sRGB or dropped.
    """
    if icc and _icc_colour_space(icc) == b"CMYK":
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
            out = ImageCms.profileToProfile(im, src, srgb, outputMode="RGB")
            if out is not None:
                return out, srgb.tobytes()
        except (ImageCms.PyCMSError, OSError, ValueError) as e:
            where = getattr(_READING, "path", None)  # (dropped without a word: an audit)
            log.warning("%s: its CMYK colour profile cannot be used (%s); its colours are "
                        "converted to RGB without it and may look different",
                        where or "the image", str(e).strip() or type(e).__name__)
    elif icc:  # a profile for another colour space, or none readable: dropped in silence
        where = getattr(_READING, "path", None)  # before (a review)
        log.warning("%s: its colour profile is not a CMYK profile, so it cannot convert the "
                    "CMYK colours; they are converted to RGB without it and may look "
                    "different", where or "the image")
    return im.convert("RGB"), None


def _decode_16bit_cv2(
    p: Path, fmt: str, ref: np.ndarray, orientation: int
) -> np.ndarray | None:
    """16-bit samples (RGB/RGBA/LA order, upright) from OpenCV, or None.

    OpenCV's handling of EXIF/TIFF orientation under IMREAD_UNCHANGED differs between formats
    and versions (5.0 rotates TIFFs, not PNGs), so rather than trusting either behaviour the
    result is compared with PIL's upright 8-bit decode ``ref``, which keeps the high byte of
    each sample: the candidate whose high bytes match exactly is the right one. No match means
    OpenCV read something else, and None is returned.
    """
    data = np.fromfile(p, dtype=np.uint8)  # not cv2.imread: that fails on non-ASCII paths
    try:
        arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None
    del data  # (the file's bytes: not held beside the samples)
    if arr is None or arr.dtype != np.uint16:
        return None
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[2] == 3:
        arr = arr[..., ::-1]  # BGR -> RGB
    elif arr.shape[2] == 4:
        arr = arr[..., [2, 1, 0, 3]]  # BGRA -> RGBA
    ref = ref if ref.ndim == 3 else ref[..., None]
    if ref.shape[2] == 2 and arr.shape[2] == 4:  # gray+alpha, expanded to BGRA by OpenCV
        arr = arr[..., [0, 3]]
    # RGB with a tRNS colour key: PIL decodes 3 channels, OpenCV adds the key's alpha (kept).
    keyed = ref.shape[2] == 3 and arr.shape[2] == 4
    candidates = [arr]
    if orientation != 1:
        upright = _orient_array(arr, orientation)
        # Most likely first: matters only when the check below cannot tell them apart (e.g.
        # a very dark or flat image whose high bytes are all alike).
        if _cv2_applies_orientation(fmt):
            candidates.append(upright)
        else:
            candidates.insert(0, upright)
    for cand in candidates:
        colour = cand[..., :3] if keyed else cand
        if colour.shape == ref.shape and _high_bytes_are(colour, ref):
            return np.ascontiguousarray(cand)
    return None


def _high_bytes_are(samples: np.ndarray, ref: np.ndarray) -> bool:
    """Whether 16-bit ``samples``' high bytes equal 8-bit ``ref``, compared in bands of
    rows: ``samples >> 8`` of the whole photo was one more full-size temporary."""
    band = max(1, (1 << 22) // max(1, samples.shape[1] * samples.shape[2]))
    return all(np.array_equal(samples[y:y + band] >> 8, ref[y:y + band])
               for y in range(0, samples.shape[0], band))


@functools.cache
def _cv2_applies_orientation(fmt: str) -> bool:
    """Whether this OpenCV build rotates 16-bit ``fmt`` files by their orientation tag under
    IMREAD_UNCHANGED, found by decoding a tiny mirrored (orientation 2) probe image."""
    exif = Image.Exif()
    exif[_ORIENTATION] = 2
    probe = np.array([[[1, 1, 1], [2, 2, 2]]], dtype=np.uint16)
    buf = io.BytesIO()
    encode = _encode_png16 if fmt == "PNG" else _encode_tiff
    encode(buf, probe, exif=exif.tobytes(), icc=None, dpi=None)
    try:
        out = cv2.imdecode(np.frombuffer(buf.getvalue(), np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return False
    return out is not None and out.ndim == 3 and int(out[0, 0, 0]) == 2


def _from_16bit(
    arr: np.ndarray,
    gray: bool,
    mode: str,
    fmt: str,
    exif: bytes | None,
    icc: bytes | None,
    dpi: tuple[float, float] | None,
) -> LoadedImage:
    alpha: np.ndarray | None = None
    if arr.shape[2] in (2, 4):
        alpha = np.ascontiguousarray(arr[..., -1])
        arr = arr[..., :-1]
    grayscale = gray or arr.shape[2] == 1
    rgb = _rgb_samples(arr[..., 0] if grayscale else arr)
    return LoadedImage(rgb, alpha, 16, grayscale, mode, fmt, exif, icc, dpi)


def _rgb_samples(arr: np.ndarray) -> np.ndarray:
    """HxW or HxWx3 samples -> contiguous HxWx3 of the same dtype (gray into 3 channels)."""
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr)


# --------------------------------------------------------------------------------------------
# writing


def write_image(
    path: str | os.PathLike[str],
    rgb: np.ndarray,
    like: LoadedImage | None = None,
    *,
    format: str | None = None,
    quality: int = 95,
) -> None:
    """Atomically write processed ``rgb`` (HxWx3 float in [0, 1]) to ``path``.

    ``like`` is the :class:`LoadedImage` the pixels came from: its bit depth (16-bit stays
    16-bit in PNG/TIFF), grayscale-ness, alpha (PNG/WebP/TIFF; flattened onto white in JPEG/BMP),
    EXIF, ICC profile and DPI are reproduced as far as the output format allows. Without ``like`` an
    8-bit RGB file without metadata is written. The format comes from ``format`` or the suffix.
    ``quality`` applies to JPEG and WebP.

    The file is written to a hidden temporary file next to ``path``, fsynced and renamed over
    ``path``, so readers only ever see the old file or the complete new one.
    ``prepare_image(...).write()`` does the same in two steps, so that a caller can let go
    of the float image before the encoder's own buffers are allocated.
    """
    prepare_image(path, rgb, like, format=format, quality=quality).write()


@dataclass
class PreparedImage:
    """Output samples quantised for their file, with its metadata: ready to encode.

    Holds 1 or 2 bytes a sample instead of the float result's 4: on an 80 MP photo the
    float32 result (960 MB) can be freed before the encoder adds its own buffers (for an
    optimised JPEG about 10 bytes a pixel).
    """

    path: Path
    fmt: str
    pixels: np.ndarray  # HxW or HxWx3, uint8 or uint16
    alpha: np.ndarray | None
    exif: bytes | None
    icc: bytes | None
    dpi: tuple[float, float] | None
    quality: int
    xmp: bytes | None = None
    text: dict[str, str] | None = None
    lossless: bool = False
    png_colour: tuple[tuple[bytes, bytes], ...] | None = None
    comment: bytes | None = None
    app13: tuple[bytes, ...] | None = None
    progressive: bool = False
    xmp_extension: tuple[bytes, ...] | None = None

    def write(self, replace: bool = True) -> None:
        """Encode to ``path`` atomically (see :func:`write_image`). ``replace=False``: raise
        :class:`OutputExists` rather than replace a file that appeared at ``path``."""
        fmt, pixels, alpha = self.fmt, self.pixels, self.alpha
        exif, icc, dpi, quality, xmp = self.exif, self.icc, self.dpi, self.quality, self.xmp
        text, png_colour = self.text, self.png_colour or ()
        grayscale = pixels.ndim == 2
        bits = 16 if pixels.dtype == np.uint16 else 8
        if bits == 16 or fmt == "TIFF":
            if fmt == "TIFF" and bits == 16 and grayscale and alpha is not None:
                # 16-bit gray+alpha TIFF is valid but neither PIL nor OpenCV reads it back (PIL
                # refuses it, OpenCV reduces it to 8 bits): store the gray as RGB(A) instead.
                pixels = np.repeat(pixels[..., None], 3, axis=2)
                if _icc_colour_space(icc) == b"GRAY":
                    log.warning("%s: the photo's gray colour profile is left out: a 16-bit "
                                "gray TIFF with alpha is written as RGB", self.path)
                    icc = None
            samples = pixels if alpha is None else np.dstack([pixels, alpha])
            encode = _encode_png16 if fmt == "PNG" else _encode_tiff

            def save(fp: BinaryIO) -> None:
                if encode is _encode_png16:
                    encode(fp, samples, exif=exif, icc=icc, dpi=dpi, xmp=xmp, text=text,
                           chunks=png_colour)
                else:
                    encode(fp, samples, exif=exif, icc=icc, dpi=dpi, xmp=xmp)
        else:
            image = Image.fromarray(pixels)  # mode L or RGB
            if alpha is not None:
                image.putalpha(Image.fromarray(alpha))
            params: dict[str, object] = {}
            if exif:
                params["exif"] = exif
            if icc:
                params["icc_profile"] = icc
            if dpi:
                params["dpi"] = dpi
            if xmp and fmt in ("JPEG", "WEBP"):
                params["xmp"] = xmp
            if fmt == "PNG" and (xmp or text or png_colour):
                info = PngImagePlugin.PngInfo()
                for kind, data in png_colour:
                    info.add(kind, data)
                for key, value in (text or {}).items():
                    if _latin1(key + value):
                        info.add_text(key, value)
                    elif _latin1(key):  # keywords are Latin-1 in every text chunk
                        info.add_itxt(key, value)
                if xmp:
                    info.add_itxt(_XMP_PNG_KEY, xmp.decode("utf-8", "replace"))
                params["pnginfo"] = info
            if fmt == "JPEG":
                # 4:4:4 chroma at high quality keeps fine coloured detail, as GIMP does.
                params.update(quality=quality, optimize=True, subsampling=0 if quality >= 90 else 2)
                if self.comment:
                    params["comment"] = self.comment
                if self.progressive:  # as the photo was (it was written baseline)
                    params["progressive"] = True
                # Pillow writes ``extra`` as is among the APP segments
                segments = [(b"\xff\xed", d) for d in self.app13 or ()] + [
                    (b"\xff\xe1", d) for d in self.xmp_extension or ()]
                if segments:
                    params["extra"] = b"".join(
                        marker + struct.pack(">H", len(d) + 2) + d for marker, d in segments)
            elif fmt == "WEBP":
                params.update(quality=quality, exact=True, lossless=self.lossless)

            def save(fp: BinaryIO) -> None:
                # encoded in memory first: given a real file, Pillow's JPEG encoder (optimize)
                # writes to the descriptor itself and ignores a short write on a full disk,
                # leaving a cut-off photo that counted as processed
                buf = io.BytesIO()
                try:
                    image.save(buf, format=fmt, **params)
                except OSError:
                    if fmt != "JPEG":
                        raise
                    buf = io.BytesIO()
                    _save_jpeg_roomier(image, buf, params)
                fp.write(buf.getbuffer())

        _atomic_write(self.path, save, replace=replace)


#: one roomier JPEG encode at a time: Pillow reads its buffer size from a module global
_ROOMIER = threading.Lock()


def _save_jpeg_roomier(image: Image.Image, buf: BinaryIO, params: dict) -> None:
    """Encode a JPEG that outgrew Pillow's buffer. An optimised (or progressive) JPEG is
    made whole in one buffer whose size Pillow guesses (1 byte a pixel below quality 95,
    2 from it); a noisy photo's outgrows it and the encoder fails ("Suspension not
    allowed here"): a night shot at ``--quality 94`` or 100 was derained and not written
    (an audit). Again, with room for 8 bytes a pixel (address space: pages are taken as
    written)."""
    from PIL import ImageFile

    w, h = image.size
    with _ROOMIER:
        before = ImageFile.MAXBLOCK
        ImageFile.MAXBLOCK = max(before, 8 * w * h + sum(  # and its metadata's
            len(params.get(k) or b"") for k in ("exif", "icc_profile", "xmp", "extra",
                                                "comment")) + (1 << 16))
        try:
            image.save(buf, format="JPEG", **params)
        finally:
            ImageFile.MAXBLOCK = before


def _warn_profile_left_out(path: str | os.PathLike[str], fmt: str, icc: bytes,
                           grayscale: bool) -> None:
    """Say why the photo's colour profile is not written (README: nothing dropped in
    silence): it describes other pixels than the file holds, or cannot be read."""
    space = _icc_colour_space(icc)
    kinds = {b"RGB ": "colour", b"GRAY": "grayscale"}
    if space in kinds:
        written = "grayscale" if grayscale else "colour"
        why = (f"it is for {kinds[space]} images and {format_name(fmt)} is "
               f"written in {written}")
    else:
        why = "it is damaged or of a kind derain does not write"
    log.warning("%s: the photo's colour profile is left out: %s", path, why)


def prepare_image(
    path: str | os.PathLike[str],
    rgb: np.ndarray,
    like: LoadedImage | None = None,
    *,
    format: str | None = None,
    quality: int = 95,
) -> PreparedImage:
    """Check and quantise ``rgb`` for ``path`` (the first half of :func:`write_image`)."""
    fmt = format_for_path(path, format)
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be HxWx3, got shape {rgb.shape}")
    if rgb.dtype.kind != "f":  # uint8 data would silently come out white
        raise ValueError(f"rgb must be floating point in [0, 1], got {rgb.dtype}")
    if rgb.size:  # 0..255 floats came out white, NaN black, in silence (an audit)
        lo, hi = float(np.min(rgb)), float(np.max(rgb))  # NaN anywhere makes both NaN
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("rgb holds NaN or infinite values; not written (from a "
                             "network: its precision may be too low, fp32 avoids it)")
        if hi > 1.5:
            raise ValueError(f"rgb must be floating point in [0, 1]; it reaches {hi:g} "
                             "(for 0..255 data divide by 255)")
    quality = check_quality(quality)
    height, width = rgb.shape[:2]
    too_big = side_limit_problem(fmt, width, height)
    if too_big:
        raise ImageError(too_big)

    grayscale = bool(like and like.grayscale)
    alpha = like.alpha if like is not None and fmt in _ALPHA_FORMATS else None
    if (like is not None and like.alpha is not None and alpha is None
            and like.alpha.min() < np.iinfo(like.alpha.dtype).max):  # an opaque one loses
        # nothing (a folder of opaque RGBA screenshots warned once a file; an audit)
        # What lay under transparent pixels is arbitrary (often black): show what a viewer
        # showed, the photo over white, as image editors flatten on export.
        # (a 32-bit BMP may carry alpha, but readers ignore it: never written there)
        log.warning("%s: %s is written without transparency; transparent areas are "
                    "flattened onto white (write PNG, WebP or TIFF to keep the alpha "
                    "channel)", path, format_name(fmt))
        if like.alpha.shape == (height, width):
            rgb = _flatten_onto_white(rgb, like.alpha)
    if alpha is not None and alpha.shape != (height, width):
        raise ValueError(
            f"rgb is {width}x{height} but the source alpha is {alpha.shape[1]}x{alpha.shape[0]}"
        )
    bits = 16 if like is not None and like.bit_depth == 16 and fmt in _SIXTEEN_BIT_FORMATS else 8
    if fmt == "WEBP":
        grayscale = False  # WebP has no grayscale mode

    if like is not None and like.bit_depth == 16 and bits == 8:
        log.warning("%s: %s holds 8 bits a sample; the photo's 16-bit samples are rounded to "
                    "8 (write PNG or TIFF to keep 16 bits)", path, format_name(fmt))
    pixels = _quantise(rgb, bits, grayscale)
    if alpha is not None:
        alpha = _alpha_to_bits(alpha, bits)

    exif = like.exif if like is not None and fmt in _EXIF_FORMATS else None
    if fmt == "JPEG" and exif is not None and len(exif) > _JPEG_MAX_EXIF:
        exif = _fit_jpeg_exif(exif, path)  # one APP1 segment: maker note left out, or all
    icc = like.icc_profile if like is not None and fmt in _ICC_FORMATS else None
    if icc and _icc_colour_space(icc) != (b"GRAY" if grayscale else b"RGB "):
        # a profile for another colour space would be invalid in this file
        _warn_profile_left_out(path, fmt, icc, grayscale)
        icc = None
    if like is not None and like.icc_profile and fmt not in _ICC_FORMATS and \
            _icc_colour_space(like.icc_profile) in (b"RGB ", b"GRAY") and \
            not _is_srgb_profile(like.icc_profile):  # (said of sRGB, which an untagged file
        # is read as: an audit)
        log.warning("%s: %s cannot carry the photo's colour profile; colour-managed "
                    "viewers will show its colours differently (write JPEG, PNG, WebP or "
                    "TIFF to keep it)", path, format_name(fmt))
    gamma = _png_gamma(like.png_colour) if like is not None and fmt != "PNG" else None
    if gamma is not None and not icc and abs(gamma - 1 / 2.2) > 0.01:
        log.warning("%s: the PNG's gamma (%.3g) is not written in %s; its colours will look "
                    "different (write PNG to keep it)", path, gamma, format_name(fmt))
    dpi = like.dpi if like is not None and fmt in _DPI_FORMATS else None
    xmp = like.xmp if like is not None and fmt in _XMP_FORMATS else None
    if fmt == "JPEG" and xmp is not None and len(xmp) > _JPEG_MAX_XMP:
        log.warning("%s: the XMP metadata (%d KB) does not fit a JPEG's 64 KB segment and is "
                    "left out (write PNG, WebP or TIFF to keep it)", path, len(xmp) // 1024)
        xmp = None  # extended XMP is not written
    comment = like.comment if like is not None and fmt == "JPEG" else None
    app13 = like.app13 if like is not None and fmt == "JPEG" else None
    if like is not None:
        _warn_left_out(path, fmt, like)

    text = like.text if like is not None and fmt == "PNG" else None
    lossless = bool(like is not None and like.lossless and fmt == "WEBP")
    # with an ICC profile written the chunks are redundant (and sRGB beside iCCP is invalid)
    png_colour = like.png_colour if like is not None and fmt == "PNG" and not icc else None

    progressive = bool(like is not None and like.progressive and fmt == "JPEG")
    # with the main packet that names it, into a JPEG (``_left_out`` says where it is not)
    extension = like.xmp_extension if like is not None and fmt == "JPEG" and xmp else None
    return PreparedImage(Path(path), fmt, pixels, alpha, exif, icc, dpi, quality, xmp, text,
                         lossless, png_colour, comment, app13, progressive, extension)


def _left_out(fmt: str, like: LoadedImage) -> list[tuple[str, frozenset[str]]]:
    """The photo's metadata that ``fmt`` has no place for: (what, the formats that keep it).
    Colour (profile, gamma) and too-large blocks are warned about where they are dropped;
    DPI in WebP is documented. A PNG's bookkeeping text (``Software``, ImageMagick's
    ``date:create`` and the like) is not worth a warning a file."""
    jpeg, png = frozenset({"JPEG"}), frozenset({"PNG"})
    text = sorted(k for k in like.text or {} if k != "Software" and not k.startswith("date:"))
    items = [("EXIF (camera, dates, copyright)", like.exif, _EXIF_FORMATS),
             ("XMP (captions, ratings, copyright)", like.xmp, _XMP_FORMATS),
             (f"PNG text ({', '.join(text[:4])}{', ...' if len(text) > 4 else ''})", text,
              png),
             ("JPEG comment", like.comment, jpeg),
             ("IPTC block (caption, keywords, copyright)", like.app13, jpeg),
             # other formats hold XMP in one packet: the main one alone is written there
             ("extended XMP (depth maps, edit history)", like.xmp_extension, jpeg)]
    return [(what, where) for what, held, where in items if held and fmt not in where]


def _warn_left_out(path: str | os.PathLike[str], fmt: str, like: LoadedImage) -> None:
    """One warning naming the metadata ``fmt`` cannot hold (README: never dropped in
    silence), and the formats that would keep all of it."""
    dropped = _left_out(fmt, like)
    if not dropped:
        return
    keep = frozenset.intersection(*(where for _, where in dropped))
    order = ("JPEG", "PNG", "WEBP", "TIFF")
    names = [format_name(f) for f in order if f in keep] or [format_name(like.format)]
    said = [what for what, _ in dropped]
    listed = said[0] if len(said) == 1 else ", ".join(said[:-1]) + " and " + said[-1]
    log.warning("%s: %s has no place for the photo's %s; left out (write %s to keep %s)",
                path, format_name(fmt), listed, " or ".join(names),
                "it" if len(said) == 1 else "them")


def _png_gamma(chunks: tuple[tuple[bytes, bytes], ...] | None) -> float | None:
    """The gamma of a PNG's gAMA chunk (0.45455 for sRGB-like files), or None."""
    for kind, data in chunks or ():
        if kind == b"gAMA" and len(data) == 4:
            return struct.unpack(">I", data)[0] / 100000
    return None


def _fit_jpeg_exif(exif: bytes, path: str | os.PathLike[str]) -> bytes | None:
    """EXIF too large for a JPEG's one APP1 segment without its maker note (the camera
    maker's private block, often most of it), else None; said either way, since dates,
    copyright and GPS went with it in silence."""
    try:
        parsed = Image.Exif()
        parsed.load(exif)
        sub = parsed.get_ifd(_EXIF_IFD)
        if _MAKER_NOTE in sub:
            del sub[_MAKER_NOTE]
            slim = parsed.tobytes()
            if len(slim) <= _JPEG_MAX_EXIF:
                log.warning("%s: the EXIF metadata does not fit a JPEG's 64 KB segment; "
                            "written without the camera's maker note", path)
                return slim
    except Exception:  # noqa: BLE001 - unparseable: left out as below
        pass
    log.warning("%s: the EXIF metadata (%d KB) does not fit a JPEG's 64 KB segment and is "
                "left out (write PNG, WebP or TIFF to keep it)", path, len(exif) // 1024)
    return None


def _quantise(rgb: np.ndarray, bits: int, grayscale: bool) -> np.ndarray:
    """Float [0, 1] -> uint8/uint16 with rounding and clipping (NaN -> 0).

    Works in bands of rows through one reused float32 buffer, so the temporaries stay
    small (on an 80 MP photo the whole-image version held four float32 copies, ~4 GB) and
    few: ``fmax``/``fmin`` clip and send NaN to 0 in place (``fmax(NaN, 0)`` is 0), where
    ``nan_to_num`` then ``clip`` made new arrays; on a GPU the folder's writer threads spend
    this time for every photo (README, Speed).
    """
    top = np.float32(65535.0 if bits == 16 else 255.0)
    h, w = rgb.shape[:2]
    out = np.empty((h, w) if grayscale else (h, w, 3), np.uint16 if bits == 16 else np.uint8)
    band = max(1, (1 << 20) // max(1, w))  # ~1 M pixels per band
    buf = np.empty((min(band, h), w) if grayscale else (min(band, h), w, 3), np.float32)
    for y in range(0, h, band):
        x = np.asarray(rgb[y:y + band], dtype=np.float32)  # a view when already float32
        b = buf[:x.shape[0]]
        if grayscale:
            np.matmul(x, LUMA, out=b)
            b *= top
        else:
            np.multiply(x, top, out=b)
        np.fmax(b, 0.0, out=b)
        np.fmin(b, top, out=b)
        np.rint(b, out=b)
        out[y:y + band] = b
    return out


def _flatten_onto_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``rgb`` composited over white with ``alpha`` (uint8 or uint16) as its coverage."""
    cover = alpha.astype(np.float32) / float(np.iinfo(alpha.dtype).max)
    cover = cover[..., None]
    return rgb * cover + (1.0 - cover)


def _alpha_to_bits(alpha: np.ndarray, bits: int) -> np.ndarray:
    if alpha.dtype == np.uint8:
        return alpha if bits == 8 else alpha.astype(np.uint16) * np.uint16(257)
    if bits == 16:
        return alpha.astype(np.uint16, copy=False)
    return ((alpha.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _atomic_write(dest: Path, save: Callable[[BinaryIO], None], replace: bool = True) -> None:
    """Run ``save(fileobj)`` into a temp file beside ``dest``, fsync, then rename over it.

    ``replace=False`` puts it there only if nothing is (a hard link, which fails on an
    existing name, then the temp name removed: no window between look and write); where the
    file system has no hard links, a look just before the rename.
    """
    directory = dest.parent
    try:
        # a short name: one built from dest's could pass the 255-byte limit dest keeps to
        fd, tmp_name = tempfile.mkstemp(prefix=".derain-", suffix=".tmp", dir=directory or ".")
    except FileNotFoundError:
        raise ImageError(f"output folder does not exist: {directory}") from None
    except OSError as e:
        raise ImageError(f"cannot write to {directory}: {e.strerror or e}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fp:
            save(fp)
            fp.flush()
            os.fsync(fp.fileno())
        give_normal_mode(tmp, dest)  # mkstemp's 0600 otherwise
        if replace:
            os.replace(tmp, dest)
        else:
            _place_new(tmp, dest)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, FileExistsError):
            raise OutputExists(str(dest)) from None
        if isinstance(e, OSError):
            raise ImageError(f"cannot write image {dest}: {e.strerror or e}") from e  # the
            # file named: eval's and synth's full disk said no file (an audit)
        raise
    _fsync_dir(directory)


def _place_new(tmp: Path, dest: Path) -> None:
    """Move ``tmp`` to ``dest`` unless ``dest`` exists (FileExistsError)."""
    try:
        os.link(tmp, dest)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (FAT, some network shares): look, then rename
        if os.path.lexists(dest):
            raise FileExistsError(str(dest)) from None
        os.replace(tmp, dest)
        return
    tmp.unlink()


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        dfd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


# ---- 16-bit PNG ----------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _encode_png16(
    fp: BinaryIO,
    samples: np.ndarray,
    *,
    exif: bytes | None,
    icc: bytes | None,
    dpi: tuple[float, float] | None,
    xmp: bytes | None = None,
    text: dict[str, str] | None = None,
    chunks: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """16-bit PNG (gray, gray+alpha, RGB, RGBA) with iCCP/pHYs/eXIf/tEXt/iTXt chunks (and
    ``chunks``, e.g. gAMA, as given).

    OpenCV encodes gray/RGB/RGBA (fast libpng filtering) but writes no metadata, so our chunks
    are spliced in after IHDR. Gray+alpha, which OpenCV cannot write, is encoded here.
    """
    if samples.ndim == 2:
        samples = samples[..., None]
    channels = samples.shape[2]
    extra = b""
    for kind, data in chunks:
        extra += _png_chunk(kind, data)
    if icc:
        extra += _png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc))
    if dpi:
        ppm = [max(1, round(v / 0.0254)) for v in dpi]
        extra += _png_chunk(b"pHYs", struct.pack(">IIB", ppm[0], ppm[1], 1))
    if exif:
        extra += _png_chunk(b"eXIf", exif[len(_EXIF_HEADER):] if exif.startswith(
            _EXIF_HEADER) else exif)
    if xmp:  # iTXt: keyword, no compression, no language, no translated keyword
        extra += _png_chunk(b"iTXt", _XMP_PNG_KEY.encode("latin-1") + b"\x00\x00\x00\x00\x00"
                            + xmp)
    for key, value in (text or {}).items():
        if _latin1(key + value):
            extra += _png_chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1"))
        elif _latin1(key):
            extra += _png_chunk(b"iTXt", key.encode("latin-1") + b"\x00\x00\x00\x00\x00"
                                + value.encode("utf-8"))

    if channels == 2:
        fp.write(b"\x89PNG\r\n\x1a\n")
        h, w = samples.shape[:2]
        fp.write(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 4, 0, 0, 0)))
        fp.write(extra)
        comp = zlib.compressobj(6)
        idat = b"".join(comp.compress(c) for c in _paeth_rows(samples)) + comp.flush()
        fp.write(_png_chunk(b"IDAT", idat))
        fp.write(_png_chunk(b"IEND", b""))
        return

    bgr = samples if channels == 1 else cv2.cvtColor(
        samples, cv2.COLOR_RGB2BGR if channels == 3 else cv2.COLOR_RGBA2BGRA)
    ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise ImageError("PNG encoding failed")
    data = buf.tobytes()
    ihdr_end = 8 + 8 + 13 + 4  # signature, IHDR length/type, IHDR data, CRC
    if data[12:16] != b"IHDR":
        raise ImageError("PNG encoding failed (unexpected encoder output)")
    fp.write(data[:ihdr_end])
    fp.write(extra)
    pos = ihdr_end
    while pos < len(data):  # copy remaining chunks, minus any colour/resolution ones we set
        (length,) = struct.unpack_from(">I", data, pos)
        end = pos + 12 + length
        kind = data[pos + 4 : pos + 8]
        if not (extra and kind in (b"iCCP", b"sRGB", b"gAMA", b"cHRM", b"pHYs", b"eXIf")):
            fp.write(data[pos:end])
        pos = end


def _paeth_rows(samples: np.ndarray, rows_per_chunk: int = 256) -> Iterator[bytes]:
    """Big-endian 16-bit scanlines, each Paeth-filtered (filter type 4), in chunks."""
    h = samples.shape[0]
    bpp = samples.shape[2] * 2
    prev = None
    for start in range(0, h, rows_per_chunk):
        block = samples[start : start + rows_per_chunk].astype(">u2")
        raw = block.reshape(block.shape[0], -1).view(np.uint8).astype(np.int16)
        up = np.empty_like(raw)
        up[0] = prev if prev is not None else 0
        up[1:] = raw[:-1]
        prev = raw[-1].copy()
        left = np.zeros_like(raw)
        left[:, bpp:] = raw[:, :-bpp]
        upleft = np.zeros_like(raw)
        upleft[:, bpp:] = up[:, :-bpp]
        pa = np.abs(up - upleft)
        pb = np.abs(left - upleft)
        pc = np.abs(left + up - 2 * upleft)
        pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
        filtered = ((raw - pred) & 0xFF).astype(np.uint8)
        out = np.empty((raw.shape[0], raw.shape[1] + 1), dtype=np.uint8)
        out[:, 0] = 4
        out[:, 1:] = filtered
        yield out.tobytes()


# ---- TIFF ---------------------------------------------------------------------------

# Tags describing the pixel layout: ours, never copied from the source EXIF.
_TIFF_LAYOUT_TAGS = frozenset(
    {254, 255, 256, 257, 258, 259, 262, 263, 266, 273, 277, 278, 279, 282, 283, 284, 296, 317,
     320, 322, 323, 324, 325, 338, 339, 340, 341, 513, 514, 529, 530, 531, 532, 34675}
)


def _encode_tiff(
    fp: BinaryIO,
    samples: np.ndarray,
    *,
    exif: bytes | None,
    icc: bytes | None,
    dpi: tuple[float, float] | None,
    xmp: bytes | None = None,
) -> None:
    """8/16-bit TIFF (gray, gray+alpha, RGB, RGBA), deflate + horizontal predictor, with ICC,
    DPI and EXIF (camera tags in IFD0 plus the Exif/GPS sub-IFDs).

    PIL cannot write 16-bit colour, its libtiff writer fails on EXIF sub-IFDs and OpenCV drops
    all metadata, so the strips are encoded here and the IFD with PIL's IFD writer.
    """
    if samples.ndim == 2:
        samples = samples[..., None]
    h, w, spp = samples.shape
    bits = samples.dtype.itemsize * 8
    colour = spp >= 3
    ifd = TiffImagePlugin.ImageFileDirectory_v2(prefix=b"II")

    if exif:
        src = Image.Exif()
        src.load(exif)
        for tag in src:
            if tag in _TIFF_LAYOUT_TAGS:
                continue
            if tag in TiffTags.TAGS_V2_GROUPS:
                sub = src.get_ifd(tag)
                if sub:
                    ifd[tag] = sub
                continue
            ifd[tag] = src[tag]
            with contextlib.suppress(KeyError, AttributeError):
                ifd.tagtype[tag] = src.tagtype[tag]

    stride = w * spp * samples.dtype.itemsize
    rows = max(1, min(h, 65536 // max(stride, 1)))
    strips: list[bytes] = []
    for start in range(0, h, rows):
        block = samples[start : start + rows]
        # horizontal differencing (Predictor 2) per sample, wrapping like the unsigned ints
        diff = block.copy()
        diff[:, 1:] -= block[:, :-1]
        strips.append(zlib.compress(diff.astype(diff.dtype.newbyteorder("<")).tobytes(), 6))
    offsets, pos = [], 0
    for s in strips:
        offsets.append(pos)  # relative; ImageFileDirectory_v2 adds the IFD's end
        pos += len(s)

    ifd[256] = w
    ifd[257] = h
    ifd[258] = (bits,) * spp
    ifd[259] = 8  # Adobe deflate
    ifd[262] = 2 if colour else 1  # RGB / BlackIsZero
    ifd[273] = tuple(offsets)
    ifd.tagtype[273] = TiffTags.LONG
    ifd[277] = spp
    ifd[278] = rows
    ifd[279] = tuple(len(s) for s in strips)
    ifd.tagtype[279] = TiffTags.LONG
    ifd[284] = 1  # contiguous samples
    ifd[317] = 2  # horizontal predictor
    if spp in (2, 4):
        ifd[338] = (2,)  # unassociated alpha
    ifd[339] = (1,) * spp  # unsigned integers
    ifd.tagtype[339] = TiffTags.SHORT
    if dpi:
        ifd[296] = 2  # inches
        ifd[282] = dpi[0]
        ifd[283] = dpi[1]
    if icc:
        ifd[34675] = icc
        ifd.tagtype[34675] = TiffTags.UNDEFINED
    if xmp:
        ifd[_XMP_TIFF_TAG] = xmp
        ifd.tagtype[_XMP_TIFF_TAG] = TiffTags.BYTE

    header_and_ifd = io.BytesIO()
    ifd.save(header_and_ifd)
    fp.write(header_and_ifd.getvalue())
    for s in strips:
        fp.write(s)
