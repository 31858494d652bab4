"""ONNX export of the deraining networks (``derain export``).

Every graph takes and returns float32 NCHW images (RGB in [0, 1]; the output is not
clipped) with dynamic batch, height and width, and is checked with
``onnx.checker.check_model``. Height and width must be multiples of the graph's
``derain.size_multiple`` metadata: 16 for RDMC (other sizes fail in ONNX Runtime), 1 for
Semi-DRDNet (any size). Callers pad bottom/right with reflection to that multiple and
crop the output back, as derain's own runner and tiler do
(``derain_cli.onnx_backend._pad4``). What each file is for is written into its
``metadata_props`` (``derain.*`` keys, see :func:`graph_metadata`), so a runner needs
nothing but the files.

Semi-DRDNet (whole-image squeeze-and-excitation statistics, see
``derain_cli.tiling``) is exported as TWO graphs that share the tiling code of
the PyTorch backend:

``<name>.onnx`` (role ``forward``)
    inputs ``image`` (B, 3, H, W), ``pooled`` (B, n_se, C), ``local`` (1,);
    output ``out`` (B, 3, H, W).
``<name>.stats.onnx`` (role ``stats``)
    inputs ``image``, ``pooled``, ``local`` and ``mask`` (B, 1, H, W);
    output ``sums`` (B, n_se, C): per SE block the mask-weighted spatial sums
    of what the block pools (``SemiDRDNet.se_sums``). Runs the rain network
    only, about half the cost of the forward graph or less (``tiling.STATS_COST``).

``local`` selects, per call, where every SE block takes its channel means
from: ``local = 1`` uses the image's (tile's) own means, exactly like the
PyTorch ``pooled=None`` path (an untiled run, or the first statistics pass of
a tiled run), and ``pooled`` is ignored; ``local = 0`` uses ``pooled`` (the
whole-image means the tiler accumulated). Internally each block uses
``local * mean(feat) + (1 - local) * pooled[:, i]``, which is exact for 0 and
1; computing the tile's means when they are not used costs a reduction per
block, nothing next to the convolutions. This keeps Semi-DRDNet at two graphs
(instead of four: plain, pooled, stats-local, stats-pooled) with one code
path in the runner, and no graph ever has optional inputs.

RDMC and any other network without global statistics: ONE graph
``<name>.onnx`` (role ``forward``), ``image -> out``. RDMC pads to a multiple
of 16 only when needed, with a Python ``if`` that tracing cannot keep, and
``adaptive_avg_pool2d`` with a size that depends on the input cannot be
exported; so the graph is traced on a size that is already a multiple of 16
(no padding node) with the area resampling expressed as the equivalent fixed
``avg_pool2d`` (exact: on a multiple of 16 every level divides exactly), and
the caller pads on the host to ``derain.size_multiple`` with the same
reflect/replicate rule as the network and crops after
(``derain_cli.onnx_backend.OnnxRunner`` does; the tiler already pads tiled
runs). The RDMC graph itself does not pad and does not accept other sizes: its
multi-scale adds fail to broadcast (e.g. 61x77: "Add node ... broadcast"), so pad first.

The graphs are fp32; the exporter is the TorchScript-based one
(``torch.onnx.export(..., dynamo=False)``), which needs no ``onnxscript``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .fileio import atomic_write_group, missing_folders, remove_empty_folders
from .onnx_backend import stats_path  # lives with the runner, which needs no torch
from .tool_defaults import DEFAULT_OPSET, MIN_OPSET  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

#: Bumped whenever the exported graphs change (inputs, outputs, semantics, the
#: operators inside); part of the cached file names, so old caches are not reused.
#: 2: graphs are made from ``fold_for_inference`` (batch norm folded, DCCL as summed
#: convs, PReLU as Max/Mul). 3: RDMC's 1x1 convs run before its upsamplings.
GRAPH_VERSION = 3

# Opsets ``--opset`` accepts (MIN_OPSET, DEFAULT_OPSET: tool_defaults, for --help without
# torch), checked before tracing: torch's TorchScript exporter supports up to its
# ``ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET`` (20 in torch 2.13; above it only warns), and an
# opset it does not know (99) failed only after printing ~150 lines of Torch IR on stdout.


def max_opset() -> int:
    """The newest opset torch's TorchScript-based exporter supports (20 when unknown)."""
    try:
        from torch.onnx import _constants
    except ImportError:  # pragma: no cover - private module moved
        return 20
    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET",
                       getattr(_constants, "ONNX_MAX_OPSET", 20)))


