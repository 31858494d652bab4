"""Which CPU engine runs a bundled model fastest here: measured once per machine, remembered.

A bundled model with an int8 graph can run two ways on a CPU with bf16 instructions:
its int8 graph through ONNX Runtime (VNNI), or the network through PyTorch with bf16
autocast (AVX-512-BF16/AMX, oneDNN). Both are within 0.1 dB of fp32 on rain100l, and
neither wins everywhere: on one AVX-512-BF16 machine int8 and bf16 ran the default
model equally fast and int8 was 1.3x faster for semi-drdnet-lite; on another (with
AMX) bf16 was 1.2-1.9x faster for all three Semi-DRDNets
(``benchmarks/bench_inference.py --variants bf16,int8``; figures in the README, Speed).
A fixed rule is wrong on one of them, so ``precision="auto"`` times both on a 512 px image
the first time a model runs on a machine (a few seconds, once) and keeps the faster, bf16
only when it takes at most ``MARGIN`` (0.9) of int8's time. Each engine's time is weighed by
the tiling it will run in (``tiling_work``): the int8 graph runs in ONNX Runtime's 512 px
tiles, bf16 in PyTorch's 1024 px ones, and smaller tiles repeat more overlap (on a 12 MP
photo the default model sends 1.39x its pixels through the network in 512 px tiles, 1.28x in
1024 px ones; on a 1 MP photo 1.68x against 1.00x, one tile). A job's photos are costed as
4:3 photos of their mean size (the CLI reads the headers), at most 12 MP; of the workload's
size when the caller does not say how many. The int8 path starts without importing PyTorch
(1.2 s on a 2-core test CPU, 3.5 s while it was busy), so when the caller says how many
megapixels it will derain (the CLI counts the pending files' pixels), bf16 must also repay
that import: one small photo stays on int8, a folder or a 12 MP photo goes to bf16
(``decide``).

The answer is stored in ``engines.json`` in derain's cache folder (beside ``onnx/``, see
``onnx_backend.cache_root``), keyed by model, weights, CPU, thread count and library
versions, so a new CPU, weights or library release is measured again. CPUs without bf16
instructions (read from ``/proc/cpuinfo``, or where there is none from NumPy's CPUID table,
without importing PyTorch) take int8 unmeasured.
``DERAIN_CPU_ENGINE=int8|bf16`` skips the measurement (for instance in a container
image whose machine is known); ``--precision int8|bf16`` does the same for one run.

fp32 on a CPU has the same kind of choice between two engines that give the same
result (within 1e-3, ``tests/test_export.py``): the exported fp32 graph through ONNX
Runtime, or the network through PyTorch (channels_last, oneDNN). ONNX Runtime was
1.2-1.9x faster on an AVX2-only CPU (2026-12-02, untiled, before freed memory was kept,
``cpu_memory``); since then, on an AVX-512-BF16 CPU, PyTorch was 1.3-2.0x faster for the
Semi-DRDNets at 707 px with each engine in its tiles, about even for the RDMCs, and
within 10 % on a 512 px image (README, Speed). So where ``backend="auto"`` would run fp32 on a
CPU (``--precision fp32``, or any model without an int8 graph on a CPU without bf16),
``fp32_backend`` times both once per network shape and machine in the same way and
keeps PyTorch only when it takes at most ``MARGIN`` of ONNX Runtime's time in its tiles.
``DERAIN_CPU_FP32=onnx|torch`` skips it; ``--backend`` does the same for one run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import importlib
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from . import cpu_memory, tiling
from .fast_path import FastPlan
from .fileio import atomic_write_text
from .models import cpu_fusion_enabled
from .onnx_backend import cache_root

log = logging.getLogger(__name__)

ENGINES = ("int8", "bf16")
#: bf16 must take at most this share of int8's time to be chosen
MARGIN = 0.9
#: What a note says where the faster engine was not taken, for it was not ``MARGIN`` faster
_NOT_BY_MARGIN = ("{} is taken only where it is at least " + f"{1 - MARGIN:.0%}"
                  + " faster in its tiles")
#: side of the square test image: ONNX Runtime's CPU tile (``onnx_backend.ORT_CPU_TILE``)
PROBE_SIDE = 512
#: timed passes per engine after one warm-up pass; the best counts
PROBE_REPEATS = 2
ENV = "DERAIN_CPU_ENGINE"
#: the backends that compete for fp32 on a CPU, and the variable that pins one
FP32_BACKENDS = ("onnx", "torch")
FP32_ENV = "DERAIN_CPU_FP32"
#: a warm-up pass longer than this (a paper-size network) leaves one timed pass per engine
LONG_PASS_S = 4.0
#: seconds to import PyTorch when a measurement did not time it (``python -c "import
#: torch"`` on the 2-core test CPUs: 1.2 s idle, 3.5-3.7 s busy; the higher, to favour int8)
TORCH_IMPORT_S = 3.5
#: the photo tiles are costed on when the job's size is unknown or larger: 12 MP, 4:3 (the
#: photo of the 60-second rule)
REFERENCE_MEGAPIXELS = 12.0

_CPUINFO = Path("/proc/cpuinfo")


def choices_path() -> Path:
    """The file holding the measured choices (``engines.json`` in derain's cache)."""
    return cache_root().parent / "engines.json"


def cpu_fields() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo ({} where there is none)."""
    try:
        text = _CPUINFO.read_text(errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def cpu_name() -> str:
    """The CPU's model name ("AMD EPYC 9454P 48-Core Processor") for records people read:
    /proc/cpuinfo's, else the platform's processor name (on Linux often just "x86_64")."""
    return cpu_fields().get("model name") or platform.processor() or platform.machine() \
        or "unknown CPU"


def numpy_cpu_features() -> dict[str, bool]:
    """NumPy's own table of this CPU's instructions ({} where it has none): read with
    CPUID and checked against the operating system's support, on every OS, so it answers
    where there is no /proc/cpuinfo (Windows, macOS). NumPy prints it in
    ``numpy.show_runtime()``; its module moved from ``numpy.core`` to ``numpy._core`` in
    NumPy 2."""
    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            features = getattr(importlib.import_module(module), "__cpu_features__", None)
        except ImportError:
            continue
        if isinstance(features, dict):
            return {str(k): bool(v) for k, v in features.items()}
    return {}


def cpu_has_bf16() -> bool:
    """Whether the CPU advertises bf16 instructions (AVX-512-BF16 or AMX-BF16), without
    importing PyTorch: from /proc/cpuinfo where there is one (it also tells what a VM
    hides), else from NumPy's table (``numpy_cpu_features``: AVX512BF16, or the Sapphire
    Rapids group that includes it); False where neither says (then int8 is used
    unmeasured)."""
    fields = cpu_fields()
    if "flags" in fields:
        return bool(set(fields["flags"].split()) & {"avx512_bf16", "amx_bf16"})
    features = numpy_cpu_features()
    return bool(features.get("AVX512BF16") or features.get("AVX512_SPR"))


def cpu_signature() -> str:
    """The CPU's model name and a hash of its flags (a VM may hide instructions); where
    there is no /proc/cpuinfo, the platform's processor name and NumPy's instruction
    table."""
    f = cpu_fields()
    if "flags" in f:
        name, flags = f.get("model name", "unknown CPU"), f["flags"]
    else:
        name = f.get("model name") or platform.processor() or "unknown CPU"
        flags = " ".join(sorted(k for k, v in numpy_cpu_features().items() if v))
    digest = hashlib.sha256(flags.encode()).hexdigest()[:10]
    return f"{name} [{digest}]"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


#: The revision of derain's own PyTorch CPU path: bumped when derain makes that path faster
#: or slower, so that choices measured before are measured again (2: ``models.cpu_fusion``,
#: 2026-12-07; bf16 1.05-1.13x faster for the paper-size networks, 1.4x for rdmc-lite)
TORCH_CPU_PATH = 2


def _machine_key(threads: int | None) -> list[str]:
    """The key fields every measurement shares: CPU, threads, library versions, whether
    freed memory is kept (``cpu_memory``: bf16 ran 1.6x faster on a 12 MP photo) and the
    PyTorch path's revision and fusions (``models.cpu_fusion``)."""
    fused = "" if cpu_fusion_enabled() else "-unfused"
    return [cpu_signature(), f"threads={threads or 'default'}",
            f"onnxruntime={_version('onnxruntime')}", f"torch={_version('torch')}",
            f"malloc={cpu_memory.mode()}", f"torch_path={TORCH_CPU_PATH}{fused}"]


