"""``Derainer``: the one object that turns a rainy image into a derained one.

It owns the model, the device and precision choices and the tiling (as
Real-ESRGAN's "enhancer" does); the CLI and the batch runner are thin layers
over it. Inputs and outputs are PIL images or numpy arrays of the same type.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from . import tiling
from .models import get_spec
from .models.deploy import fold_for_inference
from .weights import load_manifest, load_pretrained, model_from_file

log = logging.getLogger(__name__)

#: The model ``derain photo.jpg`` uses: a 12-megapixel photo in about a minute on a
#: 2-core laptop CPU, scoring like semi-drdnet-fast and -lite (README, "Why this default").
DEFAULT_MODEL = "semi-drdnet-tiny"

#: Smallest tile the out-of-memory fallback tries before giving up.
MIN_TILE = 64
#: CPU tiles: big enough that overlap costs ~10 %, small enough that a tile's
#: activations stay near 1 GB for the paper-size models.
CPU_TILE = 1024
#: Tile overlap for networks of unknown reach, and the most any network gets: 48 px kept
#: every registered model's tiled output within 45 dB of the untiled one (tests/test_tiling).
DEFAULT_OVERLAP = 48


def default_overlap(net: nn.Module) -> int:
    """Tile overlap for ``net``: twice its receptive radius in multiples of 8, at most 48.

    The blend ignores a tile's outer quarter-overlap and fades over the next half, so
    every kept pixel sees its whole receptive field but for the outermost rings, which
    weigh little. Small networks need less: semi-drdnet-tiny (radius 13) gets 32 px,
    tiled against untiled 79.6 dB in fp32 and 58.7 dB in int8 (80.5 and 59.2 with 48,
    1024 px in 256 px tiles), and its 12 MP photo takes about 5 % less time. A network
    may instead name its own measured ``tile_overlap`` (RDMC: its pooling reaches far).
    Others get ``DEFAULT_OVERLAP``.
    """
    fixed = getattr(net, "tile_overlap", None)
    if fixed is not None:
        return int(fixed)
    radius = getattr(net, "receptive_radius", None)
    if radius is None:
        return DEFAULT_OVERLAP
    return min(DEFAULT_OVERLAP, max(16, math.ceil(2 * radius / 8) * 8))


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then the CPU; explicit names are validated."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but PyTorch sees no CUDA GPU")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ValueError("--device mps was asked for but MPS is not available")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {device!r}")
    return dev


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 matrix instructions (AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto': fp16 on CUDA/MPS; on CPUs bf16 where the CPU has bf16 instructions, else fp32.

    On this project's AVX-512-BF16 test CPU, bf16 autocast made semi-drdnet-lite
    1.8x faster than fp32 (both channels_last) and its output differs from fp32
    by 43.9 dB PSNR, far below visible (benchmarks/bench_inference.py).
    """
    if precision not in ("auto", "fp32", "fp16", "bf16"):
        raise ValueError(f"unknown precision {precision!r}; use auto, fp32, fp16 or bf16")
    if precision == "auto":
        if device.type in ("cuda", "mps"):
            return "fp16"
        return "bf16" if cpu_supports_bf16() else "fp32"
    if device.type == "cpu":
        if precision == "fp16":
            raise ValueError("fp16 is not supported on the CPU; use --precision bf16 or fp32")
        if precision == "bf16" and not cpu_supports_bf16():
            raise ValueError("this CPU has no bf16 instructions; use --precision fp32")
    return precision


_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(device: torch.device, precision: str = "auto") -> str:
    """'auto' backend: ONNX Runtime where the work is fp32 on a CPU, PyTorch elsewhere.

    On CPUs without bf16 instructions ONNX Runtime's fp32 kernels beat PyTorch's
    (channels_last, oneDNN) for these networks (``derain bench --variants
    channels_last,onnx``; figures in the README); GPUs and bf16-capable CPUs stay on PyTorch,
    which runs them in half precision.
    """
    if device.type != "cpu" or precision not in ("auto", "fp32"):
        return "torch"
    if resolve_precision(precision, device) != "fp32":
        return "torch"
    return "onnx" if _has_onnxruntime() else "torch"


