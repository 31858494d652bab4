"""Evaluation on paired folders (PSNR/SSIM on Y, PSNR RGB), HTML reports, synthetic pair sets.

``evaluate`` scores what the literature scores: each derained output is rounded to 8 bits (a
saved image) and compared with the clean image by ``metrics.psnr_y`` / ``metrics.ssim_y``
(BT.601 Y, Gaussian-window SSIM) and ``metrics.psnr_rgb``. The ``"identity"`` model scores the
rainy input itself (Rain100L: 26.90 dB / 0.8384).
"""

from __future__ import annotations

import contextlib
import csv
import html
import json
import logging
import os
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote as url_quote

import numpy as np
from torch import nn

from . import metrics
from .data import DataError, load_rgb_u8, warn_skipped
from .errors import OptionError
from .fileio import (
    FolderInUse,
    atomic_write,
    atomic_write_text,
    display_text,
    hold_files,
    hold_folders,
    missing_folders,
    remove_empty_folders,
    same_name_key,
    sweep_stale_temporaries,
    why_unwritable,
)
from .pairs import Pair, find_pairs, list_images, list_photos, reads_into

IDENTITY = "identity"
log = logging.getLogger(__name__)


@dataclass
class ImageScore:
    """One pair's scores: PSNR and SSIM on the Y channel (BT.601, 8-bit output), PSNR on
    RGB, and the seconds the model took on it."""

    name: str
    psnr_y: float
    ssim_y: float
    psnr_rgb: float
    seconds: float = 0.0
    #: degrees the image was turned to make its rain fall straight down (``rain_angle``;
    #: ``"auto"`` chooses per image, 0 where it left it), None when no turn was asked for
    rain_angle: float | None = None


@dataclass
class EvalResult:
    model: str
    data_dir: str
    count: int
    psnr_y: float
    ssim_y: float
    psnr_rgb: float
    images: list[ImageScore] = field(default_factory=list)
    csv_path: str | None = None
    report_path: str | None = None
    seconds: float = 0.0
    #: backend/precision that produced the outputs (e.g. "onnx/int8"), when known
    engine: str = ""
    #: the rain-angle setting the outputs were made with: degrees, ``"auto"``, or 0 (none)
    rain_angle: float | str = 0.0
    #: pairs in the set (after ``limit``): more than ``count`` where a Ctrl-C stopped the
    #: scoring, which the CSV's mean row and the report then say (0: as ``count``)
    total: int = 0

    @property
    def partial(self) -> str:
        """'K of N pairs: interrupted' where the scoring stopped early, else ''."""
        return (f"{self.count} of {self.total} pairs: interrupted"
                if self.total > self.count else "")

    def __repr__(self) -> str:
        """One line, as ``summary()`` (the per-image scores are in ``images``: a hundred
        ImageScores filled a notebook cell)."""
        return f"<EvalResult {self.summary()}; {len(self.images)} ImageScores in .images>"

    def to_dict(self, per_image: bool = True) -> dict[str, Any]:
        d = asdict(self)
        if not per_image:
            d.pop("images")
        return d

    def summary(self) -> str:
        engine = f" ({self.engine})" if self.engine else ""
        return (f"{self.model}{engine} on {_set_name(self.data_dir)}: {self.count} "
                f"image{'s' if self.count != 1 else ''}, "
                f"PSNR-Y {self.psnr_y:.2f} dB, SSIM-Y {self.ssim_y:.4f}, "
                f"PSNR-RGB {self.psnr_rgb:.2f} dB{self.turns()}")

    def turns(self) -> str:
        """'; rain turned on K of N (...)' under ``rain_angle="auto"``: which images the
        choice turned, and by how much (the first five); '' otherwise."""
        if self.rain_angle != "auto":
            return ""
        turned = [s for s in self.images if s.rain_angle]
        named = ", ".join(f"{display_text(s.name)} {s.rain_angle:+g}" for s in turned[:5])
        more = ", ..." if len(turned) > 5 else ""
        return (f"; rain turned on {len(turned)} of {self.count}"
                + (f" ({named}{more})" if turned else ""))


def _label(model: Any) -> str:
    """What was scored, for the summary, JSON and report: the model's name, and the weights
    file when it is not the model's own ('RUN/model.safetensors [semi-drdnet-tiny]')."""
    name = str(getattr(model, "model_name", type(model).__name__))
    weights = getattr(model, "weights_label", None)
    passes = getattr(model, "ensemble", 1)
    angle = getattr(model, "rain_angle", 0.0)
    strength = getattr(model, "strength", 1.0)
    if weights and getattr(model, "weights_status", None) is None:  # a user's file
        name = f"{weights} [{name}]"
    name += f", ensemble of {passes}" if passes > 1 else ""
    name += (", rain angle auto" if angle == "auto" else
             f", rain turned from {angle:g} degrees" if angle else "")
    name += f", strength {strength:g}" if strength < 1.0 else ""
    return name


def _check_ensemble(model: Any, ensemble: object) -> None:
    """``OptionError`` for a pass count ``evaluate`` cannot use with ``model``: said before
    the pairs are decoded, not after."""
    from .ensemble import check_size

    try:
        passes = check_size(ensemble)
    except ValueError as e:
        raise OptionError(str(e)) from None
    if passes != 1:
        _refuse_option(model, f"ensemble={passes}",
                       "the identity has nothing to average: leave --ensemble at 1 "
                       "(ensemble=1 in Python)", "Derainer(ensemble=N) averages passes")


def _refuse_option(model: Any, option: str, identity: str, instead: str) -> None:
    """``OptionError`` where ``model`` cannot take ``option`` (``ensemble=4``): the
    identity (``identity`` says why), and a module or Derainer given as it is, which runs
    as it was made (``instead`` says how to make it so)."""
    if isinstance(model, str) and model == IDENTITY:
        raise OptionError(identity)
    if not isinstance(model, str | os.PathLike):
        raise OptionError(f"{option} applies to a model name or weights file; a "
                          f"{type(model).__name__} given as it is runs as it was made "
                          f"({instead})")


def _check_engine_options(model: Any, **given: object) -> None:
    """``OptionError`` where a Derainer or module given as it is comes with engine
    settings (``device="cuda"``, ``tile=256``, ...): they were ignored in silence, and the
    scores read as the settings' own (an audit)."""
    import inspect

    defaults = inspect.signature(evaluate).parameters  # evaluate's own, not a copy
    changed = [f"{k}={v!r}" for k, v in given.items() if v != defaults[k].default]
    if model == IDENTITY:  # fp32 is what README's figures are measured with, the
        changed = [c for c in changed if c.lower() != "precision='fp32'"]  # its row too
    if changed and model == IDENTITY:  # `-m identity --precision fp64` passed in silence
        log.warning("%s: no engine runs for the identity, which scores the rainy photos as "
                    "they are", ", ".join(changed))  # (an audit); a warning: scripts loop
        return  # over models with one set of flags
    if changed and not isinstance(model, str | os.PathLike):
        raise OptionError(f"{', '.join(changed)} applies to a model name or weights file; a "
                          f"{type(model).__name__} given as it is runs as it was made "
                          "(give them to Derainer(...) instead)")


