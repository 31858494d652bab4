"""The default CPU path without PyTorch: a bundled int8 graph through ONNX Runtime.

``derain photo.jpg`` on a CPU runs the default model's bundled int8 graph with ONNX
Runtime (``derain_cli.quantize``). Nothing on that path needs PyTorch, yet importing it
took 3.4 of the 5.4 seconds ``derain`` spent on a 512x512 photo (``python -m cProfile
-m derain_cli``, this project's 2-core CPU). So when the request can only mean that
path, :func:`plan` says so from the manifest alone and ``Derainer`` starts without torch.

What the tiler needs from the network is recorded at bundling time
(``recipes/bundle_int8.py``): the size multiple and statistics shape in the graph's
metadata, the overlap and smallest tile in the manifest's ``int8.tiling``. The graph
must name the manifest's weights (``int8.weights_sha256``) and match its own sha256, or
the request takes the PyTorch path, which checks the graph against the loaded network.

"Surely a CPU" is decided without importing torch: an explicit ``cpu``, or ``auto``
where PyTorch could not find an accelerator (a CPU-only build, or a CUDA/ROCm build on
a machine without the driver), and never on macOS (MPS). Anything uncertain takes the
PyTorch path, which is always correct, only slower to start.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .manifest import WeightRecord, bundled_dir, load_manifest

log = logging.getLogger(__name__)


class Int8Unavailable(ValueError):
    """No usable bundled int8 graph for these weights (the message says why)."""


class Int8Damaged(Int8Unavailable):
    """The manifest names an int8 graph for these weights, but its file is missing, altered
    or made from other weights: an installation to repair, said aloud (a damaged graph
    was passed over in silence, PyTorch running instead), where "no int8 graph" is not."""


def int8_request_problem(backend: str, record: WeightRecord | None,
                         device: str = "cpu") -> str | None:
    """Why ``--precision int8`` cannot run on ``device`` (a device type or ``--device``;
    "auto" is taken as a CPU) with ``backend`` and the weights of ``record`` (None: a
    ``--weights`` file), said without loading a network: a rerun over a finished folder
    accepted what a fresh run refuses (an audit). None where it may run (whether the graph
    is whole is found when it is loaded)."""
    if device != "auto" and not device.lower().startswith("cpu"):
        return ("int8 runs on CPUs only (ONNX Runtime); use --device cpu or another "
                "--precision")
    if backend == "torch":
        return "int8 runs through ONNX Runtime; use --backend onnx or auto"
    if record is None:
        return ("int8 graphs ship with bundled weights only; run a --weights file with "
                "--precision auto, fp32 or bf16")
    if not record.extra.get("int8"):
        return f"{record.name} has no int8 graph; use --precision auto or fp32"
    if not onnxruntime_installed():
        return "int8 needs onnxruntime (pip install onnxruntime)"
    return None


def int8_problem(record: WeightRecord) -> str | None:
    """Why the bundled int8 graph ``record`` names cannot be used (missing, altered), or
    None when it is whole or there is none; for ``derain models`` and ``download``."""
    if not record.extra.get("int8"):
        return None
    try:
        bundled_int8_files(record)
    except Int8Damaged as e:
        return str(e)
    except OSError as e:  # unreadable
        return f"cannot be read: {e}"
    return None


@dataclass(frozen=True)
class FastPlan:
    """Everything ``Derainer`` needs to run a bundled int8 graph without the network."""

    record: WeightRecord
    graphs: list[Path]  # the forward graph, then the statistics graph if there is one
    overlap: int
    min_tile: int


def bundled_int8_files(record: WeightRecord) -> list[Path]:
    """The record's int8 forward (and statistics) graph, checked against its sha256s.

    Raises :class:`Int8Unavailable` when there is none or a file is missing or altered.
    Whether it was made from these weights is a separate check (``weights_sha256`` here,
    the loaded network's state in ``quantize.shipped_int8_graph``).
    """
    from .fileio import sha256_file

    info = record.extra.get("int8")
    if not info:
        raise Int8Unavailable(f"{record.name} has no int8 graph")
    path = bundled_dir() / info["file"]
    if not path.is_file():
        raise Int8Damaged(f"{path} is missing")
    if sha256_file(path) != info["sha256"]:
        raise Int8Damaged(f"{path} does not match its manifest sha256")
    files = [path]
    if "stats_file" in info:
        stats = bundled_dir() / info["stats_file"]
        if not stats.is_file() or sha256_file(stats) != info.get("stats_sha256"):
            raise Int8Damaged(f"{stats} is missing or does not match its manifest sha256")
        files.append(stats)
    return files


def _torch_build() -> dict[str, str | None] | None:
    """The installed torch's ``cuda`` and ``hip`` versions, read from its version.py.

    None when torch is not there or the file does not say (then nothing is assumed).
    """
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    try:
        text = (Path(spec.origin).parent / "version.py").read_text()
    except OSError:
        return None
    build: dict[str, str | None] = {}
    for key in ("cuda", "hip"):
        m = re.search(rf"^{key}\s*(?::[^=]*)?=\s*(None|'[^']*'|\"[^\"]*\")\s*$", text, re.M)
        if m is None:
            return None
        build[key] = None if m.group(1) == "None" else m.group(1)[1:-1]
    return build


#: Files a GPU driver creates: NVIDIA's (CUDA) and AMD's kernel fusion driver (ROCm).
NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")
ROCM_DEVICE = Path("/dev/kfd")


def surely_cpu(device: str) -> bool:
    """True when ``device`` resolves to the CPU for certain (see the module docstring).
    Spelt as ``resolve_device`` takes it ("CPU", " cpu", "cpu:0": an audit found them taking
    int8 without the engine choice)."""
    device = device.strip().lower() if isinstance(device, str) else device
    if isinstance(device, str) and (device == "cpu" or device.startswith("cpu:")):
        return True
    if device != "auto" or sys.platform == "darwin":
        return False
    build = _torch_build()
    if build is None:
        return False
    # the driver's /proc file exists on Linux only: elsewhere (Windows) a CUDA build may
    # have a GPU, and the user's GPU was left idle for int8 on the CPU
    if build["cuda"] is not None and (sys.platform != "linux" or NVIDIA_DRIVER.exists()):
        return False
    return not (build["hip"] is not None and ROCM_DEVICE.exists())


def onnxruntime_installed() -> bool:
    """Whether onnxruntime can be imported, without importing it (it costs ~0.3 s)."""
    try:
        return importlib.util.find_spec("onnxruntime") is not None
    except (ImportError, ValueError):
        return False


def plan(model: str, weights: str | os.PathLike[str] | None, device: str, precision: str,
         backend: str) -> FastPlan | None:
    """A torch-free plan for this request, or None when it needs (or might need) PyTorch."""
    if weights is not None or backend not in ("auto", "onnx"):
        return None
    if precision not in ("auto", "int8") or not surely_cpu(device):
        return None
    if not onnxruntime_installed():
        return None
    record = load_manifest().get(model)
    if record is None:
        return None
    info = record.extra.get("int8") or {}
    tiling = info.get("tiling")
    if info.get("weights_sha256") != record.sha256 or not tiling:
        log.debug("%s: no torch-free start (int8 record without weights_sha256/tiling)",
                  model)
        return None
    try:
        graphs = bundled_int8_files(record)
    except Int8Unavailable as e:
        log.debug("%s: no torch-free start: %s", model, e)
        return None
    return FastPlan(record, graphs, int(tiling["overlap"]), int(tiling.get("min_tile", 0)))
