"""The PyTorch side of ``Derainer``: devices, precisions, and the runner for torch networks.

Kept apart from :mod:`derain_cli.enhancer` so that the default CPU path, a bundled int8
graph through ONNX Runtime (``derain_cli.fast_path``), never imports torch: that import
alone was 3.4 of the 5.4 seconds ``derain`` took on a 512x512 photo.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import tiling
from .cpu_memory import keep_freed_memory
from .enhancer import CPU_TILE, MIN_TILE
from .errors import OptionError
from .fast_path import onnxruntime_installed
from .models.cpu_fusion import fuse_for_cpu
from .models.deploy import fold_for_inference

log = logging.getLogger(__name__)

#: what the tiler multiplies 8-bit samples by (float32, as numpy does it on the host)
_INV_255 = float(np.float32(1.0 / 255))


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then the CPU; explicit names are validated (in
    any case, as the CLI takes them: "CUDA" was refused in Python only)."""
    device = device.strip().lower() if isinstance(device, str) else device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise OptionError(
            f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"--device {device} was asked for but PyTorch sees no CUDA GPU")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise OptionError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise OptionError("--device mps was asked for but MPS is not available")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise OptionError(f"unsupported device {device!r}")
    return dev


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 matrix instructions (AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device, backend: str = "torch") -> str:
    """'auto': fp16 on CUDA/MPS; on CPUs bf16 where the CPU has bf16 instructions, else fp32.

    On this project's AVX-512-BF16 test CPU, bf16 autocast made semi-drdnet-lite
    1.8x faster than fp32 (both channels_last) and its output differs from fp32
    by 43.9 dB PSNR, far below visible (benchmarks/bench_inference.py).
    """
    if precision not in ("auto", "fp32", "fp16", "bf16"):
        raise OptionError(f"unknown precision {precision!r}; use auto, fp32, fp16 or bf16 "
                          "(int8 is ONNX Runtime's: derain_cli.onnx_backend)")
    if precision == "auto":
        if device.type in ("cuda", "mps"):
            return "fp16"
        return "bf16" if cpu_supports_bf16() else "fp32"
    if device.type == "cpu":
        if precision == "fp16":
            # the ONNX backend runs fp32 graphs and ignores bf16: advise what it runs
            usable = ("bf16 or fp32" if cpu_supports_bf16() and backend != "onnx"
                      else "fp32")
            raise OptionError(f"fp16 is not supported on the CPU; use --precision {usable}")
        if precision == "bf16" and not cpu_supports_bf16():
            raise OptionError("this CPU has no bf16 instructions; use --precision fp32")
    return precision


_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_backend(device: torch.device, precision: str = "auto") -> str:
    """'auto' backend: ONNX Runtime where the work is fp32 on a CPU, PyTorch elsewhere.

    ONNX Runtime is only the candidate there: ``Derainer`` times it against PyTorch fp32
    once per network and machine and keeps the faster (``engine_choice.fp32_backend``;
    which wins depends on the CPU and on ``cpu_memory``, figures in the README). GPUs and
    bf16-capable CPUs under ``auto`` stay on PyTorch, which runs them in half precision.
    """
    if device.type != "cpu" or precision not in ("auto", "fp32"):
        return "torch"
    if resolve_precision(precision, device) != "fp32":
        return "torch"
    return "onnx" if onnxruntime_installed() else "torch"


#: how allocation failures read: CUDA/MPS say "out of memory"; PyTorch's CPU allocator says
#: "DefaultCPUAllocator: can't allocate memory"; cuDNN and cuBLAS name their own failed
#: allocations (workspaces), and cuDNN 9 says it found no engine when none fits the memory
#: left (a review of the GPU paths: these failed the photo instead of shrinking the tile)
_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory",
             "cudnn_status_alloc_failed", "cublas_status_alloc_failed",
             "unable to find an engine to execute this computation",
             # oneDNN (CPU) out of memory: "RuntimeError: could not create a primitive" came
             # out bare, tiles unshrunk (an audit); as cuDNN's line above, the last error's
             # own words stay in the message where shrinking does not help
             "could not create a primitive")


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    msg = str(e).lower()
    if "primitive descriptor" in msg:  # oneDNN's refusal of a setting, not of memory (a
        return False  # review: "could not create a primitive descriptor for ...")
    return isinstance(e, RuntimeError) and any(t in msg for t in _OOM_TEXT)


