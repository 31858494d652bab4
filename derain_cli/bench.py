"""Inference benchmark (``derain bench``, ``benchmarks/bench_inference.py``).

For each registered model and each device (the CPU; CUDA too when present), every
variant derains the same rainy test image with the tiling ``derain`` itself would use for
that engine (PyTorch: ``enhancer.CPU_TILE`` on CPUs, ``torch_runner._auto_tile`` on CUDA;
ONNX Runtime: its own ``suggest_tile``, 512 px on CPUs; at least twice a network's
``min_tile``; each model's own overlap, ``enhancer.default_overlap``) and reports:

* **s/MP**: best wall time over ``repeats`` timed runs, after one warm-up tile, per
  megapixel of the image (default 1000x1000 = 1 MP).
* **GFLOP/s**: *useful* FLOPs over that time. FLOPs are counted once with
  ``torch.utils.flop_counter.FlopCounterMode`` on a ``flop_side`` x ``flop_side`` input
  (convolutions and matrix products, 1 multiply-add = 2 FLOPs) and scaled by the
  image's pixel count; interpolation and element-wise ops are not counted. They are
  counted on the network as every engine runs it, ``models.deploy.fold_for_inference``
  (for semi-drdnet-lite 7 % fewer than the trained modules: the DCCLs' 1x1 fusions are
  folded away).
* **work**: executed / useful FLOPs, i.e. what tiling costs on top: tile overlap (a
  1 MP image in 512 px tiles is 6 overlapping tiles of 524x366, 1.15x the pixels), for
  Semi-DRDNet the statistics pass (rain network only) of a tiled run, and an image
  smaller than ``tiling.SMALL_SIDE`` mirror-padded up to it (a 40x30 image is about 55x the work).
* **% peak**: GFLOP/s as a share of this machine's own peak for a plain fp32 3x3
  convolution of the model's width, measured beside the row (after each of its timed
  runs, best of 2 each time, and the best of those; until 2026-12-03 once per run, best
  of 5, which on a shared machine whose speed drifted over the minutes of a run moved
  the ratios by a quarter between two runs) on a ``peak_side``\\ :sup:`2` feature map,
  with the fastest engine for that conv (PyTorch
  NCHW, PyTorch channels_last or, on CPUs, ONNX Runtime): width -> width for
  Semi-DRDNet (64 for the paper size, 32 for the lite). RDMC spreads its work over a
  pyramid, so its reference is a FLOP-weighted mix: for every level l a ``c_l -> c_l``
  conv at ``peak_side / 2**l`` (at least 8 px: smaller maps time nothing), weighted by
  ``c_l**2 / 4**l`` (its share of the encoder's FLOPs), combined as total FLOPs / total
  time. The bf16 and fp16 rows are measured
  against the same reference convs run in that precision (autocast, PyTorch engines: ONNX
  Runtime has no bf16 conv on CPUs), since on a CPU with native bf16 a bf16 conv is about
  twice as fast as an fp32 one; only int8 can exceed 100 % (its reference is fp32).
* **PSNR vs fp32**: the variant's output against the fp32 eager output (clipped to
  [0, 1]), to judge whether bf16 (or ONNX Runtime) loses anything visible.
* **setup s** / **warm-up s**: building the engine (ONNX Runtime: export and session) /
  the untimed first tile, where ``torch.compile`` compiles and cuDNN autotunes
  (``bf16_autotune``).

Variants: ``fp32`` (eager, NCHW, no fusions: the plain baseline), ``channels_last`` (fp32,
NHWC: what ``--backend torch`` runs, on CPUs with ``models.cpu_fusion``'s fusions since
2026-12-07; before 2026-11-30 the ``fp32`` variant was channels-last too, so the two rows
timed the same path), ``bf16`` (autocast, fused on CPUs as well; skipped on CPUs without
native bf16 unless ``force_bf16``), ``bf16_unfused`` (on request: the same without the
fusions, on CPUs), ``fp16`` (CUDA only), ``onnx`` (ONNX Runtime through
``derain_cli.onnx_backend``; its one-off export/session time is reported as setup),
``int8`` (the int8 graph shipped with the published weights, ``derain_cli.quantize``;
skipped where there is none).

Weights: the published ones when ``weights.load_manifest()`` has the model, else a
random initialisation with BatchNorm statistics like a trained network's (speed does
not depend on the values; the PSNR column does, a little).

``rss=True`` additionally measures the peak resident memory (``ru_maxrss`` of a fresh
subprocess) of ``read_image -> Derainer().derain_array -> write_image`` on a 6000x4000
(24 MP) JPEG with default settings and the default model; the budget is 3 GB. It
takes minutes on a small CPU.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import metrics, tiling
from .enhancer import (
    CPU_TILE,
    DEFAULT_MODEL,
    SMALLEST_TILE,
    TorchRunner,
    cpu_supports_bf16,
    default_overlap,
)
from .fileio import atomic_write_text
from .images import DEFAULT_MAX_PIXELS
from .models import MODELS, build_model
from .models.deploy import fold_for_inference
from .tool_defaults import DEFAULT_VARIANTS, EXTRA_VARIANTS
from .torch_runner import cudnn_benchmark

log = logging.getLogger(__name__)

# DEFAULT_VARIANTS, EXTRA_VARIANTS (on request only, ``--variants ...,bf16_compile``;
# ``bf16_autotune``: derain does not turn it on yet): tool_defaults, for --help without torch
RSS_BUDGET_MB = 3000.0
RSS_SIZE = (4000, 6000)  # (height, width): 24 MP


# --------------------------------------------------------------------------- helpers
def perturb_bn(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random-init BN is the identity; give it running statistics like a trained network's."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
    return net


def random_model(name: str, seed: int = 0) -> nn.Module:
    """A registered model, randomly initialised (seeded) with perturbed BN, in eval mode."""
    torch.manual_seed(seed)
    return perturb_bn(build_model(name), seed).eval()


def model_for_bench(name: str) -> tuple[nn.Module, str]:
    """Published weights when the manifest has them, else ``random_model``; and a label."""
    from .weights import load_manifest, load_pretrained

    if name in load_manifest():
        return load_pretrained(name, quiet=True).eval(), "published"
    return random_model(name), "random init"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two images in [0, 1] (clipped first)."""
    return metrics.psnr(np.clip(a, 0, 1), np.clip(b, 0, 1), data_range=1.0)


