"""Grow a trained network into a wider, deeper one of its architecture (``derain grow``).

Why: the paper-size networks can only be trained on a GPU, and this project gets one for
a few minutes at a time (README, "Models and weights"). Trained from scratch, each such
chunk would begin far below the small models that many CPU hours have already made. A
grown network starts exactly where its small source is (the same output to rounding) and
has the big one's capacity to go further, so every GPU minute trains from there.

How (function-preserving growth, in the spirit of Net2Net; written here from the idea,
for these two architectures):

* Channels: the source's channels keep their indices, the new ones come after them. A
  convolution or linear layer's old outputs read only old inputs, with the source's
  weights; their weights from new inputs are zero. New outputs keep the target's own
  random initialisation over all inputs, so they carry signal from the start and the
  zero weights get gradients (a net of zeros both ways would never learn). Concatenated
  inputs (Semi-DRDNet's DCCL fusion, RDMC's fusion, decoder and gates) are mapped group by
  group. Per-channel tensors (biases, BatchNorm, PReLU) are copied for old channels. The
  old channels therefore compute exactly what the source computed, and nothing new
  reaches the output (the last layer reads old channels only).
* Blocks (Semi-DRDNet's rain and detail blocks): the source's blocks are spread evenly
  over the target's (first to first, last to last); each added block starts as the
  identity: its last BatchNorm has weight and bias zero, so its residual branch adds
  zero (and the SE scale of a zero branch is irrelevant). Gradients still reach that
  BatchNorm's weight, so the block learns.
* RDMC's recursions share their weights, so a third recursion cannot start as the
  identity: growing ``stages`` changes the function. ``grow`` allows it and says so
  (``GrowResult.exact`` is False, and the agreement with the source is measured).

The result is an ordinary weights file (fp16, like the bundles) for ``derain train
--weights FILE`` (which continues from it; ``--batchnorm refresh`` lets the statistics
of the new channels be learned).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .models import RDMC, SemiDRDNet, get_spec

#: a Semi-DRDNet block's tensors: (network, block index, rest of the name)
_BLOCK = re.compile(r"^(rain_net|detail_net)\.blocks\.(\d+)\.(.+)$")


class GrowError(ValueError):
    """A target the source cannot grow into (smaller somewhere, or another architecture)."""


@dataclass
class GrowResult:
    """What ``grow_file`` wrote and how closely the grown network follows its source."""

    weights: Path
    source: str
    target: str
    source_params: int
    target_params: int
    #: whether the growth preserves the function by construction (False: RDMC stages)
    exact: bool
    #: largest |grown - source| output difference on the probe image (fp32)
    max_abs_diff: float
    #: PSNR of the grown output against the source's on the probe image (inf when equal)
    agreement_db: float


def _block_positions(old: int, new: int) -> list[int]:
    """Where each of ``old`` blocks goes among ``new``: spread evenly, first and last kept."""
    if old == 1:
        return [0]
    return [round(j * (new - 1) / (old - 1)) for j in range(old)]


def _check_sizes(src: nn.Module, dst_cfg: Any) -> None:
    """Raise a GrowError where the target is smaller than the source or shaped otherwise."""
    s, d = asdict(src.cfg), asdict(dst_cfg)
    if isinstance(src, SemiDRDNet):
        smaller = [k for k in ("width", "rain_blocks", "detail_blocks") if d[k] < s[k]]
        hidden = lambda c: max(1, c["width"] // c["se_reduction"])  # noqa: E731 - as SE does
        if hidden(d) < hidden(s):
            smaller.append("se_reduction (fewer SE hidden units)")
        same = ["dilations"]
    else:
        if len(d["channels"]) != len(s["channels"]):
            raise GrowError(f"RDMC levels differ ({len(s['channels'])} -> "
                            f"{len(d['channels'])}): grow keeps the number of levels")
        smaller = [f"channels[{i}]" for i, (a, b) in enumerate(
            zip(s["channels"], d["channels"], strict=True)) if b < a]
        smaller += ["stages"] if d["stages"] < s["stages"] else []
        same = ["dilations"]
    for k in same:
        if d[k] != s[k]:
            raise GrowError(f"{k} differ ({s[k]} -> {d[k]}): grow keeps them")
    if smaller:
        raise GrowError("the target is smaller than the source in " + ", ".join(smaller) +
                        "; grow only widens and deepens (derain distill makes smaller nets)")


def _groups(net: nn.Module, name: str, dim: int) -> int:
    """How many equal concatenated groups a tensor's dimension ``dim`` holds (1: none)."""
    if dim != 1:
        return 1
    if isinstance(net, SemiDRDNet):
        return len(net.cfg.dilations) if name.endswith("fuse.weight") else 1
    if re.search(r"(^|\.)fuse\.\d+\.0\.weight$", name):
        return len(net.cfg.dilations)  # the branches' features, one group per branch
    if re.search(r"(^|\.)decode\.\d+\.0\.weight$", name):
        return 3  # concat(U, S_l, R_l)
    if re.search(r"(^|\.)gate\.\d+\.weight$", name):
        return 2  # concat(U, P_m)
    return 1


def _index_map(old: int, new: int, groups: int) -> torch.Tensor:
    """New indices of a dimension's old entries (group g's entries stay in group g)."""
    if old % groups or new % groups:
        raise GrowError(f"cannot split {old} -> {new} entries into {groups} groups")
    go, gn = old // groups, new // groups
    return torch.cat([torch.arange(go) + g * gn for g in range(groups)])


