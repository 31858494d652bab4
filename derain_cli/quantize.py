"""Static int8 graphs for ONNX Runtime on CPUs: build one, find the shipped one.

Why: on a 2-core CPU every convolution costs seconds per megapixel, and ONNX Runtime's
int8 kernels do the same convolution in fewer cycles than its fp32 ones.
``python benchmarks/int8_probe.py`` measures speed and rain100l loss per scheme.

Scheme (what :func:`build_int8` writes):

* The fp32 graph is ``derain export``'s, made from the folded network
  (``derain_cli.models.deploy``: batch norm folded, each DCCL as three summed convs).
  ``Conv`` nodes and the adds that sum convs (:func:`summed_conv_adds`) are quantized
  (QDQ format): per-channel int8 weights, uint8 activations. The folding made the
  shipped graph faster (figures: ``python benchmarks/ort_ops.py compare``, old graph from
  git, see the README's Speed section).
* Weights use 7 bits (``reduce_range``). On CPUs without VNNI, ONNX Runtime's u8s8 kernels
  use ``vpmaddubsw``, whose 16-bit sums can saturate; with 8-bit weights every conv
  quantized cost 1.34 dB on 20 rain100l pairs on an AVX2 CPU, against 0.79 dB with 7.
* Activation ranges come from Percentile (99.999) calibration on synthetic rain
  (:func:`derain_cli.synth.synthesize`, preset ``mixed``) over crops of clean training
  photos, never on evaluation pairs. ONNX Runtime stacks every calibration output, so the
  crops share one size (:func:`calibration_crop`); unreadable photos are skipped.
* The ``keep_fp32`` convolutions that hurt most are left in fp32. They are ranked by
  :func:`conv_sensitivity`: quantize one conv alone, compare the output with the fp32
  graph on held-out synthetic crops. For semi-drdnet-lite the five worst are the heads
  and tails of both sub-networks plus the rain network's last conv, each alone costing
  the output ~39 dB. The next worst cost 47 dB or less.
* Semi-DRDNet's statistics graph (``derain_cli.export``, the tiler's whole-image
  squeeze-and-excitation means) is quantized the same way: same calibration crops, same
  convolutions kept in fp32. Its activations are then the int8 forward graph's own, so
  tiled runs get the means an untiled int8 run computes, and the statistics pass is
  faster. Tiled int8 output agrees with untiled int8 output less closely than fp32 does
  (``benchmarks/tiling_agreement.py --backend int8``, 1024 px, 256 px tiles): for
  semi-drdnet-lite 48.6 dB (47.8 dB before the folding), 46.3 dB with the fp32 statistics
  graph (before the folding), 73 dB for the fp32 network; 53.2 dB for semi-drdnet-fast
  (56.0 dB for its current weights), 58.7 dB for semi-drdnet-tiny (its own 32 px overlap).
  The rest is rounding. Near tile borders the zero padding changes activations very
  slightly; where a value sits on a uint8 step, that flips it. Even exact whole-image
  means (``--stats-passes 6``) only reach 50.7 dB.

The shipped graphs for a bundled weight are listed in its manifest record under ``int8``:
file, sha256, size, ``stats_file`` and ``stats_sha256``, and ``source_sha256``, the
:func:`derain_cli.onnx_backend.state_sha256` of the fp32 weights they were made from.
:func:`shipped_int8_graph` returns the forward graph only when all these
hashes match. New weights therefore never run with a stale int8 graph.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from .fast_path import Int8Damaged, Int8Unavailable, bundled_int8_files  # noqa: F401 - re-exported
from .tool_defaults import CALIB_COUNT, DEFAULT_KEEP_FP32, HELD_OUT_COUNT

log = logging.getLogger(__name__)

# DEFAULT_KEEP_FP32 (convolutions left in fp32 by default, the most sensitive first; see the
# module docstring), CALIB_COUNT and HELD_OUT_COUNT: tool_defaults, for --help without torch
#: Calibration: crops of at most this size, this many photos.
CALIB_SIZE = 320  # (CALIB_COUNT: tool_defaults)
#: Calibration crops smaller than this (px, either side) say little about real photos.
MIN_CALIB_SIZE = 32
#: Sensitivity ranking: held-out crops of this size, this many photos.
HELD_OUT_SIZE = 256  # (HELD_OUT_COUNT: tool_defaults)
PERCENTILE = 99.999


@contextmanager
def _working_dir(path: str) -> Iterator[None]:
    """``contextlib.chdir`` for Python 3.10 (quantization is a one-off, single-threaded step)."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@contextmanager