def _check_rain_angle(model: Any, rain_angle: object) -> float | str:
    """The rain-angle setting ``evaluate`` was given, or ``OptionError`` where it cannot
    use it with ``model``: said before the pairs are decoded, like ``_check_ensemble``."""
    from . import slant

    try:
        setting = slant.check_setting(rain_angle)
    except ValueError as e:
        raise OptionError(str(e)) from None
    if setting != 0:
        _refuse_option(model, f"rain_angle={slant.said(setting)}",
                       "the identity scores the rainy photos as they are: leave "
                       "--rain-angle at 0 (rain_angle=0 in Python)",
                       "Derainer(rain_angle=...) turns the rain")
    return setting


def _check_strength(model: Any, strength: object) -> None:
    """``OptionError`` for a strength ``evaluate`` cannot use with ``model``, before any pair
    is decoded, like ``_check_ensemble``."""
    from .enhancer import check_strength

    if check_strength(strength) != 1.0:
        _refuse_option(model, f"strength={strength:g}",
                       "the identity scores the rainy photos as they are: leave --strength "
                       "at 1 (strength=1 in Python)", "Derainer(strength=S) mixes them")


def _runner(model: Any, device: str, tile: int | None, precision: str = "auto",
            backend: str = "auto", threads: int | None = None, ensemble: int = 1,
            rain_angle: float | str = 0.0, strength: float = 1.0,
            ) -> tuple[Any, str, Callable[[np.ndarray], np.ndarray]]:
    """(Derainer or None, label, HxWx3 uint8 -> HxWx3 float [0,1]) for identity, a Derainer,
    a module or a name. ``ensemble``, ``rain_angle`` and ``strength`` were checked by
    ``evaluate`` (``_check_ensemble``, ``_check_rain_angle``, ``_check_strength``)."""
    if isinstance(model, str) and model == IDENTITY:
        return None, IDENTITY, lambda rgb: rgb.astype(np.float32) / 255.0
    from .enhancer import Derainer

    if isinstance(model, str | os.PathLike):
        from .weights import names_a_file

        if names_a_file(model):
            model = Derainer(weights=Path(model), device=device, tile=tile, precision=precision,
                             backend=backend, threads=threads, ensemble=ensemble,
                             rain_angle=rain_angle, strength=strength)
        else:
            model = Derainer(model=str(model), device=device, tile=tile, precision=precision,
                             backend=backend, threads=threads, ensemble=ensemble,
                             rain_angle=rain_angle, strength=strength)
    label = _label(model)
    if isinstance(model, nn.Module):
        import torch

        from .data import to_tensor

        net = model.eval()  # (its mode is put back by evaluate)
        dev = next(iter([*net.parameters(), *net.buffers()]), torch.empty(0)).device  # (one
        # without parameters raised a bare StopIteration: an audit)

        def run_module(rgb: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                y = net(to_tensor(rgb)[None].to(dev)).float().clamp(0, 1)
            return y[0].permute(1, 2, 0).cpu().numpy()

        return None, label, run_module
    # the decoded samples as they are, as `derain` passes them: divided here first, a few
    # pixels an image came out a level apart from derain's own files (an audit)
    return model, label, model.derain_array


#: A per-image PSNR above this is reported as this: identical images score infinity, which
#: made the set's mean infinite and ``--json`` invalid JSON ("Infinity").
PSNR_CAP = 100.0


def _set_name(data_dir: str) -> str:
    """The data set's name: its folder's (``eval .`` named it "")."""
    return Path(data_dir).resolve().name or str(data_dir)


def save_names(pairs: Sequence[Pair]) -> list[str]:
    """``--save`` file names: the pair's stem + ``.png``, or where two pairs share a stem
    (``1.jpg`` beside ``1.png``) its whole name with the dot as ``_`` (``1_jpg.png``)."""
    stems = Counter(Path(p.name).stem for p in pairs)
    return [(Path(p.name).stem if stems[Path(p.name).stem] == 1
             else p.name.replace(".", "_")) + ".png" for p in pairs]


def _as_written(out: np.ndarray, rainy: Path) -> np.ndarray:
    """The model's float output as derain writes it: for a grayscale rainy file its
    BT.601 luma, as the writer makes the grayscale result (its colour output was scored,
    0.1 dB off derain's own file: an audit). Decided by the file's mode, as the writer
    decides: an RGB file of equal channels is written, and scored, in colour."""
    from .images import LUMA, is_grayscale_file

    if not is_grayscale_file(rainy):
        return out

    y = np.asarray(out, np.float32) @ LUMA
    return np.repeat(y[..., None], 3, axis=2)


def _to_u8(img: np.ndarray, name: str = "") -> np.ndarray:
    """A model's float output as the 8-bit image scored; ``ValueError`` naming the pair
    where it holds NaN or infinities (scored as black: 11 dB for a half-NaN output, an
    overflow passed for a poor score; an audit). Rounded as ``metrics.to_uint8`` (and
    derain's writer) round, which refuses the NaN."""
    try:
        return metrics.to_uint8(np.asarray(img, np.float32))
    except ValueError as e:
        if "NaN" not in str(e):
            raise
        raise ValueError(f"{name or 'an image'}: the model's output holds NaN or infinite "
                         "values (an overflow, or diverged weights; --precision fp32 avoids "
                         "the first); not scored") from None


def evaluate(
    model: Any,
    data_dir: str | os.PathLike[str],
    save_dir: str | os.PathLike[str] | None = None,
    report: str | os.PathLike[str] | None = None,
    *,
    csv_path: str | os.PathLike[str] | None = None,
    rainy_dir: str | os.PathLike[str] | None = None,
    clean_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    device: str = "auto",
    tile: int | None = None,
    precision: str = "auto",
    backend: str = "auto",
    on_image: Callable[[int, int, ImageScore], None] | None = None,
    overwrite: bool = False,
    threads: int | None = None,
    ensemble: int = 1,
    rain_angle: float | str = 0.0,
    on_start: Callable[[int], None] | None = None,
    strength: float = 1.0,
) -> EvalResult:
    """Score ``model`` (``"identity"``, a Derainer, an nn.Module, a model name or a weights
    path) on the pairs under ``data_dir``.

    ``save_dir``: derained outputs saved there as PNG (and ``scores.csv`` unless ``csv_path``).
    ``report``: an HTML page with rainy | derained | clean thumbnails (JPEG files in
    ``<report stem>_files/`` next to it) and each image's numbers; the CSV then defaults to
    ``<report stem>.csv``. ``limit``: only the first N pairs (at least 1). Every file it
    would write is checked before any work (``check_outputs``): an existing one is refused
    unless ``overwrite``, and one of the pairs themselves always. ``ensemble``: passes
    averaged per image for a model name or weights path (``Derainer``'s ``ensemble``); the
    label says how many. ``rain_angle``: degrees or ``"auto"``, for a model name or weights
    path (``Derainer``'s ``rain_angle``); each image's score says the turn it got.
    ``strength``: the part of the rain removal applied, 0 to 1, for a model name or weights
    path (``Derainer``'s ``strength``, ``derain --strength``); the label says it.
    ``on_start(total)``: called once the pairs are read and the model is loaded, before the
    first pair is derained (a bar shown at ``on_image``'s first call stood still, unseen,
    through the first pair: minutes with ``--ensemble 4`` on large photos); ``on_image(done,
    total, score)`` after each pair.
    """
    t0 = time.time()
    _check_model_name(model)
    _check_ensemble(model, ensemble)  # before any pair is decoded
    _check_engine_options(model, device=device, tile=tile, precision=precision,
                          backend=backend, threads=threads)
    rain_angle = _check_rain_angle(model, rain_angle)
    _check_strength(model, strength)
    if limit is not None and limit < 1:  # 0 would score everything, -2 all but the last two
        raise OptionError(f"limit must be at least 1 (got {limit}); leave it out to score "
                          "every pair")  # (a ValueError too, as the other settings' errors)
    _check_file_names(report=report, csv_path=csv_path)
    pairs = find_pairs(Path(data_dir), rainy_dir, clean_dir)
    if limit is not None:
        pairs = pairs[:limit]
    save = Path(save_dir) if save_dir is not None else None
    rep = Path(report) if report is not None else None
    if csv_path is None and save is not None:
        csv_path = save / "scores.csv"
    if csv_path is None and rep is not None:
        csv_path = rep.with_suffix(".csv")
    csv_file = Path(csv_path) if csv_path is not None else None
    check_outputs(pairs, save, rep, csv_file, overwrite)
    check_pair_sizes(pairs)
    check_turns(pairs, rain_angle if rain_angle else getattr(model, "rain_angle", 0.0))
    decoded = check_pairs_read(pairs)
    with contextlib.ExitStack() as mode:
        if isinstance(model, nn.Module) and model.training:  # scored in eval mode, then put
            mode.callback(model.train)  # back: a notebook scoring mid-training trained on
            # with frozen BatchNorm (an audit of the Python API)
        return _evaluate_pairs(model, data_dir, pairs, decoded, t0, device, tile, precision,
                               backend, threads, ensemble, rain_angle, strength, save, rep,
                               csv_file, overwrite, on_start, on_image)


def _evaluate_pairs(model: Any, data_dir: str | os.PathLike[str], pairs: list[Pair],
                    decoded: list[Any], t0: float, device: str, tile: int | None,
                    precision: str, backend: str, threads: int | None, ensemble: int,
                    rain_angle: float | str, strength: float, save: Path | None,
                    rep: Path | None, csv_file: Path | None, overwrite: bool,
                    on_start: Callable[[int], None] | None,
                    on_image: Callable[[int, int, ImageScore], None] | None) -> EvalResult:
    """``evaluate``'s scoring of the checked pairs (``decoded``: their images, or None)."""
    derainer, label, run = _runner(model, device, tile, precision, backend, threads, ensemble,
                                   rain_angle, strength)
    setting = getattr(derainer, "rain_angle", 0.0)  # a Derainer given as it is: its own
    made = _make_folders(save, rep, csv_file)
    thumbs: list[tuple[str, str, str]] = []
    scores: list[ImageScore] = []
    names = save_names(pairs)
    finished = 0  # pairs scored with their saved image and thumbnails

    def finish() -> EvalResult:
        """The result over the pairs done (a Ctrl-C may land between a pair's score and its
        saved image or thumbnails: those with all), its CSV and report written."""
        done = scores[:finished]
        res = EvalResult(
            model=label, data_dir=str(data_dir), count=len(done),
            psnr_y=float(np.mean([s.psnr_y for s in done])),
            ssim_y=float(np.mean([s.ssim_y for s in done])),
            psnr_rgb=float(np.mean([s.psnr_rgb for s in done])),
            images=done, seconds=time.time() - t0,
            engine=f"{derainer.backend}/{derainer.precision}" if derainer is not None else "",
            rain_angle=setting, total=len(pairs),
        )
        if csv_file is not None:
            write_csv(res, csv_file)
            res.csv_path = str(csv_file)
        if rep is not None:
            res.report_path = str(rep)  # before writing: the page's summary names it too
            write_report(res, rep, thumbs[:finished])
            if overwrite:  # without it the folder held none of ours (check_outputs)
                _drop_stale_thumbs(rep, {rel for row in thumbs for rel in row})
        if save is not None and overwrite:
            _say_other_saved_images(save, set(names[:finished]))
        if save is not None and csv_file is not None:
            _say_earlier_scores(save, csv_file)
        return res

    held = contextlib.ExitStack()
    try:
        # another eval into these folders replaced its outputs in silence (an audit): held,
        # and the outputs checked again, as one may have been written meanwhile
        held.enter_context(hold_folders([f for f in (save, rep and _thumb_folder(rep))
                                         if f is not None]))  # their own folders only
        held.enter_context(hold_files([f for f in (csv_file, rep) if f is not None]))
        check_outputs(pairs, save, rep, csv_file, overwrite)
        sweep_stale_temporaries(_output_folders(save, rep, csv_file))  # a killed run's
        if on_start is not None:
            on_start(len(pairs))
        for i, p in enumerate(pairs):
            kept, decoded[i] = decoded[i], None  # freed as the scoring goes
            rainy, clean = kept or (load_rgb_u8(p.rainy), load_rgb_u8(p.clean))
            problem = pair_problem(p.name, rainy, clean)
            if problem:
                from .pairs import PairDataError

                raise PairDataError(problem)
            t = time.perf_counter()
            out = (_to_u8(_as_written(run(rainy), p.rainy), p.name)
                   if label != IDENTITY else rainy)
            took = time.perf_counter() - t  # the model's time alone (it held the scoring's)
            s = ImageScore(p.name, min(metrics.psnr_y(out, clean), PSNR_CAP),
                           metrics.ssim_y(out, clean), min(metrics.psnr_rgb(out, clean), PSNR_CAP),
                           took,
                           derainer.last_rain_angle if setting and derainer is not None else None)
            scores.append(s)
            if save is not None:  # identity: the rainy inputs as scored, for side-by-side use
                from .images import write_image

                write_image(save / names[i], out.astype(np.float32) / 255.0)
            if rep is not None:
                views = (("rainy", rainy), ("out", out), ("clean", clean))
                thumbs.append(tuple(_thumb(img, rep, f"{i:04d}_{k}")  # type: ignore[misc]
                                    for k, img in views))
            finished = i + 1  # scored, saved, thumbnails made
            if on_image is not None:
                on_image(i + 1, len(pairs), s)
    except BaseException as e:
        try:
            if isinstance(e, KeyboardInterrupt) and finished:  # the pairs done so far are
                raise EvalInterrupted(finish(), len(pairs)) from None  # written (an audit),
                # and their scores are the caller's (eval --json printed nothing: an audit)
        finally:
            held.close()
        if not finished:  # a Ctrl-C before the first pair left the empty folders (an audit)
            remove_empty_folders(made)
        if isinstance(e, FolderInUse):
            raise OptionError(str(e)) from None  # a usage error, as an output that exists
        raise
    with held:
        return finish()


def _check_model_name(model: object) -> None:
    """A model name that is neither registered nor identity nor a weights file, refused
    before any pair is read, with identity among the choices (the registry's own message
    left it out: an audit)."""
    if not isinstance(model, str | os.PathLike | nn.Module) and not hasattr(
            model, "derain_array"):  # None or 3 failed with an AttributeError once every
        # pair was decoded (an audit of the Python API)
        raise TypeError(f"model must be a model name, 'identity', a weights file, a Derainer "
                        f"or a torch module, not {type(model).__name__}")
    if isinstance(model, str) and model != IDENTITY:
        from .models import MODELS, UnknownModelError
        from .weights import names_a_file

        if model not in MODELS and not names_a_file(model):
            raise UnknownModelError(model, IDENTITY)


class EvalInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``evaluate``, after at least one pair was scored: ``result``, over
    ``result.count`` of ``total`` pairs, written to the CSV and report where asked for (an
    interrupted run of a long set printed "interrupted" and kept nothing)."""

    def __init__(self, result: EvalResult, total: int) -> None:
        super().__init__(f"interrupted after {result.count} of {total} pairs")
        self.result, self.total = result, total


#: The report's three thumbnails of each pair, ``<stem>_files/NNNN_<kind>.jpg``
THUMB_KINDS = ("rainy", "out", "clean")


def _say_other_saved_images(save: Path, written: set[str]) -> None:
    """Name the PNGs in ``--save`` this run did not write: an earlier run over more pairs
    left them, and with ``--overwrite`` they sat beside the new ones unmarked. They are not
    deleted: the folder may hold the user's own files."""
    try:
        others = sorted(e.name for e in os.scandir(save)
                        if e.name.lower().endswith(".png") and e.name not in written)
    except OSError:
        return
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        log.warning("%s also holds %d PNG image(s) this run did not write (%s): an earlier "
                    "run's over other pairs? They are left as they are.", save, len(others),
                    shown)


def _say_earlier_scores(save: Path, csv_file: Path) -> None:
    """Say that ``--save``'s ``scores.csv`` is an earlier run's where ``--csv`` sent this
    run's elsewhere: it sat beside the new images as if it scored them (an audit). Left as
    it is, as the images are."""
    old = save / "scores.csv"
    try:
        if old.is_file() and not old.samefile(csv_file):
            log.warning("%s is an earlier run's: this run's scores are in %s", old, csv_file)
    except OSError:  # csv_file not there (a failed write is said by its own error)
        log.warning("%s is an earlier run's: this run's scores are in %s", old, csv_file)


def _drop_stale_thumbs(report: Path, kept: set[str]) -> None:
    """Delete thumbnails an earlier, longer report left in ``<stem>_files/`` (``--overwrite``
    with fewer pairs kept them all); only files named as :func:`_thumb` names them."""
    folder = report.parent / f"{report.stem}_files"
    for f in folder.glob("*.jpg"):
        rel = f"{report.stem}_files/{f.name}"
        if re.fullmatch(r"\d{4}_(rainy|out|clean)\.jpg", f.name) and rel not in kept:
            f.unlink(missing_ok=True)


def pair_problem(name: str, rainy: np.ndarray, clean: np.ndarray) -> str | None:
    """Why a decoded pair cannot be scored (sizes differ, too small for SSIM), or None."""
    if rainy.shape != clean.shape:
        return (f"{name}: rainy {rainy.shape[1]}x{rainy.shape[0]} and clean "
                f"{clean.shape[1]}x{clean.shape[0]} differ in size")
    if min(clean.shape[:2]) < metrics.SSIM_WINDOW:
        return (f"{name}: {clean.shape[1]}x{clean.shape[0]} is too small to score; SSIM "
                f"needs at least {metrics.SSIM_WINDOW} px a side")
    return None


def _upright_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the header, as ``load_rgb_u8`` turns it (EXIF orientations 5-8
    swap the sides); None when the header cannot be read here (the decode reports it)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.format == "TIFF":  # Pillow 13 turns a TIFF's size itself; its header never
                w, h = im.tag_v2[256], im.tag_v2[257]  # type: ignore[attr-defined]
            turned = im.getexif().get(0x0112) in (5, 6, 7, 8)
    except Exception:  # noqa: BLE001 - any reader failure is reported by the decode
        return None
    return (h, w) if turned else (w, h)


#: Decoded pairs kept from :func:`check_pairs_read` for the scoring, up to this many bytes
#: in all (rain100l's 100 pairs: 93 MB); the ones past it are decoded again when scored
KEEP_DECODED_BYTES = 256 << 20


def check_pairs_read(
    pairs: Sequence[Pair], keep_bytes: int | None = None,
) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """Every pair decodes and can be scored, before the model runs: a damaged file in the
    third pair stopped the run after two outputs were saved, and the rerun was refused
    because those existed (``train --val`` checks the same way).

    Returns the decoded (rainy, clean) arrays of the pairs that fit in ``keep_bytes``
    (None for the rest; ``keep_bytes`` defaults to ``KEEP_DECODED_BYTES``), so that a set
    of ordinary size is decoded once, not twice."""
    from .pairs import PairDataError

    if keep_bytes is None:
        keep_bytes = KEEP_DECODED_BYTES

    kept: list[tuple[np.ndarray, np.ndarray] | None] = []
    total = 0
    unlike, deep, see_through = [], [], []
    for p in pairs:
        depths: list[int] = []
        clear: list[bool] = []
        try:
            rainy = load_rgb_u8(p.rainy, depths, clear)
            clean = load_rgb_u8(p.clean, depths, clear)
            problem = pair_problem(p.name, rainy, clean)
        except DataError as e:
            problem = str(e)
        if problem:
            raise PairDataError(problem)
        if is_gray(rainy) != is_gray(clean):
            unlike.append(p.name)
        if max(depths) > 8:
            deep.append(p.name)
        if any(clear):
            see_through.append(p.name)
        total += rainy.nbytes + clean.nbytes
        kept.append((rainy, clean) if total <= keep_bytes else None)
    if unlike:  # scored in silence until 2026-12-06 (an audit)
        log.warning("%s: PSNR-RGB compares unlike images there; the Y-channel scores "
                    "compare brightness", unlike_pairs(unlike))
    if deep:  # (a 16-bit pair a few levels apart scored 100 dB, "identical": an audit)
        log.warning("%s: scored at 8 bits, as every image here is (differences finer than "
                    "1/255 count as none)", _pairs_with(deep, ("hold", "holds"),
                                                        "16-bit images"))
    if see_through:  # the alpha channel was dropped in silence (a weak point, session 74)
        log.warning("%s: the alpha channel is ignored, every pixel's colour is scored, hidden "
                    "ones too (and --save writes opaque images)",
                    _pairs_with(see_through, ("hold", "holds"), "transparent pixels"))
    return kept


def _pairs_with(names: Sequence[str], verb: tuple[str, str], what: str) -> str:
    """"N pairs <verb> <what> (a, b, c, ...)" (``verb``: its plural and singular forms),
    the pairs a warning of ``check_pairs_read`` names."""
    n = len(names)
    return (f"{n} pair{'s' if n != 1 else ''} {verb[0] if n != 1 else verb[1]} {what} "
            f"({', '.join(names[:3])}{', ...' if n > 3 else ''})")


def unlike_pairs(names: Sequence[str]) -> str:
    """"N pairs have one grayscale and one colour image (a, b, c, ...)": a gray clean photo
    for a colour rainy one (or the reverse) is scored against unlike colours, which
    ``eval`` and ``train --val`` both say."""
    return _pairs_with(names, ("have", "has"), "one grayscale and one colour image")


def is_gray(rgb: np.ndarray) -> bool:
    """Whether an HxWx3 image is gray (its three channels alike: a grayscale file, as
    ``load_rgb_u8`` repeats it)."""
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1])
                and np.array_equal(rgb[..., 1], rgb[..., 2]))


