"""Inference-only rewrites of a trained network: the same function with fewer, cheaper ops.

Training needs the modules as the papers describe them (batch norm, the DCCL's concat and
1x1 fusion, PReLU). Once the weights are frozen, five exact rewrites make the
networks cheaper without changing what they compute (beyond float rounding):

* **Conv + BatchNorm** -> one conv with scaled weights and shifted bias.
* **DCCL + BatchNorm** -> three dilated 3x3 convs whose outputs are summed. A DCCL is
  three parallel dilated convs, concatenated and fused by a 1x1 conv; there is no
  nonlinearity between, so each branch composed with its slice of the 1x1 conv is a 3x3
  conv again, and the batch norm after it scales each output channel. This removes the
  96-channel concat and the 1x1 conv (a tenth of the DCCL's multiply-adds).
* **PReLU with slopes in [0, 1]** -> ``max(x, slope * x)``, which is the same function
  there. ONNX Runtime's ``PRelu`` kernel takes 90 ms on a 32 x 768 x 1024 tensor on a
  2-core AVX2 CPU; ``Mul`` + ``Max`` take 40 ms (``python benchmarks/ort_ops.py prelu``).
* **RDMC: 1x1 conv before upsampling** (:class:`FoldedRDMCStage`). A 1x1 conv and a
  bilinear upsampling are both linear, and bilinear weights sum to one, so
  ``conv1x1(up(x)) == up(conv1x1(x))`` (bias included). RDMC's decoder projects every
  upsampled feature by a 1x1 conv (the ``up`` convs, and the recruitment's ``proj`` of
  deeper encoder levels); projecting first runs those convs at the low resolution and
  upsamples the projected channels only: at full resolution 48 instead of 264 channels
  (rdmc-lite: the recruitment's 36 instead of 240, the ``up`` path's 12 instead of 24),
  which was most of the graph's ``Resize`` time and memory traffic.
* **RDMC: concat + conv** -> a sum of convs over the parts (:class:`SplitInputConv`, in
  :class:`FoldedRDMCStage`'s fuse, decode and gate convs): no concatenated copy.

Why it matters: profiling the int8 graph of semi-drdnet-lite (``benchmarks/ort_ops.py profile``, a
768 x 1024 tile) put 12 % of the time in ``PRelu`` and 12 % in ``QLinearConcat``.

Used by :func:`derain_cli.export.export_onnx`, ``TorchRunner`` (PyTorch inference) and
the benchmark; the trained module is never modified.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .rdmc import RDMCStage
from .semi_drdnet import DCCL


class MaxPReLU(nn.Module):
    """``max(x, slope * x)``: PReLU for per-channel slopes in [0, 1], as two cheap ops."""

    def __init__(self, slope: Tensor) -> None:
        super().__init__()
        self.register_buffer("slope", slope.detach().reshape(1, -1, 1, 1).clone())

    def forward(self, x: Tensor) -> Tensor:
        return torch.maximum(x, x * self.slope)


class SummedConvs(nn.Module):
    """Sum of parallel convolutions of the same input (the bias lives on the first)."""

    def __init__(self, convs: list[nn.Conv2d]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(convs)

    def forward(self, x: Tensor) -> Tensor:
        out = self.convs[0](x)
        for conv in self.convs[1:]:
            out = out + conv(x)
        return out


class SplitInputConv(nn.Module):
    """``conv(cat(xs, dim=1))`` as ``sum_i conv_i(xs[i])``: the same sum, without the concat.

    ONNX Runtime's blocked-layout (NCHWc) convolutions cannot read a ``Concat``: each one
    costs a layout reorder of the concatenated tensor plus the copy itself. A conv's sum
    with another conv's output, on the other hand, is fused into the conv.
    """

    def __init__(self, conv: nn.Conv2d, splits: list[int]) -> None:
        super().__init__()
        if sum(splits) != conv.in_channels or conv.groups != 1:
            raise ValueError(f"cannot split {conv} into inputs of {splits} channels")
        convs, start = [], 0
        for i, n in enumerate(splits):
            part = nn.Conv2d(n, conv.out_channels, conv.kernel_size, stride=conv.stride,
                             padding=conv.padding, dilation=conv.dilation,
                             bias=i == 0 and conv.bias is not None)
            part.weight.data.copy_(conv.weight.data[:, start:start + n])
            if part.bias is not None:
                part.bias.data.copy_(conv.bias.data)
            convs.append(part)
            start += n
        self.convs = nn.ModuleList(convs)

    def forward(self, xs: list[Tensor]) -> Tensor:
        out = self.convs[0](xs[0])
        for conv, x in zip(self.convs[1:], xs[1:], strict=True):
            out = out + conv(x)
        return out


def _split_first(seq: nn.Sequential, splits: list[int]) -> nn.Sequential:
    """``seq`` whose first conv takes a list of inputs (``SplitInputConv``)."""
    return nn.Sequential(SplitInputConv(seq[0], splits), *list(seq)[1:])


def _rescale(x: Tensor, factor: float) -> Tensor:
    """RDMC's ``_resize`` between levels ``factor`` (a power of two, or 1/that) apart.

    The same values as resampling to the other level's size (inputs are padded to the
    size multiple), but the ONNX graph gets a constant ``scales`` instead of sizes taken
    from a tensor's shape, which ONNX Runtime can run in its blocked layout.
    """
    if factor > 1:
        return nn.functional.interpolate(x, scale_factor=float(factor), mode="bilinear",
                                         align_corners=False)
    if factor < 1:
        return nn.functional.avg_pool2d(x, round(1 / factor))
    return x


class FoldedRDMCStage(nn.Module):
    """An RDMC stage rewritten for inference (module docstring); the same function.

    Holds the trained stage's (folded) submodules under the same names; the convs that
    read a concatenation take its parts instead (``SplitInputConv``), and the 1x1 convs
    run before the upsamplings.
    """

    def __init__(self, stage: RDMCStage) -> None:
        super().__init__()
        ch = [seq[0].out_channels for seq in stage.fuse]
        nb = len(stage.branches)
        self.branches, self.bottleneck, self.up, self.out = (
            stage.branches, stage.bottleneck, stage.up, stage.out)
        self.fuse = nn.ModuleList(_split_first(f, [c] * nb) for f, c in zip(stage.fuse, ch,
                                                                            strict=True))
        self.decode = nn.ModuleList(_split_first(d, [c] * 3)
                                    for d, c in zip(stage.decode, ch, strict=False))
        self.recruit = stage.recruit
        for level, rec in enumerate(self.recruit):
            rec.gate = nn.ModuleList(SplitInputConv(g, [ch[level]] * 2) for g in rec.gate)

    def _resample(self, x: Tensor, factor: float) -> Tensor:
        """``_rescale``; a method so that ``cpu_fusion.FusedRDMCStage`` can replace it."""
        return _rescale(x, factor)

    def _recruit(self, level: int, u: Tensor, skips: list[Tensor]) -> Tensor:
        rec = self.recruit[level]
        out = None
        for m, proj, gate in zip(rec.sources, rec.proj, rec.gate, strict=True):
            factor = 2.0 ** (m - level)
            # down: pool first (fewer pixels to project); up: project first (fewer channels)
            p = (proj(self._resample(skips[m], factor)) if m < level
                 else self._resample(proj(skips[m]), factor))
            out = self._add_gated(out, gate([u, p]), p)
        return out if out is not None else torch.zeros_like(u)

    def _add_gated(self, out: Tensor | None, g: Tensor, p: Tensor) -> Tensor:
        """``out + sigmoid(g) * p`` (the first term where ``out`` is None); a method so that
        ``cpu_fusion.FusedRDMCStage`` can do it in place."""
        term = torch.sigmoid(g) * p
        return term if out is None else out + term

    def forward(self, x: Tensor) -> Tensor:
        per_branch = [b(x) for b in self.branches]
        skips = [fuse([feats[level] for feats in per_branch])
                 for level, fuse in enumerate(self.fuse)]
        d = self.bottleneck(skips[-1])
        for level in reversed(range(len(skips) - 1)):
            u = self._resample(self.up[level](d), 2)
            r = self._recruit(level, u, skips)
            d = self.decode[level]([u, skips[level], r])
        return self.out(d)


def _bn_affine(bn: nn.BatchNorm2d | None, channels: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel (scale, shift) of an eval-mode batch norm; identity when absent."""
    if bn is None:
        return torch.ones(channels, dtype=like.dtype), torch.zeros(channels, dtype=like.dtype)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


