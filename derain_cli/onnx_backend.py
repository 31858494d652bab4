"""ONNX Runtime backend: ``OnnxRunner`` runs exported graphs under ``derain_cli.tiling``.

``make_onnx_runner(model, device, precision)`` is what ``Derainer(backend="onnx")``
uses: it exports the network (``derain_cli.export``) unless the graphs are already
cached, then opens ONNX Runtime sessions for each graph (graph optimisation level ALL,
``intra_op_num_threads``: one per physical core unless given): one with dynamic
shapes, and on the CPU one built for the shape of large tiles (``ShapedSessions``).

Cache: ``$DERAIN_CACHE/onnx/<key>/`` when ``DERAIN_CACHE`` is set, else
``$XDG_CACHE_HOME/derain/onnx/<key>/`` (``~/.cache/derain/onnx/<key>/``). ``<key>`` is
the sha256 of the weights (:func:`state_sha256`: architecture, config and every
state-dict tensor's name, dtype, shape and bytes); file names carry the graph-layout
version and the opset, so a new layout never picks up an old file. Files are written
atomically with a ``.sha256`` beside each; a cached file whose bytes no longer match
(or that fails to load) is exported again, and an unwritable or full cache falls back
to a temporary folder. A second run with the same weights therefore starts
without exporting (the export of the paper-size models takes seconds).

Execution providers: CPU, or CUDA first when ``device`` is CUDA and
``onnxruntime.get_available_providers()`` offers it (else a warning and the CPU).
The exported graphs are fp32; a half-precision request runs in fp32 with a warning.
An int8 forward graph (``derain_cli.quantize``) can stand in for the fp32 one.
"""

from __future__ import annotations

import atexit
import copy
import errno
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import tiling
from .fileio import atomic_write_text, sha256_file, sweep_stale_temporaries

if TYPE_CHECKING:  # not imported at run time: the int8 CPU path starts without torch
    import torch
    from torch import nn

log = logging.getLogger(__name__)

#: Tile size for ONNX Runtime on the CPU: small enough that its memory arena (on, for speed)
#: stays near the tile's activations; see ``session_options``.
ORT_CPU_TILE = 512
#: Tile size for ONNX Runtime on CUDA: its memory arena is invisible to torch.cuda,
#: so ``torch_runner._auto_tile``'s probe cannot size it; 1024 px fits any current GPU
#: with the paper-size models in fp32.
CUDA_TILE = 1024

#: Names of a graph's dynamic input dimensions (``export``), fixed per tile shape below.
DYNAMIC_DIMS = ("batch", "height", "width")
#: Smallest input (batch x height x width) that ``ShapedSessions`` specialises: the
#: default's 512 px tiles are, rain100l's 480 x 320 photos are not.
SPECIALISE_MIN_PIXELS = 250_000

_export_lock = threading.Lock()


# --------------------------------------------------------------------------- cache
def cache_root() -> Path:
    """Folder holding one sub-folder of exported graphs per weights hash."""
    env = os.environ.get("DERAIN_CACHE")
    if env:
        return Path(env).expanduser() / "onnx"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "derain" / "onnx"


def state_sha256(model: nn.Module) -> str:
    """sha256 identifying a network's graphs: architecture, config and all state tensors."""

    from . import export

    h = hashlib.sha256()
    meta = export.graph_metadata(model, "")
    h.update(json.dumps([meta["derain.arch"], meta["derain.config"]]).encode())
    hash_tensors(h, model.state_dict().items())
    return h.hexdigest()