def check_pair_sizes(pairs: Sequence[Pair]) -> None:
    """Every pair's two images the same size, from the headers, before any work: a
    mismatch in the 90th pair of 100 was found after minutes of deraining."""
    from .pairs import PairDataError

    bad = []
    for p in pairs:
        a, b = _upright_size(p.rainy), _upright_size(p.clean)
        if a is not None and b is not None and a != b:
            bad.append(f"{p.name} ({a[0]}x{a[1]} rainy, {b[0]}x{b[1]} clean)")
    if bad:
        raise PairDataError(f"{len(bad)} pair{'s' if len(bad) > 1 else ''} of different sizes: "
                         + _first_five(bad))


def _first_five(names: Sequence[str]) -> str:
    """'a, b, c, d, e and 3 more': the pairs a header check refuses, said in one line."""
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return ", ".join(names[:5]) + more


def check_turns(pairs: Sequence[Pair], rain_angle: float | str) -> None:
    """``OptionError`` naming the rainy images too long and narrow to turn by
    ``rain_angle`` (``slant.Turn.check_size``), from the headers, before any work: the
    turn refused them one at a time, ending the evaluation at the first. ``"auto"``
    leaves such an image unturned itself."""
    if not rain_angle or rain_angle == "auto":
        return
    from . import slant
    from .errors import OptionError

    bad = []
    for p in pairs:
        size = _upright_size(p.rainy)
        if size is None:
            continue
        turn = slant.Turn.make(size[1], size[0], float(rain_angle))
        if turn.too_large:
            bad.append(f"{p.name} ({size[0]}x{size[1]}: {turn.area_factor:.1f}x)")
    if bad:
        raise OptionError(
            f"turned {float(rain_angle):g} degrees, {len(bad)} rainy image"
            f"{'s' if len(bad) > 1 else ''} would need a canvas past "
            f"{slant.MAX_CANVAS:g} times {'their' if len(bad) > 1 else 'its'} pixels: "
            + _first_five(bad) + "; score them without the rain angle, or with auto "
            "(which leaves them unturned)")


