"""Fewer passes over memory for PyTorch inference on CPUs: oneDNN post-op fusions.

Why: on the 2-core AVX-512-BF16 core of CPU family 26 a bf16 3x3 conv runs at about 870
GFLOP/s, twice the older core's, so the elementwise steps between the convolutions, each
a pass over a full-resolution map, weigh twice as much. Profiled in bf16
(``benchmarks/torch_profile.py --unfused``) they took about a quarter of RDMC's time at
1024 px (the sums of its split convolutions 8 %, sigmoid gates and their products 6 %,
upsampling 6 %, ReLU 2.5 %, max-pooling 2 %) and up to 13 % of Semi-DRDNet's at 512 px
(the sums of its DCCLs' convolutions and the residual adds 6.5-8.6 %, the SE means 1-7 %),
and held the paper-size networks at 73 % and 77 % of the conv peak, under issue 6's 80 %.
With these rewrites: 84 % and 86 % (README, Speed, "CPU fusions").

:func:`fuse_for_cpu` rewrites a network already folded by
:func:`derain_cli.models.deploy.fold_for_inference`; the function stays the same (float
rounding aside: a fused sum is rounded once where the plain ops round each term):

* **conv + ReLU** -> one oneDNN convolution with a ReLU post-op (RDMC's units and fusions).
* **sum of convolutions** (``SummedConvs``: Semi-DRDNet's folded DCCLs; ``SplitInputConv``:
  RDMC's convolutions of a concatenation) -> the first conv, then each further conv
  accumulated into its output in place (oneDNN's sum post-op), the ReLU that followed fused
  into the last one.
* **Residual adds** in place on the block's fresh output; **SE** scaling and residual in one
  ``addcmul`` pass; the SE's channel means of a bf16 channels-last map as one matrix-vector
  product (PyTorch's bf16 mean first copies the whole map to fp32: 17 ms against 6 ms for
  a 64-channel 1024 px map here).
* **RDMC's gates**: sigmoid and product in place, the terms summed by ``addcmul_``.
* **RDMC's bilinear upsamplings** of channels-last maps as lerps over strided views
  (:func:`_upsample`), three times as fast as PyTorch's bf16 kernel here.
* **RDMC's 2x max-pooling** of a channels-last map as two elementwise maxima over views
  (PyTorch's CPU ``max_pool2d`` also writes an int64 index per output value: 8 ms against
  3.5 ms for a 32-channel 1024 px bf16 map here).

The fused convolutions are PyTorch's private ``torch.ops.mkldnn._convolution_pointwise``
ops (what ``torch.compile`` emits for the same fusions on CPUs). :func:`fusion_available`
checks once that they exist and agree with ``F.conv2d`` on a small conv; where they do not
(another PyTorch release, a build without oneDNN) the network is left as it is. A fused
module runs the plain ops instead for a tensor off the CPU, in another dtype than fp32 or
bf16, or while gradients are recorded (and then overwrites nothing in place: a fused
network still trains, though only inference uses it). ``DERAIN_CPU_FUSION=off`` turns the
rewrite off (the benchmark's ``bf16_unfused`` variant times the difference).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import cpu_fusion_enabled
from .deploy import FoldedRDMCStage, SplitInputConv, SummedConvs, _rescale
from .rdmc import EncoderBranch
from .semi_drdnet import ContextAggregationBlock, RainResidualBlock, SqueezeExcite

log = logging.getLogger(__name__)

_DTYPES = (torch.float32, torch.bfloat16)


def _ops() -> tuple[object, object] | None:
    mk = getattr(torch.ops, "mkldnn", None)
    try:
        return (mk._convolution_pointwise.default,  # type: ignore[union-attr]
                mk._convolution_pointwise_.binary)  # type: ignore[union-attr]
    except (AttributeError, RuntimeError):
        return None


@functools.cache
def fusion_available() -> bool:
    """Whether this PyTorch has the fused oneDNN convolutions and they compute what
    ``F.conv2d`` does (checked once, on a 4-channel 9 px map, plain and accumulated)."""
    ops = _ops()
    if ops is None or not torch.backends.mkldnn.is_available():
        return False
    plain, accumulate = ops
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 9, 9, generator=gen).contiguous(memory_format=torch.channels_last)
    w = torch.randn(4, 4, 3, 3, generator=gen)
    b = torch.randn(4, generator=gen)
    try:
        with torch.inference_mode():
            ref = F.conv2d(x, w, b, padding=2, dilation=2)
            y = plain(x, w, b, [2, 2], [1, 1], [2, 2], 1, "relu", [], "")
            acc = ref.clone()
            accumulate(acc, x, w, None, [2, 2], [1, 1], [2, 2], 1, "add", None, None, [], None)
            ok = (torch.allclose(y, ref.relu(), atol=1e-4)
                  and torch.allclose(acc, 2 * ref - b[None, :, None, None], atol=1e-4))
    except Exception as e:  # noqa: BLE001 - any failure means: do not use them
        log.debug("oneDNN fused convolutions unusable: %s", e)
        return False
    if not ok:
        log.debug("oneDNN fused convolutions disagree with F.conv2d; not used")
    return ok


@functools.cache
def _native_bf16() -> bool:
    """Whether oneDNN runs bf16 convolutions here: without AVX-512 BW/VL/DQ (or AVX-NE-CONVERT)
    its bf16 primitives refuse to run, where ``F.conv2d`` falls back to reference kernels
    (``--force-bf16`` in the bench crashed on an AVX2 CPU: an audit)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype a convolution of ``x`` runs in here: the CPU autocast dtype when on."""
    if torch.is_autocast_enabled("cpu") and x.dtype == torch.float32:
        return torch.get_autocast_dtype("cpu")
    return x.dtype


def _recorded(t: Tensor) -> bool:
    """Whether autograd records ``t``'s history (then nothing is overwritten in place)."""
    return torch.is_grad_enabled() and t.requires_grad


