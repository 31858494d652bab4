"""Which CPU engine runs a bundled model fastest here: measured once per machine, remembered.

A bundled model with an int8 graph can run two ways on a CPU with bf16 instructions:
its int8 graph through ONNX Runtime (VNNI), or the network through PyTorch with bf16
autocast (AVX-512-BF16/AMX, oneDNN). Both are within 0.1 dB of fp32 on rain100l, and
neither wins everywhere: on one AVX-512-BF16 machine int8 and bf16 ran the default
model equally fast and int8 was 1.3x faster for semi-drdnet-lite; on another (with
AMX) bf16 was 1.2-1.9x faster for all three Semi-DRDNets
(``benchmarks/bench_inference.py --variants bf16,int8``; figures in the README, Speed).
A fixed rule is wrong on one of them, so ``precision="auto"`` times both on a 512 px
image the first time a model runs on a machine (a few seconds, once) and keeps the
faster, bf16 only when it is at least ``MARGIN`` faster. Each engine's time is weighed
by the tiling it will run in (``tiling_work``): the int8 graph runs in ONNX Runtime's
512 px tiles, bf16 in PyTorch's 1024 px ones, and smaller tiles repeat more overlap (on a
12 MP photo the default model sends 1.39x its pixels through the network in 512 px
tiles, 1.28x in 1024 px ones; on a 1 MP photo 1.68x against 1.00x, one tile). A job's
photos are costed as 4:3 photos of their mean size (the CLI reads the headers), at most
12 MP; of the workload's size when the caller does not say how many. The int8 path starts without
importing PyTorch (1.2 s on a 2-core test CPU, 3.5 s while it was busy), so when the
caller says how many megapixels it will derain (the CLI counts the pending files'
pixels), bf16 must also repay that import: one small photo stays on int8, a folder or a
12 MP photo goes to bf16 (``decide``).

The answer is stored in ``engines.json`` in derain's cache folder (beside ``onnx/``, see
``onnx_backend.cache_root``), keyed by model, weights, CPU, thread count and library
versions, so a new CPU, weights or library release is measured again. CPUs without bf16
instructions (read from ``/proc/cpuinfo``, without importing PyTorch) take int8 unmeasured.
``DERAIN_CPU_ENGINE=int8|bf16`` skips the measurement (for instance in a container
image whose machine is known); ``--precision int8|bf16`` does the same for one run.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from . import cpu_memory, tiling
from .fast_path import FastPlan
from .onnx_backend import cache_root

log = logging.getLogger(__name__)

ENGINES = ("int8", "bf16")
#: bf16 must take at most this share of int8's time to be chosen
MARGIN = 0.9
#: side of the square test image: ONNX Runtime's CPU tile (``onnx_backend.ORT_CPU_TILE``)
PROBE_SIDE = 512
#: timed passes per engine after one warm-up pass; the best counts
PROBE_REPEATS = 2
ENV = "DERAIN_CPU_ENGINE"
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


def cpu_has_bf16() -> bool:
    """Whether the CPU advertises bf16 instructions (AVX-512-BF16 or AMX-BF16), without
    importing PyTorch; False where that cannot be read (then int8 is used unmeasured)."""
    flags = set(cpu_fields().get("flags", "").split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def cpu_signature() -> str:
    """The CPU's model name and a hash of its flags (a VM may hide instructions)."""
    f = cpu_fields()
    flags = hashlib.sha256(f.get("flags", "").encode()).hexdigest()[:10]
    return f"{f.get('model name', 'unknown CPU')} [{flags}]"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def choice_key(plan: FastPlan, threads: int | None) -> str:
    """What a measurement depends on: model, weights, CPU, threads, library versions and
    whether freed memory is kept (``cpu_memory``: bf16 ran 1.6x faster on a 12 MP photo)."""
    return "|".join([
        plan.record.name, plan.record.sha256[:16], cpu_signature(),
        f"threads={threads or 'default'}",
        f"onnxruntime={_version('onnxruntime')}", f"torch={_version('torch')}",
        f"malloc={cpu_memory.mode()}",
    ])


def load_choices() -> dict[str, dict[str, Any]]:
    """Every remembered choice ({} when the file is missing or unreadable)."""
    try:
        data = json.loads(choices_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remember(key: str, entry: dict[str, Any]) -> None:
    """Add one choice to the file (atomic replace; an unwritable cache is only logged)."""
    path = choices_path()
    data = load_choices()
    data[key] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".engines-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not remember the engine choice in %s: %s", path, e)


