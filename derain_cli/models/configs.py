"""The architectures' size records, kept apart from the networks.

The registry, ``derain models``, ``derain download`` and every option check read these
without importing PyTorch (two seconds or more on a laptop before a word is printed);
``semi_drdnet`` and ``rdmc`` build their networks from them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SemiDRDNetConfig:
    """Sizes of a Semi-DRDNet; the defaults are the paper's."""

    width: int = 64
    rain_blocks: int = 16
    detail_blocks: int = 16
    se_reduction: int = 16
    dilations: tuple[int, ...] = (1, 3, 5)


@dataclass(frozen=True)
class RDMCConfig:
    """Sizes of an RDMC network; the defaults are the paper-size model."""

    channels: tuple[int, ...] = (32, 64, 128, 256, 256)
    dilations: tuple[int, ...] = (1, 2, 3)
    stages: int = 3


#: architecture id -> its config dataclass
CONFIGS: dict[str, type] = {"semi-drdnet": SemiDRDNetConfig, "rdmc": RDMCConfig}