def check_outputs(pairs: Sequence[Pair], save: Path | None, report: Path | None,
                  csv_path: Path | None, overwrite: bool = False) -> None:
    """Refuse, before any work, an output that would replace one of the pairs being scored,
    that two outputs would share, or (unless ``overwrite``) that exists already, or whose
    folder cannot be made. Why: ``--save`` pointed at a pair's clean folder once
    replaced the ground truth with the model's outputs, silently."""
    from .errors import OptionError

    # names compared as the file system compares them (``--save data/Clean`` is the pairs'
    # clean/ folder on macOS and Windows)
    inputs = {same_name_key(q) for p in pairs for q in (p.rainy, p.clean)}
    held = {same_name_key(q.parent) for p in pairs for q in (p.rainy, p.clean)}
    written = [save] if save is not None else []
    if report is not None:
        written.append(report.parent / f"{report.stem}_files")
    for d in written:  # new images there would break the pairs' layout (unmatched files)
        r = same_name_key(d)
        if r in held or any(r.startswith(h.rstrip(os.sep) + os.sep) for h in held):
            raise OptionError(f"{d} is inside a folder of the pairs being scored; save the "
                              "outputs in another folder")
    planned: list[tuple[Path, str]] = []
    if save is not None:
        planned += [(save / n, p.name) for p, n in zip(pairs, save_names(pairs), strict=True)]
    planned += [(f, what) for f, what in ((csv_path, "the scores"), (report, "the report"))
                if f is not None]
    if report is not None:  # the thumbnails: a <stem>_files/ folder may hold the user's files
        thumbs = report.parent / f"{report.stem}_files"
        planned += [(thumbs / f"{i:04d}_{k}.jpg", "a thumbnail of the report")
                    for i in range(len(pairs)) for k in THUMB_KINDS]
    seen: dict[str, str] = {}
    existing: list[Path] = []
    for f, what in planned:
        r = same_name_key(f)
        if r in inputs:
            raise OptionError(f"{f} is one of the pairs being scored; save the outputs in "
                              "another folder")
        if r in seen:
            raise OptionError(f"{seen[r]} and {what} would both be written to {f}")
        seen[r] = what
        if f.is_dir():
            raise OptionError(f"{f} is a folder; name a file for {what}")
        if f.exists() and not overwrite:
            existing.append(f)
    if existing:  # all of them at once: a rerun met the CSV, then the report, then its
        # thumbnails, one refusal each (an audit)
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        raise OptionError(f"{', '.join(str(f) for f in existing[:3])}{more} "
                          f"exist{'s' if len(existing) == 1 else ''}; pass --overwrite to "
                          f"replace {'it' if len(existing) == 1 else 'them'}")
    for d in sorted({f.parent for f, _ in planned}):  # creatable, without creating it yet
        why = why_unwritable(d)
        if why is not None:
            raise OptionError(f"cannot write to {d}: {why}")