@torch.no_grad()
def fold_dccl(dccl: DCCL, bn: nn.BatchNorm2d | None = None) -> SummedConvs:
    """``bn(dccl(x))`` as a sum of dilated convs (see the module docstring)."""
    fuse_w = dccl.fuse.weight[:, :, 0, 0]  # (C, n * C)
    fuse_b = dccl.fuse.bias if dccl.fuse.bias is not None else torch.zeros(fuse_w.shape[0])
    cout = fuse_w.shape[0]
    scale, shift = _bn_affine(bn, cout, fuse_w)
    bias = fuse_b.clone()
    convs = []
    start = 0
    for branch in dccl.branches:
        w_slice = fuse_w[:, start:start + branch.out_channels]
        start += branch.out_channels
        conv = nn.Conv2d(branch.in_channels, cout, branch.kernel_size, padding=branch.padding,
                         dilation=branch.dilation, bias=not convs)
        conv.weight.copy_(torch.einsum("oc,cikl->oikl", w_slice, branch.weight)
                          * scale[:, None, None, None])
        if branch.bias is not None:
            bias += w_slice @ branch.bias
        convs.append(conv)
    convs[0].bias.copy_(bias * scale + shift)
    return SummedConvs(convs)


def _fold_sequential(seq: nn.Sequential, max_prelu: bool) -> nn.Sequential:
    layers = list(seq)
    out: list[nn.Module] = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        bn = nxt if isinstance(nxt, nn.BatchNorm2d) else None
        if isinstance(layer, nn.Conv2d) and bn is not None:
            out.append(fuse_conv_bn_eval(layer, bn))
            i += 2
            continue
        if isinstance(layer, DCCL):
            out.append(fold_dccl(layer, bn))
            i += 2 if bn is not None else 1
            continue
        if (max_prelu and isinstance(layer, nn.PReLU)
                and bool(((layer.weight >= 0) & (layer.weight <= 1)).all())):
            out.append(MaxPReLU(layer.weight))
        else:
            out.append(layer)
        i += 1
    return nn.Sequential(*out)


@torch.no_grad()
def fold_for_inference(net: nn.Module, *, max_prelu: bool = True) -> nn.Module:
    """An eval-mode deep copy of ``net`` with the rewrites of the module docstring applied.

    Attribute names are kept (``rain_net.blocks[i].body`` and so on), so code that walks
    the network's parts works on the copy unchanged. ``max_prelu=False`` keeps PReLU (the
    rewrite pays off in ONNX Runtime; PyTorch's own PReLU is a single fused kernel).
    """
    param = next(iter(net.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    folded = copy.deepcopy(net).cpu().eval()  # folded on the CPU, returned where net lives
    for module in list(folded.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Sequential):
                setattr(module, name, _fold_sequential(child, max_prelu))
    for module in list(folded.modules()):  # after the folding above, which the stage keeps
        for name, child in list(module.named_children()):
            if isinstance(child, RDMCStage):
                setattr(module, name, FoldedRDMCStage(child))
    return folded.to(device)