def _one_thread_after_fork() -> None:
    """A forked child (gunicorn --preload, a multiprocessing pool with the fork start method)
    inherits PyTorch's OpenMP thread pool but not its threads: its first parallel kernel
    waited for them for ever (an audit: the default Derainer, torch bf16 on such CPUs, hung
    in every forked child). One thread is safe there; a child may set more itself."""
    torch.set_num_threads(1)


if hasattr(os, "register_at_fork"):  # POSIX; registered once, when the torch engine loads
    os.register_at_fork(after_in_child=_one_thread_after_fork)


#: ``cudnn_benchmark`` blocks open now, and the setting from before the first of them
_tuning_lock = threading.Lock()
_tuning: dict[str, Any] = {"open": 0, "before": False}


@contextlib.contextmanager
def cudnn_benchmark() -> Any:
    """cuDNN picks each convolution's algorithm by timing them (once per shape) inside this
    block; the process's own setting comes back after it (it is global, and training sets
    it for itself).

    Blocks of several threads (a server's Derainers on one GPU) may overlap: the setting
    from before the first comes back when the last one closes. (Each block saving and
    restoring its own left autotuning on for good when two overlapped: an audit.)"""
    with _tuning_lock:
        if _tuning["open"] == 0:
            _tuning["before"] = torch.backends.cudnn.benchmark
        _tuning["open"] += 1
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        with _tuning_lock:
            _tuning["open"] -= 1
            if _tuning["open"] == 0:
                torch.backends.cudnn.benchmark = _tuning["before"]