def scene_name() -> str:
    """Which base photo :func:`test_scene` uses here (it depends on scikit-image being
    installed), so a table says what it was measured on."""
    try:
        import cv2  # noqa: F401
        from skimage import data  # noqa: F401
    except ImportError:
        return "a procedural scene (no scikit-image)"
    return "scikit-image's astronaut"


def _base_scene(h: int, w: int) -> np.ndarray:
    try:
        import cv2
        from skimage import data

        img = cv2.resize(data.astronaut(), (w, h), interpolation=cv2.INTER_AREA)
        return img.astype(np.float32) / 255.0
    except ImportError:
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        y, x = y / h, x / w
        base = np.stack([0.2 + 0.6 * x, 0.5 + 0.4 * np.sin(6 * y), 0.3 + 0.5 * x * y], axis=2)
        checker = ((np.floor(x * 16) + np.floor(y * 16)) % 2)[..., None]
        base[h // 2:, w // 2:] = 0.25 + 0.5 * checker[h // 2:, w // 2:]  # busy texture
        return base.astype(np.float32)


def test_scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    """(3, H, W) float32 rainy test image whose regions differ strongly.

    ``skimage.data.astronaut()`` resized (a procedural scene without scikit-image), a dark
    band on the left third and a bright, flat sky-like band on top (so per-tile statistics
    differ a lot), then rain from ``derain_cli.synth.synthesize``.
    """
    from .synth import synthesize

    base = _base_scene(h, w)
    base[:, : w // 3] *= 0.15
    base[: h // 6] = 0.6 * base[: h // 6] + 0.4 * np.array([0.75, 0.8, 0.9], np.float32)
    rainy, _ = synthesize(np.clip(base, 0, 1), "heavy", seed=seed)
    return np.ascontiguousarray(np.transpose(rainy, (2, 0, 1)), dtype=np.float32)


test_scene.__test__ = False  # not a pytest test despite the name


# --------------------------------------------------------------------------- FLOPs
def count_flops(net: nn.Module, side: int = 128) -> tuple[float, float]:
    """(forward, statistics pass) FLOPs per pixel, counted on a side x side input."""
    from torch.utils.flop_counter import FlopCounterMode

    m = max(1, int(getattr(net, "size_multiple", 1)))
    side = max(m, side // m * m)
    ref = next(net.parameters())
    x = torch.rand(1, 3, side, side, device=ref.device)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        net(x)
    fwd = fc.get_total_flops() / side**2
    stats = 0.0
    if getattr(net, "global_stats_shape", None) is not None:
        with torch.inference_mode(), FlopCounterMode(display=False) as fc:
            net.se_sums(x, None, torch.ones(1, 1, side, side, device=ref.device))
        stats = fc.get_total_flops() / side**2
    return fwd, stats


def variant_tile(runner: Any, asked: int | None, device_tile: int, min_tile: int = 0) -> int:
    """The tile ``derain`` itself would run ``runner`` with: ``asked`` when given, else
    the engine's own default (ONNX Runtime's ``suggest_tile``: 512 px on CPUs, where
    PyTorch's is ``device_tile``), at least twice a network's ``min_tile`` (as
    ``Derainer`` does)."""
    own = runner.suggest_tile() if hasattr(runner, "suggest_tile") else device_tile
    return tiling.effective_tile(asked, own, min_tile)


def tiling_work(h: int, w: int, tile: int, overlap: int, multiple: int, stats: bool,
                fwd: float, stats_flops: float,
                stats_passes: int = tiling.STATS_PASSES) -> float:
    """Executed / useful FLOPs of ``tiling.run_tiled`` (same tile plan)."""
    return tiling.work_per_pixel(h, w, tile, overlap, multiple, stats=stats,
                                 stats_cost=stats_flops / fwd, stats_passes=stats_passes)


# --------------------------------------------------------------------------- conv peak
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    best = float("inf")
    for i in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        if i:  # the first call creates the kernels
            best = min(best, time.perf_counter() - t0)
    return best


def _ort_conv_seconds(conv: nn.Conv2d, x: torch.Tensor, repeats: int) -> float | None:
    """Best time of the same conv as a one-node ONNX Runtime graph (CPU); None without ORT."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    import io
    import warnings

    from .onnx_backend import session_options

    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(conv, (x,), buf, dynamo=False, input_names=["x"],
                          output_names=["y"])
    sess = ort.InferenceSession(buf.getvalue(), session_options(),
                                providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    return _best_time(lambda: sess.run(None, feed), torch.device("cpu"), repeats)


#: Variants whose % peak is measured against the reference convs in their own precision.
REDUCED_PRECISION = {"bf16": torch.bfloat16, "bf16_compile": torch.bfloat16,
                     "bf16_unfused": torch.bfloat16,
                     "bf16_autotune": torch.bfloat16, "fp16": torch.float16}
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def conv_peak(width: int, side: int, device: torch.device, repeats: int = 5,
              dtype: torch.dtype = torch.float32) -> tuple[float, str]:
    """Best GFLOP/s of a 3x3 width->width conv on 1 x width x side^2, and its engine.

    The machine's peak for that conv is the fastest engine that runs it here, so a model
    path cannot score over 100 % just because the reference used a slower kernel: PyTorch
    NCHW and channels_last (on CUDA also with cuDNN autotuning), and on CPUs ONNX Runtime
    (the CPU default's engine). With a
    ``dtype`` of bf16 or fp16 the PyTorch engines run it under autocast in that precision,
    as the model's reduced-precision path does (the engine name then says which).
    """
    conv = nn.Conv2d(width, width, 3, padding=1).to(device).eval()
    x = torch.rand(1, width, side, side, device=device)
    flops = 2 * 9 * width * width * side * side
    reduced = dtype != torch.float32
    suffix = f" {_DTYPE_NAMES[dtype]}" if reduced else ""
    cast = (torch.autocast(device.type, dtype=dtype) if reduced
            else contextlib.nullcontext())
    # the input already in the reduced precision, as a model's inner convs get it: cast
    # from fp32 inside the timed call (before 2026-12-05), the whole map's conversion was
    # timed too and the reference came out slow, its "% of peak" high (a review)
    xr = x.to(dtype) if reduced else x
    times: dict[str, float] = {}
    with torch.inference_mode(), cast:
        times["torch" + suffix] = _best_time(lambda: conv(xr), device, repeats)
        conv_cl = copy.deepcopy(conv).to(memory_format=torch.channels_last)
        x_cl = xr.contiguous(memory_format=torch.channels_last)
        times["torch channels_last" + suffix] = _best_time(lambda: conv_cl(x_cl), device,
                                                           repeats)
        if device.type == "cuda":  # what cuDNN reaches when it times its algorithms
            with cudnn_benchmark():  # (the bf16_autotune variant's path)
                conv_cl(x_cl)  # the tuning pass, untimed
                times["torch channels_last autotuned" + suffix] = _best_time(
                    lambda: conv_cl(x_cl), device, repeats)
    if device.type == "cpu" and not reduced:
        t = _ort_conv_seconds(conv, x, repeats)
        if t is not None:
            times["onnxruntime"] = t
    engine = min(times, key=times.__getitem__)
    return flops / times[engine] / 1e9, engine


def reference_convs(net: nn.Module, side: int) -> list[tuple[int, int, float]]:
    """(width, feature side, weight) of the plain convs a model's efficiency is measured
    against (see the module docstring)."""
    cfg = getattr(net, "cfg", None)
    if hasattr(cfg, "channels"):  # RDMC: the pyramid
        return [(c, max(8, side >> lvl), c * c / 4**lvl) for lvl, c in enumerate(cfg.channels)]
    width = int(getattr(cfg, "width", 64))
    return [(width, side, 1.0)]


def mixed_peak(net: nn.Module, side: int, device: torch.device,
               cache: dict[tuple[int, int, str, str], tuple[float, str]],
               dtype: torch.dtype = torch.float32, repeats: int = 5) -> tuple[float, str]:
    """FLOP-weighted peak GFLOP/s over ``reference_convs`` (total FLOPs / total time);
    ``cache`` keeps each conv's measurement (pass a fresh one to measure again)."""
    parts = reference_convs(net, side)
    total_w = sum(wt for _, _, wt in parts)
    inv = 0.0
    for width, s, wt in parts:
        key = (width, s, str(device), str(dtype))
        if key not in cache:
            cache[key] = conv_peak(width, s, device, repeats, dtype=dtype)
        inv += (wt / total_w) / cache[key][0]
    engines = sorted({cache[(w, s, str(device), str(dtype))][1] for w, s, _ in parts})
    if len(parts) == 1:
        desc = f"{parts[0][0]}->{parts[0][0]} @ {parts[0][1]}px"
    else:
        desc = "mix " + ", ".join(f"{w}@{s}" for w, s, _ in parts)
    return 1.0 / inv, f"{desc}, fastest: {' / '.join(engines)}"


# --------------------------------------------------------------------------- runners
def make_variant_runner(net: nn.Module, variant: str, device: torch.device,
                        threads: int | None = None, force_bf16: bool = False,
                        name: str | None = None) -> Any:
    """A runner for one variant, or a string saying why it is skipped.

    ``int8`` runs the int8 graph shipped for the published weights of ``name``
    (``derain_cli.quantize``), so it needs those weights in ``net``.
    """
    if variant == "fp32":  # plain eager NCHW: the baseline
        return TorchRunner(copy.deepcopy(net), device, "fp32", channels_last=False, fuse=False)
    if variant == "channels_last":  # what the torch backend runs
        return TorchRunner(copy.deepcopy(net), device, "fp32")
    if variant == "bf16":
        if device.type == "cpu" and not cpu_supports_bf16() and not force_bf16:
            return "skipped: this CPU has no native bf16 (--force-bf16 runs it emulated)"
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return "skipped: this GPU has no bf16"
        return TorchRunner(copy.deepcopy(net), device, "bf16")
    if variant == "bf16_unfused":  # bf16 without ``models.cpu_fusion``'s rewrites
        if device.type != "cpu":
            return "skipped: the fusions are for CPUs"
        if not cpu_supports_bf16() and not force_bf16:
            return "skipped: this CPU has no native bf16 (--force-bf16 runs it emulated)"
        return TorchRunner(copy.deepcopy(net), device, "bf16", fuse=False)
    if variant == "fp16":
        if device.type != "cuda":
            return "skipped: fp16 is for GPUs"
        return TorchRunner(copy.deepcopy(net), device, "fp16")
    if variant == "bf16_compile":  # torch.compile (inductor) over the bf16 autocast runner
        if device.type == "cpu" and not cpu_supports_bf16() and not force_bf16:
            return "skipped: this CPU has no native bf16"
        # the plain folded network: inductor makes its own fusions (``models.cpu_fusion``'s
        # private oneDNN ops are what it emits on CPUs)
        runner = TorchRunner(copy.deepcopy(net), device, "bf16", fuse=False)
        runner.model = torch.compile(runner.model)
        return runner
    if variant == "bf16_autotune":  # cuDNN times its algorithms for each shape (untimed
        if device.type != "cuda":  # first tile) instead of its heuristics' pick
            return "skipped: cuDNN autotuning is for CUDA GPUs"
        if not torch.cuda.is_bf16_supported():
            return "skipped: this GPU has no bf16"
        return TorchRunner(copy.deepcopy(net), device, "bf16", autotune=True)
    if variant == "onnx":
        from .onnx_backend import make_onnx_runner

        return make_onnx_runner(net, device, "fp32", threads)
    if variant == "int8":
        from .onnx_backend import make_onnx_runner
        from .quantize import Int8Unavailable, shipped_int8_graph
        from .weights import load_manifest

        if device.type != "cpu":
            return "skipped: int8 graphs are for CPUs"
        rec = load_manifest().get(name or "")
        if rec is None:
            return f"skipped: no published weights for {name}"
        try:
            graph = shipped_int8_graph(rec, net)
        except Int8Unavailable as e:
            return f"skipped: {e}"
        return make_onnx_runner(net, device, "int8", threads, int8_graph=graph)
    raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(DEFAULT_VARIANTS)}")


def _warm_up(runner: Any, img: np.ndarray, tile: int) -> None:
    img = tiling.pad_small(img, hwc=False)[0]  # the shapes ``_timed_passes`` then runs
    _, h, w = img.shape
    m = max(1, runner.size_multiple)
    th = min(h, tile) if tile > 0 else h
    tw = min(w, tile) if tile > 0 else w
    crop = img[None, :, : max(m, th // m * m), : max(m, tw // m * m)]
    runner.forward(crop, None)
    if runner.global_stats_shape is not None and tile > 0 and (tile < h or tile < w):
        runner.stat_sums(crop, None, np.ones((1, 1, *crop.shape[2:]), np.float32))


# --------------------------------------------------------------------------- results
@dataclass
class Row:
    model: str
    device: str
    variant: str
    seconds: float | None = None
    s_per_mp: float | None = None
    gflops: float | None = None
    peak_ratio: float | None = None
    work: float | None = None
    psnr_vs_fp32: float | None = None
    setup_s: float | None = None
    #: the untimed first tile: where torch.compile compiles and cuDNN autotunes
    warmup_s: float | None = None
    note: str = ""
    #: the tile this row ran with (None: not run)
    tile: int | None = None
    #: the reference conv's GFLOP/s (``mixed_peak``, in the row's precision; int8: fp32)
    #: measured beside this row's timed runs, which ``peak_ratio`` divides by
    peak_gflops: float | None = None


@dataclass
class ModelInfo:
    model: str
    device: str
    weights: str
    flops_per_px: float
    stats_flops_per_px: float
    peak_gflops: float
    peak_ref: str
    tile: int
    overlap: int
    #: ONNX Runtime's rows' tile where it differs from ``tile`` (its own CPU default)
    ort_tile: int | None = None
    #: the reference in bf16/fp16, for those variants' rows: precision -> (GFLOP/s, ref)
    reduced_peaks: dict[str, tuple[float, str]] = field(default_factory=dict)


@dataclass
class BenchResult:
    height: int
    width: int
    #: the overlap asked for; None: each model's own (``ModelInfo.overlap``)
    overlap: int | None
    threads: int
    machine: str
    torch: str
    flop_side: int
    peak_side: int
    #: timed runs per row (the best is reported) and the image they ran on
    repeats: int = 1
    scene: str = ""
    models: list[ModelInfo] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    rss: dict[str, Any] | None = None
    #: stopped by Ctrl-C: ``rows`` are those finished before it
    interrupted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class BenchInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`bench_main`, after the rows measured so far were printed (and
    written to its JSON file): minutes of measurements were lost in silence."""

    def __init__(self, result: BenchResult) -> None:
        super().__init__(f"interrupted after {len(result.rows)} rows")
        self.result = result


def _fmt(v: float | None, spec: str) -> str:
    if v is None:
        return "-"
    if math.isinf(v):
        return "inf"
    return format(v, spec)


def _asked(res: BenchResult) -> str:
    """The overlap asked for, and that the model notes give what ran where tiling capped it
    (at most half a tile)."""
    capped = any(m.overlap != res.overlap for m in res.models)
    return f"{res.overlap} asked (capped: see the model notes)" if capped else str(res.overlap)


def _interrupted_note(res: BenchResult) -> str:
    return (" Interrupted: the rows measured before Ctrl-C." if res.interrupted else "")


def render_markdown(res: BenchResult) -> str:
    """The result as Markdown: a header of conditions, one table, model notes, RSS."""
    lines = [
        f"Image {res.width}x{res.height} ({res.width * res.height / 1e6:.3g} MP), overlap "
        f"{'each model' + chr(39) + 's own' if res.overlap is None else _asked(res)}, "
        f"{res.threads} thread{'s' if res.threads != 1 else ''}, {res.machine}, torch "
        f"{res.torch}.{_interrupted_note(res)}",
        f"Test image: {res.scene} with heavy synthetic rain, dark and sky bands; s/MP = best "
        f"of {res.repeats} timed run{'s' if res.repeats != 1 else ''} after an untimed "
        "warm-up tile.",
        "",
        f"GFLOP/s = useful FLOPs (FlopCounterMode on a {res.flop_side}x{res.flop_side} input, "
        "conv/matmul only, scaled by pixels) / time; work = executed / useful FLOPs (tile "
        "overlap, statistics passes, small images padded to 256 px); % peak = GFLOP/s / "
        "this machine's plain 3x3 conv "
        f"measured beside the row ({res.peak_side}px feature map, fastest engine, see "
        "model notes for the convs and the run's first measurement), in fp32, and for "
        "bf16/fp16 rows in their own precision (int8 rows: against fp32).",
        "",
        "| model | device | variant | s/MP | GFLOP/s | % peak | work | PSNR vs fp32 (dB) "
        "| setup s | warm-up s | note |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in res.rows:
        ratio = None if r.peak_ratio is None else 100 * r.peak_ratio
        lines.append(
            f"| {r.model} | {r.device} | {r.variant} | {_fmt(r.s_per_mp, '.2f')} | "
            f"{_fmt(r.gflops, '.1f')} | {_fmt(ratio, '.0f')} | {_fmt(r.work, '.2f')} | "
            f"{_fmt(r.psnr_vs_fp32, '.1f')} | {_fmt(r.setup_s, '.1f')} | "
            f"{_fmt(r.warmup_s, '.1f')} | {r.note} |"
        )
    lines.append("")
    for m in res.models:
        lines.append(
            f"- {m.model} on {m.device}: {m.weights} weights, tile {m.tile}"
            + (f" (ONNX Runtime rows: {m.ort_tile}, its own default)"
               if m.ort_tile is not None and m.ort_tile != m.tile else "")
            + f", overlap {m.overlap}, "
            f"{m.flops_per_px / 1e3:.1f} kFLOP/px forward"
            + (f" + {m.stats_flops_per_px / 1e3:.1f} kFLOP/px per statistics pass"
               if m.stats_flops_per_px else "")
            + f"; conv peak at the start {m.peak_gflops:.1f} GFLOP/s ({m.peak_ref})"
            + "".join(f"; {p} conv peak {g:.1f} GFLOP/s ({ref})"
                      for p, (g, ref) in m.reduced_peaks.items())
        )
    if res.rss is not None:
        r = res.rss
        lines += ["", f"Peak RSS, {r['width']}x{r['height']} JPEG through Derainer "
                      f"({r['model']}, {r['weights']}, default settings): "
                      f"**{r['maxrss_mb']:.0f} MB** (budget {RSS_BUDGET_MB:.0f} MB: "
                      f"{'OK' if r['maxrss_mb'] <= RSS_BUDGET_MB else 'OVER'}), "
                      f"{r['seconds']:.0f} s."]
    return "\n".join(lines)


# --------------------------------------------------------------------------- RSS
def _rss_child(in_path: str, out_path: str, model: str) -> None:
    """Runs in a fresh interpreter: the CLI's path for one photo, then print peak RSS."""
    import resource

    from .enhancer import Derainer
    from .images import read_image, write_image
    from .weights import load_manifest, save_weights

    t0 = time.perf_counter()
    if model in load_manifest():
        derainer, label = Derainer(model=model), "published"
    else:
        net = random_model(model)
        spec = MODELS[model]
        wpath = Path(out_path).with_suffix(".safetensors")
        save_weights(net, wpath, name=model, arch=spec.arch, config=spec.config)
        derainer, label = Derainer(model=model, weights=wpath), "random init"
    loaded = read_image(in_path, max_pixels=None)
    rgb = derainer.derain_array(loaded.pixels)
    write_image(out_path, rgb, like=loaded)
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 1024  # bytes on macOS
    print(json.dumps({"maxrss_mb": kb * scale, "seconds": time.perf_counter() - t0,
                      "weights": label, "tile": derainer.tile}))


def measure_rss(model: str = DEFAULT_MODEL, size: tuple[int, int] = RSS_SIZE,
                threads: int | None = None) -> dict[str, Any]:
    """Peak RSS (MB) of deraining one ``size`` (h, w) JPEG in a fresh subprocess."""
    from PIL import Image

    h, w = size
    with tempfile.TemporaryDirectory(prefix="derain-rss-") as d:
        src = Path(d) / "in.jpg"
        y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
        x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
        rgb = np.stack([np.broadcast_to(x, (h, w)), np.broadcast_to(y, (h, w)),
                        np.full((h, w), 128, np.float32)], axis=2).astype(np.uint8)
        Image.fromarray(rgb).save(src, quality=90)
        del rgb
        env = dict(os.environ)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        code = (f"from derain_cli.bench import _rss_child; "
                f"_rss_child({str(src)!r}, {str(Path(d) / 'out.jpg')!r}, {model!r})")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=env, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"RSS subprocess failed:\n{proc.stderr[-2000:]}")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.update({"model": model, "height": h, "width": w, "budget_mb": RSS_BUDGET_MB})
    return out


# --------------------------------------------------------------------------- main
class BenchError(ValueError):
    """A benchmark request with a bad value (model, variant, device): a usage error that the
    CLI reports on one line with exit status 2, before anything is measured."""


def _checked_size(megapixels: float, size: tuple[int, int] | None,
                  tile: int | None) -> tuple[int, int]:
    """The test image's (height, width), the tile checked, as derain would take them: a tile
    of 1-15 px ran for minutes per tile (or measured a tiling derain refuses), and an
    infinite or absurd size crashed deep inside (audit)."""
    if tile is not None and (tile < 0 or 0 < tile < SMALLEST_TILE):  # (the CLI refuses
        # negative ones itself; bench_main(tile=-5) ran on: a test writer's find)
        raise BenchError(f"--tile must be 0 (untiled) or at least {SMALLEST_TILE} px, as "
                         f"derain takes it, not {tile}")
    if size is None:
        if not math.isfinite(megapixels) or megapixels <= 0:
            raise BenchError(f"--megapixels must be a positive number, not {megapixels}")
        side = max(16, round(math.sqrt(min(megapixels, 1e12) * 1e6)))
        size = (side, side)
    h, w = size
    if h * w > DEFAULT_MAX_PIXELS:
        raise BenchError(f"a {w}x{h} test image is over derain's default --max-pixels "
                         f"({DEFAULT_MAX_PIXELS // 1_000_000} MP); measure a smaller one")
    return h, w


def _devices(spec: str | None) -> list[torch.device]:
    """The devices to measure; a ``BenchError`` for one that is malformed or absent here
    (torch's own errors, e.g. "Torch not compiled with CUDA enabled", read as crashes).
    Each name is checked as ``derain --device`` checks it (``resolve_device``)."""
    from .torch_runner import resolve_device

    if spec in (None, "auto", "all"):
        devs = [torch.device("cpu")]
        if torch.cuda.is_available():
            devs.append(torch.device("cuda"))
        return devs
    devs = []
    for part in (d.strip() for d in spec.split(",")):
        try:
            dev = resolve_device(part)
        except ValueError as e:  # the list's syntax is worth saying where a name is odd
            hint = " (comma-separated for several)" if not part or " " in part else ""
            raise BenchError(f"{e}{hint}") from None
        if dev.type not in ("cpu", "cuda"):
            raise BenchError(f"--device {part}: only cpu and cuda are benchmarked")
        if dev not in devs:  # `cpu,cpu` measured everything twice
            devs.append(dev)
    if not devs:
        raise BenchError("--device: no device given")
    return devs


def _cpu_name() -> str:
    from .engine_choice import cpu_name

    return cpu_name()


def _checked_request(models: Sequence[str] | None,
                     variants: Sequence[str]) -> tuple[list[str], list[str]]:
    """The models and variants to measure, or a ``BenchError`` naming the bad one.

    Variants come each once and fp32 first: the others' "PSNR vs fp32" needs its output
    (was "-" when fp32 came later in --variants)."""
    names = list(dict.fromkeys(models)) if models else list(MODELS)  # -m X -m X: once
    for n in names:
        if n not in MODELS:
            raise BenchError(f"unknown model {n!r}; choose one of: {', '.join(MODELS)}")
    if not variants:
        raise BenchError("--variants: no variant given")
    for v in variants:
        if v not in DEFAULT_VARIANTS + EXTRA_VARIANTS:
            raise BenchError(f"unknown variant {v!r}; choose from "
                             f"{', '.join(DEFAULT_VARIANTS + EXTRA_VARIANTS)}")
    return names, sorted(dict.fromkeys(variants), key=lambda v: v != "fp32")


def _device_tile(net: torch.nn.Module, name: str, dev: torch.device, tile: int | None) -> int:
    """The tile ``derain`` runs ``net`` in on ``dev``: ``tile`` when given (raised to the
    model's minimum, with a warning: a table of tiles derain never runs would mislead),
    else the device's own choice made large enough for the network to agree (RDMC), as
    ``Derainer`` does."""
    min_tile = int(getattr(net, "min_tile", 0))
    if tile is not None:
        dev_tile = variant_tile(None, tile, tile, min_tile)
        if dev_tile != tile:
            print(f"warning: --tile {tile} is below {name}'s minimum of {min_tile} "
                  f"px; measured with {dev_tile} px tiles, as derain runs it",
                  file=sys.stderr)
        return dev_tile
    if dev.type == "cuda":
        from .torch_runner import _auto_tile

        dev_tile = _auto_tile(TorchRunner(copy.deepcopy(net), dev, "fp32"))
    else:
        dev_tile = CPU_TILE
    return tiling.auto_tile(dev_tile, min_tile)


def _timed_passes(net: torch.nn.Module, runner: Any, img: np.ndarray, tile: int, overlap: int,
                  dev: torch.device, dtype: torch.dtype, repeats: int,
                  peak_side: int) -> tuple[float, np.ndarray, float]:
    """``repeats`` tiled passes over ``img``: (the fastest pass's seconds, the last pass's
    output, the highest convolution peak measured right after each pass).

    The reference is measured again beside each pass: on a shared machine whose speed
    drifts over minutes, a ratio of two measurements taken together holds where one
    against the run's first peak did not."""
    best, out, near = float("inf"), None, 0.0
    for _ in range(max(1, repeats)):
        _sync(dev)
        t0 = time.perf_counter()
        padded, crop = tiling.pad_small(img, hwc=False)  # a small image, as ``Derainer`` runs it
        out = tiling.run_tiled(padded, runner, tile, overlap)[crop]
        _sync(dev)
        best = min(best, time.perf_counter() - t0)
        near = max(near, mixed_peak(net, peak_side, dev, {}, dtype, 2)[0])
    assert out is not None
    return best, out, near


def bench_main(
    models: Sequence[str] | None = None,
    *,
    megapixels: float = 1.0,
    size: tuple[int, int] | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    variants: Sequence[str] = DEFAULT_VARIANTS,
    devices: str | None = None,
    repeats: int = 1,
    threads: int | None = None,
    force_bf16: bool = False,
    rss: bool = False,
    flop_side: int = 128,
    peak_side: int = 512,
    json_path: str | os.PathLike[str] | None = None,
    echo: Callable[[str], None] | None = print,
    on_row: Callable[[str], None] | None = None,
) -> BenchResult:
    """Run the benchmark (see the module docstring); print Markdown via ``echo``.
    ``on_row(what)`` before each row is measured (and the memory measurement): the table
    comes at the end, and the default run measures for many minutes (silent: an audit).

    ``size`` (height, width) overrides ``megapixels`` (a square of that many pixels).
    ``tile`` None = the default tiling of each device; ``overlap`` None = each model's own
    (``enhancer.default_overlap``, what ``derain`` uses). ``json_path`` also writes the
    result as JSON ("-" prints JSON instead of Markdown).
    """
    if threads:
        torch.set_num_threads(threads)
    names, variants = _checked_request(models, variants)
    devs = _devices(devices)  # checked before the minutes of measuring
    size = _checked_size(megapixels, size, tile)
    h, w = size
    res = BenchResult(
        height=h, width=w, overlap=overlap, threads=torch.get_num_threads(),
        machine=f"{_cpu_name()}" + (f" + {torch.cuda.get_device_name()}"
                                    if torch.cuda.is_available() else ""),
        torch=torch.__version__, flop_side=flop_side, peak_side=peak_side,
        repeats=max(1, repeats), scene=scene_name(),
    )
    try:
        _measure(res, names, variants, devs, tile, overlap, threads, force_bf16, rss,
                 flop_side, peak_side, on_row)
    except KeyboardInterrupt:
        res.rows = [r for r in res.rows if r.seconds is not None or r.note]  # finished ones
        measured = {(r.model, r.device) for r in res.rows}
        res.models = [m for m in res.models if (m.model, m.device) in measured]
        res.interrupted = True
        try:  # no rows: an earlier run's JSON is not replaced by an empty one
            _publish(res, json_path, echo, write=bool(res.rows))
        except OSError as e:
            log.warning("the rows measured could not be written: %s", e)
        raise BenchInterrupted(res) from None
    _publish(res, json_path, echo)
    return res


def _publish(res: BenchResult, json_path: str | os.PathLike[str] | None,
             echo: Callable[[str], None] | None, write: bool = True) -> None:
    """The result printed (Markdown, or JSON for ``json_path`` "-") and, with ``write``,
    written as JSON to ``json_path``."""
    if echo is not None:
        echo(json.dumps(res.to_dict(), indent=2) if str(json_path) == "-"
             else render_markdown(res))
    if write and json_path is not None and str(json_path) != "-":
        atomic_write_text(json_path, json.dumps(res.to_dict(), indent=2) + "\n")


def _measure(res: BenchResult, names: list[str], variants: list[str],
             devs: list[torch.device], tile: int | None, overlap: int | None,
             threads: int | None, force_bf16: bool, rss: bool, flop_side: int,
             peak_side: int, on_row: Callable[[str], None] | None = None) -> None:
    """Fill ``res`` with a row per model, device and variant as each is measured."""
    total, done = len(names) * len(devs) * len(variants), 0

    def say(what: str) -> None:
        if on_row is not None:
            on_row(what)

    h, w = res.height, res.width
    img = test_scene(h, w)
    mp = h * w / 1e6
    peaks: dict[tuple[int, int, str, str], tuple[float, str]] = {}
    for name in names:
        net, label = model_for_bench(name)
        # what every engine executes: batch norms folded, DCCLs as summed convs
        fwd, stats = count_flops(fold_for_inference(net, max_prelu=False), flop_side)
        mult = max(1, int(getattr(net, "size_multiple", 1)))
        has_stats = getattr(net, "global_stats_shape", None) is not None
        ov = default_overlap(net) if overlap is None else overlap
        for dev in devs:
            peak, ref = mixed_peak(net, peak_side, dev, peaks)
            dev_tile = _device_tile(net, name, dev, tile)
            # the overlap tiling really uses: at most half a tile (the table said the asked
            # one for a small --tile)
            info = ModelInfo(name, dev.type, label, fwd, stats, peak, ref, dev_tile,
                             tiling.effective_overlap(ov, dev_tile, mult))
            res.models.append(info)
            ref_out = None
            for variant in variants:
                done += 1
                say(f"measuring {name} on {dev.type}, {variant} ({done}/{total})")
                row = Row(name, dev.type, variant)
                res.rows.append(row)
                t0 = time.perf_counter()
                runner = make_variant_runner(net, variant, dev, threads, force_bf16, name)
                if isinstance(runner, str):
                    row.note = runner
                    continue
                row.setup_s = time.perf_counter() - t0
                # the tile derain itself runs this engine with: ONNX Runtime's own on CPUs
                row.tile = variant_tile(runner, tile, dev_tile, getattr(net, "min_tile", 0))
                if variant in ("onnx", "int8"):
                    info.ort_tile = row.tile
                work = tiling_work(h, w, row.tile, ov, mult, has_stats, fwd, stats)
                t0 = time.perf_counter()
                _warm_up(runner, img, row.tile)
                _sync(dev)
                row.warmup_s = time.perf_counter() - t0
                dtype = REDUCED_PRECISION.get(variant, torch.float32)
                if variant in REDUCED_PRECISION:  # against the same convs in its precision
                    info.reduced_peaks[_DTYPE_NAMES[dtype]] = mixed_peak(
                        net, peak_side, dev, peaks, dtype)
                best, out, near = _timed_passes(net, runner, img, row.tile, ov, dev, dtype,
                                                res.repeats, peak_side)
                row.seconds = best
                row.s_per_mp = best / mp
                row.gflops = fwd * h * w / best / 1e9
                row.peak_gflops = near
                row.peak_ratio = row.gflops / near
                row.work = work
                if variant == "fp32":
                    ref_out = out
                elif ref_out is not None:
                    row.psnr_vs_fp32 = psnr(out, ref_out)
                if variant in ("onnx", "int8"):
                    prov = runner.providers[0]
                    row.note = "onnxruntime " + (prov if isinstance(prov, str) else prov[0])
                elif (variant in REDUCED_PRECISION and dtype == torch.bfloat16
                      and dev.type == "cpu" and not cpu_supports_bf16()):
                    row.note = "emulated (--force-bf16: no bf16 instructions)"  # (its s/MP
                    # passed for bf16's own: an audit)
                del runner
    if rss:  # its failure loses no row measured above (Windows has no getrusage: every
        # row was thrown away, nothing written, an audit)
        import importlib.util

        if importlib.util.find_spec("resource") is None:
            log.warning("peak memory (--rss) not measured: this system has no getrusage "
                        "(Windows)")
        else:
            say("measuring peak memory (--rss)")
            try:
                res.rss = measure_rss(threads=threads)
            except (RuntimeError, OSError, ValueError, IndexError) as e:
                said = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
                log.warning("peak memory (--rss) not measured: %s", said[-1] if said else e)