def _quiet_stdout() -> Iterator[None]:
    """ONNX Runtime's calibrator ``print``s progress ("Collecting tensor data ...") once per
    quantization, dozens of times while ranking; stdout carries ``derain export``'s output
    paths, so the chatter goes nowhere (to stderr when this logger is at DEBUG)."""
    if log.isEnabledFor(logging.DEBUG):
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


def synthetic_inputs(photos: Sequence[Path | np.ndarray], size: int | tuple[int, int],
                     seed: int) -> list[np.ndarray]:
    """NCHW float32 rainy crops: ``synth`` mixed rain over the top-left ``size`` px (or
    ``(height, width)``) of each photo (a file or HxWx3 uint8; seeds ``seed``, ``seed + 1``,
    ...), so calibration is reproducible."""
    from .data import load_rgb_u8
    from .synth import synthesize

    h, w = (size, size) if isinstance(size, int) else size
    out = []
    for i, f in enumerate(photos):
        rgb = f if isinstance(f, np.ndarray) else load_rgb_u8(f)
        rainy, _ = synthesize(rgb[:h, :w], "mixed", seed=seed + i)
        out.append(np.ascontiguousarray(rainy.transpose(2, 0, 1), dtype=np.float32)[None])
    return out


def read_photos(paths: Sequence[Path], need: int,
                min_side: int = 1) -> list[tuple[Path, np.ndarray]]:
    """The first ``need`` readable photos of ``paths`` with both sides at least ``min_side``
    px, as (path, HxWx3 uint8).

    Why skip: a folder of clean photos often holds one damaged file or a thumbnail, which
    should not end a minutes-long export (one small photo among the first twelve did); each
    is named in one ``warning:`` line on stderr. Reads no more files than needed.
    ``DataError`` (a ``ValueError``) when fewer than ``need`` are usable.
    """
    from itertools import islice

    from .data import DataError, iter_readable, warn_skipped

    skipped: list[Path] = []

    def skip(p: Path, reason: str) -> None:
        skipped.append(p)
        warn_skipped(p, reason)

    def usable() -> Iterator[tuple[Path, np.ndarray]]:
        for p, img in iter_readable(paths, skip):
            if min(img.shape[:2]) < min_side:
                skip(p, f"{img.shape[1]}x{img.shape[0]} px is too small for int8 "
                        f"calibration (both sides must be at least {min_side} px)")
            else:
                yield p, img

    got = list(islice(usable(), need))
    if len(got) < need:
        folder = paths[0].parent if paths else "the folder"
        raise DataError(f"{folder}: {len(got)} usable photo{'s' if len(got) != 1 else ''} "
                        f"({len(skipped)} unreadable or "
                        f"too small skipped); int8 calibration needs {need}")
    return got