def _check_file_names(**files: str | os.PathLike[str] | None) -> None:
    """A file name given with a trailing slash (``--report out/``) is taken for the folder
    it says it is and refused: a Path drops the slash, and ``out`` was written as a file
    with ``out.csv`` and ``out_files/`` beside it (an audit)."""
    from .errors import OptionError

    for what, f in files.items():
        if isinstance(f, str) and f.endswith(("/", os.sep)):
            kind, example = (("the report", "report.html") if what == "report" else
                             ("the scores", "scores.csv"))
            raise OptionError(f"{f!r} names a folder; {kind} go{'es' * (what == 'report')} "
                              f"to a file: name one in it (e.g. {f}{example})")


def _output_folders(save: Path | None, report: Path | None,
                    csv_path: Path | None) -> list[Path]:
    """The folders ``evaluate`` writes into."""
    folders = {f.parent for f in (csv_path, report) if f is not None}
    if save is not None:
        folders.add(save)
    if report is not None:
        folders.add(_thumb_folder(report))
    return sorted(folders)


def _thumb_folder(report: Path) -> Path:
    """The folder of a report's thumbnails, beside it."""
    return report.parent / f"{report.stem}_files"


def _make_folders(save: Path | None, report: Path | None, csv_path: Path | None,
                  ) -> list[Path]:
    """The output folders, made once the model is loaded (a bad -m leaves none behind).
    Returns those it made, outermost first, for ``remove_empty_folders``."""
    from .errors import OptionError

    made: list[Path] = []
    for d in _output_folders(save, report, csv_path):
        made += missing_folders(d)
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            remove_empty_folders(made)
            raise OptionError(f"cannot write to {d}: {e.strerror or e}") from None
    return made


