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

* BatchNorm statistics: the source's are kept for its channels. Those of new channels and
  added blocks would stay at the defaults (mean 0, variance 1), and ``derain train
  --weights`` keeps a file's statistics (refreshing them wrecks the distilled small
  models), so the new capacity would run never normalised, far under its intended scale
  (a review of 2026-12-04 found the new channels' batch spread a small fraction of the
  assumed one). ``grow`` therefore estimates them, and only them, from a few rainy images (yours:
  ``calibration``, else procedural scenes under synthetic rain): new channels never feed
  old ones and added blocks add zero whatever their statistics, so the output is still
  the source's.

The result is an ordinary weights file (fp16 like the bundles, or fp32 where the source's
tensors do not survive fp16 exactly) for ``derain train
--weights FILE``, which continues from it with these statistics kept; the agreement
``grow_file`` reports is measured on the file as written.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .models import (
    RDMC,
    SemiDRDNet,
    UnknownModelError,
    config_from_dict,
    config_to_dict,
    get_spec,
)

log = logging.getLogger(__name__)

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


def _arch_of(net: nn.Module) -> str:
    """The registry's architecture id of a network grow takes."""
    return "semi-drdnet" if isinstance(net, SemiDRDNet) else "rdmc"


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


def grow_network(src: nn.Module, target_config: Any, seed: int = 0,
                 calibration: list[np.ndarray] | None = None,
                 calibrate: bool = True,
                 on_image: Callable[[int, int], None] | None = None) -> nn.Module:
    """``src`` grown into the (wider, deeper) ``target_config`` of its architecture.

    New parameters take the target's own initialisation drawn with ``seed``; the new
    BatchNorm entries are estimated on rainy crops of ``calibration`` (HxWx3 uint8
    photos; None: procedural scenes), unless ``calibrate`` is False (they keep the
    defaults, mean 0 and variance 1, as grow left them before 2026-12-04: what a recipe
    of that time ran); see the module docstring for what keeps the function. Returns the
    grown network in eval mode. ``on_image(k, total)``: told as each calibration image is
    used (that pass is most of grow's time on a CPU).
    """
    if not isinstance(src, SemiDRDNet | RDMC):
        raise GrowError(f"cannot grow a {type(src).__name__}")
    if isinstance(target_config, dict):
        target_config = config_from_dict(_arch_of(src), target_config)
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
    fresh: dict[str, torch.Tensor] = {}  # BatchNorm name -> its entries not from the source
    for name, t in init.items():
        if name in renamed:
            state[name] = _place(old[renamed[name]], t, dst, name)
        elif re.search(r"\.body\.4\.(weight|bias)$", name):  # an added block: identity
            state[name] = torch.zeros_like(t)
        else:
            state[name] = t
        if name.endswith(".running_mean"):
            mask = torch.ones(t.shape[0], dtype=torch.bool)
            if name in renamed:
                mask[_index_map(old[renamed[name]].shape[0], t.shape[0], 1)] = False
            fresh[name.removesuffix(".running_mean")] = mask
    dst.load_state_dict(state)
    if calibrate and any(bool(m.any()) for m in fresh.values()):
        _calibrate(dst, fresh, calibration_images(calibration, CALIBRATION_COUNT, seed=seed),
                   on_image)
    return dst.eval()


#: How many rainy crops set a grown network's new BatchNorm statistics
CALIBRATION_COUNT = 8