#: how allocation failures read: CUDA/MPS say "out of memory"; PyTorch's CPU allocator says
#: "DefaultCPUAllocator: can't allocate memory"
_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory")


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and any(t in msg for t in _OOM_TEXT)


class TorchRunner:
    """Runs a PyTorch model on numpy tiles for ``tiling.run_tiled``."""

    def __init__(self, model: nn.Module, device: torch.device, precision: str,
                 channels_last: bool = True) -> None:
        # Batch norms folded and each DCCL as three summed convs: the same function with
        # fewer operators (``models.deploy``). PyTorch's PReLU is already one kernel.
        self.model = fold_for_inference(model, max_prelu=False).to(device).eval()
        self.device = device
        self.precision = precision
        self.size_multiple = int(getattr(model, "size_multiple", 1))
        self.global_stats_shape = getattr(model, "global_stats_shape", None)
        # NHWC lets oneDNN/cuDNN pick their fast convolution kernels (1.6x on CPU);
        # ``channels_last=False`` keeps NCHW (the benchmark's plain fp32 baseline).
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def _autocast(self):  # noqa: ANN202 - a context manager
        if self.precision in _DTYPES:
            return torch.autocast(self.device.type, dtype=_DTYPES[self.precision])
        return torch.autocast(self.device.type, enabled=False)

    def _in(self, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device, non_blocking=True)
        if self.channels_last and t.dim() == 4:
            return t.contiguous(memory_format=torch.channels_last)
        return t

    def _pooled(self, pooled: np.ndarray | None) -> torch.Tensor | None:
        return None if pooled is None else torch.from_numpy(pooled).to(self.device)

    def forward(self, x: np.ndarray, pooled: np.ndarray | None) -> np.ndarray:
        try:
            with torch.inference_mode(), self._autocast():
                if pooled is None:
                    y = self.model(self._in(x))
                else:
                    y = self.model(self._in(x), self._pooled(pooled))
            return y.float().cpu().numpy()
        except Exception as e:
            if _is_oom(e):
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                raise tiling.TileOutOfMemory(str(e)) from e
            raise

    def stat_sums(self, x: np.ndarray, pooled: np.ndarray | None, mask: np.ndarray) -> np.ndarray:
        try:
            with torch.inference_mode(), self._autocast():
                s = self.model.se_sums(self._in(x), self._pooled(pooled), self._in(mask))
            return s.double().cpu().numpy()
        except Exception as e:
            if _is_oom(e):
                raise tiling.TileOutOfMemory(str(e)) from e
            raise