def choice_key(plan: FastPlan, threads: int | None) -> str:
    """What a measurement depends on: model, weights, then ``_machine_key``."""
    return "|".join([plan.record.name, plan.record.sha256[:16], *_machine_key(threads)])


def _pinned(var: str, allowed: tuple[str, ...]) -> str | None:
    """The engine ``var`` pins (None: unset or auto; another value is warned about)."""
    forced = os.environ.get(var, "").strip().lower()
    if forced in allowed:
        return forced
    if forced not in ("", "auto"):
        log.warning("%s=%s is not one of auto, %s; ignored", var, forced, ", ".join(allowed))
    return None


def _mean_photo(workload_megapixels: float | None,
                workload_images: int | None) -> float | None:
    """The size each photo of a workload is costed at: their mean, when the count is known."""
    if workload_megapixels and workload_images and workload_images > 0:
        return workload_megapixels / workload_images
    return workload_megapixels


def _fallback_path(create: bool = False) -> Path | None:
    """Where the choices of a cache that cannot be written go: the user's own temporary
    folder, where the exported graphs go then too (``onnx_backend``), in a file named for
    the cache's path (``engines-HASH.json``), so that only runs on that cache read it;
    None where there is no such folder."""
    from .onnx_backend import _private_temp_folder

    folder = _private_temp_folder(create=create)
    if folder is None:
        return None
    tag = hashlib.sha256(os.path.abspath(choices_path()).encode(
        "utf-8", "surrogateescape")).hexdigest()[:16]
    return folder / f"engines-{tag}.json"


