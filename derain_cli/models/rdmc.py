"""RDMC: recursive dynamic multi-scale deraining network.

Jiang et al., "Contrastive learning-based recursive dynamic multi-scale network
for image deraining" (arXiv 2305.18092). The contrastive prior is a training
loss (``derain_cli.losses``); this module is the network.

Design as implemented here (the paper leaves some details open):

* Recursion: ``stages`` passes with shared weights. Stage t sees
  ``concat(O, Y_{t-1})`` (6 channels, ``Y_0 = O``) and returns
  ``Y_t = Y_{t-1} + f(concat(O, Y_{t-1}))``.
* Multi-scale feature extraction: three parallel encoder branches, branch b
  using dilation ``d_b`` in (1, 2, 3). A unit at level l is
  ``conv3x3 -> BN -> ReLU -> conv3x3(dilation d_b) -> BN -> ReLU`` with
  ``channels[l]`` outputs (32, 64, 128, 256, 256 in the full model); the very
  first conv of each branch is dilated too, so the branches differ from their
  first layer on. 2x max-pooling between levels (four downsamplings). Each
  branch feeds only itself; at every level the three branch outputs are
  concatenated and fused by a 3x3 conv + BN + ReLU to ``channels[l]``: the
  skip feature ``S_l``.
* Decoder (U-Net style): ``D_5`` = one conv unit (two 3x3 convs) on ``S_5``. For
  l = 4..1: ``U = conv1x1(upsample2x(D_{l+1}))``;
  ``D_l = unit(concat(U, S_l, R_l))``, and a final 1x1 conv maps ``D_1`` to
  the 3-channel residual.
* Dynamic cross-level information recruitment ``R_l``: the decoder level l
  recruits every *non-adjacent* encoder level m (|m - l| >= 2). Each ``S_m``
  is resampled to level l (bilinear up, or area down) and projected by a
  1x1 conv to ``channels[l]``: ``P_m``. A gate
  ``G_m = sigmoid(conv1x1(concat(U, P_m)))`` is computed per pixel and channel
  from the features themselves, so what is recruited depends on the input;
  ``R_l = sum_m G_m * P_m``. High-level context can thereby compensate the
  shallow levels and vice versa. Gates are local (no global pooling), which
  keeps tiled inference faithful.
* Any input size: the image is padded (reflect, or replicate where the image
  is too small to reflect) to a multiple of 16 and the result cropped back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .configs import RDMCConfig  # (its own module: read without PyTorch)


def _unit(cin: int, cout: int, dilation: int, first_dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=first_dilation, dilation=first_dilation),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=dilation, dilation=dilation),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Resample a pyramid level to another's size: bilinear up, area average down.

    Levels differ by exact powers of two (inputs are padded to the size
    multiple), so a fixed-kernel average pool is the area average; unlike
    ``adaptive_avg_pool2d`` it exports to ONNX with dynamic shapes.
    """
    if x.shape[-2:] == size:
        return x
    if x.shape[-2] < size[0]:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return F.avg_pool2d(x, int(x.shape[-2]) // int(size[0]))


class EncoderBranch(nn.Module):
    """One dilation's encoder: a unit per level, max-pooling between levels."""

    def __init__(self, cin: int, channels: tuple[int, ...], dilation: int) -> None:
        super().__init__()
        units = []
        prev = cin
        for i, c in enumerate(channels):
            units.append(_unit(prev, c, dilation, first_dilation=dilation if i == 0 else 1))
            prev = c
        self.units = nn.ModuleList(units)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for i, unit in enumerate(self.units):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = unit(x)
            feats.append(x)
        return feats


class Recruitment(nn.Module):
    """Input-dependent gated recruitment of non-adjacent encoder levels."""

    def __init__(self, level: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        c = channels[level]
        self.sources = [m for m in range(len(channels)) if abs(m - level) >= 2]
        self.proj = nn.ModuleList(nn.Conv2d(channels[m], c, 1) for m in self.sources)
        self.gate = nn.ModuleList(nn.Conv2d(2 * c, c, 1) for _ in self.sources)

    def forward(self, up: Tensor, skips: list[Tensor]) -> Tensor:
        size = (up.shape[-2], up.shape[-1])
        out = torch.zeros_like(up)
        for m, proj, gate in zip(self.sources, self.proj, self.gate, strict=True):
            p = proj(_resize(skips[m], size))
            out = out + torch.sigmoid(gate(torch.cat([up, p], dim=1))) * p
        return out


class RDMCStage(nn.Module):
    """One recursion: multi-scale encoder, fusion, dynamic decoder, residual."""

    def __init__(self, cfg: RDMCConfig) -> None:
        super().__init__()
        ch = cfg.channels
        n = len(ch)
        self.branches = nn.ModuleList(EncoderBranch(6, ch, d) for d in cfg.dilations)
        nb = len(cfg.dilations)
        self.fuse = nn.ModuleList(
            nn.Sequential(nn.Conv2d(nb * c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(True))
            for c in ch
        )
        self.bottleneck = _unit(ch[-1], ch[-1], 1)
        self.up = nn.ModuleList(nn.Conv2d(ch[level + 1], ch[level], 1) for level in range(n - 1))
        self.recruit = nn.ModuleList(Recruitment(level, ch) for level in range(n - 1))
        self.decode = nn.ModuleList(_unit(3 * ch[level], ch[level], 1) for level in range(n - 1))
        self.out = nn.Conv2d(ch[0], 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        per_branch = [b(x) for b in self.branches]
        skips = [
            fuse(torch.cat([feats[level] for feats in per_branch], dim=1))
            for level, fuse in enumerate(self.fuse)
        ]
        d = self.bottleneck(skips[-1])
        for level in reversed(range(len(skips) - 1)):
            s = skips[level]
            u = self.up[level](F.interpolate(d, size=s.shape[-2:], mode="bilinear",
                                             align_corners=False))
            r = self.recruit[level](u, skips)
            d = self.decode[level](torch.cat([u, s, r], dim=1))
        return self.out(d)


class RDMC(nn.Module):
    """Recursive dynamic multi-scale network (weights shared across stages)."""

    #: Tile overlap and smallest tile the tiler needs (``enhancer.default_overlap``,
    #: ``Derainer``). Four poolings give RDMC a reach far beyond Semi-DRDNet's: the trained
    #: rdmc-lite, 1024 px in 256 px tiles, agrees with its untiled output to 39.9 dB with
    #: 48 px of overlap, 41.6 with 64, 47.3 with 96 and 51.2 with 128
    #: (``benchmarks/tiling_agreement.py -m rdmc-lite --overlap N``). On
    #: tests/test_tiling.py's scene the criterion test failed with 96 px (an ad hoc run
    #: of it with 128 px: 44.9 dB). So tiles are at least 512 px, where 96 px of overlap
    #: is enough: 52.4 dB (128 px: 57.1) with ``--tile 512 --backend onnx``, and 57.0 dB
    #: (62.1) for 1024 px tiles of a 2048 px image (``--size 2048 --tile 1024``, the
    #: automatic tile). 96 px sends 5 % fewer pixels through the network than 128 px on a
    #: 12 MP photo in 1024 px tiles (``tiling.plan_tiles``).
    tile_overlap = 96
    min_tile = 512

    def __init__(self, cfg: RDMCConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or RDMCConfig()
        self.stage = RDMCStage(self.cfg)
        self.size_multiple = 2 ** (len(self.cfg.channels) - 1)

    @property
    def global_stats_shape(self) -> tuple[int, int] | None:
        """RDMC has no whole-image statistics: tiles are independent."""
        return None

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """All stage outputs (the last is the result); training may supervise each."""
        h, w = x.shape[-2:]
        m = self.size_multiple
        ph, pw = (-h) % m, (-w) % m
        xp = x
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            xp = F.pad(x, (0, pw, 0, ph), mode=mode)
        y = xp
        outs = []
        for _ in range(self.cfg.stages):
            y = y + self.stage(torch.cat([xp, y], dim=1))
            outs.append(y[..., :h, :w])
        return outs

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_stages(x)[-1]