def probe_image(side: int = PROBE_SIDE) -> np.ndarray:
    """A fixed (3, side, side) float32 test image: smooth colour with thin bright streaks."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    img = np.stack([0.2 + 0.6 * x, 0.5 + 0.3 * np.sin(6 * y), 0.3 + 0.5 * x * y])
    streaks = (rng.random((side, side)) > 0.99).astype(np.float32)
    img = img + 0.5 * np.maximum(streaks, np.roll(streaks, 1, 0))[None]
    return np.clip(img, 0, 1).astype(np.float32)


def time_runners(runners: dict[str, Any], image: np.ndarray,
                 repeats: int = PROBE_REPEATS) -> dict[str, float]:
    """Best seconds of one untiled pass over ``image`` per runner, interleaved, after a
    warm-up pass each (first calls build kernels and memory pools)."""
    from . import tiling

    for r in runners.values():
        tiling.run_tiled(image, r, 0, 0)
    best = dict.fromkeys(runners, float("inf"))
    for _ in range(repeats):
        for name, r in runners.items():
            t0 = time.perf_counter()
            tiling.run_tiled(image, r, 0, 0)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


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
    seconds = time_runners(runners, probe_image(PROBE_SIDE))
    return {"engine": pick(seconds), "seconds": {k: round(v, 4) for k, v in seconds.items()},
            "probe": f"{PROBE_SIDE}x{PROBE_SIDE}, best of {PROBE_REPEATS}",
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

    mp = REFERENCE_MEGAPIXELS if not megapixels else min(megapixels, REFERENCE_MEGAPIXELS)
    h = max(1, round((mp * 1e6 * 3 / 4) ** 0.5))
    w = max(1, round(h * 4 / 3))
    own = {"int8": ORT_CPU_TILE, "bf16": CPU_TILE}
    return {e: tiling.work_per_pixel(
        h, w, tile if tile is not None else tiling.auto_tile(t, plan.min_tile), plan.overlap,
        stats=len(plan.graphs) > 1) for e, t in own.items()}


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
    if per_mp["bf16"] > MARGIN * per_mp["int8"]:
        return "int8", ""
    if workload_megapixels is None or torch_loaded:
        return "bf16", ""
    load = float(entry.get("torch_import_s", TORCH_IMPORT_S))
    t_int8 = workload_megapixels * per_mp["int8"]
    t_bf16 = workload_megapixels * per_mp["bf16"] + load
    if t_bf16 <= MARGIN * t_int8:
        return "bf16", ""
    return "int8", (f"{workload_megapixels:.1f} MP is too little to repay loading PyTorch "
                    f"({load:.1f} s) for bf16")


def cpu_engine(plan: FastPlan, threads: int | None,
               workload_megapixels: float | None = None,
               measure_fn: Callable[[FastPlan, int | None], dict[str, Any]] = measure,
               tile: int | None = None,
               workload_images: int | None = None) -> tuple[str, str]:
    """The engine for ``plan`` on this CPU ('int8' or 'bf16') and why, in a few words
    (``tile``: the caller's tile for either engine; None: each engine's own;
    ``workload_images``: how many images the workload is, so its tiles are costed on
    their mean size)."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced in ENGINES:
        return forced, f"{ENV}={forced}"
    if forced not in ("", "auto"):
        log.warning("%s=%s is not one of auto, int8, bf16; ignored", ENV, forced)
    if not cpu_has_bf16():
        return "int8", "no bf16 instructions"
    key = choice_key(plan, threads)
    entry = load_choices().get(key)
    if entry is None or entry.get("engine") not in ENGINES:
        fresh = not torch_imported()
        t0 = time.perf_counter()
        from .torch_runner import cpu_supports_bf16  # imports PyTorch

        import_s = time.perf_counter() - t0
        if not cpu_supports_bf16():  # the flag is there, but oneDNN will not use it
            return "int8", "no bf16 kernels in PyTorch"
        log.info("timing %s's int8 graph against bf16 once for this CPU", plan.record.name)
        entry = measure_fn(plan, threads)
        if fresh:  # what a later run without PyTorch would pay to start bf16
            entry["torch_import_s"] = round(import_s, 2)
        remember(key, entry)
        how = "measured now"
    else:
        how = "measured " + str(entry.get("measured", "earlier"))
    s = entry.get("seconds", {})
    per_image = workload_megapixels
    if workload_megapixels and workload_images and workload_images > 0:
        per_image = workload_megapixels / workload_images
    work = tiling_work(plan, tile, per_image)
    if "int8" in s and "bf16" in s:
        how += (f": {s['bf16']:.2f} s bf16 vs {s['int8']:.2f} s int8 on a {PROBE_SIDE} px "
                f"image, x{work['bf16']:.2f} vs x{work['int8']:.2f} in their tiles")
    engine, why = decide(entry, workload_megapixels, torch_imported(), work)
    return engine, f"{how}; {why}" if why else how