def hash_tensors(h: Any, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Feed ``tensors`` (name, tensor), in the order given, to the hash ``h``: each name,
    dtype and shape, then its bytes. ``state_sha256`` and ``train.tensors_sha256`` share
    it."""
    import torch

    for name, t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _graph_name(opset: int) -> str:
    from . import export

    return f"model.v{export.GRAPH_VERSION}.opset{opset}.onnx"


def stats_path(path: str | os.PathLike[str]) -> Path:
    """Where the statistics graph of a two-graph export lives, next to the forward graph
    (``m.onnx`` or ``m.ONNX``: ``m.stats.onnx``; the exporter accepts the suffix in any case)."""
    p = Path(path)
    stem = p.name[:-5] if p.name.lower().endswith(".onnx") else p.name
    return p.with_name(stem + ".stats.onnx")


def _expected_files(main: Path, model: nn.Module) -> list[Path]:
    if getattr(model, "global_stats_shape", None) is None:
        return [main]
    return [main, stats_path(main)]


def _digest_path(graph: Path) -> Path:
    return graph.with_name(graph.name + ".sha256")


def _intact(files: list[Path], say: bool = True) -> bool:
    """Every graph there with the digest written at its export: a graph damaged in place
    (a flipped bit in a weight still loads) ran wrong on every later run. ``say``: warn
    about a damaged one (once: the check is repeated under the export lock)."""
    try:
        for f in files:
            if _digest_path(f).read_text().strip() != sha256_file(f):
                if say:
                    log.warning("cached ONNX graph %s does not match its digest; exporting "
                                "again", f)
                return False
    except OSError:  # missing (or a graph from before the digests): export
        return False
    return True


def _exported(files: list[Path]) -> list[Path]:
    """``files`` just exported, their digests written (atomically) beside them."""
    for f in files:
        atomic_write_text(_digest_path(f), sha256_file(f) + "\n")
    return files


def cached_graphs(
    model: nn.Module,
    *,
    opset: int | None = None,
    sha256: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    refresh: bool = False,
) -> list[Path]:
    """The exported graphs of ``model`` from the cache, exporting them on a miss.

    ``sha256`` may be given when the weights' identity is already known (it is then used
    as the key as is); ``refresh`` re-exports even on a hit.
    """
    from . import export

    opset = export.DEFAULT_OPSET if opset is None else opset
    key = sha256 or state_sha256(model)
    folder = Path(cache_dir) / key if cache_dir is not None else cache_root() / key
    main = folder / _graph_name(opset)
    files = _expected_files(main, model)
    # a graph's temporary left by a killed export (as large as the graph) was never removed:
    # the next run exported anew beside it, and every later one hit the cache (an audit);
    # before 2026-12-04 they were named .model.v3.opset17.onnx.PID.tmp (an upgrade audit)
    sweep_stale_temporaries([folder], patterns=(".derain-*.tmp", ".*.onnx.*.tmp"))
    if not refresh and _intact(files):
        log.debug("ONNX cache hit: %s", folder)
        return files
    with _export_lock:
        if not refresh and _intact(files, say=False):  # another thread's export, meanwhile
            return files
        src = model
        param = next(iter(model.parameters()), None)
        if param is not None and param.device.type != "cpu":
            src = copy.deepcopy(model).cpu()
        try:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except FileNotFoundError as e:  # a folder that cannot be made at all (under
                # /proc, a parent gone): "No such file or directory (/proc/x)", exit 1, as
                # if the photo were missing (an audit); the temporary folder serves
                return _fallback_graphs(src, model, key, main.name, opset, refresh, e)
            log.info("exporting the network to ONNX (once per weights): %s", folder)
            return _exported(export.export_onnx(src, main, opset=opset))
        except OSError as e:  # no write permission, a read-only file system (EROFS), a
            # file or folder where the other should be (ENOTDIR, EEXIST, EISDIR), a full
            # disk, quota or file size limit (ENOSPC, EDQUOT, EFBIG)
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR,
                               errno.EEXIST, errno.EISDIR, errno.ENOSPC, errno.EFBIG,
                               getattr(errno, "EDQUOT", errno.ENOSPC)):
                raise
            return _fallback_graphs(src, model, key, main.name, opset, refresh, e)


def _private_temp_folder(create: bool = True) -> Path | None:
    """This user's own folder under the temporary directory, kept between runs; None when it
    cannot be made (or, ``create`` False, is not there), or someone else could have placed
    files in it (not ours, or writable by others)."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    name = f"derain-onnx-{uid}" if uid is not None else "derain-onnx"
    folder = Path(tempfile.gettempdir()) / name
    try:
        if create:
            folder.mkdir(mode=0o700, exist_ok=True)
        st = folder.lstat()
    except OSError:
        return None
    if folder.is_symlink() or (uid is not None and (st.st_uid != uid or st.st_mode & 0o022)):
        return None
    return folder