def min_calibration_side(multiple: int = 1) -> int:
    """The shortest side a calibration photo may have: ``MIN_CALIB_SIZE`` rounded up to
    the network's size ``multiple``."""
    multiple = max(1, multiple)
    return -(-max(MIN_CALIB_SIZE, multiple) // multiple) * multiple


def calibration_crop(photos: Sequence[tuple[Path, np.ndarray]], multiple: int = 1,
                     size: int = CALIB_SIZE) -> tuple[int, int]:
    """(height, width) of the one crop taken from every calibration photo (portrait ones
    turned a quarter where it does not fit them as is).

    Why one size: ONNX Runtime stacks the calibration outputs into one array, so crops of
    different sizes fail; and the network needs sides that are multiples of ``multiple``
    (``derain.size_multiple``). So: the smallest short side and the smallest long side
    among the photos (a mix of portrait and landscape photos keeps its long sides), each
    capped at ``size`` and rounded down to ``multiple``. ``ValueError`` naming the photo
    when one is too small (under ``MIN_CALIB_SIZE`` or ``multiple`` px).
    """
    multiple = max(1, multiple)
    least = min_calibration_side(multiple)
    for p, img in photos:
        short = min(img.shape[:2])
        if short < least:
            raise ValueError(f"{p}: {img.shape[1]}x{img.shape[0]} px is too small for int8 "
                             f"calibration (both sides must be at least {least} px)")
    h = min(min(size, *img.shape[:2]) for _, img in photos)
    w = min(min(size, max(img.shape[:2])) for _, img in photos)
    return h // multiple * multiple, w // multiple * multiple


def _fit(img: np.ndarray, crop: tuple[int, int]) -> np.ndarray:
    """``img`` as is when the (height, width) ``crop`` fits in it, else turned a quarter
    (a portrait photo, see :func:`calibration_crop`): photos of at least ``CALIB_SIZE`` px
    each way keep the top-left crop they always had."""
    h, w = img.shape[:2]
    if h >= crop[0] and w >= crop[1]:
        return img
    return np.ascontiguousarray(np.rot90(img))


def _feeds(graph: Path) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """image -> every feed the graph declares. Semi-DRDNet's graphs take ``pooled`` and
    ``local`` (fed as "use the image's own means", as an untiled run does); its statistics
    graph also takes ``mask`` (all ones: every pixel counts)."""
    import json

    import onnx

    from .onnx_backend import pooled_feeds

    model = onnx.load(str(graph), load_external_data=False)
    names = {i.name for i in model.graph.input}
    meta = {p.key: p.value for p in model.metadata_props}
    shape = json.loads(meta.get("derain.global_stats_shape", "null"))

    def feeds(x: np.ndarray) -> dict[str, np.ndarray]:
        out = {"image": x, **pooled_feeds(shape, x.shape[0])}
        if "mask" in names:
            out["mask"] = np.ones((1, 1, *x.shape[2:]), np.float32)
        return {k: v for k, v in out.items() if k in names}

    return feeds


def quantize_graph(
    fp32: Path,
    out: Path,
    calib: Sequence[np.ndarray],
    *,
    keep_fp32: Sequence[str] = (),
    only: Sequence[str] = (),
    reduce_range: bool = True,
    cache: Path | None = None,
) -> Path:
    """Static QDQ int8 copy of the forward graph ``fp32`` at ``out``, metadata kept.

    ``keep_fp32`` names Conv nodes left unquantized; ``only``, when given, the sole ones
    quantized. Without ``only``, the adds that sum convolutions (:func:`summed_conv_adds`)
    are quantized too. ``cache`` keeps the calibration ranges, so trying several node sets
    calibrates once.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    feeds = _feeds(fp32)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([feeds(x) for x in calib])

        def get_next(self) -> dict | None:
            return next(self._it, None)

    pre = fp32.with_suffix(".pre.onnx")
    if not pre.exists():
        # In a scratch folder: a failed symbolic shape inference leaves its temporary
        # graph and weights in the working directory.
        with tempfile.TemporaryDirectory() as scratch, _working_dir(scratch), _quiet_stdout():
            try:
                quant_pre_process(str(fp32.resolve()), str(pre.resolve()))
            except Exception:  # RDMC's size-dependent resizes defeat symbolic shape inference
                quant_pre_process(str(fp32.resolve()), str(pre.resolve()),
                                  skip_symbolic_shape=True)
    with _quiet_stdout():
        quantize_static(
            str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
            reduce_range=reduce_range, calibrate_method=CalibrationMethod.Percentile,
            op_types_to_quantize=["Conv", "Add"], nodes_to_exclude=list(keep_fp32),
            nodes_to_quantize=list(only) or conv_names(fp32) + summed_conv_adds(fp32),
            calibration_cache_path=None if cache is None else str(cache),
            extra_options={"CalibPercentile": PERCENTILE},
        )
    src, dst = onnx.load(str(fp32)), onnx.load(str(out))
    del dst.metadata_props[:]
    dst.metadata_props.extend(src.metadata_props)
    dst.metadata_props.add(key="derain.precision", value="int8")
    onnx.save(dst, str(out))
    return out


def summed_conv_adds(graph: Path) -> list[str]:
    """Names of the Add nodes that only sum convolution outputs (a folded DCCL,
    ``derain_cli.models.deploy``), directly or through such adds.

    Quantized, they run as ``QLinearAdd`` on uint8 data; left in fp32, each of their
    inputs is dequantized first, which made the folded int8 graph no faster than the
    unfolded one (``python benchmarks/ort_ops.py profile``: 16 % of the time in
    ``DequantizeLinear``, 11 % in ``Add``). Residual adds (a skip from a block's input)
    stay fp32.
    """
    import onnx

    producer = {}
    names = []
    for node in onnx.load(str(graph)).graph.node:
        if node.op_type == "Add" and all(producer.get(i) in ("Conv", "sum")
                                         for i in node.input):
            names.append(node.name)
            kind = "sum"
        else:
            kind = node.op_type
        for o in node.output:
            producer[o] = kind
    return names


def conv_names(graph: Path) -> list[str]:
    """Names of the Conv nodes of an ONNX graph, in graph order."""
    import onnx

    return [n.name for n in onnx.load(str(graph)).graph.node if n.op_type == "Conv"]


def conv_sensitivity(
    graphs: Sequence[Path],
    calib: Sequence[np.ndarray],
    held_out: Sequence[np.ndarray],
    *,
    reduce_range: bool = True,
    cache: Path | None = None,
    threads: int | None = None,
    on_conv: Callable[[], None] | None = None,
) -> list[tuple[float, str]]:
    """(output PSNR against fp32 in dB, node name) per Conv quantized alone, worst first;
    ``on_conv()`` after each.

    ``graphs`` are the fp32 forward graph and, for Semi-DRDNet, its statistics graph.
    The held-out inputs should be training-like data, so that choosing which
    convolutions stay fp32 never looks at evaluation pairs.
    """
    from . import metrics
    from .onnx_backend import OnnxRunner

    fp32, *stats = graphs

    def outputs(run: OnnxRunner) -> list[np.ndarray]:
        return [metrics.to_uint8(np.clip(run.forward(x, None)[0], 0, 1)) for x in held_out]

    refs = outputs(OnnxRunner([fp32, *stats], threads=threads))
    rows = []
    with tempfile.TemporaryDirectory(prefix="derain-int8-") as work:
        cache = cache or Path(work) / "calibration.json"
        for name in conv_names(fp32):
            q = quantize_graph(fp32, Path(work) / "one.onnx", calib, only=[name],
                               reduce_range=reduce_range, cache=cache)
            got = outputs(OnnxRunner([q, *stats], threads=threads))
            rows.append((float(np.mean([min(metrics.psnr(a, b), 99.0)
                                        for a, b in zip(got, refs, strict=True)])), name))
            if on_conv is not None:
                on_conv()
    return sorted(rows)


def build_int8(
    model: nn.Module,
    clean_dir: Path,
    out: Path,
    *,
    keep_fp32: int = DEFAULT_KEEP_FP32,
    reduce_range: bool = True,
    threads: int | None = None,
    opset: int | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[list[Path], dict[str, Any]]:
    """Write the int8 forward graph of ``model`` to ``out``; return the files and the record.

    Calibrates on the first ``CALIB_COUNT`` readable photos of ``clean_dir`` (unreadable
    ones skipped with a warning), cropped to one common size (:func:`calibration_crop`).
    Ranks convolutions on the next ``HELD_OUT_COUNT`` (needed only when ``keep_fp32``; see
    the module docstring). Semi-DRDNet's statistics graph, quantized alike, is written
    beside it (``export.stats_path``), so ``OnnxRunner(out)`` runs both. The record
    (manifest ``int8`` field) names the convolutions kept in fp32 and the weights it
    belongs to. The graph carries it too, as ``derain.int8`` metadata, minus the file's
    own hash and size. The scratch folder is removed whether this succeeds or fails, and
    the graphs are put in place as one set (``export.write_graph_set``). ``opset``: the
    fp32 graph's (default ``export.DEFAULT_OPSET``). ``on_step(done, total)``: progress
    over the export, each convolution ranked and the quantizing (minutes, which passed in
    silence: an audit).
    """
    import json
    import shutil

    import onnx

    from . import export
    from .data import DataError
    from .fileio import sha256_file
    from .onnx_backend import state_sha256
    from .pairs import list_photos

    paths = list_photos(clean_dir, recursive=False)
    need = min_photos(keep_fp32)
    if len(paths) < need:
        fewer = (f" ({min_photos(0)} with --keep-fp32 0, which ranks no convolutions)"
                 if keep_fp32 and len(paths) >= min_photos(0) else "")
        raise DataError(f"{clean_dir}: {len(paths)} photo{'s' if len(paths) != 1 else ''}; "
                        "int8 calibration needs "
                        f"{need}{fewer}")
    multiple = int(getattr(model, "size_multiple", 1))
    photos = read_photos(paths, need, min_calibration_side(multiple))
    crop = calibration_crop(photos[:CALIB_COUNT], multiple, CALIB_SIZE)
    calib = synthetic_inputs([_fit(img, crop) for _, img in photos[:CALIB_COUNT]], crop, 0)
    work = Path(tempfile.mkdtemp(prefix="derain-int8-"))
    try:
        cache = work / "calibration.json"
        graphs = export.export_onnx(model.cpu().eval(), work / "fp32.onnx",
                                    opset=export.DEFAULT_OPSET if opset is None else opset)
        names = conv_names(graphs[0])
        every = keep_fp32 >= len(names)  # all kept: nothing to rank (minutes spent on it,
        # then this was said: an audit)
        if keep_fp32 and every:
            log.warning("keeping %d convolutions in fp32 keeps all %d: the graph will be no "
                        "faster than an fp32 one", keep_fp32, len(names))
        convs = len(names) if keep_fp32 and not every else 0
        total, done = 1 + convs + len(graphs), 1  # export, ranking, quantizing each graph

        def step() -> None:
            nonlocal done
            done += 1
            if on_step is not None:
                on_step(done, total)

        if on_step is not None:
            on_step(done, total)
        ranking: list[tuple[float, str]] = []
        if keep_fp32 and every:
            ranking = [(0.0, name) for name in names]
        elif keep_fp32:
            held = synthetic_inputs([img for _, img in photos[CALIB_COUNT:need]],
                                    HELD_OUT_SIZE, 1000)
            log.info("ranking %d convolutions by int8 sensitivity", convs)
            ranking = conv_sensitivity(graphs, calib, held, reduce_range=reduce_range,
                                       cache=cache, threads=threads, on_conv=step)
        info = {
            "source_sha256": state_sha256(model),
            "fp32_convs": [name for _, name in ranking[:keep_fp32]],
            "weight_bits": 7 if reduce_range else 8,
            "calibration": (f"percentile {PERCENTILE} over {len(calib)} crops of "
                            f"{crop[0]}x{crop[1]} px (height x width), synthetic mixed rain "
                            f"on {clean_dir.resolve().name or clean_dir}"),
        }
        # made in the scratch folder, then put in place as one set
        quantize_graph(graphs[0], work / "int8.onnx", calib, keep_fp32=info["fp32_convs"],
                       reduce_range=reduce_range, cache=cache)
        step()
        proto = onnx.load(str(work / "int8.onnx"))
        proto.metadata_props.add(key="derain.int8", value=json.dumps(info))
        writers: list[Callable[[str], object]] = [lambda tmp: onnx.save(proto, tmp)]
        if len(graphs) > 1:  # the same scheme, so tiles get the means the int8 network computes
            quantize_graph(graphs[1], work / "int8.stats.onnx", calib,
                           keep_fp32=info["fp32_convs"], reduce_range=reduce_range,
                           cache=work / "calibration.stats.json")
            step()
            writers.append(lambda tmp: shutil.copyfile(work / "int8.stats.onnx", tmp))
        files = export.write_graph_set(out, writers)
        record = {"file": out.name, "sha256": sha256_file(out), "size": out.stat().st_size}
        if len(files) > 1:
            record |= {"stats_file": files[1].name, "stats_sha256": sha256_file(files[1])}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return files, record | info


def min_photos(keep_fp32: int) -> int:
    """Readable photos ``build_int8`` needs: the calibration ones, plus the held-out ones
    that rank convolutions when some are kept in fp32 (``derain export --help`` says so)."""
    return CALIB_COUNT + (HELD_OUT_COUNT if keep_fp32 else 0)


def shipped_int8_graph(record: Any, model: nn.Module) -> Path:
    """The bundled int8 forward graph for the manifest ``record`` of ``model``'s weights.

    Raises :class:`Int8Unavailable` with the reason when there is none, when its file is
    missing or corrupt, or when it was made from other weights.
    """
    from .onnx_backend import state_sha256

    path = bundled_int8_files(record)[0]
    if state_sha256(model) != record.extra["int8"]["source_sha256"]:
        raise Int8Damaged(f"{path} was made from other weights than {record.name}'s")
    return path