class TorchRunner:
    """Runs a PyTorch model on numpy tiles for ``tiling.run_tiled``."""

    #: 8-bit tiles arrive as (b, h, w, 3) uint8 and are scaled on the device (``_in``)
    takes_samples = True

    def __init__(self, model: nn.Module, device: torch.device, precision: str,
                 channels_last: bool = True, autotune: bool = False, fuse: bool = True) -> None:
        # Batch norms folded and each DCCL as three summed convs: the same function with
        # fewer operators (``models.deploy``). PyTorch's PReLU is already one kernel.
        self.model = fold_for_inference(model, max_prelu=False).to(device).eval()
        self.device = device
        if device.type == "cpu":  # every large activation reuses mapped pages (``cpu_memory``)
            keep_freed_memory()
        self.precision = precision
        self.size_multiple = int(getattr(model, "size_multiple", 1))
        self.global_stats_shape = getattr(model, "global_stats_shape", None)
        # NHWC lets oneDNN/cuDNN pick their fast convolution kernels (1.6x on CPU);
        # ``channels_last=False`` keeps NCHW (the benchmark's plain fp32 baseline).
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # on CPUs, convs with their ReLUs and sums as single oneDNN primitives and fewer
        # elementwise passes (``models.cpu_fusion``); ``fuse=False`` times the plain ops
        if device.type == "cpu" and fuse:
            self.model = fuse_for_cpu(self.model)
        self._per_px: float | None = None
        # cuDNN autotuning (``cudnn.benchmark``) for this runner's passes only, on CUDA: off
        # by default, as the GPU figures were measured (2026-12-04); the bench's
        # ``bf16_autotune`` variant times it, so a GPU session can decide
        self.autotune = autotune and device.type == "cuda"

    def bytes_per_pixel(self) -> float | None:
        """Peak GPU memory a pixel of a tile costs (measured once on a 128 px probe);
        None off CUDA."""
        if self.device.type != "cuda":
            return None
        if self._per_px is None:
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            self.forward(np.zeros((1, 3, 128, 128), np.float32), None)
            peak = torch.cuda.max_memory_allocated(self.device)
            self._per_px = max(1.0, (peak - base) / 128**2)
        return self._per_px

    def _autocast(self):  # noqa: ANN202 - a context manager
        if self.precision in _DTYPES:
            return torch.autocast(self.device.type, dtype=_DTYPES[self.precision])
        return torch.autocast(self.device.type, enabled=False)

    def _in(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Host array or tensor (pinned, for ``submit``) -> the device, in the model's layout.

        (b, h, w, 3) uint8 samples (``takes_samples``) are scaled to [0, 1] there, in the
        same float32 arithmetic as the tiler's host path (``* float32(1/255)``); seen as
        (b, 3, h, w) they already have channels_last strides."""
        host = x if isinstance(x, torch.Tensor) else _host_tensor(x)
        t = host.to(self.device, non_blocking=True)
        if t.dtype == torch.uint8:
            t = t.permute(0, 3, 1, 2).float().mul_(_INV_255)
        if self.channels_last and t.dim() == 4:
            return t.contiguous(memory_format=torch.channels_last)
        return t.contiguous()

    def _pooled(self, pooled: np.ndarray | None) -> torch.Tensor | None:
        return None if pooled is None else torch.from_numpy(pooled).to(self.device)

    def _run(self, x: torch.Tensor, pooled: np.ndarray | None) -> torch.Tensor:
        tuning = cudnn_benchmark() if self.autotune else contextlib.nullcontext()
        with torch.inference_mode(), self._autocast(), tuning:
            if pooled is None:
                return self.model(x)
            return self.model(x, self._pooled(pooled))

    def _oom(self, e: Exception) -> None:
        """Re-raise an out-of-memory error as the tiler's ``TileOutOfMemory``."""
        if _is_oom(e):
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise tiling.TileOutOfMemory(str(e)) from e

    def forward(self, x: np.ndarray, pooled: np.ndarray | None) -> np.ndarray:
        try:
            return self._run(self._in(x), pooled).float().cpu().numpy()
        except Exception as e:
            self._oom(e)
            raise

    def submit(self, x: np.ndarray, pooled: np.ndarray | None) -> Any:
        """Queue (b, 3, h, w) tiles (``tiling.AsyncRunner``). On CUDA the tiles go up from
        pinned host memory and the result comes back into pinned memory, both without
        blocking, so the host prepares and blends other tiles meanwhile; elsewhere this is
        ``forward``."""
        if self.device.type != "cuda":
            return self.forward(x, pooled)
        try:
            src = _host_tensor(x, pinned=True)
            y = self._run(self._in(src), pooled).float()
            dst = torch.empty(y.shape, dtype=torch.float32, pin_memory=True)
            dst.copy_(y, non_blocking=True)
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(self.device))
        except Exception as e:
            self._oom(e)
            raise
        return dst, done, src  # ``src`` stays alive until its copy has run

    def collect(self, handle: Any) -> np.ndarray:
        """The result of ``submit`` (waits for the device on CUDA)."""
        if isinstance(handle, np.ndarray):
            return handle
        dst, done, _ = handle
        done.synchronize()
        return dst.numpy()

    def stat_sums(self, x: np.ndarray, pooled: np.ndarray | None, mask: np.ndarray) -> np.ndarray:
        try:
            with torch.inference_mode(), self._autocast():
                s = self.model.se_sums(self._in(x), self._pooled(pooled), self._in(mask))
            # float64 on the host: Apple's MPS has no float64 (.double() there raised,
            # and every photo over one tile failed); float32 -> float64 is exact
            return s.float().cpu().double().numpy()
        except Exception as e:
            self._oom(e)
            raise


def _host_tensor(x: np.ndarray, pinned: bool = False) -> torch.Tensor:
    """``x`` as a CPU tensor: sharing its memory, or a copy in pinned memory (``pinned``,
    for asynchronous uploads). A read-only array (a decoded photo handed over whole as
    8-bit samples) is copied: PyTorch warns on sharing one, though nothing writes to it."""
    if pinned:
        dtype = torch.from_numpy(np.empty(0, x.dtype)).dtype  # not x's: it may be read-only
        t = torch.empty(x.shape, dtype=dtype, pin_memory=True)
        t.numpy()[...] = x
        return t
    x = np.ascontiguousarray(x)
    return torch.from_numpy(x if x.flags.writeable else x.copy())