class FusedConv(nn.Module):
    """A conv, optionally with a ReLU, as one oneDNN primitive; ``accumulate`` adds it into
    an existing map in place."""

    def __init__(self, conv: nn.Conv2d, relu: bool = False) -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"cannot fuse {conv}: only zero padding given in pixels")
        self.conv = conv
        self.relu = relu
        self._cast: dict[torch.dtype, tuple[tuple[int, ...], Tensor, Tensor | None]] = {}

    def _fusable(self, x: Tensor) -> bool:
        dtype = _compute_dtype(x)
        return (x.device.type == "cpu" and x.dim() == 4 and dtype in _DTYPES
                and (dtype != torch.bfloat16 or _native_bf16())
                and not (_recorded(x) or _recorded(self.conv.weight)))

    def _params(self, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        """Weight and bias in ``dtype``, cast once (again only if either changes)."""
        w, b = self.conv.weight, self.conv.bias
        if w.dtype == dtype:
            return w, b
        key = (w.data_ptr(), w._version, *((b.data_ptr(), b._version) if b is not None else ()))
        hit = self._cast.get(dtype)
        if hit is None or hit[0] != key:
            hit = (key, w.detach().to(dtype), None if b is None else b.detach().to(dtype))
            self._cast[dtype] = hit
        return hit[1], hit[2]

    def _args(self) -> tuple[list[int], list[int], list[int], int]:
        c = self.conv
        return list(c.padding), list(c.stride), list(c.dilation), c.groups

    def forward(self, x: Tensor) -> Tensor:
        if not self._fusable(x):
            y = self.conv(x)
            return torch.relu(y) if self.relu else y
        dtype = _compute_dtype(x)
        w, b = self._params(dtype)
        return torch.ops.mkldnn._convolution_pointwise(
            x.to(dtype), w, b, *self._args(), "relu" if self.relu else "none", [], "")

    def accumulate(self, out: Tensor, x: Tensor, relu: bool = False) -> Tensor:
        """``out += conv(x)`` in place (then ReLU if ``relu``); ``self.relu`` is not applied.
        ``out`` is a fresh map of the conv's output shape that nothing else holds."""
        dtype = _compute_dtype(x)
        if self._fusable(x) and out.dtype == dtype and not _recorded(out):
            w, b = self._params(dtype)
            # the ReLU post-op only on channels-last maps: for NCHW ones PyTorch runs the
            # sum and ReLU itself, with no bf16 kernel for that (an audit)
            fuse_relu = relu and out.is_contiguous(memory_format=torch.channels_last)
            out = torch.ops.mkldnn._convolution_pointwise_.binary(
                out, x.to(dtype), w, b, *self._args(), "add", None,
                "relu" if fuse_relu else None, [], None)
            return out.relu_() if relu and not fuse_relu else out
        y = self.conv(x)
        out = out + y if _recorded(out) or _recorded(y) else out.add_(y)
        return (torch.relu(out) if _recorded(out) else out.relu_()) if relu else out


class FusedSum(nn.Module):
    """``sum_i conv_i(x_i)`` (then ReLU): the first conv, the others accumulated into it.

    ``split`` takes a list of inputs, one per conv (``SplitInputConv``); otherwise every conv
    reads the same input (``SummedConvs``).
    """

    def __init__(self, convs: Sequence[nn.Conv2d], split: bool, relu: bool = False) -> None:
        super().__init__()
        self.convs = nn.ModuleList(FusedConv(c) for c in convs)
        self.split = split
        self.relu = relu

    def forward(self, x: Tensor | list[Tensor]) -> Tensor:
        xs = list(x) if self.split else [x] * len(self.convs)
        if len(xs) != len(self.convs):
            raise ValueError(f"{len(xs)} inputs for {len(self.convs)} convolutions")
        out = self.convs[0](xs[0])
        last = len(self.convs) - 1
        for i in range(1, len(self.convs)):
            out = self.convs[i].accumulate(out, xs[i], relu=self.relu and i == last)
        return torch.relu(out) if self.relu and not last else out


def _add_into(out: Tensor, other: Tensor) -> Tensor:
    """``out + other``, in place on ``out`` (a fresh map) where that keeps the result dtype."""
    if (torch.promote_types(out.dtype, other.dtype) == out.dtype and out.shape == other.shape
            and not _recorded(out)):
        return out.add_(other)
    return out + other


def _channel_means(x: Tensor) -> Tensor:
    """Spatial means per channel (B x C), as ``x.mean(dim=(2, 3))``.

    For a bf16 channels-last map, one matrix-vector product over its (H*W) x C view, which
    accumulates in fp32 as the mean does but without first copying the map to fp32.
    """
    if (x.dtype == torch.bfloat16 and x.dim() == 4 and x.device.type == "cpu"
            and x.is_contiguous(memory_format=torch.channels_last)):
        b, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
        sums = torch.matmul(x.new_ones(1, 1, h * w), rows).reshape(b, c)
        return (sums.float() / (h * w)).to(x.dtype)
    return x.mean(dim=(2, 3))


class FusedSqueezeExcite(nn.Module):
    """:class:`SqueezeExcite` with its mean as :func:`_channel_means`; same call signature."""

    def __init__(self, se: SqueezeExcite) -> None:
        super().__init__()
        self.fc1, self.fc2 = se.fc1, se.fc2

    def scale(self, x: Tensor, pooled: Tensor | None = None) -> Tensor:
        """The per-channel weights (B x C x 1 x 1) the block multiplies ``x`` by."""
        if pooled is None:
            pooled = _channel_means(x)
        return torch.sigmoid(self.fc2(torch.relu(self.fc1(pooled))))[:, :, None, None]

    def forward(self, x: Tensor, pooled: Tensor | None = None) -> Tensor:
        return x * self.scale(x, pooled)


class FusedRainResidualBlock(nn.Module):
    """:class:`RainResidualBlock` with scaling and residual add as one ``addcmul``; keeps
    ``body`` and ``se``, which ``RainResidualNetwork.se_sums`` calls."""

    def __init__(self, block: RainResidualBlock) -> None:
        super().__init__()
        self.body = block.body
        self.se = FusedSqueezeExcite(block.se)

    def forward(self, x: Tensor, pooled: Tensor | None = None) -> Tensor:
        feat = self.body(x)
        return torch.addcmul(x, feat, self.se.scale(feat, pooled))


class FusedContextBlock(nn.Module):
    """:class:`ContextAggregationBlock` whose residual add lands in the body's fresh output."""

    def __init__(self, block: ContextAggregationBlock) -> None:
        super().__init__()
        self.body = block.body

    def forward(self, x: Tensor) -> Tensor:
        return _add_into(self.body(x), x)


def _upsample_dim(x: Tensor, s: int, dim: int) -> Tensor:
    """``x`` bilinearly upsampled ``s`` times along ``dim`` (align_corners=False), phase by
    phase: output ``s * i + r`` lies ``(r + 0.5) / s - 0.5`` pixels from input ``i``, so it
    is a lerp of input ``i`` and its neighbour on that side (the edge pixel repeated)."""
    n = x.shape[dim]
    shape = list(x.shape)
    shape[dim] = n * s
    out = x.new_empty(shape)
    phases = out.unflatten(dim, (n, s))
    for r in range(s):
        offset = (r + 0.5) / s - 0.5
        o = phases.select(dim + 1, r)
        near, far, edge = (1, 0, 0) if offset < 0 else (0, 1, n - 1)
        torch.lerp(x.narrow(dim, near, n - 1), x.narrow(dim, far, n - 1), abs(offset),
                   out=o.narrow(dim, near, n - 1))
        o.narrow(dim, edge, 1).copy_(x.narrow(dim, edge, 1))
    return out


def _upsample(x: Tensor, s: int) -> Tensor:
    """``F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)``; for a
    channels-last map on the CPU as two separable passes of lerps over strided views.

    PyTorch's CPU bilinear kernel is slow in bf16: 16-17 ms to make a 32-channel 1024 px
    map from any of RDMC's levels here, against 4-6 ms this way. In bf16 the pass between
    the two rounds once more (within a unit of the last place of the kernel's result).
    """
    if (x.dim() != 4 or x.device.type != "cpu" or s < 2 or _recorded(x)
            or not x.is_contiguous(memory_format=torch.channels_last)):
        return F.interpolate(x, scale_factor=float(s), mode="bilinear", align_corners=False)
    nhwc = x.permute(0, 2, 3, 1)
    return _upsample_dim(_upsample_dim(nhwc, s, 2), s, 1).permute(0, 3, 1, 2)


def _max_pool2(x: Tensor) -> Tensor:
    """``F.max_pool2d(x, 2)``; for a channels-last map of even sides, as two maxima over
    views of its memory (rows, then columns), which write no indices."""
    b, c, h, w = x.shape
    if h % 2 or w % 2 or not x.is_contiguous(memory_format=torch.channels_last):
        return F.max_pool2d(x, 2)
    rows = x.permute(0, 2, 3, 1).reshape(b, h // 2, 2, w // 2, 2 * c)
    pairs = torch.maximum(rows[:, :, 0], rows[:, :, 1]).reshape(b, h // 2, w // 2, 2, c)
    return torch.maximum(pairs[..., 0, :], pairs[..., 1, :]).permute(0, 3, 1, 2)


class FusedEncoderBranch(nn.Module):
    """:class:`EncoderBranch` with :func:`_max_pool2` between its levels."""

    def __init__(self, branch: EncoderBranch) -> None:
        super().__init__()
        self.units = branch.units

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for i, unit in enumerate(self.units):
            if i > 0:
                x = _max_pool2(x)
            x = unit(x)
            feats.append(x)
        return feats


class FusedRDMCStage(FoldedRDMCStage):
    """:class:`FoldedRDMCStage` whose gates are computed in place (module docstring)."""

    def __init__(self, stage: FoldedRDMCStage) -> None:  # noqa: D107 - takes its parts
        nn.Module.__init__(self)
        self.branches, self.bottleneck, self.up, self.out = (
            stage.branches, stage.bottleneck, stage.up, stage.out)
        self.fuse, self.decode, self.recruit = stage.fuse, stage.decode, stage.recruit

    def _resample(self, x: Tensor, factor: float) -> Tensor:
        if factor > 1 and float(factor).is_integer():
            return _upsample(x, int(factor))
        return _rescale(x, factor)

    def _add_gated(self, out: Tensor | None, g: Tensor, p: Tensor) -> Tensor:
        # ``g`` is a fresh map (a ``FusedSum``'s), so sigmoid and product go in place
        if g.dtype != p.dtype or _recorded(g):  # (dtypes: not with these networks)
            return super()._add_gated(out, g, p)
        return g.sigmoid_().mul_(p) if out is None else out.addcmul_(g.sigmoid_(), p)


def _fuse_sequential(seq: nn.Sequential) -> nn.Sequential:
    """A conv, or a sum of convs (already a ``FusedSum``), and the ReLU after it as one."""
    layers = list(seq)
    out: list[nn.Module] = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        relu = i + 1 < len(layers) and isinstance(layers[i + 1], nn.ReLU)
        if (relu and isinstance(layer, nn.Conv2d) and layer.padding_mode == "zeros"
                and not isinstance(layer.padding, str)):
            out.append(FusedConv(layer, relu=True))
            i += 2
        elif relu and isinstance(layer, FusedSum) and not layer.relu:
            layer.relu = True
            out.append(layer)
            i += 2
        else:
            out.append(layer)
            i += 1
    return nn.Sequential(*out)


def _rewrite(child: nn.Module) -> nn.Module | None:
    """The fused replacement of one module (its own children already rewritten), or None."""
    if isinstance(child, nn.Sequential):
        return _fuse_sequential(child)
    if isinstance(child, (SplitInputConv, SummedConvs)):
        return FusedSum(list(child.convs), split=isinstance(child, SplitInputConv))
    if isinstance(child, RainResidualBlock):
        return FusedRainResidualBlock(child)
    if isinstance(child, ContextAggregationBlock):
        return FusedContextBlock(child)
    if isinstance(child, EncoderBranch):
        return FusedEncoderBranch(child)
    if isinstance(child, FoldedRDMCStage) and not isinstance(child, FusedRDMCStage):
        return FusedRDMCStage(child)
    return None


def _rewrite_tree(module: nn.Module) -> None:
    # children first, so that a wrapper made for a block holds its rewritten parts
    for name, child in list(module.named_children()):
        _rewrite_tree(child)
        new = _rewrite(child)
        if new is not None:
            setattr(module, name, new)


@torch.no_grad()
def fuse_for_cpu(net: nn.Module) -> nn.Module:
    """``net`` (folded, :func:`fold_for_inference`) with the rewrites of the module
    docstring, in place; unchanged where :func:`fusion_available` says no or
    ``DERAIN_CPU_FUSION=off``. Returns it."""
    if cpu_fusion_enabled() and fusion_available():
        _rewrite_tree(net)
    return net