def _fallback_graphs(src: nn.Module, model: nn.Module, key: str, name: str, opset: int,
                     refresh: bool, why: OSError) -> list[Path]:
    """Graphs for a run whose cache cannot be written: in the user's own temporary folder,
    which the next run finds again (so it starts fast too), else in a throwaway folder
    removed at exit."""
    from . import export

    private = _private_temp_folder()
    if private is not None:
        files = _expected_files(private / key / name, model)
        if not refresh and _intact(files):
            return files
        try:
            (private / key).mkdir(exist_ok=True)
            log.warning("cannot write the ONNX cache (%s); using %s instead", why, private)
            return _exported(export.export_onnx(src, private / key / name, opset=opset))
        except OSError:
            pass
    tmp = Path(tempfile.mkdtemp(prefix="derain-onnx-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    log.warning("cannot write the ONNX cache (%s); exporting to %s for this run", why, tmp)
    return export.export_onnx(src, tmp / name, opset=opset)


# --------------------------------------------------------------------------- runner
def _providers(device: torch.device | str) -> list:
    import onnxruntime as ort

    kind, _, index = str(device).partition(":")  # a torch.device or its name: "cuda:1"
    if kind == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return [("CUDAExecutionProvider", {"device_id": int(index or 0)}),
                    "CPUExecutionProvider"]
        log.warning("onnxruntime has no CUDA provider here (install onnxruntime-gpu); "
                    "running ONNX on the CPU")
    elif kind != "cpu":
        log.warning("ONNX backend: no %s provider; running on the CPU", kind)
    return ["CPUExecutionProvider"]


def _is_ort_oom(e: BaseException) -> bool:
    msg = str(e).lower()
    return "out of memory" in msg or "failed to allocate" in msg or "bad_alloc" in msg


def _pad4(x: np.ndarray, multiple: int) -> np.ndarray:
    """Pad (N, C, H, W) bottom/right to ``multiple`` exactly as the networks do themselves."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not (ph or pw):
        return x
    mode = "reflect" if ph < h and pw < w else "edge"
    return np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode=mode)


def session_options(threads: int | None = None, cpu_arena: bool = True,
                    mem_pattern: bool = False) -> Any:
    """The ``onnxruntime.SessionOptions`` every derain session uses (runner and benchmark).

    ``threads`` None: as many as PyTorch is set to use (``--threads``, benchmarks) when it
    is loaded, else ONNX Runtime's default; both default to one per physical core, and the
    torch-free start (``fast_path``) must not import torch to ask.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    loaded = sys.modules.get("torch")
    if not threads and loaded is not None and hasattr(loaded, "get_num_threads"):
        threads = loaded.get_num_threads()
    opts.intra_op_num_threads = int(threads or 0)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 4  # fatal only: an error comes back as the exception derain
    # reports; its log line came too, red, between derain's words (an out-of-memory: an audit)
    # CPU memory arena on, with 512 px tiles (``ORT_CPU_TILE``): the arena keeps a tile's
    # peak activations for good (one arena per session), which for 1024 px tiles was
    # 3.9 GB RSS on a 3 MP photo. Without an arena every large activation is a fresh
    # mmap (page faults each time). ``python benchmarks/ort_memory.py --mp 3`` on the
    # AVX2 test CPU: 1024 px + arena 44 s / 3.9 GB, 1024 px no arena 61 s / 1.32 GB,
    # 512 px + arena 57 s / 1.23 GB (chosen), 512 px no arena 59 s / 1.04 GB.
    opts.enable_cpu_mem_arena = cpu_arena
    # No per-shape memory plans: ONNX Runtime keeps one for every input shape a session
    # meets, so photos of many sizes grew the int8 engine for good (semi-drdnet-fast, 20
    # sizes of 200-900 px: 2.04-2.06 GB RSS with them, 1.33 GB without, the same speed:
    # ``python benchmarks/memory_sizes.py --backend onnx --precision int8
    # [--no-mem-pattern]``). The shape-specialised sessions never had them (ShapedSessions).
    # ``mem_pattern``: ONNX Runtime's own default, kept for the CUDA provider (not measured
    # there without them)
    opts.enable_mem_pattern = mem_pattern
    return opts


def pooled_feeds(shape: Sequence[int] | None, batch: int,
                 pooled: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The ``pooled`` and ``local`` feeds of a Semi-DRDNet graph (none for other networks).

    ``pooled`` None: ``local`` = 1, each image uses its own means (an untiled run, or the
    tiler's first statistics pass); else the given whole-image means, with ``local`` = 0.
    The one rule for the runner, the int8 calibration and the benchmarks.
    """
    if shape is None:
        return {}
    if pooled is None:
        return {"pooled": np.zeros((batch, *shape), np.float32),
                "local": np.ones(1, np.float32)}
    p = np.ascontiguousarray(pooled, dtype=np.float32)
    if p.shape[0] != batch:
        p = np.ascontiguousarray(np.broadcast_to(p, (batch, *p.shape[1:])))
    return {"pooled": p, "local": np.zeros(1, np.float32)}


class ShapedSessions:
    """Sessions of one graph, specialised to the shape of large inputs (CPU).

    With its dynamic dimensions fixed (``add_free_dimension_override_by_name``), ONNX
    Runtime knows every tensor's shape, so its CPU blocked-layout (NCHWc) pass fuses
    sums and activations into convolutions and drops layout reorders it otherwise keeps.
    rdmc-lite on an 864 x 928 tile: 3.26 -> 2.99 s/MP fp32 (int8 graphs gain about 3 %).

    Building a session takes 0.03-0.1 s plus a slower first run, which small inputs do
    not earn back: specialising every image of rain100l (100 photos of 0.15 MP, two
    shapes in turn) made ``derain eval`` 60.2 s instead of 47.6 s. So inputs below
    ``SPECIALISE_MIN_PIXELS`` run on the dynamic session, and larger ones (the tiles of
    a photo) on a session built for their shape. One specialised session is kept, the
    latest shape's; the old one is released before the next is built. Running a large
    shape on the dynamic session first, to specialise only shapes that repeat, left
    that session's arena in memory beside the new one (rdmc-lite, 12 MP: 2.55 instead
    of 2.32 GB). On CUDA the dynamic session is used as is (not measured there).
    """

    def __init__(self, path: Path, make_opts: Callable[[], Any], providers: list) -> None:
        import onnxruntime as ort

        self._ort, self._make_opts, self._providers = ort, make_opts, providers
        # the graph's bytes, read once: sessions made later (a new tile shape, after an
        # out-of-memory) reloaded the file, and a cache cleaned during a folder run failed
        # every photo after (the README calls the cache safe to delete: an audit)
        self._model = Path(path).read_bytes()
        self.dynamic = ort.InferenceSession(self._model, make_opts(), providers=providers)
        self.metadata = dict(self.dynamic.get_modelmeta().custom_metadata_map)
        self.input_names = {i.name for i in self.dynamic.get_inputs()}
        self.provider = self.dynamic.get_providers()[0]
        self.specialise = self.provider == "CPUExecutionProvider"
        self._shape: tuple[int, ...] | None = None  # of the specialised session
        self._session = None
        # a Derainer may be shared by threads: the check, the swap and the return are one
        # step (CPython's GIL left the window too short to hit: 4 threads x 20000 calls
        # of alternating shapes all got their own shape's session; a free-threaded build
        # has no GIL)
        self._lock = threading.Lock()

    def get(self, image_shape: tuple[int, ...]) -> Any:
        """The session for a ``(batch, 3, height, width)`` input."""
        key = (image_shape[0], image_shape[2], image_shape[3])
        if not self.specialise or key[0] * key[1] * key[2] < SPECIALISE_MIN_PIXELS:
            with self._lock:
                if self.dynamic is None:  # released after an out-of-memory
                    self.dynamic = self._ort.InferenceSession(
                        self._model, self._make_opts(), providers=self._providers)
                return self.dynamic
        with self._lock:
            return self._specialised(key)

    def release(self) -> None:
        """Drop the sessions and the memory their arenas hold, after an out-of-memory: the
        session of the shape that failed kept its arena, so the smaller tile's retry began at
        the limit and every smaller tile failed too, 800 px down to 100 (an audit). They are
        made again when next asked for."""
        with self._lock:
            self._session = self._shape = None
            self.dynamic = None

    def _specialised(self, key: tuple[int, int, int]) -> Any:
        if key != self._shape:
            self._session = self._shape = None  # release the old arena before building
            opts = self._make_opts()  # overrides accumulate on an options object
            # The static memory plan it would now make keeps every activation apart:
            # rdmc-lite on a 4 MP photo 2.6 GB peak RSS with it, 1.8 GB without.
            opts.enable_mem_pattern = False
            for name, value in zip(DYNAMIC_DIMS, key, strict=True):
                opts.add_free_dimension_override_by_name(name, int(value))
            self._session = self._ort.InferenceSession(self._model, opts,
                                                       providers=self._providers)
            self._shape = key
        return self._session


class OnnxRunner:
    """The tiling ``Runner`` protocol over ONNX Runtime sessions of exported graphs.

    ``paths``: the files ``export.export_onnx`` wrote (forward graph first; Semi-DRDNet
    also needs its statistics graph). Inputs that are not a multiple of the graph's
    ``size_multiple`` are padded on the host and the output cropped, as the PyTorch
    networks do internally.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
        *,
        device: torch.device | str = "cpu",
        threads: int | None = None,
        providers: list | None = None,
        cpu_arena: bool = True,
    ) -> None:
        if isinstance(paths, (str, os.PathLike)):
            main = Path(paths)
            paths = [main] + ([stats_path(main)]
                              if stats_path(main).is_file() else [])
        self.paths = [Path(p) for p in paths]

        self.providers = providers or _providers(device)
        gpu = any(p != "CPUExecutionProvider" for p in self.providers)

        def make_opts():  # a fresh options object per session (see ShapedSessions)
            return session_options(threads, cpu_arena, mem_pattern=gpu)

        self.threads = make_opts().intra_op_num_threads
        sessions = {}
        for p in self.paths:
            sess = ShapedSessions(p, make_opts, self.providers)
            meta = sess.metadata
            sessions[meta.get("derain.role", "forward")] = (sess, meta)
        if "forward" not in sessions:
            raise ValueError(f"{self.paths[0]}: no forward graph among the files")
        self._fwd, meta = sessions["forward"]
        self._stats = sessions.get("stats", (None, None))[0]
        self.metadata = dict(meta)
        self.size_multiple = int(meta.get("derain.size_multiple", "1"))
        shape = json.loads(meta.get("derain.global_stats_shape", "null"))
        self.global_stats_shape = tuple(shape) if shape is not None else None
        if self.global_stats_shape is not None and self._stats is None:
            raise ValueError(f"{self.paths[0]}: the statistics graph "
                             f"({stats_path(self.paths[0]).name}) is missing")
        on_cuda = self._fwd.provider == "CUDAExecutionProvider"
        #: "cuda:N" or "cpu": where the sessions run (a string: no torch needed).
        self.device_name = str(device) if on_cuda else "cpu"
        self.precision = meta.get("derain.precision", "fp32")

    def suggest_tile(self) -> int:
        """Default tile for ``Derainer``: ``ORT_CPU_TILE`` (arena-sized, see ``session_options``) on
        the CPU, ``CUDA_TILE`` on a GPU."""
        return CUDA_TILE if self.device_name.startswith("cuda") else ORT_CPU_TILE

    def _pooled_feeds(self, batch: int, pooled: np.ndarray | None) -> dict[str, np.ndarray]:
        return pooled_feeds(self.global_stats_shape, batch, pooled)

    def _run(self, graph: ShapedSessions, feeds: dict[str, np.ndarray]) -> np.ndarray:
        # The exporter drops inputs a graph never reads (e.g. ``pooled`` in the
        # statistics graph of a one-block network), so feed only declared ones.
        feeds = {k: v for k, v in feeds.items() if k in graph.input_names}
        try:
            return graph.get(feeds["image"].shape).run(None, feeds)[0]
        except Exception as e:
            if _is_ort_oom(e):
                for sessions in (self._fwd, self._stats):  # the retry's memory, freed
                    if sessions is not None:
                        sessions.release()
                raise tiling.TileOutOfMemory(str(e)) from e
            raise

    def forward(self, x: np.ndarray, pooled: np.ndarray | None) -> np.ndarray:
        h, w = x.shape[-2:]
        img = _pad4(np.ascontiguousarray(x, dtype=np.float32), self.size_multiple)
        feeds = {"image": img, **self._pooled_feeds(img.shape[0], pooled)}
        return self._run(self._fwd, feeds)[..., :h, :w]

    def stat_sums(self, x: np.ndarray, pooled: np.ndarray | None, mask: np.ndarray) -> np.ndarray:
        if self._stats is None:
            raise ValueError("this network has no whole-image statistics")
        img = np.ascontiguousarray(x, dtype=np.float32)
        m = np.ascontiguousarray(mask, dtype=np.float32)
        if self.size_multiple > 1:  # padded pixels must not count
            img = _pad4(img, self.size_multiple)
            m = np.pad(m, ((0, 0), (0, 0), (0, img.shape[2] - m.shape[2]),
                           (0, img.shape[3] - m.shape[3])))
        feeds = {"image": img, "mask": m, **self._pooled_feeds(img.shape[0], pooled)}
        return self._run(self._stats, feeds).astype(np.float64)


def make_onnx_runner(
    model: nn.Module,
    device: torch.device | str,
    precision: str,
    threads: int | None = None,
    *,
    opset: int | None = None,
    sha256: str | None = None,
    int8_graph: Path | None = None,
) -> OnnxRunner:
    """An ``OnnxRunner`` for ``model``: cached graphs (exported on first use) and sessions.

    ``int8_graph`` (``derain_cli.quantize``) replaces the fp32 forward graph, and its
    statistics graph (``export.stats_path`` of it) the fp32 one when it exists.
    """
    if int8_graph is None and precision not in ("fp32", "auto"):
        log.warning("the ONNX backend runs fp32 graphs (or int8 ones, --precision int8); "
                    "--precision %s is ignored", precision)  # (it said fp32 alone: an audit)

    if int8_graph is not None:  # no fp32 graph needed when the int8 set is complete
        stats = stats_path(Path(int8_graph))
        if stats.is_file() or getattr(model, "global_stats_shape", None) is None:
            return OnnxRunner([Path(int8_graph), *([stats] if stats.is_file() else [])],
                              device=device, threads=threads)

    def with_int8(paths: list[Path]) -> list[Path]:  # int8 forward graph, fp32 statistics
        return paths if int8_graph is None else [Path(int8_graph), *paths[1:]]

    paths = cached_graphs(model, opset=opset, sha256=sha256)
    try:
        return OnnxRunner(with_int8(paths), device=device, threads=threads)
    except Exception as e:  # noqa: BLE001 - a corrupt cached file: export once more
        if "onnxruntime" not in type(e).__module__ and not isinstance(e, ValueError):
            raise
        log.warning("cached ONNX graphs unusable (%s); exporting again", e)
        paths = cached_graphs(model, opset=opset, sha256=sha256, refresh=True)
        return OnnxRunner(with_int8(paths), device=device, threads=threads)