def check_opset(opset: int) -> None:
    """``ValueError`` (one line) for an opset torch cannot export, before any tracing."""
    top = max_opset()
    if not MIN_OPSET <= opset <= top:
        raise ValueError(f"ONNX opset {opset} is not supported: use {MIN_OPSET} to {top} "
                         f"(default {DEFAULT_OPSET})")


#: Incremented on every actual export (tests use it to prove cache hits).
EXPORT_COUNT = 0


# --------------------------------------------------------------------------- wrappers
def _se_mean(feat: Tensor, pooled_i: Tensor, local: Tensor) -> Tensor:
    return local * feat.mean(dim=(2, 3)) + (1.0 - local) * pooled_i


def _rain_net(net: nn.Module, x: Tensor, pooled: Tensor, local: Tensor,
              mask: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    """``RainResidualNetwork.forward`` (mask None) or ``.se_sums`` with the ``local`` switch.

    Uses the network's own submodules; tests/test_export.py checks parity with both methods.
    """
    rn = net.rain_net
    h0 = rn.head(x)
    h = h0
    sums = []
    for i, block in enumerate(rn.blocks):
        feat = block.body(h)
        if mask is not None:
            sums.append((feat * mask).sum(dim=(2, 3)))
        h = h + block.se(feat, _se_mean(feat, pooled[:, i], local))
    if mask is not None:
        return None, torch.stack(sums, dim=1)
    return rn.tail(rn.body(h) + h0), None


class _SemiForward(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: Tensor, pooled: Tensor, local: Tensor) -> Tensor:
        rain, _ = _rain_net(self.net, image, pooled, local, None)
        return (image - rain) + self.net.detail_net(image)


class _SemiStats(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: Tensor, pooled: Tensor, local: Tensor, mask: Tensor) -> Tensor:
        _, sums = _rain_net(self.net, image, pooled, local, mask)
        return sums


@contextlib.contextmanager
def _exportable(model: nn.Module) -> Iterator[None]:
    """Eval mode and a quiet tracer."""
    was_training = model.training
    threads = torch.get_num_threads()
    model.eval()
    # Tracing runs every layer once on a tiny input, where threads only add
    # synchronisation (10x slower on a busy machine); restored afterwards.
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarning, legacy-exporter DeprecationWarning
            # Tracing runs every conv once on a tiny input: oneDNN's per-shape kernel
            # creation would dominate (2-3x slower export); the plain kernels are instant.
            with torch.backends.mkldnn.flags(enabled=False):
                yield
    finally:
        # put back only if nobody changed it meanwhile: a Derainer(threads=N) made in
        # another thread during the export had its N undone (an audit)
        if torch.get_num_threads() == 1:
            torch.set_num_threads(threads)
        model.train(was_training)


# --------------------------------------------------------------------------- metadata
def _arch_id(model: nn.Module) -> str:
    from .models import ARCHITECTURES

    for arch, (cls, _) in ARCHITECTURES.items():
        if type(model) is cls:
            return arch
    return type(model).__qualname__


def _config(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "cfg", None)
    if cfg is not None and dataclasses.is_dataclass(cfg):
        from .models import config_to_dict

        return config_to_dict(cfg)
    return {}


def graph_metadata(model: nn.Module, role: str) -> dict[str, str]:
    """The ``derain.*`` metadata_props written into each exported graph."""
    shape = getattr(model, "global_stats_shape", None)
    return {
        "derain.graph_version": str(GRAPH_VERSION),
        "derain.arch": _arch_id(model),
        "derain.config": json.dumps(_config(model)),
        "derain.role": role,
        "derain.size_multiple": str(int(getattr(model, "size_multiple", 1))),
        "derain.global_stats_shape": json.dumps(list(shape) if shape is not None else None),
    }


# --------------------------------------------------------------------------- export
_DYN_IMG = {0: "batch", 2: "height", 3: "width"}


def _graph_writer(module: nn.Module, args: tuple[Tensor, ...], names: list[str],
                  outputs: list[str], axes: dict[str, dict[int, str]], opset: int,
                  meta: dict[str, str]) -> Callable[[str], None]:
    """What writes one traced, checked graph into a file (for ``atomic_write_group``)."""
    import onnx

    def write(tmp: str) -> None:
        with torch.no_grad():
            torch.onnx.export(
                module, args, tmp, dynamo=False, opset_version=opset,
                input_names=names, output_names=outputs, dynamic_axes=axes,
                do_constant_folding=True,
            )
        proto = onnx.load(tmp)
        for k, v in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        proto.producer_name = "derain"
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)

    return write