def _read_choices(path: Path) -> dict[str, dict[str, Any]]:
    """The file's choices; an entry that is no object (a hand edit) is left out: it
    stopped every run with an AttributeError (an upgrade audit)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)}


def load_choices() -> dict[str, dict[str, Any]]:
    """Every remembered choice ({} when the file is missing or unreadable), with those
    remembered for this cache in the temporary folder when it could not be written (the
    cache's own first). Whether it can be written is not guessed: a file or folder in the
    way, or a full disk, passed a permission check and the choice was never read back (a
    review)."""
    data = _read_choices(choices_path())
    fallback = _fallback_path()
    if fallback is not None and fallback.is_file():
        data = {**_read_choices(fallback), **data}
    return data


def remember(key: str, entry: dict[str, Any]) -> None:
    """Add one choice to the file (atomic replace). Where the cache cannot be written, in
    the user's own temporary folder, which later runs read too: a read-only cache timed
    the engines again on every run, seconds each (an audit); only where neither takes it
    is the choice lost (logged)."""
    path = choices_path()
    data = _read_choices(path)
    data[key] = entry
    try:  # (a full disk once left an empty temporary file per run)
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))
        return
    except OSError as e:
        why = e
    fallback = _fallback_path(create=True)
    if fallback is not None:
        kept = _read_choices(fallback)
        kept[key] = entry
        try:
            atomic_write_text(fallback, json.dumps(kept, indent=1, sort_keys=True))
        except OSError:
            pass
        else:
            log.warning("could not remember the engine choice in %s (%s); remembered in %s, "
                        "which later runs read while the cache cannot be written", path,
                        why, fallback)
            return
    log.warning("could not remember the engine choice in %s: %s", path, why)


#: How long a run waits for another that is timing the engines before it times them too.
MEASURE_WAIT_S = 300.0


@contextlib.contextmanager
def one_measurer(wait_s: float | None = None) -> Iterator[None]:
    """Hold the cache's lock (``engines.lock`` beside ``engines.json``) while timing engines.

    Two runs started together timed their engines at the same time on the same cores and
    each remembered skewed figures (an audit: int8 0.82 and 0.97 s against 0.53 s alone);
    the second now waits and then finds the first one's result. Best effort: without
    ``fcntl`` (Windows) or a writable cache there is no lock, and after ``wait_s`` (default
    :data:`MEASURE_WAIT_S`) the run measures anyway."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = None
    for path in (choices_path().with_name("engines.lock"), None):  # None: the temporary
        # folder's, where the choice is remembered then (two runs timed at once without it)
        if path is None:
            fallback = _fallback_path(create=True)
            if fallback is None:
                break
            path = fallback.with_suffix(".lock")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            break
        except OSError:
            continue
    if fd is None:
        yield
        return
    try:
        deadline = time.monotonic() + (MEASURE_WAIT_S if wait_s is None else wait_s)
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break
                if not said:
                    log.info("another derain is timing the engines on this machine; waiting",
                             extra=NOTE)
                    said = True
                time.sleep(0.1)
            except OSError:  # a file system without locks
                break
        yield
    finally:
        os.close(fd)  # releases the lock


#: why an engine was taken without timing (``timed=False``): the network never runs. A first
#: ``derain --strength 0`` timed the engines for 10 s to write the photos as they were.
UNTIMED = "not timed: strength 0 runs no network"


def _known_or_measured(known: Callable[[], dict[str, Any] | None],
                       measure: Callable[[], Any]) -> tuple[Any, bool]:
    """(the remembered entry, False), or (``measure()``'s result, True) where there is none:
    measured under :func:`one_measurer`, looked up again once the lock is held (another
    run may have timed it while this one waited)."""
    entry = known()
    if entry is not None:
        return entry, False
    with one_measurer():
        entry = known()
        return (entry, False) if entry is not None else (measure(), True)


def probe_image(side: int = PROBE_SIDE) -> np.ndarray:
    """A fixed (3, side, side) float32 test image: smooth colour with thin bright streaks."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    img = np.stack([0.2 + 0.6 * x, 0.5 + 0.3 * np.sin(6 * y), 0.3 + 0.5 * x * y])
    streaks = (rng.random((side, side)) > 0.99).astype(np.float32)
    img = img + 0.5 * np.maximum(streaks, np.roll(streaks, 1, 0))[None]
    return np.clip(img, 0, 1).astype(np.float32)


def time_runners(runners: dict[str, Any], image: np.ndarray,
                 repeats: int | None = None) -> tuple[dict[str, float], int]:
    """Best seconds of one untiled pass over ``image`` per runner, interleaved, after a
    warm-up pass each (first calls build kernels and memory pools), and how many passes
    were timed (``repeats``, default ``PROBE_REPEATS``): one when a warm-up took over
    ``LONG_PASS_S`` (a paper-size network's probe then saves a pass per engine, a third
    of its time)."""
    from . import tiling

    warm = 0.0
    for r in runners.values():
        t0 = time.perf_counter()
        tiling.run_tiled(image, r, 0, 0)
        warm = max(warm, time.perf_counter() - t0)
    repeats = 1 if warm > LONG_PASS_S else repeats or PROBE_REPEATS
    best = dict.fromkeys(runners, float("inf"))
    for _ in range(repeats):
        for name, r in runners.items():
            t0 = time.perf_counter()
            tiling.run_tiled(image, r, 0, 0)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best, repeats


#: ``extra=`` of an info record the command line shows as ``note:`` (the first run's
#: timing took seconds without a word: an audit); other info records stay for --debug
NOTE = {"note": True}


def pick(seconds: dict[str, float]) -> str:
    """bf16 when it takes at most ``MARGIN`` of int8's time, else int8."""
    return "bf16" if seconds["bf16"] <= MARGIN * seconds["int8"] else "int8"


def measure(plan: FastPlan, threads: int | None) -> dict[str, Any]:
    """Time the int8 graph against bf16 PyTorch on ``probe_image`` (imports PyTorch)."""
    import torch

    from .onnx_backend import OnnxRunner
    from .torch_runner import TorchRunner
    from .weights import load_pretrained

    if threads:
        torch.set_num_threads(threads)
    net = load_pretrained(plan.record.name, quiet=True).eval()
    runners = {
        "int8": OnnxRunner(plan.graphs, device="cpu", threads=threads),
        "bf16": TorchRunner(net, torch.device("cpu"), "bf16"),
    }
    seconds, passes = time_runners(runners, probe_image(PROBE_SIDE))
    # the choice from the figures it is remembered with: picked from the unrounded ones,
    # a near tie could be recorded beside figures that say the other engine (the flake of
    # test_real_measurement_times_both_engines on a small probe)
    rounded = {k: round(v, 4) for k, v in seconds.items()}
    return {"engine": pick(rounded), "seconds": rounded,
            "probe": f"{PROBE_SIDE}x{PROBE_SIDE}, best of {passes}",
            "measured": datetime.date.today().isoformat()}


def torch_imported() -> bool:
    """Whether this process has imported PyTorch already (then bf16 costs no import)."""
    return "torch" in sys.modules


def tiling_work(plan: FastPlan, tile: int | None = None,
                megapixels: float | None = None) -> dict[str, float]:
    """Pixels through the network per image pixel for each engine in the tile ``Derainer``
    gives it (``tile``, when the caller set one, for both), on a 4:3 photo of
    ``megapixels`` (``REFERENCE_MEGAPIXELS`` when unknown or larger)."""
    from .enhancer import CPU_TILE
    from .onnx_backend import ORT_CPU_TILE

    return _work({"int8": ORT_CPU_TILE, "bf16": CPU_TILE}, plan.min_tile, plan.overlap,
                 len(plan.graphs) > 1, tile, megapixels)


def _work(own_tiles: dict[str, int], min_tile: int, overlap: int, stats: bool,
          tile: int | None, megapixels: float | None) -> dict[str, float]:
    """``tiling_work`` for any engines, given each one's own tile."""
    mp = REFERENCE_MEGAPIXELS if not megapixels else min(megapixels, REFERENCE_MEGAPIXELS)
    h = max(1, round((mp * 1e6 * 3 / 4) ** 0.5))
    w = max(1, round(h * 4 / 3))
    return {e: tiling.work_per_pixel(
        h, w, tiling.effective_tile(tile, t, min_tile), overlap, stats=stats)
        for e, t in own_tiles.items()}


def decide(entry: dict[str, Any], workload_megapixels: float | None,
           torch_loaded: bool, work: dict[str, float] | None = None) -> tuple[str, str]:
    """The engine for one job given a measurement: the faster per pixel once each engine's
    probe time is weighed by its tiling ``work`` (``tiling_work``; None: untiled), except
    that bf16 must also repay importing PyTorch (when not yet imported) over
    ``workload_megapixels`` (None: a long-lived object, many images; the import does not
    count). An entry without both times keeps its stored engine."""
    s = entry.get("seconds") or {}
    if not {"int8", "bf16"} <= set(s):
        return entry["engine"], ""
    work = work or {}
    per_mp = {e: s[e] * work.get(e, 1.0) * 1e6 / PROBE_SIDE ** 2 for e in ENGINES}
    if per_mp["bf16"] > MARGIN * per_mp["int8"]:  # the rule said (an audit: a slower
        # int8 chosen read as a wrong pick)
        return "int8", "" if per_mp["bf16"] >= per_mp["int8"] else _NOT_BY_MARGIN.format("bf16")
    if workload_megapixels is None or torch_loaded:
        return "bf16", ""
    load = float(entry.get("torch_import_s", TORCH_IMPORT_S))
    t_int8 = workload_megapixels * per_mp["int8"]
    t_bf16 = workload_megapixels * per_mp["bf16"] + load
    if t_bf16 <= MARGIN * t_int8:
        return "bf16", ""
    mp = f"{workload_megapixels:.2g}" if workload_megapixels < 1 else f"{workload_megapixels:.1f}"
    return "int8", (f"{mp} MP is too little to repay loading PyTorch ({load:.1f} s) for bf16")


def _measure_bf16_int8(plan: FastPlan, threads: int | None,
                       measure_fn: Callable[[FastPlan, int | None], dict[str, Any]],
                       key: str) -> dict[str, Any] | tuple[str, str]:
    """Time ``plan``'s int8 graph against bf16 and remember it; or the engine and why,
    where bf16 cannot be timed here."""
    fresh = not torch_imported()
    t0 = time.perf_counter()
    from .torch_runner import cpu_supports_bf16  # imports PyTorch

    import_s = time.perf_counter() - t0
    if not cpu_supports_bf16():  # the flag is there, but oneDNN will not use it
        return "int8", "no bf16 kernels in PyTorch"
    log.info("timing %s's int8 graph against bf16 once for this CPU (seconds)",
             plan.record.name, extra=NOTE)
    from .hub import WeightsUnavailable

    try:
        entry = measure_fn(plan, threads)
    except WeightsUnavailable as e:  # bf16 needs the full weights; int8 runs without
        log.debug("bf16 not timed: %s", e)
        return "int8", "bf16 not timed: its weights are not here and could not be fetched"
    if fresh:  # what a later run without PyTorch would pay to start bf16
        entry["torch_import_s"] = round(import_s, 2)
    remember(key, entry)
    return entry


def cpu_engine(plan: FastPlan, threads: int | None,
               workload_megapixels: float | None = None,
               measure_fn: Callable[[FastPlan, int | None], dict[str, Any]] = measure,
               tile: int | None = None,
               workload_images: int | None = None, timed: bool = True) -> tuple[str, str]:
    """The engine for ``plan`` on this CPU ('int8' or 'bf16') and why, in a few words
    (``tile``: the caller's tile for either engine; None: each engine's own;
    ``workload_images``: how many images the workload is, so its tiles are costed on
    their mean size; ``timed`` False: a choice not remembered yet is not measured, and
    int8, which needs no PyTorch, is taken: for work that runs no network, ``strength``
    0)."""
    forced = _pinned(ENV, ENGINES)
    if forced == "bf16" and not cpu_has_bf16():  # said as "use --precision fp32", which
        # was never given (an audit)
        from .errors import OptionError

        raise OptionError(f"{ENV}=bf16, but this CPU has no bf16 instructions: unset "
                          f"{ENV} (or set it to int8)")
    if forced:
        return forced, f"{ENV}={forced}"
    if not cpu_has_bf16():
        return "int8", "no bf16 instructions"
    key = choice_key(plan, threads)
    # decided as PyTorch was before any measurement: the run that measures (and so imports
    # PyTorch) chose bf16 where the same command later took int8, and their pixels differ
    # (in 41 % of values, up to 37 levels on rain100l: benchmarks/engine_agreement.py; a
    # determinism audit)
    loaded = torch_imported()

    def known() -> dict[str, Any] | None:
        entry = load_choices().get(key)
        return entry if entry is not None and entry.get("engine") in ENGINES else None

    if not timed and known() is None:
        return "int8", UNTIMED
    entry, now = _known_or_measured(
        known, lambda: _measure_bf16_int8(plan, threads, measure_fn, key))
    if isinstance(entry, tuple):  # bf16 could not be timed here: the engine and why
        return entry
    how = "measured " + ("now" if now else str(entry.get("measured", "earlier")))
    s = entry.get("seconds", {})
    work = tiling_work(plan, tile, _mean_photo(workload_megapixels, workload_images))
    if "int8" in s and "bf16" in s:
        how += (f": {s['bf16']:.2f} s bf16 vs {s['int8']:.2f} s int8 on a {PROBE_SIDE} px "
                f"image, x{work['bf16']:.2f} vs x{work['int8']:.2f} in their tiles")
    engine, why = decide(entry, workload_megapixels, loaded, work)
    return engine, f"{how}; {why}" if why else how


# --- fp32 on a CPU: ONNX Runtime's exported graph or PyTorch -------------------------------


def network_signature(net: Any) -> str:
    """What an fp32 measurement depends on in the network: its class, the shapes of its
    tensors and its config (speed does not depend on the values, so a user's retrained
    file of the same network reuses the measurement)."""
    shapes = ";".join(f"{k}:{tuple(v.shape)}" for k, v in net.state_dict().items())
    cfg = getattr(net, "cfg", None)  # settings that change speed, not shapes (RDMC's stages)
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        shapes += "|" + json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    return f"{type(net).__name__}[{hashlib.sha256(shapes.encode()).hexdigest()[:12]}]"


def fp32_key(net: Any, threads: int | None) -> str:
    """``choice_key`` for the fp32 choice: the network, then ``_machine_key``."""
    return "|".join(["fp32", network_signature(net), *_machine_key(threads)])


def measure_fp32(net: Any, threads: int | None) -> dict[str, Any]:
    """Time ONNX Runtime's fp32 graph (exported once, cached) against PyTorch fp32
    channels_last on ``probe_image``. Where the network cannot be exported or run in
    ONNX Runtime, PyTorch is timed alone and the reason kept (``onnx_failed``)."""
    import torch

    from .onnx_backend import _is_ort_oom, make_onnx_runner
    from .torch_runner import TorchRunner, _is_oom

    cpu = torch.device("cpu")
    runners: dict[str, Any] = {}
    failed, passing = "", False
    try:
        runners["onnx"] = make_onnx_runner(net, cpu, "fp32", threads)
    except Exception as e:  # noqa: BLE001 - any export/session failure: PyTorch still runs it
        failed = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        # a full disk, a folder in the way, no memory: this run's trouble, not the network's
        # (PyTorch's and ONNX Runtime's own out-of-memory errors are RuntimeErrors)
        passing = isinstance(e, (OSError, MemoryError)) or _is_oom(e) or _is_ort_oom(e)
        log.warning("ONNX Runtime cannot run this network (%s); fp32 runs in PyTorch%s",
                    failed, " this time" if passing else "")
    runners["torch"] = TorchRunner(net, cpu, "fp32")
    seconds, passes = time_runners(runners, probe_image(PROBE_SIDE))
    entry: dict[str, Any] = {
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
        "probe": f"{PROBE_SIDE}x{PROBE_SIDE}, best of {passes}",
        "measured": datetime.date.today().isoformat()}
    if failed:
        entry["onnx_failed"] = failed
    if passing:
        entry["retry"] = True  # not remembered: the next run times both engines again
    return entry


def fp32_work(net: Any, tile: int | None = None, megapixels: float | None = None,
              overlap: int | None = None) -> dict[str, float]:
    """``tiling_work`` for the fp32 engines: ONNX Runtime's 512 px tiles, PyTorch's 1024
    (``overlap``: the caller's, else the network's default)."""
    from .enhancer import CPU_TILE, default_overlap
    from .onnx_backend import ORT_CPU_TILE

    return _work({"onnx": ORT_CPU_TILE, "torch": CPU_TILE}, int(getattr(net, "min_tile", 0)),
                 default_overlap(net) if overlap is None else overlap,
                 getattr(net, "global_stats_shape", None) is not None, tile, megapixels)


def fp32_backend(net: Any, threads: int | None, tile: int | None = None,
                 workload_megapixels: float | None = None,
                 workload_images: int | None = None,
                 measure_fn: Callable[[Any, int | None], dict[str, Any]] | None = None,
                 overlap: int | None = None, timed: bool = True) -> tuple[str, str]:
    """The fp32 engine for ``net`` on this CPU ('onnx' or 'torch') and why, measured once
    per network and machine (PyTorch is loaded already on this path, so only the probe
    times, weighed by each engine's tiles, decide). The timing is a few seconds of the
    first such run on a machine, small job or not: on small photos PyTorch's single tile
    against ONNX Runtime's several is where the pick matters most."""
    forced = _pinned(FP32_ENV, FP32_BACKENDS)
    if forced:
        return forced, f"{FP32_ENV}={forced}"
    key = fp32_key(net, threads)

    def known() -> dict[str, Any] | None:
        entry = load_choices().get(key)
        s = (entry or {}).get("seconds") or {}
        usable = entry is not None and not entry.get("retry") and (
            set(FP32_BACKENDS) <= set(s) or ("torch" in s and entry.get("onnx_failed")))
        return entry if usable else None

    def measure() -> dict[str, Any]:
        log.info("timing ONNX Runtime against PyTorch in fp32 once for this network and CPU "
                 "(seconds)", extra=NOTE)
        entry = (measure_fn or measure_fp32)(net, threads)
        if not entry.get("retry"):
            remember(key, entry)
        return entry

    if not timed and known() is None:  # (as cpu_engine's): PyTorch, loaded already
        return "torch", UNTIMED
    entry, now = _known_or_measured(known, measure)
    how = "measured " + ("now" if now else str(entry.get("measured", "earlier")))
    s = entry["seconds"]
    if "onnx" not in s:
        if entry.get("retry"):  # a full disk, no memory: this run's trouble, timed again next
            return "torch", (f"ONNX Runtime's graph could not be made this time "
                             f"({entry.get('onnx_failed')})")
        return "torch", f"{how}: ONNX Runtime cannot run it ({entry.get('onnx_failed')})"
    work = fp32_work(net, tile, _mean_photo(workload_megapixels, workload_images), overlap)
    cost = {e: s[e] * work[e] for e in FP32_BACKENDS}
    engine = "torch" if cost["torch"] <= MARGIN * cost["onnx"] else "onnx"
    rule = ("; " + _NOT_BY_MARGIN.format("PyTorch")
            if engine == "onnx" and cost["torch"] < cost["onnx"] else "")
    return engine, (f"{how}: {s['torch']:.2f} s PyTorch vs {s['onnx']:.2f} s ONNX Runtime "
                    f"fp32 on a {PROBE_SIDE} px image, x{work['torch']:.2f} vs "
                    f"x{work['onnx']:.2f} in their tiles{rule}")