def check_one_gpu_each(device: str, local_world: int, gpus: int) -> None:
    """``OptionError`` where torchrun's processes on this machine would all be put on the
    one GPU ``device`` names (``cuda:1`` given to every rank) while there are GPUs enough
    for NCCL, which refuses that at its first collective ("Duplicate GPU detected", a
    review), after the model loaded. With fewer GPUs than processes (one each through
    CUDA_VISIBLE_DEVICES, or one shared) the processes talk over gloo, and it runs."""
    name = device.strip().lower()
    if 1 < local_world <= gpus and name.startswith("cuda:"):
        raise OptionError(
            f"--device {device} under torchrun puts all {local_world} processes on this "
            "machine on one GPU, which NCCL refuses; give --device cuda (each process its "
            "own GPU), and CUDA_VISIBLE_DEVICES to choose which GPUs")


def gpu_free_bytes(device: torch.device) -> int:
    """What PyTorch can still allocate on a GPU: the driver's free memory plus PyTorch's own
    cached, unused blocks (``mem_get_info`` counts those as used, so later tiles shrank in
    a long-lived process: a review), within a per-process memory fraction where one is set
    (``mem_get_info`` ignores it)."""
    free, total = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    usable = free + max(0, torch.cuda.memory_reserved(device) - allocated)
    fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    if fraction is not None:
        with contextlib.suppress(RuntimeError, TypeError, ValueError):
            usable = min(usable, int(fraction(device) * total) - allocated)
    return max(0, usable)


def _auto_tile(runner: TorchRunner) -> int:
    """Largest tile that fits comfortably: from free GPU memory, a fixed size on CPUs."""
    per_px = runner.bytes_per_pixel()
    if per_px is None:
        return CPU_TILE
    free = gpu_free_bytes(runner.device)
    side = int((0.5 * free / per_px) ** 0.5)
    return max(MIN_TILE, min(4096, side // 64 * 64))


def _check_int8_request(device: torch.device, backend: str) -> None:
    """Fail early on an int8 request that cannot run, saying what would."""
    from .fast_path import int8_request_problem

    if device.type != "cpu" or backend == "torch":
        raise OptionError(int8_request_problem(backend, None, device.type))
    if not onnxruntime_installed():
        raise OptionError("int8 needs onnxruntime (pip install onnxruntime)")


def _int8_graph(record: Any, net: nn.Module, device: torch.device, precision: str,
                backend: str) -> Path | None:
    """The shipped int8 graph to run, or None.

    ``precision='int8'`` requires one (a clear error otherwise). ``'auto'`` on a CPU uses
    one when the weights have it and the backend allows ONNX Runtime (within 0.1 dB of
    fp32 on rain100l, ``derain_cli.quantize``); on CPUs with bf16 instructions
    ``engine_choice`` may have picked PyTorch bf16 before this is asked.
    """
    from .quantize import Int8Damaged, Int8Unavailable, shipped_int8_graph

    if precision == "int8":
        if record is None:
            from .fast_path import int8_request_problem

            raise OptionError(int8_request_problem(backend, None))
        try:
            return shipped_int8_graph(record, net)
        except Int8Damaged as e:  # the installation's fault, not the request's: exit 1
            from .weights import WeightsError  # (it was a usage error, exit 2: an audit)

            raise WeightsError(f"{e}: reinstalling derain restores it; or use --precision "
                               "auto or fp32") from None
        except Int8Unavailable as e:
            raise OptionError(f"{e}; use --precision auto or fp32") from None
    if (precision != "auto" or device.type != "cpu" or backend == "torch" or record is None
            or not onnxruntime_installed()):
        return None
    try:
        return shipped_int8_graph(record, net)
    except Int8Damaged as e:  # the default path ran another engine without a word
        log.warning("the bundled int8 graph is not used: %s (reinstalling derain restores "
                    "it); another engine runs instead", e)
        return None
    except Int8Unavailable as e:
        log.debug("int8 not used: %s", e)
        return None