def _auto_tile(runner: TorchRunner) -> int:
    """Largest tile that fits comfortably: from free GPU memory, a fixed size on CPUs."""
    if runner.device.type != "cuda":
        return CPU_TILE
    free, _ = torch.cuda.mem_get_info(runner.device)
    torch.cuda.reset_peak_memory_stats(runner.device)
    base = torch.cuda.memory_allocated(runner.device)
    probe = np.zeros((1, 3, 128, 128), np.float32)
    runner.forward(probe, None)
    per_px = max(1.0, (torch.cuda.max_memory_allocated(runner.device) - base) / 128**2)
    side = int((0.5 * free / per_px) ** 0.5)
    return max(MIN_TILE, min(4096, side // 64 * 64))


def _check_int8_request(device: torch.device, backend: str) -> None:
    """Fail early on an int8 request that cannot run, saying what would."""
    if device.type != "cpu":
        raise ValueError("int8 runs on CPUs only (ONNX Runtime); use --device cpu "
                         "or another --precision")
    if backend == "torch":
        raise ValueError("int8 runs through ONNX Runtime; use --backend onnx or auto")
    if not _has_onnxruntime():
        raise ValueError("int8 needs onnxruntime (pip install onnxruntime)")


def _int8_graph(record: Any, net: nn.Module, device: torch.device, precision: str,
                backend: str) -> Path | None:
    """The shipped int8 graph to run, or None.

    ``precision='int8'`` requires one (a clear error otherwise). ``'auto'`` on a CPU uses
    one when the weights have it and the backend allows ONNX Runtime: it is the fastest
    CPU path measured, within 0.1 dB of fp32 on rain100l (``derain_cli.quantize``).
    """
    from .quantize import Int8Unavailable, shipped_int8_graph

    if precision == "int8":
        if record is None:
            raise ValueError("int8 graphs ship with bundled weights only; a --weights file "
                             "runs in fp32 (--precision fp32)")
        try:
            return shipped_int8_graph(record, net)
        except Int8Unavailable as e:
            raise ValueError(f"no int8 graph: {e}; use --precision fp32") from None
    if (precision != "auto" or device.type != "cpu" or backend == "torch" or record is None
            or not _has_onnxruntime()):
        return None
    try:
        return shipped_int8_graph(record, net)
    except Int8Unavailable as e:
        log.debug("int8 not used: %s", e)
        return None


class Derainer:
    """Derain images with a registered model or a weights file.

    ``model`` is a registry name (``derain models`` lists them); ``weights`` a
    safetensors/.pt file of one's own. ``tile``: None picks a size from the
    device, 0 disables tiling; ``tile_overlap`` None sizes the overlap from the network's
    reach (``default_overlap``). Semi-DRDNet's whole-image statistics are handled
    by the tiler, so tiled and untiled results agree. ``precision``: auto, fp32,
    fp16, bf16 or int8 (CPU, ONNX Runtime, bundled weights with an int8 graph;
    auto picks it on CPUs where it exists). ``stats_megapixels``: above this many
    million pixels the tiler estimates those statistics from a sample of the image
    (``tiling.sample_tiles``); 0 or None uses every pixel.
    """

    def __init__(
        self,
        model: str | None = None,
        weights: str | os.PathLike[str] | None = None,
        device: str = "auto",
        precision: str = "auto",
        tile: int | None = None,
        tile_overlap: int | None = None,
        threads: int | None = None,
        backend: str = "auto",
        quiet: bool = True,
        stats_megapixels: float | None = tiling.STATS_MEGAPIXELS,
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        if backend not in ("auto", "torch", "onnx"):
            raise ValueError(f"unknown backend {backend!r}; use auto, torch or onnx")
        self.device = resolve_device(device)
        if precision == "int8":
            _check_int8_request(self.device, backend)
        if weights is not None:
            net = model_from_file(weights, model)
            self.model_name = model or Path(weights).stem
            self.weights_label = str(weights)
            record = None
        else:
            self.model_name = model or DEFAULT_MODEL
            get_spec(self.model_name)  # clear error for unknown names
            net = load_pretrained(self.model_name, quiet=quiet)
            record = load_manifest()[self.model_name]
            self.weights_label = f"{record.name} ({record.status})"
        self.network = net.eval()
        int8_graph = _int8_graph(record, self.network, self.device, precision, backend)
        if int8_graph is not None:
            backend, precision = "onnx", "int8"
        elif backend == "auto":
            backend = resolve_backend(self.device, precision)
        if backend == "onnx" and precision == "auto":
            precision = "fp32"  # exported graphs are fp32
        self.precision = precision if int8_graph else resolve_precision(precision, self.device)
        self.backend = backend
        if backend == "onnx":
            from .onnx_backend import make_onnx_runner

            self.runner = make_onnx_runner(self.network, self.device, self.precision, threads,
                                           int8_graph=int8_graph)
            auto = self.runner.suggest_tile
        else:
            self.runner = TorchRunner(self.network, self.device, self.precision)
            auto = lambda: _auto_tile(self.runner)  # noqa: E731
        # A network whose tiles must be large to agree with the whole image (RDMC) says so;
        # the automatic tile is then at least twice that, or the overlap costs too much
        # (rdmc-lite, 12 MP photo: 126.5 s in 512 px tiles, 85.8 s in 1024 px).
        min_tile = getattr(self.network, "min_tile", 0)
        self.tile = tile if tile is not None else max(auto(), 2 * min_tile)
        if 0 < self.tile < min_tile:
            log.info("tile %d px is below %s's minimum of %d px; using %d px",
                     self.tile, self.model_name, min_tile, min_tile)
            self.tile = min_tile
        self.tile_overlap = default_overlap(self.network) if tile_overlap is None else tile_overlap
        self.stats_megapixels = stats_megapixels

    def derain_array(
        self, rgb: np.ndarray, on_tile: Callable[[int, int], None] | None = None
    ) -> np.ndarray:
        """HxWx3 float32 in [0, 1], or uint8/uint16 samples -> derained HxWx3 float32 in [0, 1].

        Integer samples are scaled tile by tile (``tiling.run_tiled``): pass them as
        decoded, and a large photo is never held as float32 input.
        """
        if rgb.dtype not in (np.uint8, np.uint16):
            rgb = rgb.astype(np.float32, copy=False)  # HWC throughout: no transposed copy
        tile = self.tile
        while True:
            try:
                out = tiling.run_tiled(rgb, self.runner, tile, self.tile_overlap,
                                       stats_megapixels=self.stats_megapixels,
                                       on_tile=on_tile, hwc=True)
                break
            except tiling.TileOutOfMemory:
                h, w = rgb.shape[:2]
                # a tile larger than the image is the whole image: halve from what ran
                current = min(tile, max(h, w)) if tile > 0 else max(h, w)
                if current <= MIN_TILE:
                    hint = "try --device cpu" if self.device.type != "cpu" else (
                        "free some memory or close other programs")
                    raise tiling.TilesExhausted(
                        f"even {current}px tiles do not fit in memory; {hint}"
                    ) from None
                tile = max(current // 2, MIN_TILE)  # the floor itself is tried last
                log.warning("out of memory; retrying with %dpx tiles", tile)
        self.tile = tile
        return np.clip(out, 0.0, 1.0, out=out)

    def derain(self, image: Image.Image | np.ndarray) -> Image.Image | np.ndarray:
        """Derain a PIL image or an HxW / HxWxC numpy array, returning the same type.

        Alpha is kept untouched; grayscale stays grayscale; uint8/uint16 arrays
        keep their dtype.
        """
        if isinstance(image, Image.Image):
            return self._derain_pil(image)
        return self._derain_numpy(np.asarray(image))

    def _derain_numpy(self, arr: np.ndarray) -> np.ndarray:
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4)):
            raise ValueError(
                f"expected an HxW or HxWx(1|2|3|4) array (gray, gray+alpha, RGB, RGBA), "
                f"got shape {arr.shape}")
        if np.issubdtype(arr.dtype, np.integer):
            scale = float(np.iinfo(arr.dtype).max)
        else:
            scale = 1.0
        # uint8/uint16 go to the tiler as they are (scaled tile by tile); others as float32.
        native = arr.dtype in (np.uint8, np.uint16)
        x = arr if native else arr.astype(np.float32) / np.float32(scale)
        channels = 1 if x.ndim == 2 else x.shape[2]
        gray = channels in (1, 2)
        alpha = x[..., channels - 1:] if channels in (2, 4) else None
        rgb = np.repeat(x[..., :1] if x.ndim == 3 else x[..., None], 3, axis=2) if gray \
            else x[..., :3]
        y = self.derain_array(rgb)
        if gray:
            y = y.mean(axis=2, keepdims=True)
        if scale != 1.0:
            y = np.clip(np.rint(y * np.float32(scale)), 0, scale)
        y = y.astype(arr.dtype)
        if alpha is not None:  # alpha goes back untouched
            if not native and scale != 1.0:
                alpha = np.clip(np.rint(alpha * np.float32(scale)), 0, scale)
            y = np.concatenate([y, alpha.astype(arr.dtype)], axis=2)
        return y.reshape(arr.shape)

    def _derain_pil(self, img: Image.Image) -> Image.Image:
        mode = img.mode
        if mode in ("RGB", "RGBA", "L", "LA"):
            work = img
        elif mode in ("P", "PA"):
            work = img.convert("RGBA" if "transparency" in img.info or mode == "PA" else "RGB")
        elif mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img).astype(np.uint16)
            return Image.fromarray(self._derain_numpy(arr))
        else:
            work = img.convert("RGB")
        out = Image.fromarray(self._derain_numpy(np.asarray(work)))
        out.info.update({k: v for k, v in img.info.items() if k in ("icc_profile", "dpi", "exif")})
        return out