def _place(old: torch.Tensor, init: torch.Tensor, net: nn.Module, name: str) -> torch.Tensor:
    """``init`` with ``old`` written over its old entries; old outputs read no new input."""
    if old.shape == init.shape:
        return old.to(init.dtype).clone()
    if old.dim() != init.dim():
        raise GrowError(f"{name}: {tuple(old.shape)} cannot grow into {tuple(init.shape)}")
    maps = [_index_map(o, n, _groups(net, name, d))
            for d, (o, n) in enumerate(zip(old.shape, init.shape, strict=True))]
    out = init.clone()
    if out.dim() >= 2:  # a weight: rows of old outputs start from zero, then the old weights
        out[maps[0]] = 0
    out[torch.meshgrid(*maps, indexing="ij")] = old.to(out.dtype)
    return out


def grow_network(src: nn.Module, target_config: Any, seed: int = 0) -> nn.Module:
    """``src`` grown into the (wider, deeper) ``target_config`` of its architecture.

    New parameters take the target's own initialisation drawn with ``seed``; see the
    module docstring for what keeps the function. Returns the grown network in eval mode.
    """
    if isinstance(target_config, dict):
        target_config = type(src.cfg)(**{k: tuple(v) if isinstance(v, list) else v
                                         for k, v in target_config.items()})
    if not isinstance(src, SemiDRDNet | RDMC):
        raise GrowError(f"cannot grow a {type(src).__name__}")
    if type(target_config) is not type(src.cfg):
        raise GrowError(f"the target is another architecture ({type(target_config).__name__})"
                        f" than the source's ({type(src.cfg).__name__})")
    _check_sizes(src, target_config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dst = type(src)(target_config)
    init, old = dst.state_dict(), src.state_dict()
    renamed: dict[str, str] = {}  # target name -> source name
    if isinstance(src, SemiDRDNet):
        spots = {net: dict(zip(_block_positions(n_old, n_new), range(n_old), strict=True))
                 for net, n_old, n_new in (
                     ("rain_net", src.cfg.rain_blocks, target_config.rain_blocks),
                     ("detail_net", src.cfg.detail_blocks, target_config.detail_blocks))}
    for name in init:
        m = _BLOCK.match(name) if isinstance(src, SemiDRDNet) else None
        if m is None:
            renamed[name] = name
        elif int(m[2]) in spots[m[1]]:
            renamed[name] = f"{m[1]}.blocks.{spots[m[1]][int(m[2])]}.{m[3]}"
    state = {}
    for name, t in init.items():
        if name in renamed:
            state[name] = _place(old[renamed[name]], t, dst, name)
        elif re.search(r"\.body\.4\.(weight|bias)$", name):  # an added block: identity
            state[name] = torch.zeros_like(t)
        else:
            state[name] = t
    dst.load_state_dict(state)
    return dst.eval()


def _probe(seed: int) -> torch.Tensor:
    """A 96 px image with edges, gradients and thin bright streaks, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, 96), torch.linspace(0, 1, 96), indexing="ij")
    img = torch.stack([x, y, (x > 0.5).float() * 0.6 + 0.2]) * 0.7
    img = img + 0.1 * torch.rand(3, 96, 96, generator=g)
    img[:, :, ::7] += 0.25
    return img.clamp(0, 1)[None]


def agreement(src: nn.Module, grown: nn.Module, seed: int = 0) -> tuple[float, float]:
    """(max |difference|, PSNR in dB) between the two networks' fp32 outputs on a probe."""
    x = _probe(seed)
    with torch.inference_mode():
        a, b = src.float().eval()(x), grown.float().eval()(x)
    diff = (a - b).abs()
    mse = float((diff ** 2).mean())
    return float(diff.max()), (math.inf if mse == 0 else 10 * math.log10(1 / mse))


def grow_file(source: str, to: str, out: str | os.PathLike[str], *, seed: int = 0,
              overwrite: bool = False) -> GrowResult:
    """Grow ``source`` (a registered model's published weights, or a weights file) into
    the registered model ``to`` and write it to ``out`` (safetensors, fp16)."""
    from .hub import sha256_file
    from .weights import load_pretrained, model_from_file, resolve, save_weights

    out = Path(out)
    if out.exists() and not overwrite:
        raise GrowError(f"{out} exists; choose another -o or pass --overwrite")
    if out.suffix != ".safetensors":
        raise GrowError(f"{out}: the output is a weights file; name it *.safetensors")
    spec = get_spec(to)
    if Path(source).suffix in (".safetensors", ".pt", ".pth") or os.sep in source:
        src, label, sha = model_from_file(source), Path(source).name, sha256_file(source)
    else:
        src, label, sha = load_pretrained(source, quiet=True), source, sha256_file(
            resolve(source, quiet=True))
    src = src.float().eval()
    arch = "semi-drdnet" if isinstance(src, SemiDRDNet) else "rdmc"
    if spec.arch != arch:
        raise GrowError(f"{label} holds {arch} weights and {to} is {spec.arch}: grow keeps "
                        "the architecture (derain distill --student teaches another one)")
    grown = grow_network(src, spec.config, seed=seed)
    exact = not (isinstance(src, RDMC) and grown.cfg.stages != src.cfg.stages)
    diff, db = agreement(src, grown, seed)
    note = (f"grown from {label} (sha256 {sha}) by derain grow, seed {seed}; "
            f"agreement with it on the probe {db:.1f} dB")
    save_weights(grown, out, name=to, arch=spec.arch, config=spec.config,
                 metadata={"grown_from": label, "grown_from_sha256": sha,
                           "note": note, "exact": json.dumps(exact)})
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    return GrowResult(weights=out, source=label, target=to, source_params=count(src),
                      target_params=count(grown), exact=exact, max_abs_diff=diff,
                      agreement_db=db)


__all__ = ["GrowError", "GrowResult", "agreement", "grow_file", "grow_network"]