def write_graph_set(path: Path, writers: list[Callable[[str], object]]) -> list[Path]:
    """Put a network's graphs in place as one set: the forward graph at ``path`` and, with a
    second writer, the statistics graph beside it (``stats_path``), each into a temporary
    file of an unguessable name first (a name made from the pid could be a link planted in
    a shared folder), renamed only when both are written. A statistics graph an earlier
    export left beside ``path`` goes when the new set has none: the runner would pair it
    with the new graph. Returns the files, the forward graph first."""
    stale = stats_path(path)
    files = [path, stale][:len(writers)]
    remove = []
    if len(writers) == 1 and os.path.lexists(stale):
        if not is_stats_graph(stale):  # a file of the user's that happens to be named so
            raise OSError(f"{stale} is in the way: derain would read it as this graph's "
                          "statistics graph, and it is not one derain wrote; move it or "
                          "choose another output")
        remove.append(stale)
    atomic_write_group(list(zip(files, writers, strict=True)), remove=remove)
    if remove:
        log.warning("removed %s, an earlier export's statistics graph: derain would have "
                    "paired it with the new graph", stale)
    return files


def is_stats_graph(path: Path) -> bool:
    """Whether ``path`` is a statistics graph derain exported (its ``derain.role``
    metadata), read without its weights."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - anything unreadable is not one
        return False
    return any(p.key == "derain.role" and p.value == "stats" for p in proto.metadata_props)


def export_onnx(model: nn.Module, path: str | os.PathLike[str], *,
                opset: int = DEFAULT_OPSET) -> list[Path]:
    """Export ``model`` to ONNX at ``path`` (plus ``<stem>.stats.onnx`` for Semi-DRDNet).

    Returns the written files, the forward graph first. Files are written atomically. See
    the module docstring for the graphs and their inputs. What is traced is
    :func:`derain_cli.models.deploy.fold_for_inference` of ``model``: the same function
    with batch norms folded and cheaper operators.
    """
    from .models import SemiDRDNet
    from .models.deploy import fold_for_inference

    global EXPORT_COUNT
    check_opset(opset)
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        path = path.with_name(path.name + ".onnx")
    shape = getattr(model, "global_stats_shape", None)
    mult = max(1, int(getattr(model, "size_multiple", 1)))
    # Trace on a small non-square multiple of the size multiple (every level exists).
    h = -(-16 // mult) * mult
    w = 2 * h
    param = next(iter(model.parameters()), None)
    dev = param.device if param is not None else torch.device("cpu")
    image = torch.rand(1, 3, h, w, device=dev)
    with _exportable(model):
        net = fold_for_inference(model)
        if shape is None:
            files = write_graph_set(path, [_graph_writer(
                net, (image,), ["image"], ["out"], {"image": _DYN_IMG, "out": _DYN_IMG},
                opset, graph_metadata(model, "forward"))])
            EXPORT_COUNT += len(files)
            return files
        if not isinstance(model, SemiDRDNet):
            raise NotImplementedError(
                f"ONNX export of {type(model).__name__}: whole-image statistics are only "
                "supported for Semi-DRDNet"
            )
        n, c = shape
        pooled = torch.rand(1, n, c, device=dev)
        local = torch.zeros(1, device=dev)
        mask = torch.rand(1, 1, h, w, device=dev)
        pooled_axes = {0: "batch"}
        files = write_graph_set(path, [
            _graph_writer(_SemiForward(net), (image, pooled, local),
                          ["image", "pooled", "local"], ["out"],
                          {"image": _DYN_IMG, "pooled": pooled_axes, "out": _DYN_IMG}, opset,
                          graph_metadata(model, "forward")),
            _graph_writer(_SemiStats(net), (image, pooled, local, mask),
                          ["image", "pooled", "local", "mask"], ["sums"],
                          {"image": _DYN_IMG, "pooled": pooled_axes, "mask": _DYN_IMG,
                           "sums": pooled_axes}, opset,
                          graph_metadata(model, "stats"))])
        EXPORT_COUNT += len(files)
        return files


# --------------------------------------------------------------------------- CLI
def planned_outputs(model: nn.Module, path: Path) -> list[Path]:
    """The files exporting ``model`` to ``path`` writes: the graph, and for a network with
    whole-image statistics (Semi-DRDNet) its statistics graph beside it."""
    if getattr(model, "global_stats_shape", None) is None:
        return [path]
    return [path, stats_path(path)]


def default_output(model: str | None, weights: Path | None, int8: bool) -> Path:
    """Where ``derain export`` writes without an output: ``NAME[.int8].onnx`` here."""
    from .enhancer import DEFAULT_MODEL

    # a file of one's own names its graph even with -m (its architecture): MODEL.onnx would
    # overwrite an export of the published weights
    stem = weights.stem if weights is not None else model or DEFAULT_MODEL
    if not int8 and stem.lower().endswith(".stats"):  # x.stats.onnx is what the runner
        stem = stem[:-6] + "_stats"  # reads as another graph's statistics half
    return Path(f"{stem}.int8.onnx" if int8 else f"{stem}.onnx")


def resolve_output(output: Path | str | None, model: str | None, weights: Path | None,
                   int8: bool) -> Path:
    """The file ``derain export`` writes for ``-o``/OUTPUT.

    An existing folder, or a name ending in a slash (``-o graphs/``, as for the main
    command), gets :func:`default_output`'s name inside it (not ``FOLDER.onnx`` beside it);
    a name without ``.onnx`` (any case: ``m.ONNX`` stays) gets it appended; missing parent
    folders are created when writing.
    """
    name = default_output(model, weights, int8)
    if output is None:
        return name
    folder = str(output).endswith(("/", os.sep))
    output = Path(output)
    if folder or output.is_dir():
        return output / name.name
    if output.suffix.lower() != ".onnx":
        return output.with_name(output.name + ".onnx")
    return output


def check_writable(target: Path) -> list[Path]:
    """Make ``target``'s folder and prove a file can be written there, before minutes of
    tracing or calibration; ``OSError`` naming ``target`` (not a hidden scratch file) when
    not. Returns the folders it made, outermost first, for the caller to take back if
    nothing is written (a failed export left them empty)."""
    parent = target.parent
    made: list[Path] = []
    try:
        made = missing_folders(parent)
        if parent.exists() and not parent.is_dir():
            raise OSError(f"{parent} is a file, not a folder")
        parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            raise OSError("it is a folder")
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".derain-", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        remove_empty_folders(made)
        why = e.strerror or str(e)
        raise OSError(f"cannot write {target}: {why}") from None
    return made