def write_csv(res: EvalResult, path: Path) -> None:
    """The per-image scores and their mean, in UTF-8 (file names may be any script; the
    locale's encoding failed on Windows after the whole evaluation), written atomically."""
    atomic_write(path, lambda tmp: _write_csv_to(res, tmp))


def _write_csv_to(res: EvalResult, path: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        turned = bool(res.rain_angle)  # a column for the turns only where some were asked
        w.writerow(["name", "psnr_y", "ssim_y", "psnr_rgb", "seconds"]
                   + ["rain_angle"] * turned)
        for s in res.images:
            # control characters escaped: an escape sequence in a name ran in the terminal
            # of whoever printed the CSV (an audit); other characters kept (a review)
            w.writerow([_csv_text(_no_controls(display_text(s.name))), f"{s.psnr_y:.4f}",
                        f"{s.ssim_y:.6f}",
                        f"{s.psnr_rgb:.4f}", f"{s.seconds:.3f}"]
                       + [f"{s.rain_angle:g}" if s.rain_angle is not None else ""] * turned)
        # a stopped run's mean says so: the file passed for the whole set's (an audit)
        mean = f"mean ({res.partial})" if res.partial else "mean"
        w.writerow([mean, f"{res.psnr_y:.4f}", f"{res.ssim_y:.6f}", f"{res.psnr_rgb:.4f}",
                    f"{np.mean([s.seconds for s in res.images]):.3f}"] + [""] * turned)


def _no_controls(text: str) -> str:
    """``text`` with its control characters (C0, DEL, C1) escaped as ``\\x1b``."""
    return "".join(repr(c)[1:-1] if unicodedata.category(c) == "Cc" else c for c in text)


def _csv_text(text: str) -> str:
    """``text`` as a spreadsheet shows it: a leading ``= + - @`` (or tab, CR) would make
    a file name such as ``=HYPERLINK(...).png`` a formula, so it gets a ``'`` first."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _thumb(img: np.ndarray, report: Path, stem: str, width: int = 320) -> str:
    """Save a JPEG thumbnail next to the report; return its path relative to the report."""
    from PIL import Image

    im = Image.fromarray(img)
    if im.width > width:
        im = im.resize((width, max(1, round(im.height * width / im.width))), Image.LANCZOS)
    rel = f"{report.stem}_files/{stem}.jpg"
    # atomic_write: a link at the name is replaced, not written through
    atomic_write(report.parent / rel, lambda tmp: im.save(tmp, format="JPEG", quality=88))
    return rel


def _script_json(value: Any) -> str:
    """JSON for a ``<script type="application/json">`` block: a script's text is not
    HTML-decoded, so no entities (``&quot;`` made it invalid JSON); only ``<`` is escaped,
    JSON's own way, so that no ``</script>`` can end the block early."""
    return json.dumps(value).replace("<", "\\u003c")


def write_report(res: EvalResult, path: Path, thumbs: list[tuple[str, str, str]]) -> None:
    def e(text: str) -> str:  # names whose bytes are not UTF-8 shown as \xe9 (display_text)
        return html.escape(display_text(text))

    def quote(rel: str) -> str:  # a link to the file's own bytes, whatever they are
        return url_quote(rel.encode("utf-8", "surrogateescape"))

    def turn(s: ImageScore) -> str:  # the turn the image got, where turns were asked for
        return "" if s.rain_angle is None else (
            f"<br>rain turned from {s.rain_angle:g} degrees" if s.rain_angle else
            "<br>not turned")

    engine = f" Run on {e(res.engine)}." if res.engine else ""  # bf16 and int8 score apart
    csv_link = ""
    if res.csv_path:  # relative, so the report, its CSV and thumbnails move together
        try:  # (abspath, not resolve: a report in a linked folder links through the link)
            rel = os.path.relpath(os.path.abspath(res.csv_path), os.path.abspath(path.parent))
        except ValueError:  # another drive (Windows): no relative path
            rel = Path(os.path.abspath(res.csv_path)).as_uri()
        href = rel if rel.startswith("file:") else quote(Path(rel).as_posix())
        csv_link = f' Per-image CSV: <a href="{e(href)}">{e(rel)}</a>.'
    rows = []
    for s, (r, o, c) in zip(res.images, thumbs, strict=True):
        rows.append(
            f"<tr><td>{e(s.name)}<br><small>PSNR-Y {s.psnr_y:.2f} dB<br>SSIM-Y {s.ssim_y:.4f}"
            f"<br>PSNR-RGB {s.psnr_rgb:.2f} dB{turn(s)}</small></td>"
            f'<td><img src="{e(quote(r))}" alt="rainy"></td>'
            f'<td><img src="{e(quote(o))}" alt="derained"></td>'
            f'<td><img src="{e(quote(c))}" alt="clean"></td></tr>')
    stopped = (f"<p><b>{e(res.partial)}</b>: the means are over those pairs alone.</p>\n"
               if res.partial else "")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>derain evaluation: {e(res.model)}</title>
<style>body{{font-family:sans-serif;margin:1em}} td{{vertical-align:top;padding:4px}}
img{{max-width:320px}} table{{border-collapse:collapse}} tr:nth-child(even){{background:#f4f4f4}}
</style></head><body>
<h1>{e(res.model)} on {e(_set_name(res.data_dir))}</h1>
{stopped}<p>{res.count} image{'s' if res.count != 1 else ''}.
Mean PSNR-Y <b>{res.psnr_y:.2f} dB</b>,
SSIM-Y <b>{res.ssim_y:.4f}</b>,
PSNR-RGB {res.psnr_rgb:.2f} dB{e(res.turns())} (outputs rounded to 8 bits; BT.601 Y; Gaussian
SSIM).{engine}{csv_link}</p>
<table><tr><th>image</th><th>rainy</th><th>derained</th><th>clean</th></tr>
{chr(10).join(rows)}
</table>
<script type="application/json" id="summary">{_script_json(
    {**res.to_dict(False), "interrupted": bool(res.partial)})}</script>
</body></html>
"""
    atomic_write_text(path, page)


class SynthError(DataError):
    """A ``synth_pairs`` request that cannot run as given (bad option, occupied output).

    A ``DataError`` (so a ``ValueError``): the CLI reports it as a usage error (exit 2)."""


def _planned_names(paths: list[Path], root: Path, count: int | None,
                   bad: frozenset[int] = frozenset()) -> set[str]:
    """The pair names :func:`synth_pairs` will write if every photo reads but those at the
    positions ``bad`` (its walk passes over them and goes on to later names)."""
    names = _pair_names(paths, root)
    good = len(paths) - len(bad)
    if good <= 0:
        return set()
    n = count if count is not None else good
    used: set[str] = set()
    k = -1
    while len(used) < n:
        k += 1
        if k % len(paths) not in bad:
            used.add(_walk_name(names, k, used))
    return used


def _pair_photo(p: Path) -> np.ndarray:
    """A clean photo as synth uses it (RGB uint8); ``DataError`` where it cannot (it cannot
    be decoded, or it is too small for a pair that eval scores)."""
    img = load_rgb_u8(p)
    too_small = pair_problem(str(p), img, img)  # eval's rule: it refused the set
    if too_small:
        raise DataError(too_small.replace("too small to score;", "too small for a "
                                          "pair that eval can score;"))
    return img


def _unusable(p: Path) -> bool:
    """Whether synth would pass over photo ``p`` (:func:`_pair_photo`)."""
    try:
        _pair_photo(p)
    except DataError:
        return True
    return False


def _older_pairs(out: Path, planned: set[str]) -> set[str]:
    """File names of the images in ``out``'s pair folders that a run writing the pairs
    ``planned`` (``NAME.png`` each) would not replace. By whole name: an older ``a.jpg``
    was taken as replaced by the new ``a.png`` and stayed, unpaired (an audit)."""
    return {p.name for side in ("rainy", "clean") if (out / side).is_dir()
            for p in list_images(out / side)} - {f"{name}.png" for name in planned}


def _warn_if_pairs(folder: Path) -> None:
    """Warn where synth's photo folder is a set of pairs (``synth rain100l``: its rainy
    images get more rain): any layout eval reads (Rain100L's own flat rain-N/norain-N was
    missed: a review), or a layout's side folders holding images whose names do not pair."""
    from .pairs import pairs_held

    what = pairs_held(folder)
    if what:
        log.warning("%s holds a set of %s (as derain eval reads it): its rainy images get "
                    "more rain as well; give its folder of clean images alone", folder, what)


def _walk_name(names: list[str], k: int, used: set[str]) -> str:
    """The name of the pair made at position ``k`` of the walk through the photos."""
    j = k % len(names)
    name = names[j] if k < len(names) else f"{names[j]}_{k // len(names)}"
    while name in used:  # a photo may itself be called like a repeat (x and x_1)
        name += "_"
    return name


def _check_synth_output(out: Path, overwrite: bool, planned: set[str]) -> None:
    """Refuse an output that already holds pairs: new pairs would replace those with the same
    names and leave the rest, silently mixing two sets (two presets, two seeds); with
    ``overwrite``, refuse where older pairs would stay among the new ones. Refuse a folder
    holding another layout's pair set too: readers of the folder would refuse it."""
    from .pairs import SUBFOLDER_LAYOUTS, _find_subdir

    for rainy, clean in SUBFOLDER_LAYOUTS if out.is_dir() else ():  # in any case, as the
        r, c = _find_subdir(out, rainy), _find_subdir(out, clean)  # readers match (NoRain/ and
        if r is not None and c is not None and (r.name, c.name) != ("rainy", "clean"):
            # Rainy/ + Clean/ were missed, a second set written beside: a review)
            raise SynthError(f"output folder {out} holds another set of pairs ({r.name}/ + "
                             f"{c.name}/); choose an empty or new folder")
    if overwrite:
        older = _older_pairs(out, planned)
        if older:
            raise SynthError(
                f"output folder {out} holds {len(older)} image name(s) in rainy/ or clean/ "
                "that this run would not replace "
                f"({', '.join(sorted(older)[:5])}{', ...' if len(older) > 5 else ''}): they "
                "would stay mixed among the new ones; choose an empty or new folder")
        return
    held = {side: len(list_images(out / side)) for side in ("rainy", "clean")
            if (out / side).is_dir()}
    held = {side: n for side, n in held.items() if n}
    if held:
        what = " and ".join(f"{side}/ {n} image{'s' if n != 1 else ''}"
                            for side, n in held.items())
        raise SynthError(
            f"output folder {out} already holds pairs ({what}){_unpaired_note(out)}; choose "
            "an empty or new folder, or pass --overwrite (overwrite=True in Python) to "
            "replace pairs with the same names")


def _unpaired_note(out: Path) -> str:
    """Where ``out``'s pair folders hold images without a partner (a synth killed between
    a pair's two writes: ``kill -9``, the out-of-memory killer), which, and how to mend
    them: the refusal named none (an audit)."""
    try:  # a set whose names pair by another rule (rain-001 / norain-001) is whole:
        find_pairs(out)  # "without a partner" misread it as a killed run (a review)
        return ""
    except (ValueError, OSError):  # (PairsError, DataError: not whole)
        pass
    names = {side: {p.stem for p in list_images(out / side)} if (out / side).is_dir()
             else set() for side in ("rainy", "clean")}
    alone = sorted(f"{side}/{n}" for side, other in (("rainy", "clean"), ("clean", "rainy"))
                   for n in names[side] - names[other])
    if not alone:
        return ""
    return (f", {len(alone)} of them without a partner ({', '.join(alone[:3])}"
            f"{', ...' if len(alone) > 3 else ''}: a run stopped midway; the same command "
            "with --overwrite makes the same pairs again, from the same photos, --count and "
            "--seed)")


def _pair_names(paths: list[Path], root: Path) -> list[str]:
    """A distinct output name per photo: its stem where that is unique, else its path below
    ``root`` joined by ``_`` (with the suffix where even that repeats, as for ``x.png`` beside
    ``x.jpg``). Distinct names are what keeps one pair from overwriting another."""
    count: dict[str, int] = {}
    for p in paths:
        count[p.stem] = count.get(p.stem, 0) + 1
    names = []
    for p in paths:
        if count[p.stem] == 1:
            names.append(p.stem)
            continue
        try:
            parts = p.relative_to(root).with_suffix("").parts
        except ValueError:
            parts = (p.parent.name, p.stem)
        names.append("_".join(parts))
    taken: dict[str, int] = {}
    for name in names:
        taken[name] = taken.get(name, 0) + 1
    names = [f"{n}_{p.suffix.lstrip('.').lower()}" if taken[n] > 1 else n
             for n, p in zip(names, paths, strict=True)]
    seen: set[str] = set()
    unique = []
    for name in names:  # last resort (e.g. "a_b/x" and "a/b_x"): a counter
        candidate, i = name, 1
        while candidate in seen:
            i += 1
            candidate = f"{name}_{i}"
        seen.add(candidate)
        unique.append(candidate)
    return unique


def _write_pair(out: Path, name: str, clean: np.ndarray, rainy: np.ndarray) -> None:
    """One pair, both images or neither: Ctrl-C between the two writes left a clean image
    without its rainy partner, and ``eval``/``train --pairs`` then refused the whole set
    (an audit). Each write is atomic; where the second fails, the first goes (with an
    ``--overwrite``'s old partner, which would now pair with nothing)."""
    from .images import write_image

    first, second = out / "clean" / f"{name}.png", out / "rainy" / f"{name}.png"
    write_image(first, clean)
    try:
        write_image(second, rainy)
    except BaseException:
        for p in (first, second):
            with contextlib.suppress(OSError):
                p.unlink(missing_ok=True)
        raise


def synth_pairs(
    clean_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    preset: str = "mixed",
    count: int | None = None,
    seed: int = 0,
    on_image: Callable[[int, int], None] | None = None,
    *,
    overwrite: bool = False,
    on_skip: Callable[[Path, str], None] | None = None,
) -> int:
    """Write ``count`` synthetic pairs (default: one per readable clean photo) as
    ``out_dir/rainy/`` + ``out_dir/clean/`` PNGs sharing file names. Photos are reused, with
    new rain, when ``count`` exceeds their number. The pair made at position ``i`` of the
    walk through the photo list (cycling) is rendered from ``seed`` and ``i`` only.

    Options are checked before any work (``SynthError``, a ``ValueError``): ``preset`` must
    be a known one or a comma list of them (``synth.check_preset``), ``count`` at least 1,
    and ``out_dir`` must not already hold images in ``rainy/`` or ``clean/`` unless
    ``overwrite`` (which replaces same-named pairs).
    A photo that cannot be decoded is skipped with one warning (``on_skip(path, reason)``;
    default: a ``warning:`` line on stderr), so one damaged file does not end a long job;
    ``DataError`` if none can be read. Returns the number of pairs written."""
    from . import synth

    try:
        synth.check_preset(preset)
    except ValueError as e:
        raise SynthError(str(e)) from None
    for name, value in (("count", count), ("seed", seed)):  # count=2.5 wrote 3 pairs,
        if not (isinstance(value, int) and not isinstance(value, bool)) and not (
                value is None and name == "count"):  # "2" failed in a comparison (audit)
            raise SynthError(f"{name} must be a whole number, not {value!r}")
    if count is not None and count < 1:
        raise SynthError("count must be at least 1")
    if not 0 <= seed < 2**32:  # taken modulo 2**32: two seeds gave the same rain
        raise SynthError(f"seed must be 0 to {2**32 - 1}, not {seed}")
    out = Path(out_dir)
    src, dest = Path(clean_dir).resolve(), out.resolve()
    via = reads_into(clean_dir, out)
    if via is not None:
        through = "" if via == Path(clean_dir).expanduser() else f" (through {via})"
        raise SynthError(f"output folder {out} is inside the photo folder {clean_dir}"
                         f"{through}: the next run would take its pairs for photos; choose a "
                         "folder outside it")
    if (dest / "rainy").resolve() == (dest / "clean").resolve():  # one folder (a link):
        # each clean image replaced its rainy partner, every pair lost (a review)
        raise SynthError(f"{out}/rainy and {out}/clean are one folder; the pairs need two")
    for side in ((dest / "rainy").resolve(), (dest / "clean").resolve()):  # `synth rainy .`
        if side == src or side in src.parents:
            raise SynthError(f"the photo folder {clean_dir} is where the pairs would go "
                             f"({out}/{side.name}/): the photos would be overwritten; choose "
                             "another output folder")
    paths = list_photos(Path(clean_dir))
    if not paths:
        raise DataError(f"{clean_dir}: no images found")
    _warn_if_pairs(Path(clean_dir))
    try:  # another synth at work there is said first: "already holds pairs; pass
        with hold_folders([out, out / "rainy", out / "clean"]):  # --overwrite" came
            pass  # first, and --overwrite then met this (a README audit)
    except FolderInUse as e:
        raise SynthError(str(e)) from None
    planned: set[str] | None = set()  # the names, only where older pairs are overwritten:
    # a set of --count names took minutes and gigabytes for a huge count (an audit)
    if overwrite and _older_pairs(out, set()):  # over pairs: photos that do not read move
        # the names on (x_1 made where a skipped one's pair would be), and leave their old
        # pairs unreplaced (a review): which ones, found out now
        bad = frozenset(j for j, p in enumerate(paths) if _unusable(p))
        if len(bad) == len(paths):  # none reads: the walk below says so, each one named
            planned = None  # (not "pairs this run would not replace": a review)
        else:
            planned = _planned_names(paths, Path(clean_dir), count, bad)
    if planned is not None:
        _check_synth_output(out, overwrite, planned)
    made = [*missing_folders(out), *(d for d in (out / "rainy", out / "clean")
                                      if not d.exists())]  # taken back if no pair is written
    for side in ("rainy", "clean"):  # before any work: an errno after it said little
        try:
            (out / side).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SynthError(f"cannot write the pairs to {out / side}: "
                             f"{e.strerror or e}") from None
    skip = on_skip or warn_skipped
    n = count if count is not None else len(paths)
    names = _pair_names(paths, Path(clean_dir))
    try:
        # another synth into it interleaved its pairs (an audit); its pair folders too: a
        # derain writing into one holds it, and its temporaries are swept below (a review)
        with hold_folders([out, out / "rainy", out / "clean"]):
            if planned is not None:  # checked again, held: one may have written meanwhile
                _check_synth_output(out, overwrite, planned)
            # a killed run's (an audit), whatever their age: no other synth writes here now
            sweep_stale_temporaries([out / "rainy", out / "clean"], older_than=0)
            written = _synth_walk(paths, names, clean_dir, out, preset, seed, n,
                                  count is None, skip, on_image)
    except FolderInUse as e:
        remove_empty_folders(made)
        raise SynthError(str(e)) from None
    except BaseException:  # a Ctrl-C before the first pair left the empty folders (an audit)
        remove_empty_folders(made)  # (those still empty: pairs written are kept)
        raise
    if not written:
        remove_empty_folders(made)
        raise DataError(f"{clean_dir}: none of the {len(paths)} images could be read")
    return written


def _synth_walk(paths: list[Path], names: list[str], clean_dir: str | os.PathLike[str],
                out: Path, preset: str, seed: int, n: int, per_photo: bool,
                skip: Callable[[Path, str], None],
                on_image: Callable[[int, int], None] | None) -> int:
    """``synth_pairs``' walk through the photos: up to ``n`` pairs written (one per readable
    photo where ``per_photo``), the number written returned."""
    from . import synth

    used: set[str] = set()
    bad: set[int] = set()
    cache: dict[int, np.ndarray] = {}
    written = 0
    k = -1  # position in the walk through the photos
    while written < n:
        k += 1
        j = k % len(paths)
        if len(bad) == len(paths):  # (synth_pairs takes back the folders it made)
            raise DataError(f"{clean_dir}: none of the {len(paths)} images could be read")
        if j in bad:
            continue
        p = paths[j]
        if j not in cache:
            try:
                cache = {j: _pair_photo(p).astype(np.float32) / 255.0}
            except DataError as e:
                skip(p, str(e))
                bad.add(j)
                if per_photo:
                    n -= 1  # one pair per readable photo
                continue
        clean = cache[j]
        rainy, _ = synth.synthesize(clean, preset, np.random.default_rng([seed & 0xFFFFFFFF, k]))
        name = _walk_name(names, k, used)
        used.add(name)
        _write_pair(out, name, clean, rainy)
        written += 1
        if on_image is not None:
            on_image(written, n)
    return written
