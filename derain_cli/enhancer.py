"""``Derainer``: the one object that turns a rainy image into a derained one.

It owns the model, the device and precision choices and the tiling (as
Real-ESRGAN's "enhancer" does); the CLI and the batch runner are thin layers
over it. Inputs and outputs are PIL images or numpy arrays of the same type.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
from PIL import Image

from . import ensemble as _ensemble
from . import fast_path, tiling
from . import slant as _slant
from .errors import OptionError

if TYPE_CHECKING:  # torch is imported where it is used: see derain_cli.fast_path
    import torch
    from torch import nn

log = logging.getLogger(__name__)

#: The model ``derain photo.jpg`` uses: the best bundled model that derains a 12-megapixel
#: photo within the speed rule on a 2-core CPU (README, "Why this default").
DEFAULT_MODEL = "semi-drdnet-fast"

#: Smallest tile the out-of-memory fallback tries before giving up; smaller tiles asked for
#: by hand get a warning (too little context around each pixel).
MIN_TILE = 64
#: number types the float options take (numpy's scalars too, as the whole-number ones do)
_REAL = (int, float, np.integer, np.floating)
#: ``on_tile(done, total)``: after each tile, the work done and in all (a progress hook):
#: pixels of the canvas the network runs on (a small photo mirrored out, every ensemble
#: pass), not of the photo: only ``done / total`` means anything to a caller
TileCallback = Callable[[int, int], None]
#: Smallest tile accepted at all: below it every pixel is near a tile border (a 300x220
#: photo in 1-7 px tiles came back at 25-27 dB against untiled, and 150 times slower).
SMALLEST_TILE = 16
#: CPU tiles: big enough that overlap costs ~10 %, small enough that a tile's
#: activations stay near 1 GB for the paper-size models.
CPU_TILE = 1024
#: Most tiles ``Derainer`` stacks into one forward pass when it sizes the batch itself
#: (GPUs with memory to spare; CPUs run one tile at a time).
MAX_TILE_BATCH = 8
#: Tile overlap for networks of unknown reach, and the most one sized from a receptive radius
#: gets: 48 px kept every Semi-DRDNet's tiled output within 45 dB of the untiled one
#: (tests/test_tiling). RDMC names its own, larger overlap (``RDMC.tile_overlap``).
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


def tiling_record(net: nn.Module) -> dict[str, int]:
    """What the tiler needs to know of ``net`` beyond its graph: recorded with an int8
    graph in the manifest, so that the torch-free start (``fast_path``) need not load it."""
    return {"overlap": default_overlap(net), "min_tile": int(getattr(net, "min_tile", 0))}


def check_strength(value: object) -> float:
    """``strength`` as a float, or ``OptionError``: a number from 0 to 1 (``Derainer``'s
    setter, and ``evaluate`` before it decodes any pair)."""
    if (isinstance(value, bool) or not isinstance(value, _REAL)
            or not 0.0 <= value <= 1.0):  # NaN fails this too
        raise OptionError(f"strength must be a number from 0 to 1, not {value!r}")
    return float(value)


class Derainer:
    """Derain images with a registered model or a weights file.

    ``model`` is a registry name (``derain models`` lists them; default
    ``DEFAULT_MODEL``); ``weights`` a safetensors/.pt file of one's own (with ``model``
    naming its network unless derain wrote the file). ``device``: auto (CUDA, then MPS, then
    CPU), cpu, cuda, cuda:N or mps. ``threads``: CPU threads (default: PyTorch's / ONNX
    Runtime's own choice, one per physical core). ``backend``: auto, torch or onnx (auto:
    ONNX Runtime for int8 graphs on CPUs, and for fp32 on CPUs where it was measured faster
    than PyTorch, ``engine_choice``; PyTorch elsewhere). ``quiet``: no download progress
    bar.
    ``tile``: None picks a size from the
    device, 0 disables tiling; ``tile_overlap`` None sizes the overlap from the network's
    reach (``default_overlap``); ``tile_batch``: tiles per forward pass, None or 0 sized
    from free GPU memory (one on CPUs); out of memory, it halves before the tile does.
    Semi-DRDNet's whole-image statistics are handled by the tiler, so tiled and untiled
    results agree. ``precision``: auto, fp32,
    fp16, bf16 or int8 (CPU, ONNX Runtime, bundled weights with an int8 graph;
    auto picks it on CPUs where it exists, or bf16 PyTorch where that was measured faster
    on this CPU: ``engine_choice``). ``stats_megapixels``: above this many
    million pixels the tiler estimates those statistics from a sample of the image
    (``tiling.sample_tiles``); 0 or None uses every pixel. ``workload_megapixels``: how
    much this object will derain, when known (the CLI counts it): below a few megapixels
    the int8 graph's start without PyTorch outweighs a faster bf16 (``engine_choice``);
    ``workload_images``: how many images those are (their mean size sets how much each
    engine's tiles cost; unknown: one photo of the workload's size, at most 12 MP).
    ``strength``: how much of the rain removal to apply, from 0 (the photo as it was) to 1
    (all of it, the default); in between, the result is that mix of photo and derained
    photo, which keeps more of the fine texture the network softens (made at 0, no engine
    is timed for the network that never runs: raised later, it runs on an engine taken
    untimed unless this machine timed one before). ``ensemble``: 1 (the
    default), 2 or 4 passes over mirrored copies of each image, their results averaged
    (``derain_cli.ensemble``): a little cleaner, about that many times slower.
    ``rain_angle``: how many degrees from vertical the rain falls (positive towards the
    bottom right, negative towards the bottom left; 0, the default, leaves the photo as it
    is): the photo is turned so that its rain falls straight down for the network, and the
    rain found is turned back and taken off the photo (``derain_cli.slant``). The networks
    learnt rain within about 30 degrees of vertical; past that, this removes far more of
    it, at the time of the turned canvas (twice the photo's pixels at 45 degrees for a
    square photo; a canvas past ``slant.MAX_CANVAS`` times the photo is refused) and about
    2.6 float32 photos more memory at 45 degrees. ``"auto"``: each image's own angle,
    guessed and checked with the network (``slant.choose_angle``; 0 unless turning takes
    off clearly more); ``last_rain_angle`` says the turn the last image got.

    An image with a side under 256 px runs mirrored out to 256 px (a thin strip less) and is
    cut back out (``tiling.pad_small``: alone, a small image is mostly border to the
    networks, which shifted flat colours by up to 23 levels); set the attribute
    ``small_side`` to 0 to run images as they are.

    A request that can only mean a bundled int8 graph on the CPU starts without importing
    PyTorch (``derain_cli.fast_path``); ``network`` and ``device`` then load it on first use.
    ``threads`` sets PyTorch's process-wide thread count when PyTorch runs (it has no
    per-object setting); ONNX Runtime sessions take it per session.

    Raises (all importable from ``derain_cli``): ``OptionError`` (a ``ValueError``) for a
    setting that cannot be used here (device, precision, backend, tile...);
    ``UnknownModelError`` (a ``ValueError`` and ``KeyError``) for a name not in the
    registry; ``WeightsError`` for a weights file that cannot be used (missing, corrupt,
    another network) or a model with no published weights (``derain models``: none; give
    ``weights=``); ``WeightsUnavailable`` when a published model's weights can be neither
    found nor downloaded (offline, no network). All settings but ``model`` are
    keyword-only (``Derainer("semi-drdnet-tiny", "cpu")`` read "cpu" as a weights file).
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        weights: str | os.PathLike[str] | None = None,
        device: str = "auto",
        precision: str = "auto",
        tile: int | None = None,
        tile_overlap: int | None = None,
        threads: int | None = None,
        backend: str = "auto",
        quiet: bool = True,
        stats_megapixels: float | None = tiling.STATS_MEGAPIXELS,
        workload_megapixels: float | None = None,
        tile_batch: int | None = None,
        workload_images: int | None = None,
        strength: float = 1.0,
        ensemble: int = 1,
        rain_angle: float | str = 0.0,
    ) -> None:
        #: the settings it was made with (``__reduce__``)
        self._made_with = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        if isinstance(weights, str | os.PathLike):  # as of now: a pickle or a copy made
            # after a chdir (a notebook's %cd) looked in the new folder (an audit)
            self._made_with["weights"] = os.path.abspath(weights)
        # any case, as the CLI takes them and the device already was ("FP32" was refused)
        backend = backend.strip().lower() if isinstance(backend, str) else backend
        precision = precision.strip().lower() if isinstance(precision, str) else precision
        if backend not in ("auto", "torch", "onnx"):
            raise OptionError(f"unknown backend {backend!r}; use auto, torch or onnx")
        for what, v in (("device", device), ("precision", precision)):
            if not isinstance(v, str):
                raise OptionError(f"{what} must be a string such as 'auto', not {v!r}")
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise OptionError(f"model must be a registry name (derain models), not {model!r}; "
                              "None picks the default")
        if weights is not None and not isinstance(weights, str | os.PathLike):
            raise OptionError(f"weights must be a path (str or pathlib.Path), not {weights!r}"
                              "; None uses the model's own weights")  # (5 or b"..": a bare
            # TypeError from deep inside, an audit)
        if weights is not None and not str(weights).strip():
            raise OptionError("weights is an empty path; None uses the model's own weights")
        for what, v, least in (("tile", tile, 0), ("tile_overlap", tile_overlap, 0),
                               ("threads", threads, 1), ("tile_batch", tile_batch, 0),
                               ("workload_images", workload_images, 1)):
            _check_whole(what, v, least)
        for what, mp in (("stats_megapixels", stats_megapixels),
                         ("workload_megapixels", workload_megapixels)):
            _check_megapixels(what, mp)
        self.strength = strength  # checked (the property below)
        self.ensemble = ensemble  # checked too
        self.rain_angle = rain_angle  # and this
        self._last = threading.local()  # last_rain_angle, each thread's own ...
        self._last_any: float | None = None  # ... and any thread's, for one that derained
        # none itself (asyncio.to_thread derains in a worker, read in the caller: a review)
        canvas = 1.0 if self.rain_angle == _slant.AUTO else _slant.square_factor(
            self.rain_angle)  # a turned photo's work grows by about this (auto: unknown)
        scaled = workload_megapixels is not None and (self.ensemble > 1 or canvas > 1.0001)
        if scaled:  # each pass is a photo's (or its turned canvas's) worth of work
            workload_megapixels *= self.ensemble * canvas
            workload_images = (workload_images or 1) * self.ensemble
        cpus = os.cpu_count() or 1
        if threads is not None and threads > cpus:
            # oversubscribed cores thrash: a 300x300 photo took 28 s with 64 threads on 2 cores
            log.warning("--threads %d is more than this machine's %d CPUs; extra threads "
                        "slow deraining down (default: one per physical core)", threads, cpus)
        if tile is not None and 0 < tile < SMALLEST_TILE:
            raise OptionError(f"tile must be 0 (whole image) or at least {SMALLEST_TILE} px, "
                             f"not {tile} ({MIN_TILE} or more keeps the result intact)")
        self._network: nn.Module | None = None
        fast = fast_path.plan(model or DEFAULT_MODEL, weights, device, precision, backend)
        #: how the CPU engine was picked where int8 and bf16 compete (``engine_choice``)
        self.engine_note = ""
        if fast is not None and precision == "auto" and backend == "auto":
            from . import engine_choice

            engine, self.engine_note = engine_choice.cpu_engine(
                fast, threads, workload_megapixels, tile=tile, workload_images=workload_images,
                timed=self.strength > 0)
            if engine == "bf16":
                fast, precision = None, "bf16"
        if fast is not None:
            from .onnx_backend import OnnxRunner

            self.model_name = fast.record.name
            self.weights_label = f"{fast.record.name} ({fast.record.status})"
            #: the published weights' status ("interim"...); None for a user's file
            self.weights_status: str | None = fast.record.status
            self.device_name = "cpu"
            self.backend, self.precision = "onnx", "int8"
            self.runner: Any = OnnxRunner(fast.graphs, device="cpu", threads=threads)
            auto: Callable[[], int] = self.runner.suggest_tile
            min_tile, overlap = fast.min_tile, fast.overlap
        else:
            auto, min_tile, overlap = self._init_torch(
                model, weights, device, precision, backend, threads, quiet,
                (tile, tile_overlap, workload_megapixels, workload_images))
        self.min_tile = int(min_tile)  # the smallest tile that agrees with the whole image
        size = tile if tile is not None else tiling.auto_tile(auto(), min_tile)
        if 0 < size < min_tile:
            # said aloud: someone lowering --tile to save memory gets bigger tiles than asked
            log.warning("--tile %d is below %s's minimum of %d px (smaller tiles would not "
                        "agree with the whole image); using %d px tiles",
                        size, self.model_name, min_tile, min_tile)
            size = min_tile
        elif 0 < size < MIN_TILE:
            log.warning("%d px tiles leave the network little context: expect a worse "
                        "and slower result than with %d px or more", size, MIN_TILE)
        self.tile = size  # checked (the property below)
        self._default_overlap = int(overlap)  # (what tile_overlap None means, set later too)
        self.tile_overlap = overlap if tile_overlap is None else int(tile_overlap)
        if tile_overlap is not None and 0 < self.tile < 2 * self.tile_overlap:
            log.warning("a tile overlap of %d px is more than half the %d px tile; using %d px "
                        "(tiles overlap by at most half)", self.tile_overlap, self.tile,
                        self.tile // 2)
            self.tile_overlap = self.tile // 2
        elif tile_overlap is not None and self.tile > 0 and self.tile_overlap < overlap:
            # 0 px left seams 79/255 deep, 8 px 7/255 (an audit), without a word
            log.warning("a tile overlap of %d px is less than the %d px %s needs to see "
                        "past a tile's edge: tile borders may show as seams (leave the "
                        "overlap out for %d px)", self.tile_overlap, overlap,
                        self.model_name, overlap)
        self.stats_megapixels = stats_megapixels  # checked (the property below)
        self.small_side = tiling.SMALL_SIDE  # checked (the property below)
        #: tiles per forward pass: several on a GPU with memory to spare (``_auto_batch``)
        self.tile_batch = tile_batch or self._auto_batch()
        if scaled and (" MP " in self.engine_note or self.engine_note.startswith(
                "measured")):  # a choice weighed by the work: the passes', not the photos'
            # (not after a note of another kind: "no bf16 instructions (the photos' pixels x
            # 2 passes)" read as nonsense: an audit)
            times = ([f"{self.ensemble} passes"] if self.ensemble > 1 else []) + (
                [f"{canvas:.2f} for the turned canvas (as of a square photo)"]
                if canvas > 1.0001 else [])
            self.engine_note += f" (the photos' pixels x {' x '.join(times)})"

    def _init_torch(self, model: str | None, weights: str | os.PathLike[str] | None,
                    device: str, precision: str, backend: str, threads: int | None,
                    quiet: bool, job: tuple[int | None, int | None, float | None, int | None],
                    ) -> tuple[Callable[[], int], int, int]:
        """The general start: load the network with PyTorch, then pick backend and runner.

        ``job``: the caller's tile, overlap, workload megapixels and images (they weigh the fp32
        engines' measured times, ``engine_choice.fp32_backend``). Returns the automatic
        tile's function, the smallest tile and the default overlap.
        """
        from .weights import load_manifest, load_pretrained, model_from_file

        if (weights is None and precision != "int8" and device.strip().lower() in ("auto", "cpu")
                and (model or DEFAULT_MODEL) not in load_manifest()):
            load_pretrained(model or DEFAULT_MODEL)  # raises (an unknown name, or no weights
            # yet) before PyTorch is imported: it took 2 s to say so. Where the device or an
            # int8 request could be refused, those are said first, as before (a review)
        import torch

        from .models import get_spec
        from .torch_runner import (
            TorchRunner,
            _auto_tile,
            _check_int8_request,
            _int8_graph,
            resolve_backend,
            resolve_device,
            resolve_precision,
        )

        if threads:
            torch.set_num_threads(threads)
        dev = resolve_device(device)
        self.device_name = str(dev)
        if precision == "int8":
            _check_int8_request(dev, backend)
        if weights is not None:
            net = model_from_file(weights, model)
            self.model_name = model or net.declared_name or Path(weights).stem
            self.weights_label = str(weights)
            self.weights_status = None
            record = None
        else:
            self.model_name = model or DEFAULT_MODEL
            get_spec(self.model_name)  # clear error for unknown names
            net = load_pretrained(self.model_name, quiet=quiet)
            record = load_manifest()[self.model_name]
            self.weights_label = f"{record.name} ({record.status})"
            self.weights_status = record.status
        self._network = net = net.eval()
        int8_graph = _int8_graph(record, net, dev, precision, backend)
        if int8_graph is not None:
            backend, precision = "onnx", "int8"
        elif backend == "auto":
            backend = resolve_backend(dev, precision)
            if backend == "onnx":  # fp32 on a CPU: the faster of two exact engines, measured
                from . import engine_choice

                tile, overlap, megapixels, images = job
                backend, self.engine_note = engine_choice.fp32_backend(
                    net, threads, tile, megapixels, images, overlap=overlap,
                    timed=self.strength > 0)
        if backend == "onnx" and precision == "auto":
            precision = "fp32"  # exported graphs are fp32
        if int8_graph or (backend == "onnx" and dev.type == "cpu" and precision == "bf16"):
            # an fp32 graph ignores bf16 (make_onnx_runner warns): no error on a CPU
            # without bf16 instructions, as on one with them
            self.precision = precision
        else:
            self.precision = resolve_precision(precision, dev, backend)
        self.backend = backend
        if backend == "onnx":
            from .onnx_backend import make_onnx_runner

            self.runner = make_onnx_runner(net, dev, self.precision, threads,
                                           int8_graph=int8_graph)
            if not int8_graph:
                self.precision = "fp32"  # its graphs are fp32 (it warned if asked otherwise)
            auto = self.runner.suggest_tile
        else:
            self.runner = TorchRunner(net, dev, self.precision)
            auto = lambda: _auto_tile(self.runner)  # noqa: E731
        return auto, getattr(net, "min_tile", 0), default_overlap(net)

    def _auto_batch(self) -> int:
        """Tiles per forward pass when not given: as many ``tile``-sized tiles as half the
        free GPU memory holds (at most ``MAX_TILE_BATCH``); one on CPUs, where four 512 px
        tiles per pass ran at 0.67x the speed of one (``benchmarks/tile_batch.py``)."""
        if not self.device_name.startswith("cuda") or self.tile <= 0:
            return 1
        per_px = getattr(self.runner, "bytes_per_pixel", lambda: None)()
        if not per_px:
            return 1
        from .torch_runner import gpu_free_bytes

        free = gpu_free_bytes(self.device)
        fits = int(0.5 * free // (per_px * self.tile * self.tile))
        return max(1, min(MAX_TILE_BATCH, fits))

    @property
    def strength(self) -> float:
        """How much of the rain removal is applied (``derain_array``): 1 all of it, 0 the
        image as it was. Checked when set, after construction too (an audit: 1.5 and NaN
        set later ran as 1, -0.2 pushed the result past the photo)."""
        return self._strength

    @strength.setter
    def strength(self, value: float) -> None:
        self._strength = check_strength(value)

    @property
    def last_rain_angle(self) -> float | None:
        """The turn the last image this thread derained got (``rain_angle``'s, or the one
        ``"auto"`` chose for it); in a thread that derained none, the last any thread's
        (``asyncio.to_thread``); None before the first. Each thread's own: threads sharing
        one Derainer read each other's (an audit)."""
        return getattr(self._last, "angle", self._last_any)

    @last_rain_angle.setter
    def last_rain_angle(self, value: float | None) -> None:
        self._last.angle = self._last_any = value

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its settings (the engine it runs, the ones set since), rebuilt when
        unpickled, its engine loaded anew: a PyTorch engine pickled its whole network and
        an ONNX one failed ("cannot pickle 'module' object"), so joblib or a process pool
        worked on one machine and failed on another, as the engine picked there (audit)."""
        made = {**self._made_with, "device": self.device_name, "precision": self.precision,
                "backend": self.backend}
        # (weights: an absolute path, taken when made: a worker may start in another folder)
        later = {"tile": self.tile, "tile_overlap": self.tile_overlap,
                 "tile_batch": self.tile_batch, "small_side": self.small_side,
                 "strength": self.strength, "ensemble": self.ensemble,
                 "rain_angle": self.rain_angle, "stats_megapixels": self.stats_megapixels}
        return (_rebuilt, (type(self), made, later))

    @property
    def tile(self) -> int:
        """Tile side in pixels (0: the whole image at once). Checked when set, after
        construction too (an audit: 8 px tiles ran, far off and slow; "big" failed
        deep inside): 0, or at least the model's ``min_tile``."""
        return self._tile

    @tile.setter
    def tile(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise OptionError(f"tile must be a whole number of pixels (0: whole image), "
                              f"not {value!r}")
        least = max(SMALLEST_TILE, getattr(self, "min_tile", 0))
        if value != 0 and not value >= least:
            raise OptionError(f"tile must be 0 (whole image) or at least {least} px "
                              f"({self.model_name}'s smallest), not {value}")
        self._tile = int(value)

    @property
    def stats_megapixels(self) -> float | None:
        """Above this many million pixels the statistics are sampled (0 or None: every
        pixel). Checked when set, and pickled with the rest (a value set later was lost
        in a copy, and "x" failed deep in the tiler: an audit)."""
        return self._stats_megapixels

    @stats_megapixels.setter
    def stats_megapixels(self, value: float | None) -> None:
        _check_megapixels("stats_megapixels", value)
        self._stats_megapixels = None if value is None else float(value)

    @property
    def tile_overlap(self) -> int:
        """Pixels neighbouring tiles share, blended; set to None, the network's own, as the
        constructor takes it (refused when set: a review). Checked when set, after
        construction too (an audit: -5 blended the tiles into a broken image in silence)."""
        return self._tile_overlap

    @tile_overlap.setter
    def tile_overlap(self, value: int | None) -> None:
        _check_whole("tile_overlap", value, 0)
        self._tile_overlap = self._default_overlap if value is None else int(value)

    @property
    def overlap_used(self) -> int:
        """The overlap the tiles run with: ``tile_overlap`` capped at half a tile (the
        tiler's own cap); the banner and ``--json`` said 32 px of 16 px tiles (an audit)."""
        multiple = max(1, int(getattr(self.runner, "size_multiple", 1) or 1))
        return tiling.effective_overlap(self.tile_overlap, self.tile, multiple)

    @property
    def tile_batch(self) -> int:
        """Tiles per forward pass (at least 1); set to None or 0, sized from the device's
        memory, as the constructor takes them (refused when set: a review). Checked when
        set, as ``tile_overlap``."""
        return self._tile_batch

    @tile_batch.setter
    def tile_batch(self, value: int | None) -> None:
        _check_whole("tile_batch", value, 0)
        self._tile_batch = int(value) if value else self._auto_batch()

    @property
    def small_side(self) -> int:
        """An image with a side shorter than this runs mirrored out to it
        (``tiling.pad_small``); 0: images run as they are. Checked when set (-1 ran as 0)."""
        return self._small_side

    @small_side.setter
    def small_side(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise OptionError(f"small_side must be a whole number of pixels >= 0 (0: images "
                              f"as they are), not {value!r}")
        self._small_side = int(value)

    @property
    def ensemble(self) -> int:
        """Passes per image (``derain_cli.ensemble``): 1, 2 or 4, their results averaged.
        Checked when set, as ``strength`` is."""
        return self._ensemble

    @ensemble.setter
    def ensemble(self, value: int) -> None:
        try:
            self._ensemble = _ensemble.check_size(value)
        except ValueError as e:
            raise OptionError(str(e)) from None

    @property
    def rain_angle(self) -> float | str:
        """Degrees from vertical the rain falls at (``derain_cli.slant``); 0 turns nothing.
        Checked when set, as ``strength`` is."""
        return self._rain_angle

    @rain_angle.setter
    def rain_angle(self, value: float | str) -> None:
        try:
            self._rain_angle = _slant.check_setting(value)
        except ValueError as e:
            raise OptionError(str(e)) from None
        if isinstance(self._rain_angle, float) and 0 < abs(self._rain_angle) < 20:
            log.warning("rain %g degrees from vertical is removed about as well without "
                        "turning the photo (at 15 degrees turning gained 0.12 dB), and "
                        "turning it costs %.1fx the time", self._rain_angle,
                        _slant.square_factor(self._rain_angle))

    @property
    def network(self) -> nn.Module:
        """The PyTorch network (loaded on first use after a torch-free start)."""
        if self._network is None:
            from .weights import load_pretrained

            self._network = load_pretrained(self.model_name, quiet=True).eval()
        return self._network

    @property
    def device(self) -> torch.device:
        """Where the tiles run, as a ``torch.device`` (``device_name`` needs no torch)."""
        import torch

        return torch.device(self.device_name)

    def __repr__(self) -> str:
        tile = "whole image" if self.tile <= 0 else f"{self.tile}"
        return (f"Derainer(model={self.model_name!r}, device={self.device_name!r}, "
                f"backend={self.backend!r}, precision={self.precision!r}, tile={tile}, "
                f"strength={self.strength:g}, ensemble={self.ensemble}, "
                f"rain_angle={_slant.said(self.rain_angle)})")

    def derain_array(
        self, rgb: np.ndarray, on_tile: TileCallback | None = None
    ) -> np.ndarray:
        """HxWx3 float32 in [0, 1], or uint8/uint16 samples -> derained HxWx3 float32 in [0, 1].

        Integer samples are scaled tile by tile (``tiling.run_tiled``): pass them as
        decoded, and a large photo is never held as float32 input. Other layouts (gray,
        alpha) go through :meth:`derain`. With ``ensemble`` N > 1, ``on_tile`` counts the
        N passes' tiles as one job's. With a ``rain_angle``, the passes run on the turned
        canvas (in the photo's own sample type) and their tiles are its tiles; the float32
        result on the canvas is held whole (about twice the photo at 45 degrees).
        """
        _check_on_tile(on_tile)
        if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
            got = rgb.shape if isinstance(rgb, np.ndarray) else type(rgb).__name__
            raise ValueError(f"derain_array takes an HxWx3 array, not {got}; derain() takes "
                             "gray, alpha and PIL images")
        if not rgb.dtype.isnative:  # big-endian samples, as derain() takes them (refused
            rgb = rgb.astype(rgb.dtype.newbyteorder("="))  # here: an audit); float32 out
        _check_samples(rgb)
        if rgb.dtype not in (np.uint8, np.uint16):
            rgb = rgb.astype(np.float32, copy=False)  # HWC throughout: no transposed copy
        angle = self.rain_angle
        out = None
        if self.strength == 0.0:  # the photo as it is: minutes of network for nothing
            out = np.zeros(rgb.shape, np.float32)
            blend_toward_input(out, rgb, 0.0)
            np.clip(out, 0.0, 1.0, out=out)  # float input may stray a little: as promised
            if on_tile is not None:
                on_tile(1, 1)
            self.last_rain_angle = 0.0  # nothing turned (--json said the angle: an audit)
            return out
        if angle == _slant.AUTO:  # guessed, and checked with the network on a sample: one
            single = self.ensemble == 1  # pass each way (with more, none is reused)
            phases = _AutoProgress(on_tile, rgb.shape[0], rgb.shape[1], self.ensemble)

            def checked(img: np.ndarray, a: float) -> np.ndarray:
                result = self._turned(img, float(a), phases.check(img), passes=1)
                phases.checked(img)
                return result

            angle, guess, out = _slant.choose_angle(rgb, checked)
            log.info("rain angle (auto): guessed %.0f degrees, turned %.0f", guess, angle)
            on_tile = phases.final()  # the rest of the bar: the photo's own passes
            if not single:
                out = None
            elif out is not None and on_tile is not None:  # the whole photo was the sample
                on_tile(1, 1)
        if out is None:
            out = self._turned(rgb, float(angle), on_tile)
        self.last_rain_angle = float(angle)
        if self.strength < 1.0:  # a mix of two images in [0, 1] (up to float rounding)
            blend_toward_input(out, rgb, self.strength)
            np.clip(out, 0.0, 1.0, out=out)
        return out

    def _turned(self, rgb: np.ndarray, angle: float,
                on_tile: Callable[[int, int], None] | None,
                passes: int | None = None) -> np.ndarray:
        """The passes' result on ``rgb`` turned by ``angle`` (0: as it is): the rain found on
        the turned canvas, turned back and taken off the photo (``derain_cli.slant``).
        ``passes``: how many of the ensemble's (default: all)."""
        if not angle:
            return self._passes(rgb, on_tile, passes)
        turn = _slant.Turn.make(rgb.shape[0], rgb.shape[1], angle)
        turn.check_size()
        canvas = turn.forward(rgb)
        rain = turn.rain(canvas, self._passes(canvas, on_tile, passes))
        del canvas
        return turn.take_off(rgb, turn.back(rain))

    def _passes(self, rgb: np.ndarray, on_tile: Callable[[int, int], None] | None,
                passes: int | None = None) -> np.ndarray:
        """The network's result on ``rgb``: one pass, or the mean of ``passes`` (default
        ``ensemble``) passes over its mirrored copies, each put back the image's way round."""
        passes = passes or self.ensemble
        if passes == 1:
            return self._one_pass(rgb, on_tile)
        out = self._one_pass(rgb, None if on_tile is None else (
            lambda done, total: on_tile(done, passes * total)))  # copy 0: the photo
        for k in range(1, passes):
            count = None if on_tile is None else (
                lambda done, total, k=k: on_tile(k * total + done, passes * total))
            # one pass's result at a time beside the sum: one float32 photo more
            out += _ensemble.undo(self._one_pass(_ensemble.view(rgb, k), count), k)
        out *= np.float32(1.0 / passes)
        return out

    def _one_pass(self, rgb: np.ndarray, on_tile: Callable[[int, int], None] | None,
                  ) -> np.ndarray:
        """The network's result on ``rgb`` (HxWx3, as ``derain_array`` takes it; any strides),
        tiled, clipped to [0, 1]; out of memory, fewer tiles per pass, then smaller tiles."""
        tile, batch = self.tile, self.tile_batch
        shrunk = False  # only a retry's smaller tile is kept: a tile set meanwhile (by another
        # thread, or an on_tile callback) was undone when this run ended (an audit)
        padded, crop = tiling.pad_small(rgb, self.small_side)  # a small image's context
        # a tile covering the photo is one pass over it and its context: a 7 x 13 px photo
        # mirrored out to 256 px ran in 64 px tiles (--tile 64), or a thousand of 16 px
        whole = tile > 0 and tile >= max(rgb.shape[:2])  # (an audit)
        while True:
            try:
                out = tiling.run_tiled(padded, self.runner, 0 if whole else tile,
                                       self.tile_overlap,
                                       stats_megapixels=self.stats_megapixels,
                                       on_tile=on_tile, hwc=True, batch=batch)
                break
            except tiling.TileOutOfMemory as e:
                if e.batch > 1:  # fewer tiles at once before smaller ones
                    batch = e.batch // 2
                    log.warning("out of memory; retrying with %d tile(s) per pass", batch)
                    self.tile_batch = batch
                    continue
                h, w = padded.shape[:2]
                # a tile larger than the image is the whole image: halve from what ran
                current = min(tile, max(h, w)) if tile > 0 and not whole else max(h, w)
                whole = False
                floor = max(MIN_TILE, self.min_tile)  # below the model's minimum, tiles
                if current <= floor:  # would not agree with the whole image: stop there
                    hint = "try --device cpu" if self.device_name != "cpu" else (
                        "free some memory or close other programs")
                    if floor > MIN_TILE:
                        hint += (f"; {self.model_name} needs tiles of at least "
                                 f"{self.min_tile}px")
                    # the last error's own words: cuDNN's "unable to find an engine" is
                    # taken for out of memory (it says so when none fits) but can mean an
                    # unsupported setting, which its text tells apart
                    said = str(e).strip()
                    last = said.splitlines()[0][:200] if said else ""
                    raise tiling.TilesExhausted(
                        f"even {current}px tiles do not fit in memory; {hint}"
                        + (f" (the last error: {last})" if last else "")
                    ) from None
                tile = max(current // 2, floor)  # the floor itself is tried last
                shrunk = True
                log.warning("out of memory; retrying with %dpx tiles", tile)
        if shrunk:
            self.tile = tile
        # one layout whatever the engine: ONNX Runtime's whole-image output is channel-planar
        out = np.ascontiguousarray(out[crop])
        np.clip(out, 0.0, 1.0, out=out)
        return out

    @overload
    def derain(self, image: Image.Image, *, on_tile: TileCallback | None = None,
               ) -> Image.Image: ...

    @overload
    def derain(self, image: np.ndarray, *, on_tile: TileCallback | None = None,
               ) -> np.ndarray: ...

    def derain(self, image: Image.Image | np.ndarray, *,
               on_tile: TileCallback | None = None) -> Image.Image | np.ndarray:
        """Derain a PIL image or an HxW / HxWxC numpy array, returning the same type.

        Alpha is kept untouched; grayscale stays grayscale. Arrays: uint8 or uint16 samples
        (dtype kept), or floats in [0, 1] (anything else is refused, since its scale would
        be a guess). PIL modes: RGB, RGBA, L, LA, I;16 kept; I and F kept, at the scale their
        values show (0-255 as Pillow's ``convert`` makes them, 0-65535, or for F [0, 1]);
        P/PA become RGB/RGBA; La/RGBa (premultiplied) come back as LA/RGBA; 1 comes back as
        L; others (CMYK, YCbCr, ...) as RGB. ICC profile, DPI, EXIF and XMP in ``image.info``
        are carried, whatever the mode. Big-endian arrays come back big-endian.

        A PIL image's EXIF orientation (a phone's portrait photo is stored turned) is
        honoured: the rain is removed with the photo upright, and the result comes back in
        the stored orientation with its tag, as the input came (run sideways, the streaks
        lie across the network's view and mostly stay).
        Samples are RGB order (OpenCV's ``imread`` gives BGR: ``cv2.cvtColor`` first).
        ``on_tile(done, total)`` is called after each tile with the work done and in all
        (canvas pixels: ``TileCallback``), as in :meth:`derain_array` (for tqdm:
        ``bar.total = total; bar.n = done; bar.refresh()``).
        """
        _check_on_tile(on_tile)
        if isinstance(image, Image.Image):
            return self._derain_pil(image, on_tile)
        if not isinstance(image, np.ndarray):  # a path, a tensor...: said as such, not as
            hint = _input_hint(image)  # "got shape ()"
            raise TypeError(f"derain() takes a PIL image or a numpy array, not "
                            f"{type(image).__name__}{hint}")
        if isinstance(image, np.ma.MaskedArray):  # np.asarray drops the mask in silence
            raise TypeError("derain() takes a plain array; a masked one's mask would be "
                            "ignored: fill it first (arr.filled(0)), and keep the mask to "
                            "apply to the result")
        return self._derain_numpy(np.asarray(image), on_tile)

    def _derain_numpy(self, arr: np.ndarray, on_tile: TileCallback | None = None) -> np.ndarray:
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4)):
            raise ValueError(
                f"expected an HxW or HxWx(1|2|3|4) array (gray, gray+alpha, RGB, RGBA), "
                f"got shape {arr.shape}")
        if not arr.dtype.isnative:  # big-endian samples (e.g. from a FITS or raw reader)
            native = arr.astype(arr.dtype.newbyteorder("="))
            return self._derain_numpy(native, on_tile).astype(arr.dtype)
        _check_samples(arr)
        scale = float(np.iinfo(arr.dtype).max) if arr.dtype.kind == "u" else 1.0
        # uint8/uint16 go to the tiler as they are (scaled tile by tile); others as float32.
        native = arr.dtype in (np.uint8, np.uint16)
        x = arr if native else arr.astype(np.float32) / np.float32(scale)
        channels = 1 if x.ndim == 2 else x.shape[2]
        gray = channels in (1, 2)
        alpha = arr[..., channels - 1:] if channels in (2, 4) else None  # as given
        rgb = np.repeat(x[..., :1] if x.ndim == 3 else x[..., None], 3, axis=2) if gray \
            else x[..., :3]
        y = self.derain_array(rgb, on_tile)
        if gray:  # BT.601 luma, as the CLI writes it and PIL's "L" makes it (the mean was
            # up to 5 levels off the CLI's file for the same photo: an audit)
            from .images import LUMA

            y = (y @ LUMA)[..., None]
        if scale != 1.0:
            y = np.clip(np.rint(y * np.float32(scale)), 0, scale)
        y = y.astype(arr.dtype)
        if alpha is not None:  # alpha goes back untouched, bit for bit
            y = np.concatenate([y, alpha], axis=2)
        return y.reshape(arr.shape)

    def _derain_wide_gray(self, img: Image.Image,
                          on_tile: TileCallback | None = None) -> Image.Image:
        """Mode I or F: derained at the scale its values show (``_gray_scale``), returned in
        the same mode and scale."""
        arr = np.asarray(img, dtype=np.float32)
        if arr.size == 0:
            raise ValueError(f"empty image (size {img.size})")
        lo, hi = float(arr.min()), float(arr.max())
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -0.01:
            raise ValueError(f"mode {img.mode} samples span {lo:g}..{hi:g}: expected 0 or more")
        scale = _gray_scale(hi, img.mode)
        y = self._derain_numpy(np.clip(arr / np.float32(scale), 0.0, 1.0),
                               on_tile) * np.float32(scale)
        if img.mode == "I":
            return Image.fromarray(np.rint(y).astype(np.int32))
        return Image.fromarray(y.astype(np.float32))

    def _derain_pil(self, img: Image.Image, on_tile: TileCallback | None = None) -> Image.Image:
        img.load()  # Pillow turns a TIFF upright as it loads it and drops its tag: read
        # before, the tag turned an upright TIFF a second time (an audit)
        back = _BACK_TO_STORED.get(_orientation(img))  # type: ignore[arg-type]
        if back is not None:  # derained upright, returned as stored (its tag kept)
            from PIL import ImageOps

            upright = ImageOps.exif_transpose(img)  # its tag gone: not turned again
            out = self._derain_pil(upright, on_tile).transpose(back)
            out.info = {k: v for k, v in out.info.items() if k not in _CARRIED}
            out.info.update({k: v for k, v in img.info.items() if k in _CARRIED})
            if _tag_changed_in_memory(img):  # the one the turn followed, not the file's
                out.info["exif"] = img.getexif().tobytes()
            return out
        mode = img.mode
        icc = img.info.get("icc_profile")
        if mode in ("I;16", "I;16B", "I;16L"):
            out = Image.fromarray(self._derain_numpy(np.asarray(img).astype(np.uint16),
                                                     on_tile))
        elif mode in ("I", "F"):  # 32-bit gray: scale guessed from the values, kept
            out = self._derain_wide_gray(img, on_tile)
        else:
            if mode in ("RGB", "RGBA", "L", "LA"):
                work = img
            elif mode in ("P", "PA"):
                transparent = "transparency" in img.info or mode == "PA"
                work = img.convert("RGBA" if transparent else "RGB")
            elif mode in ("La", "RGBa"):  # premultiplied alpha: Pillow's straight form
                work = img.convert(mode[:-1] + "A")
            elif mode == "1":  # bilevel: derained as gray, returned as gray
                work = img.convert("L")
            else:  # CMYK, YCbCr, LAB...: as the file reader converts them, the profile
                from .images import _normalise_mode  # too (a CMYK one cannot describe RGB)

                work, icc = _normalise_mode(img, icc)
            out = Image.fromarray(self._derain_numpy(np.asarray(work), on_tile))
        out.info.update({k: v for k, v in img.info.items() if k in _CARRIED})
        if _tag_changed_in_memory(img):  # set to 1 or deleted in memory: the file's old
            out.info["exif"] = img.getexif().tobytes()  # tag came back (a review)
        if icc:
            out.info["icc_profile"] = icc
        return out


#: ``image.info`` entries ``derain`` carries from a PIL image to its result
_CARRIED = ("dpi", "exif", "xmp", "XML:com.adobe.xmp")
#: EXIF orientation -> the transpose that takes an upright image back to how it is stored
#: (the inverse of each of Pillow's ``ImageOps.exif_transpose`` turns)
_BACK_TO_STORED = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                   4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                   6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
                   8: Image.Transpose.ROTATE_270}


def _stored_orientation(exif: object) -> int | None:
    """The orientation tag in EXIF bytes (``info["exif"]``), or None."""
    if not isinstance(exif, bytes):
        return None
    from PIL import ExifTags

    try:
        exif_data = Image.Exif()
        exif_data.load(exif)
        value = exif_data.get(ExifTags.Base.Orientation)
    except Exception:  # noqa: BLE001 - unparseable EXIF: none
        return None
    return value if isinstance(value, int) else None


def _tag_changed_in_memory(img: Image.Image) -> bool:
    """Whether ``img``'s orientation (``getexif()``) says another turn than the EXIF bytes it
    carries in ``info``: a tag set, changed or deleted in memory, so the bytes must be
    written anew. None and 1 are the same turn: a TIFF's own tags and an XMP orientation
    reach ``getexif()`` without being in the bytes, and rewriting those bytes (their maker
    notes' offsets moved) or adding a TIFF's structure tags as EXIF is no carrying (a
    review)."""
    stored, now = _stored_orientation(img.info.get("exif")), _orientation(img)
    return (stored or 1) != (now or 1)


def _check_on_tile(on_tile: object) -> None:
    """``OptionError`` for an ``on_tile`` that cannot be called (it failed after the
    first tile's work: an audit)."""
    if on_tile is not None and not callable(on_tile):
        raise OptionError(f"on_tile must be a function (done, total) or None, not {on_tile!r}")


def _orientation(img: Image.Image) -> int | None:
    """The EXIF orientation tag (1-8) of a PIL image, or None."""
    from PIL import ExifTags

    try:
        value = img.getexif().get(ExifTags.Base.Orientation)
    except Exception:  # noqa: BLE001 - unparseable EXIF: taken as stored
        return None
    return value if isinstance(value, int) else None


def _rebuilt(cls: type[Derainer], made: dict[str, Any], later: dict[str, Any]) -> Derainer:
    """A pickled Derainer made again (``Derainer.__reduce__``)."""
    derainer = cls(**made)
    for name, value in later.items():
        setattr(derainer, name, value)
    return derainer


def _input_hint(image: object) -> str:
    """What to pass instead of ``image``, for derain()'s TypeError."""
    if isinstance(image, str | os.PathLike):
        return "; open it first: PIL.Image.open(path)"
    kind = type(image).__name__
    if kind == "Tensor":
        return "; for a CHW tensor in [0, 1]: tensor.permute(1, 2, 0).cpu().numpy()"
    if kind == "LoadedImage":
        # write_image takes derain_array's float result: derain(loaded.pixels) gives the
        # pixels' own dtype back, which it refuses (an audit ran the hint as written)
        return ("; derain its pixels, out = derainer.derain_array(loaded.pixels), and write "
                "the result with derain_cli.images.write_image(path, out, loaded)")
    return ""


def blend_toward_input(out: np.ndarray, rgb: np.ndarray, strength: float,
                       rows: int = 256) -> None:
    """``out = rgb + strength * (out - rgb)`` in place (HxWx3 float32 ``out``; ``rgb`` as
    ``derain_array`` takes it), a band of ``rows`` at a time, so a large photo is never
    held as float32 input. Why: where the network also softens fine texture, a user may
    prefer part of the rain removal with all of the texture (``--strength``)."""
    scale = np.float32(1.0 / np.iinfo(rgb.dtype).max) if rgb.dtype.kind == "u" else None
    s = np.float32(strength)
    for y in range(0, out.shape[0], rows):
        x = rgb[y:y + rows].astype(np.float32)
        if scale is not None:
            x *= scale
        band = out[y:y + rows]
        band -= x
        band *= s
        band += x


class _AutoProgress:
    """``on_tile`` over a ``rain_angle="auto"`` photo: the network's check of the slant on
    its sample (a pass as it is and one turned, at most) and then the photo's own passes,
    as one job's work in photo pixels. The check reported nothing (a bar stood still for
    most of the photo's time, then jumped to done: an audit)."""

    def __init__(self, on_tile: Callable[[int, int], None] | None, h: int, w: int,
                 passes: int) -> None:
        self.on_tile = on_tile
        whole = h * w <= _slant.WHOLE_PIXELS
        sample = h * w if whole else 4 * min(_slant.CROP, h) * min(_slant.CROP, w)
        self.total = 2 * sample + h * w * passes  # the check at most, then the passes
        self.done = 0.0

    def _say(self, done: float) -> None:
        if self.on_tile is not None:
            self.on_tile(min(int(done), self.total), self.total)

    def check(self, img: np.ndarray) -> Callable[[int, int], None] | None:
        """The callback for one of the check's passes, over ``img``."""
        if self.on_tile is None:
            return None
        share, base = img.shape[0] * img.shape[1], self.done
        return lambda d, t: self._say(base + share * d / max(t, 1))

    def checked(self, img: np.ndarray) -> None:
        self.done = min(self.done + img.shape[0] * img.shape[1], self.total)
        self._say(self.done)

    def final(self) -> Callable[[int, int], None] | None:
        """The callback for the photo's passes: what is left of the bar (the check may have
        taken less than its most, or none)."""
        if self.on_tile is None:
            return None
        base, left = self.done, self.total - self.done
        return lambda d, t: self._say(base + left * d / max(t, 1))


def _check_megapixels(what: str, mp: Any) -> None:
    """``OptionError`` unless ``mp`` is a finite number >= 0, or None."""
    if mp is not None and (isinstance(mp, bool) or not isinstance(mp, _REAL)
                           or not math.isfinite(mp) or mp < 0):
        raise OptionError(f"{what} must be a number >= 0 or None, not {mp!r}")


def _check_whole(what: str, v: Any, least: int, *, none: bool = True) -> None:
    """``OptionError`` unless ``v`` is a whole number of at least ``least`` (or None)."""
    if v is None and none:
        return
    if isinstance(v, bool) or not isinstance(v, int | np.integer):
        raise OptionError(f"{what} must be a whole number{' or None' if none else ''}, "
                          f"not {v!r}")
    if v < least:
        raise OptionError(f"{what} must be at least {least}, not {v}")


def _gray_scale(hi: float, mode: str) -> float:
    """Full scale of a 32-bit gray PIL image: Pillow's own ``convert("I")``/``convert("F")``
    gives 0-255, a float image built from [0, 1] data stays in [0, 1], 16-bit data reaches
    past 255. A maximum a little past a scale is refused: [0, 1] data overshooting to 1.02
    was taken as 0-255 and came back far from the right result (an audit)."""
    if mode == "F" and hi <= 1.01:
        return 1.0
    if mode == "F" and hi < 2.0:
        raise ValueError(f"mode F samples reach {hi:g}: past [0, 1], too low for 0-255; clip "
                         "them to [0, 1] (a little overshoot up to 1.01 is clipped)")
    if 255.5 < hi < 300.0:
        raise ValueError(f"mode {mode} samples reach {hi:g}: a little past 0-255, far below "
                         "16 bits; clip them to 0-255, or scale 16-bit data to 0-65535")
    if hi <= 255.5:
        return 255.0
    if hi <= 65535.5:
        return 65535.0
    raise ValueError(f"mode {mode} samples reach {hi:g}: beyond 16 bits, the scale is unknown")


def _check_samples(arr: np.ndarray) -> None:
    """Refuse arrays whose sample scale would be guessed wrong: a plain ``int64`` array (what
    ``np.array(list)`` gives) holding 0-255 would otherwise read as near-black."""
    if arr.size == 0:
        raise ValueError(f"empty image (shape {arr.shape})")
    if arr.dtype in (np.uint8, np.uint16):
        return
    if arr.dtype.kind != "f":
        raise ValueError(
            f"expected uint8 or uint16 samples, or floats in [0, 1]; got {arr.dtype} " + (
                "(for a mask of True/False use arr.astype(np.uint8) * 255)"
                if arr.dtype == np.bool_ else "(for 0-255 samples use arr.astype(np.uint8))"))
    lo, hi = float(arr.min()), float(arr.max())  # NaN anywhere makes both NaN
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("the image holds NaN or infinite samples")
    if lo < -0.01 or hi > 1.01:  # a little overshoot from earlier processing is clipped
        raise ValueError(
            f"float samples must lie in [0, 1]; these span {lo:g}..{hi:g} "
            "(for 0-255 data divide by 255, or pass uint8)")


#: Names that moved to ``derain_cli.torch_runner``, still importable from here (PEP 562:
#: looked up on first use, so importing this module does not import torch).
_TORCH_NAMES = frozenset({"TorchRunner", "cpu_supports_bf16", "resolve_backend",
                          "resolve_device", "resolve_precision"})


def __getattr__(name: str) -> Any:
    if name in _TORCH_NAMES:
        from . import torch_runner

        return getattr(torch_runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
