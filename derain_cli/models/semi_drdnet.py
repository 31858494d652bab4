"""Semi-DRDNet: rain residual network + detail repair network.

Shen et al., "Detail-recovery Image Deraining via Dual Sample-augmented
Contrastive Learning" (arXiv 2204.02772), whose backbone is DRD-Net (Deng et
al., CVPR 2020). The contrastive regularisation lives in the training losses;
this module is the network only.

Structure (``width`` = 64, 16 + 16 blocks in the paper-size configuration):

* Rain residual network: 3x3 conv 3->w + PReLU; ``rain_blocks`` blocks of
  conv-BN-PReLU-conv-BN, squeeze-and-excitation (global mean, FC w->w/16, ReLU,
  FC w/16->w, sigmoid, no biases) and a residual add; conv+BN with a global
  skip to the head's output; a 3x3 conv w->3 gives the rain layer R.
* Detail repair network: the same skeleton with ``detail_blocks`` structure-
  detail context aggregation blocks (DCCL-BN-PReLU-DCCL-BN + skip). A DCCL is
  three parallel 3x3 convs with dilations 1, 3, 5, concatenated and fused by a
  1x1 conv 3w->w. It sees the rainy image O and predicts the lost details D.
* Output ``O - R + D``; ``forward_parts`` also returns ``O - R``, R and D,
  which training supervises.

Whole-image statistics. The SE blocks average over the whole image, so a tile
seen alone would get other channel weights than the full image. The network
therefore takes the SE means as an optional input ``pooled`` (B x n_se x w)
and exposes ``se_sums`` which returns, per SE block, the (mask-weighted)
spatial sums of the activations the block would pool. The tiler accumulates
those sums over all tiles to obtain whole-image means and feeds them back, so
tiled and untiled inference agree (see ``derain_cli.tiling``). Keeping this
functional (tensors in, tensors out) lets the same design export to ONNX.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from .configs import SemiDRDNetConfig  # (its own module: read without PyTorch)


class SemiDRDOutput(NamedTuple):
    """Everything training needs: final image, first estimate, rain and detail layers."""

    out: Tensor
    coarse: Tensor
    rain: Tensor
    detail: Tensor


def _conv3(cin: int, cout: int, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation)


class SqueezeExcite(nn.Module):
    """Channel attention from a global mean; the mean can be supplied from outside."""

    def __init__(self, width: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, width // reduction)
        self.fc1 = nn.Linear(width, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, width, bias=False)

    def forward(self, x: Tensor, pooled: Tensor | None = None) -> Tensor:
        if pooled is None:
            pooled = x.mean(dim=(2, 3))
        scale = torch.sigmoid(self.fc2(torch.relu(self.fc1(pooled))))
        return x * scale[:, :, None, None]


class RainResidualBlock(nn.Module):
    """conv-BN-PReLU-conv-BN, squeeze-and-excitation, residual add."""

    def __init__(self, width: int, reduction: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv3(width, width),
            nn.BatchNorm2d(width),
            nn.PReLU(width),
            _conv3(width, width),
            nn.BatchNorm2d(width),
        )
        self.se = SqueezeExcite(width, reduction)

    def forward(self, x: Tensor, pooled: Tensor | None = None) -> Tensor:
        return x + self.se(self.body(x), pooled)


class DCCL(nn.Module):
    """Parallel dilated 3x3 convs fused by a 1x1 conv (structure-detail context)."""

    def __init__(self, width: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(_conv3(width, width, d) for d in dilations)
        self.fuse = nn.Conv2d(width * len(dilations), width, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fuse(torch.cat([b(x) for b in self.branches], dim=1))


class ContextAggregationBlock(nn.Module):
    """Structure-detail context aggregation block: DCCL-BN-PReLU-DCCL-BN + skip."""

    def __init__(self, width: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.body = nn.Sequential(
            DCCL(width, dilations),
            nn.BatchNorm2d(width),
            nn.PReLU(width),
            DCCL(width, dilations),
            nn.BatchNorm2d(width),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class RainResidualNetwork(nn.Module):
    """Predicts the rain layer R from the rainy image."""

    def __init__(self, cfg: SemiDRDNetConfig) -> None:
        super().__init__()
        w = cfg.width
        self.head = nn.Sequential(_conv3(3, w), nn.PReLU(w))
        self.blocks = nn.ModuleList(
            RainResidualBlock(w, cfg.se_reduction) for _ in range(cfg.rain_blocks)
        )
        self.body = nn.Sequential(_conv3(w, w), nn.BatchNorm2d(w))
        self.tail = _conv3(w, 3)

    def forward(self, x: Tensor, pooled: Tensor | None = None) -> Tensor:
        h0 = self.head(x)
        h = h0
        for i, block in enumerate(self.blocks):
            h = block(h, None if pooled is None else pooled[:, i])
        return self.tail(self.body(h) + h0)

    def se_sums(self, x: Tensor, pooled: Tensor | None, mask: Tensor | None) -> Tensor:
        """Per block, the spatial sum (weighted by ``mask``) of what its SE pools."""
        sums = []
        h = self.head(x)
        for i, block in enumerate(self.blocks):
            feat = block.body(h)
            sums.append((feat if mask is None else feat * mask).sum(dim=(2, 3)))
            p = None if pooled is None else pooled[:, i]
            h = h + block.se(feat, p)
        return torch.stack(sums, dim=1)


class DetailRepairNetwork(nn.Module):
    """Predicts the background details D that rain removal would wash away."""

    def __init__(self, cfg: SemiDRDNetConfig) -> None:
        super().__init__()
        w = cfg.width
        self.head = nn.Sequential(_conv3(3, w), nn.PReLU(w))
        self.blocks = nn.Sequential(
            *(ContextAggregationBlock(w, cfg.dilations) for _ in range(cfg.detail_blocks))
        )
        self.body = nn.Sequential(_conv3(w, w), nn.BatchNorm2d(w))
        self.tail = _conv3(w, 3)

    def forward(self, x: Tensor) -> Tensor:
        h0 = self.head(x)
        return self.tail(self.body(self.blocks(h0)) + h0)


class SemiDRDNet(nn.Module):
    """Semi-DRDNet deraining network: ``O - R + D``."""

    size_multiple = 1

    def __init__(self, cfg: SemiDRDNetConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or SemiDRDNetConfig()
        self.rain_net = RainResidualNetwork(self.cfg)
        self.detail_net = DetailRepairNetwork(self.cfg)

    @property
    def receptive_radius(self) -> int:
        """How many pixels away an input pixel still reaches the output (SE means aside).

        Every 3x3 conv adds its dilation: the rain network's head, two per block, body and
        tail; the detail network's head, two DCCLs per block (the widest dilation counts),
        body and tail. The tiler sizes the tile overlap from it (``enhancer``).
        """
        rain = 3 + 2 * self.cfg.rain_blocks
        detail = 3 + 2 * self.cfg.detail_blocks * max(self.cfg.dilations)
        return max(rain, detail)

    @property
    def global_stats_shape(self) -> tuple[int, int] | None:
        """(number of SE blocks, channels) of the whole-image statistics, see module doc."""
        return (self.cfg.rain_blocks, self.cfg.width)

    def forward_parts(self, x: Tensor, pooled: Tensor | None = None) -> SemiDRDOutput:
        rain = self.rain_net(x, pooled)
        detail = self.detail_net(x)
        coarse = x - rain
        return SemiDRDOutput(coarse + detail, coarse, rain, detail)

    def forward(self, x: Tensor, pooled: Tensor | None = None) -> Tensor:
        return self.forward_parts(x, pooled).out

    def se_sums(
        self, x: Tensor, pooled: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        """Mask-weighted spatial sums per SE block (B x n_se x width); runs the rain net only."""
        return self.rain_net.se_sums(x, pooled, mask)