def calibration_images(photos: list[np.ndarray] | None = None, count: int = CALIBRATION_COUNT,
                       size: int = 128, seed: int = 0) -> list[np.ndarray]:
    """``count`` rainy ``size`` px crops (HxWx3 float32) for BatchNorm statistics: crops
    of ``photos`` (HxWx3 uint8) under synthetic rain, or procedural scenes (gradients,
    blocks, texture) when none are given, so ``grow`` needs no data."""
    from .synth import synthesize

    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        if photos:
            img = photos[i % len(photos)]
            h, w = img.shape[:2]
            if min(h, w) < size:
                img = np.pad(img, ((0, max(0, size - h)), (0, max(0, size - w)), (0, 0)),
                             mode="reflect")
                h, w = img.shape[:2]
            y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
            clean = img[y:y + size, x:x + size].astype(np.float32) / 255
        else:
            yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
            base = rng.uniform(0.1, 0.8, 3).astype(np.float32)
            tilt = rng.uniform(-0.3, 0.3, (2, 3)).astype(np.float32)
            clean = base + yy[..., None] * tilt[0] + xx[..., None] * tilt[1]
            for _ in range(6):  # blocks with edges
                y0, x0 = rng.integers(0, size, 2)
                y1, x1 = y0 + rng.integers(8, size // 2), x0 + rng.integers(8, size // 2)
                clean[y0:y1, x0:x1] = rng.uniform(0.0, 1.0, 3)
            clean += rng.normal(0, 0.04, clean.shape).astype(np.float32)  # texture
            clean = np.clip(clean, 0, 1)
        rainy, _ = synthesize(clean, "mixed", seed=int(rng.integers(1 << 31)))
        out.append(rainy)
    return out


def _calibrate(net: nn.Module, fresh: dict[str, torch.Tensor], images: list[np.ndarray],
               on_image: Callable[[int, int], None] | None = None) -> None:
    """Estimate the running statistics of the ``fresh`` entries (BatchNorm name -> mask)
    as a from-scratch network's would be (``train.recalibrate_batchnorm``: batch
    statistics averaged over ``images``); every other entry keeps its value."""
    from .train import recalibrate_batchnorm

    norms = {n: m for n, m in net.named_modules() if isinstance(m, _BatchNorm)}
    kept = {n: (m.running_mean.clone(), m.running_var.clone(),
                m.num_batches_tracked.clone()) for n, m in norms.items()}
    recalibrate_batchnorm(net, _counted(images, on_image), torch.device("cpu"))
    for n, m in norms.items():
        mean, var, batches = kept[n]
        new = fresh.get(n, torch.zeros_like(mean, dtype=torch.bool))
        m.running_mean.copy_(torch.where(new, m.running_mean, mean))
        m.running_var.copy_(torch.where(new, m.running_var, var))
        m.num_batches_tracked.copy_(batches)
    net.eval()


def _counted(images: list[np.ndarray], on_image: Callable[[int, int], None] | None,
             ) -> Iterator[np.ndarray]:
    """``images`` one by one, ``on_image(k, total)`` told after the k-th is used."""
    for k, img in enumerate(images, 1):
        yield img
        if on_image is not None:
            on_image(k, len(images))


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


def _storage_dtype(net: nn.Module) -> torch.dtype:
    """fp16 (as the bundles are) when every tensor of ``net`` survives it exactly, else
    fp32: the grown file must compute what its source computes, not a rounded copy."""
    exact = all(torch.equal(t, t.half().float()) for t in net.state_dict().values()
                if t.is_floating_point())
    return torch.float16 if exact else torch.float32


def _load_source(source: str) -> tuple[nn.Module, str, str]:
    """(network in fp32, label, sha256 of its file) for a weights file or a model name."""
    from .hub import sha256_file
    from .manifest import load_manifest
    from .models import MODELS
    from .weights import WeightsError, load_pretrained, model_from_file, names_a_file, resolve

    path = Path(source)
    if path.is_dir() and (names_a_file(source) or (  # said "no such weights file" (or
            source not in MODELS and source not in load_manifest())):  # "unknown model")
        # of a folder there (an audit, a review); a model's name stays a model's
        raise GrowError(f"{source} is a folder; give a weights file or a model name")
    if names_a_file(source):
        if not path.is_file():
            raise GrowError(f"{source}: no such weights file")
        try:
            net = model_from_file(path)
        except WeightsError as e:
            if "does not say which architecture" in str(e):
                raise GrowError(f"{source}: a bare state dict; grow needs a file derain "
                                "wrote (derain train, distill, grow), which names its "
                                "network") from None
            raise
        return net.float().eval(), path.name, sha256_file(path)
    try:
        net = load_pretrained(source, quiet=True)
    except WeightsError as e:
        if "no pretrained weights yet" in str(e):  # exit 1, as derain -m gives it (a
            # weights problem, the name is right; grow said 2: an audit)
            raise WeightsError(f"{source!r} has no published weights to grow; give a "
                               "weights file instead (derain models lists those that have "
                               "some)") from None
        raise
    return net.float().eval(), source, sha256_file(resolve(source, quiet=True))


def grow_file(source: str, to: str, out: str | os.PathLike[str], *, seed: int = 0,
              overwrite: bool = False, calibration: str | os.PathLike[str] | None = None,
              on_step: Callable[[int, int], None] | None = None,
              threads: int | None = None) -> GrowResult:
    """Grow ``source`` (a registered model's published weights, or a weights file) into
    the registered model ``to`` and write it to ``out`` (safetensors; fp16 when that is
    exact for the source's tensors, as for the bundles, else fp32). ``calibration``: a
    folder of photos whose rainy crops set the new BatchNorm statistics (default:
    procedural scenes; ``"none"``: leave them at their defaults). The agreement reported
    is that of the file as written. ``on_step(k, total)``: progress over the calibration
    images and the agreement check (tens of seconds on a CPU: grow was silent, an audit).
    ``threads``: PyTorch's CPU threads for the call (restored after it).
    """
    # checked as the CLI checks them (seed=-1 failed in NumPy, 1.5 in a TypeError: an audit)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**32 - 1:
        raise GrowError(f"seed (--seed) must be a whole number from 0 to {2**32 - 1}, "
                        f"not {seed!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise GrowError(f"threads (--threads) must be a whole number of at least 1, "
                        f"not {threads!r}")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _grow_file(source, to, out, seed, overwrite, calibration, on_step)
    finally:
        torch.set_num_threads(before)


def _grow_file(source: str, to: str, out: str | os.PathLike[str], seed: int,
               overwrite: bool, calibration: str | os.PathLike[str] | None,
               on_step: Callable[[int, int], None] | None) -> GrowResult:
    from .fileio import why_unwritable
    from .weights import model_from_file, save_weights

    out = Path(out)
    if out.suffix.lower() != ".safetensors":
        raise GrowError(f"-o {out}: the output is a weights file; name it *.safetensors")
    if out.is_dir():
        raise GrowError(f"-o {out} is a folder; give the weights file to write")
    if out.exists() and not overwrite:
        raise GrowError(f"{out} exists; choose another -o or pass --overwrite")
    why = why_unwritable(out.parent)  # found after the work, as "File exists" (an audit)
    if why is not None:
        raise GrowError(f"-o {out}: {why}")
    try:
        spec = get_spec(to)
    except UnknownModelError as e:  # said as a SOURCE typo is: which one? (an audit)
        raise GrowError(f"--to: {e}") from None
    calibrate = str(calibration) != "none"
    photos = _calibration_photos(calibration) if calibrate and calibration is not None \
        else None
    src, label, sha = _load_source(source)
    arch = _arch_of(src)
    if spec.arch != arch:
        raise GrowError(f"{source} holds {arch} weights and {to} is {spec.arch}: grow keeps "
                        "the architecture (derain distill --student teaches another one)")
    if config_from_dict(arch, config_to_dict(spec.config)) == src.cfg:
        log.warning("%s already is %s's size: the file written is a copy of its weights",
                    source, to)  # it said "grown into" alone (an audit); the file as
    # given, not its bare name (run/model.safetensors was "model.safetensors": weak list)
    total = (CALIBRATION_COUNT if calibrate else 0) + 1  # + the agreement check
    step = on_step or (lambda k, n: None)
    step(0, total)
    grown = grow_network(src, spec.config, seed=seed, calibration=photos,
                         calibrate=calibrate, on_image=lambda k, n: step(k, total))
    exact = not (isinstance(src, RDMC) and grown.cfg.stages != src.cfg.stages)
    stats = ("left at their defaults" if not calibrate else
             f"from {calibration or 'procedural scenes'}")
    note = (f"grown from {label} (sha256 {sha}) by derain grow, seed {seed}, BatchNorm "
            f"statistics of the new channels {stats}")
    try:
        save_weights(grown, out, name=to, arch=spec.arch, config=spec.config,
                     dtype=_storage_dtype(src),
                     metadata={"grown_from": label, "grown_from_sha256": sha,
                               "note": note, "exact": json.dumps(exact)})
    except OSError as e:  # named the temporary file, as a usage error (exit 2: an audit)
        from .weights import WeightsError

        raise WeightsError(f"cannot write {out}: {e.strerror or e}") from None
    diff, db = agreement(src, model_from_file(out), seed)
    step(total, total)
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    return GrowResult(weights=out, source=label, target=to, source_params=count(src),
                      target_params=count(grown), exact=exact, max_abs_diff=diff,
                      agreement_db=db)


def _calibration_photos(folder: str | os.PathLike[str], count: int = 8) -> list[np.ndarray]:
    """Up to ``count`` decodable photos of ``folder`` (spread over it), as HxWx3 uint8."""
    from .data import iter_readable
    from .pairs import list_photos

    if not Path(folder).is_dir():
        raise GrowError(f"--calib {folder} is a file; give a folder of photos"
                        if Path(folder).exists() else f"--calib {folder}: no such folder")
    paths = list_photos(Path(folder))
    if not paths:
        raise GrowError(f"--calib {folder}: no photos found")
    step = max(1, len(paths) // count)
    photos = [img for _, img in iter_readable(paths[::step][:count * 2])][:count]
    if not photos:
        raise GrowError(f"--calib {folder}: none of its photos could be read")
    return photos


__all__ = ["GrowError", "GrowResult", "agreement", "grow_file", "grow_network"]
