"""Inference-only rewrites of a trained network: the same function with fewer, cheaper ops.

Training needs the modules as the papers describe them (batch norm, the DCCL's concat and
1x1 fusion, PReLU). Once the weights are frozen, three exact rewrites make the exported
graphs cheaper without changing what they compute (beyond float rounding):

* **Conv + BatchNorm** -> one conv with scaled weights and shifted bias.
* **DCCL + BatchNorm** -> three dilated 3x3 convs whose outputs are summed. A DCCL is
  three parallel dilated convs, concatenated and fused by a 1x1 conv; there is no
  nonlinearity between, so each branch composed with its slice of the 1x1 conv is a 3x3
  conv again, and the batch norm after it scales each output channel. This removes the
  96-channel concat and the 1x1 conv (a ninth of the DCCL's multiply-adds).
* **PReLU with slopes in [0, 1]** -> ``max(x, slope * x)``, which is the same function
  there. ONNX Runtime's ``PRelu`` kernel takes 90 ms on a 32 x 768 x 1024 tensor on a
  2-core AVX2 CPU; ``Mul`` + ``Max`` take 40 ms (``python benchmarks/ort_ops.py prelu``).

Why it matters: profiling the int8 graph of semi-drdnet-lite (``benchmarks/ort_ops.py profile``, a
768 x 1024 tile) put 12 % of the time in ``PRelu`` and 12 % in ``QLinearConcat``.

Used by :func:`derain_cli.export.export_onnx`; the trained module is never modified.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

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
    return folded.to(device)
