"""Distil a trained Semi-DRDNet into a shallower one (``derain distill``).

Why: on a 2-core CPU the detail repair network is most of the cost (with the
convolutions of its DCCLs, each detail block costs three rain blocks), and the
default model must derain a 12-megapixel photo quickly there. A shallower network is
faster; trained to imitate the full one, it keeps most of its quality with no clean
ground truth at all. Fewer rain blocks also shorten the tiler's statistics pass
(``derain_cli.tiling``), which runs the rain network once more over the whole image.

How:

* The student has the teacher's configuration with ``detail_blocks`` detail blocks
  and ``rain_blocks`` rain blocks (default: all of the teacher's).
* With all rain blocks, its rain residual network is the teacher's, copied and frozen.
  The rain layer and the whole-image statistics are therefore exactly the teacher's;
  only the details differ, and the loss sees only them.
* With fewer rain blocks, the rain network starts from the teacher's head, body, tail
  and first ``rain_blocks`` blocks and is trained too.
* Its detail network starts from the teacher's head, body, tail and first
  ``detail_blocks`` blocks.
* It is trained to reproduce the teacher: L1 between the two detail layers on random
  crops, plus, when the rain network trains, L1 between the two rain layers (the
  output ``O - R + B`` then matches to within the sum of both). The crops are
  synthetic rain (``synth``, preset ``mixed``) over clean photos and, when given, the
  user's real rainy photos (the teacher is the target, so no ground truth is needed).
* Batch norms keep the teacher's running statistics (eval mode); Adam with a short
  warm-up (the first 5 % of the steps) and cosine decay to a tenth.
* The last ``val_count`` clean photos are held out. On them, before and after, the
  result reports student and teacher PSNR against the clean photo (synthetic rain
  with fixed seeds) and the student's agreement with the teacher.

A student of another architecture (``student``, a registry name such as ``rdmc-lite``)
shares no blocks with the teacher. It starts from its own random initialisation with
its output layer zeroed where the architecture has one (RDMC then starts as the
identity, which is close to a deraining teacher), trains in train mode (its batch
norms have no statistics yet) and learns the teacher's output with L1. Continued from an
earlier network (``init``), it keeps that network's batch-norm statistics. With
``teacher_flips`` the target is the teacher's self-ensemble (``FlipEnsemble``): a
network may then learn from itself and keep part of what four passes gain. In this mode
the teacher may be of any architecture too (semi-drdnet-tiny learning from rdmc-lite). Why: RDMC
trained on synthetic pairs on a 2-core CPU fits the synthetic haze and ends below the
rainy input on light rain (README); imitating a teacher that already works on real
rain gives it interim weights until GPU training exists.

The output folder holds ``model.safetensors`` and ``manifest_entry.json``, like
``derain train`` (``recipes/bundle.py`` bundles either).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .fileio import FolderInUse, hold_folders
from .models import RDMC, SemiDRDNet, SemiDRDNetConfig
from .pairs import RUN_LOCK


class DistillError(ValueError):
    """A distillation request that cannot run (wrong architecture, too few photos...)."""


@dataclass
class DistillConfig:
    """What ``distill`` needs (``recipes/semi-drdnet-fast.sh`` and ``semi-drdnet-tiny.sh`` have
    the shipped settings)."""

    out: str
    clean: str
    teacher: str = "semi-drdnet-lite"
    """Registry name (bundled or downloadable weights) or a weights file."""
    detail_blocks: int | None = None
    """None: 2, or one fewer than the teacher's where it has 2 (the default model has)."""
    rain_blocks: int | None = None
    """None: the teacher's rain network, frozen; fewer blocks train it too."""
    student: str | None = None
    """A registered model of any architecture, trained from scratch to imitate the
    teacher's output (``detail_blocks`` and ``rain_blocks`` are then unused)."""
    init: str | None = None
    """Start from this earlier student (a weights file of the same shape) instead of the
    pruned teacher: a second round continues where a first one stopped."""
    real: str | None = None
    real_fraction: float = 0.3
    steps: int = 300
    max_minutes: float | None = None
    """Stop earlier when this much wall time has passed (the weights are still written)."""
    batch: int = 8
    patch: int = 128
    lr: float = 1e-4
    seed: int = 0
    #: photos held out; None: a fifth of them, at most 25 (25 of 27 photos left 2 to learn
    #: from, and 8 photos were refused, "need more than 25"; audit)
    val_count: int | None = None
    threads: int | None = None
    progress: bool = True
    name: str | None = None
    """The weights' name; None: ``<student>-distilled`` (``semi-drdnet-distilled`` for a
    pruned teacher): an RDMC student was named semi-drdnet-distilled (an audit)."""
    overwrite: bool = False
    """Replace the model an earlier run left in ``out`` (else ``distill`` refuses, as
    ``derain train`` refuses an existing run folder)."""
    teacher_flips: bool = False
    """Learn the mean of the teacher's outputs on the crop as is, flipped left-right,
    upside down and both (``FlipEnsemble``; needs ``student``): four teacher passes a
    step for a target better than any one of them."""


#: What a finished run leaves in its folder (``last.pt``: a ``derain train`` run).
RUN_FILES = ("model.safetensors", "manifest_entry.json", "last.pt")
#: What only a ``derain train`` (or ``finetune``) run leaves: its checkpoints and lock.
TRAIN_RUN_FILES = ("last.pt", "best.pt", RUN_LOCK)


def check_out(out: str | os.PathLike[str], overwrite: bool = False) -> None:
    """Refuse an ``out`` folder that already holds a run, before any work: minutes of
    distillation would otherwise silently replace an earlier model. A ``derain train`` run
    is refused even with ``overwrite``: its checkpoints and log would stay beside another
    model, and its ``--resume`` would take them for its own. A file where the folder (or
    one of its parents) would go, or a folder that cannot be written, is refused too: the
    run trained to its end and then failed on ``mkdir`` (an audit)."""
    from .fileio import why_unwritable

    if Path(out).suffix.lower() in (".safetensors", ".pt", ".pth"):  # made a folder so named,
        # which --weights then could not open (an audit)
        raise DistillError(f"--out {out} names a weights file; --out is the run's folder "
                           "(the weights go to FOLDER/model.safetensors): name a folder")
    why = why_unwritable(out)  # a file in the folder's (or a parent's) place included
    if why is not None:
        raise DistillError(f"--out {out}: cannot write there ({why})")
    trained = [f for f in TRAIN_RUN_FILES if (Path(out) / f).exists()]
    if trained:
        raise DistillError(
            f"{out} holds a derain train run ({', '.join(trained)}); a distilled model there "
            "would sit beside that run's checkpoints: choose another --out")
    if overwrite:
        return
    held = [f for f in RUN_FILES if (Path(out) / f).exists()]
    if held:
        raise DistillError(
            f"{out} already holds a run ({', '.join(held)}); choose another --out, or pass "
            "--overwrite (overwrite=True in Python) to replace it")


@dataclass
class DistillResult:
    weights: Path
    steps: int
    wall_s: float
    before: dict[str, float]
    after: dict[str, float]
    entry: dict[str, Any] = field(default_factory=dict)


def _model_from_file(path: str | os.PathLike[str]) -> nn.Module:
    """``weights.model_from_file``, its advice to pass ``--model NAME`` (an option of the
    main command, eval and finetune) said as distill can follow it (an audit)."""
    from .weights import WeightsError, model_from_file

    try:
        return model_from_file(path)
    except WeightsError as e:
        said = str(e)
        if "does not say which architecture" in said:
            raise WeightsError(f"{path}: the file does not say which architecture it is for "
                               "(a bare state dict); distill needs a file derain wrote "
                               "(derain train, finetune, distill or grow), which names its "
                               "network") from None
        if "--model NAME" in said:
            raise WeightsError(said.replace("pass --model NAME too, or use another file",
                                            "use another file")) from None
        raise


def _load_teacher(spec: str, any_arch: bool = False) -> tuple[nn.Module, str]:
    """The teacher network; a Semi-DRDNet unless ``any_arch`` (a ``--student`` learns the
    teacher's output only, so any registered architecture can teach it)."""
    from .manifest import load_manifest
    from .models import get_spec
    from .weights import WeightsError, load_pretrained, names_a_file, untrained_message

    if names_a_file(spec):
        if not Path(spec).is_file():  # exit 2, as a missing --init, grow's SOURCE and the
            # other commands' --weights (it was exit 1 here alone: an audit)
            raise DistillError(f"--teacher (-m) {spec}: no such weights file")
        net, label = _model_from_file(spec), Path(spec).name
    else:
        if load_manifest().get(spec) is None:  # distill has no --weights (it said to use
            get_spec(spec)  # it: an audit); a typo is the registry's error
            raise WeightsError(untrained_message(spec, "-m FILE"))
        net, label = load_pretrained(spec), spec
    if not any_arch and not isinstance(net, SemiDRDNet):
        raise DistillError(f"{label}: a pruned student needs a Semi-DRDNet teacher, not "
                           f"{type(net).__name__}; to distil it into a model of its own, "
                           "name one with --student NAME")
    return net.eval(), label


class FlipEnsemble(nn.Module):
    """A network's self-ensemble: the mean of its outputs on the input as is, flipped
    left-right, upside down and both, each flipped back.

    Why: the mean of the four scored 0.05-0.18 dB above one pass on every evaluation set
    (docs/model-history.md, "Averaging outputs" and semi-drdnet-fast's stage 11 candidate),
    but costs four passes, too many for a 12-megapixel photo on a CPU. As a distillation
    teacher the cost is paid once, at training time, and the student may keep part of the
    gain at one pass. Measured once (that candidate, 900 steps on the default): it did not.
    """

    FLIPS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for dims in self.FLIPS:
            y = self.net(x.flip(dims)) if dims else self.net(x)
            y = y.flip(dims) if dims else y
            total = y if total is None else total + y
        return total / len(self.FLIPS)


def student_from_teacher(teacher: SemiDRDNet, detail_blocks: int | None,
                         rain_blocks: int | None = None) -> SemiDRDNet:
    """The teacher with only its first ``detail_blocks`` detail blocks (None: 2, or one
    fewer than the teacher's where that is less: the default model has 2, and distilling
    it refused its own default, an audit) and first ``rain_blocks`` rain blocks (None:
    all), weights copied."""
    n = teacher.cfg.detail_blocks
    if n <= 1:
        asked = f" (--detail-blocks {detail_blocks})" if detail_blocks is not None else ""
        raise DistillError(
            f"the teacher has only {n} detail block, so there is nothing to prune"
            f"{asked}: a pruned student needs fewer detail blocks "
            "than its teacher. Distil into another architecture with --student NAME "
            "(student= in Python), or use a teacher with more detail blocks")
    if detail_blocks is None:
        detail_blocks = min(2, n - 1)
    if not 1 <= detail_blocks < n:
        raise DistillError(f"--detail-blocks must be between 1 and {n - 1} for a teacher "
                           f"with {n} detail blocks (got {detail_blocks})")
    r = teacher.cfg.rain_blocks
    if rain_blocks is not None and not 1 <= rain_blocks <= r:
        raise DistillError(f"--rain-blocks must be between 1 and {r} for a teacher with {r} "
                           f"rain blocks (got {rain_blocks})")
    cfg = SemiDRDNetConfig(**{**asdict(teacher.cfg), "detail_blocks": detail_blocks,
                              "rain_blocks": rain_blocks or r})
    student = SemiDRDNet(cfg)
    state = teacher.state_dict()
    student.load_state_dict({k: state[k] for k in student.state_dict()})
    return student.eval()


def fresh_student(name: str) -> nn.Module:
    """A registered model, randomly initialised, whose output starts as its input where
    the architecture allows it (RDMC: the last 1x1 convolution zeroed)."""
    from .models import UnknownModelError, build_model

    try:
        net = build_model(name)
    except UnknownModelError as e:
        raise DistillError(str(e)) from None
    if isinstance(net, RDMC):
        nn.init.zeros_(net.stage.out.weight)
        nn.init.zeros_(net.stage.out.bias)
    return net.eval()


def _load_init(path: str, like: nn.Module) -> nn.Module:
    """An earlier student to continue from; it must have the new student's shape."""
    from .weights import WeightsError

    net = _model_from_file(path)
    # exit 1 as a weights file of another shape is for derain -m, eval and finetune (2 here:
    # an audit): a WeightsError
    if type(net) is not type(like):
        raise WeightsError(f"{path}: --init must be a student of the same shape; it is "
                           f"a {type(net).__name__}, the student a {type(like).__name__} "
                           "(--student names the student's model)")
    if net.cfg != like.cfg:
        differ = ", ".join(f"{f.name} {getattr(net.cfg, f.name)} (student "
                           f"{getattr(like.cfg, f.name)})" for f in fields(like.cfg)
                           if getattr(net.cfg, f.name) != getattr(like.cfg, f.name))
        raise WeightsError(f"{path}: --init must be a student of the same shape; it "
                           f"differs in {differ}. Give the " + (
                               "--student" if isinstance(like, RDMC) else
                               "--student or block counts (--rain-blocks, --detail-blocks)")
                           + " it was made with")
    return net.eval()


def _crop(img: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    from .data import pad_to

    img = pad_to(img, size)
    h, w = img.shape[:2]
    y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    out = img[y:y + size, x:x + size]
    return out[:, ::-1] if rng.random() < 0.5 else out


def _batch(clean: list[np.ndarray], real: list[np.ndarray], cfg: DistillConfig,
           rng: np.random.Generator) -> torch.Tensor:
    from .synth import synthesize

    # allocated first: a batch that cannot fit in memory (--batch 1000000) fails here at
    # once, where it synthesized crops for minutes before running out (the still-weak list)
    arr = np.empty((cfg.batch, cfg.patch, cfg.patch, 3), dtype=np.float32)
    for i in range(cfg.batch):
        if real and rng.random() < cfg.real_fraction:
            arr[i] = _crop(real[int(rng.integers(len(real)))], cfg.patch, rng)
            arr[i] /= 255
        else:
            c = _crop(clean[int(rng.integers(len(clean)))], cfg.patch, rng)
            arr[i] = synthesize(np.ascontiguousarray(c), "mixed",
                                seed=int(rng.integers(1 << 31)))[0]
    # NHWC in memory is channels_last's layout: the same tensor without a copy
    return torch.from_numpy(arr).permute(0, 3, 1, 2)


#: A held-out sample: rainy input (1, 3, h, w), clean HxWx3 and the teacher's output HxWx3.
HeldOut = tuple[torch.Tensor, np.ndarray, np.ndarray]


@torch.no_grad()
def _held_out(photos: list[np.ndarray], teacher: nn.Module, size: int = 256) -> list[HeldOut]:
    """Fixed synthetic rain on the held-out photos, with the teacher's outputs (run once)."""
    from .synth import synthesize

    out = []
    for i, p in enumerate(photos):
        c = np.ascontiguousarray(p[:size, :size])
        rainy, _ = synthesize(c, "mixed", seed=10_000 + i)
        x = torch.from_numpy(np.ascontiguousarray(rainy.transpose(2, 0, 1)))[None]
        t = np.clip(teacher(x)[0].numpy().transpose(1, 2, 0), 0, 1)
        out.append((x, c.astype(np.float32) / 255, t))
    return out


@torch.no_grad()
def held_out_scores(student: nn.Module, held: list[HeldOut]) -> dict[str, float]:
    """Mean RGB PSNR of student and teacher against the clean crops, and between them."""
    from .metrics import psnr

    def _psnr(a: np.ndarray, b: np.ndarray) -> float:
        return min(psnr(np.clip(a, 0, 1), b, data_range=1.0), 99.0)

    s_gt, t_gt, agree = [], [], []
    for x, clean, t in held:
        s = student(x)[0].numpy().transpose(1, 2, 0)
        s_gt.append(_psnr(s, clean))
        t_gt.append(_psnr(t, clean))
        agree.append(_psnr(s, t))
    return {"student_psnr": round(float(np.mean(s_gt)), 3),
            "teacher_psnr": round(float(np.mean(t_gt)), 3),
            "agreement_psnr": round(float(np.mean(agree)), 2), "count": len(held)}


def _checked(cfg: DistillConfig) -> DistillConfig:
    """``cfg`` with its paths as text, or ``DistillError`` naming the setting the CLI's own
    limits would refuse: a Python caller's ``steps=-1`` wrote an untrained model,
    ``val_count=0`` wrote NaN into the manifest, ``batch=0`` and ``patch=0`` failed in numpy
    and OpenCV, and ``init=Path(...)`` failed writing the record after the training, leaving
    half a result (an audit)."""
    least = {"steps": 1, "batch": 1, "patch": 32, "detail_blocks": 1, "rain_blocks": 1,
             "val_count": 1, "threads": 1, "seed": 0}
    for name, low in least.items():
        value = getattr(cfg, name)
        if value is None and name not in ("steps", "batch", "patch", "seed"):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise DistillError(f"{name} (--{name.replace('_', '-')}) must be a whole number "
                               f"of at least {low}, not {value!r}")
    if cfg.seed > 2**32 - 1:
        raise DistillError(f"seed (--seed) must be at most {2**32 - 1}, not {cfg.seed}")
    for name in ("lr", "max_minutes"):  # lr="1e-4" failed in a comparison (an audit)
        value = getattr(cfg, name)
        if not (value is None and name == "max_minutes") and (
                isinstance(value, bool) or not isinstance(value, int | float)):
            raise DistillError(f"{name} (--{name.replace('_', '-')}) must be a number, not "
                               f"{value!r}")
    if not (isinstance(cfg.real_fraction, int | float) and 0.0 <= cfg.real_fraction <= 1.0):
        raise DistillError(f"real_fraction must be from 0 to 1, not {cfg.real_fraction!r}")
    texts = {f.name: os.fspath(getattr(cfg, f.name)) for f in fields(cfg)
             if isinstance(getattr(cfg, f.name), os.PathLike)}
    cfg = replace(cfg, **texts) if texts else cfg
    for name in ("clean", "real"):  # "no such folder: /nope" named no option (an audit)
        folder = getattr(cfg, name)
        if folder is not None and not os.path.isdir(folder):
            raise DistillError(f"{name} (--{name}): " + (
                f"{folder} is not a folder" if os.path.exists(folder) else
                f"no such folder: {folder}"))
    return cfg


def distill(cfg: DistillConfig) -> DistillResult:
    """Train a shallower Semi-DRDNet to imitate ``cfg.teacher``; see the module docstring.
    The caller's torch random state is kept, as ``train`` keeps it (it was reseeded by
    ``--seed`` and left so: an audit of the Python API)."""
    devices = range(torch.cuda.device_count()) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        return _distill(cfg)


def _distill(cfg: DistillConfig) -> DistillResult:
    cfg = _checked(cfg)
    if not (math.isfinite(cfg.lr) and cfg.lr >= 0):  # torch's "Invalid learning rate" named
        # no flag (an audit); 0 writes the pruned student as it is
        raise DistillError(f"--lr must be a positive number (or 0: the pruned student, "
                           f"untrained), not {cfg.lr:g}")
    check_out(cfg.out, cfg.overwrite)
    if cfg.name is not None and not cfg.name.strip():  # the banner read "model model"
        raise DistillError("name (--name) is empty; give one, or leave it out for "
                           f"{default_name(cfg)}")
    if cfg.max_minutes is not None and cfg.max_minutes <= 0:  # wrote an untrained model
        raise DistillError(f"max_minutes must be positive, not {cfg.max_minutes:g}")
    # the folder is held for the whole run: held only at the start and at the write, a
    # second distill into it wrote its model while the first trained, and the first then
    # threw its minutes of training away (an audit); made now, removed again if nothing
    # was written
    out = Path(cfg.out)
    made = [p for p in (out, *out.parents) if not p.exists()]
    out.mkdir(parents=True, exist_ok=True)
    try:
        with _held(out):
            check_out(out, cfg.overwrite)  # again, held
            return _distill_held(cfg)
    except BaseException:
        for folder in made:  # deepest first; a folder something was written to stays
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _distill_held(cfg: DistillConfig) -> DistillResult:
    """``_distill`` once its checks passed and its folder is held."""
    from .train import _hardware, check_finite, start_weights

    start = start_weights(cfg.init)  # as loaded, before the file can change
    teacher, label, student = _teacher_and_student(cfg)
    clean, held_photos, real = _photos(cfg)
    cfg = replace(cfg, val_count=len(held_photos))  # as the record says it

    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        held = _held_out(held_photos, teacher)
        before = held_out_scores(student, held)
        step, wall, interrupted = _learn(cfg, teacher, student, clean, real, rng)
        # a diverged student (a far too large --lr) was written, exit 0, and turned every
        # photo black (an audit)
        check_finite(student.state_dict(), "the student", step, _DIVERGED_ADVICE)
        hardware = _hardware(torch.device("cpu"), 1, "fp32")  # with --threads still set
        student = student.to(memory_format=torch.contiguous_format).eval()
        after = held_out_scores(student, held)
    finally:
        torch.set_num_threads(threads)

    check_out(cfg.out, cfg.overwrite)  # and at the write: files put there meanwhile by
    # something that does not hold folders are not replaced in silence
    entry = _write(cfg, student, label, step, wall, before, after, hardware, start,
                   interrupted)
    result = DistillResult(Path(cfg.out) / "model.safetensors", step, wall, before, after, entry)
    if interrupted:  # written; the command still ends as interrupted (exit 130), and says
        raise DistillInterrupted(result)  # where the student went (it did not: an audit)
    return result


class DistillInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during ``distill`` after at least one step: the student as it was
    is written (``result``), and the run still ends as interrupted."""

    def __init__(self, result: DistillResult) -> None:
        super().__init__(f"interrupted after {result.steps} steps; the student is in "
                         f"{result.weights}")
        self.result = result


_DIVERGED_ADVICE = "Start again with a lower --lr (lr in Python)."


def _teacher_and_student(cfg: DistillConfig) -> tuple[nn.Module, str, nn.Module]:
    """The teacher (flip-ensembled where asked), its label, and the student: a network of
    its own (``--student``, seeded by ``--seed``) or the teacher pruned; ``--init`` loaded."""
    cross = cfg.student is not None
    if cross and (cfg.detail_blocks is not None or cfg.rain_blocks is not None):
        raise DistillError(  # ignored in silence: the student kept its own (an audit)
            "detail_blocks and rain_blocks (--detail-blocks, --rain-blocks) shape a pruned "
            f"copy of the teacher; the student {cfg.student} has its own: leave them out")
    teacher, label = _load_teacher(cfg.teacher, any_arch=cross)
    if cfg.teacher_flips:
        if not cross:
            raise DistillError(
                "teacher_flips (--teacher-flips) needs a student of its own (--student "
                "NAME): a pruned student learns the teacher's detail layer, not its output")
        teacher, label = FlipEnsemble(teacher).eval(), f"{label} (flip self-ensemble)"
    if cross:
        torch.manual_seed(cfg.seed)  # the student's first weights follow --seed
        student = fresh_student(cfg.student)
    else:
        student = student_from_teacher(teacher, cfg.detail_blocks, cfg.rain_blocks)
    if cfg.init:
        student = _load_init(cfg.init, student)
    return teacher, label, student


def default_name(cfg: DistillConfig) -> str:
    """The weights' name where ``cfg.name`` is None."""
    return f"{cfg.student or 'semi-drdnet'}-distilled"


def held_count(val_count: int | None, photos: int) -> int:
    """How many of ``photos`` are held out: ``val_count``, or a fifth, 1 to 25."""
    return val_count if val_count is not None else max(1, min(25, photos // 5))


def _photos(cfg: DistillConfig) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """The clean photos to train on, the last ``val_count`` held out, and ``--real``'s."""
    from .data import DataError, iter_readable, load_photos
    from .pairs import list_photos

    photos = list_photos(Path(cfg.clean), recursive=True)  # as --real and train's folders
    # (photos in subfolders only were "0 photo(s)": an audit)
    least = (cfg.val_count or 1) + 1
    if len(photos) < least:
        raise DistillError(f"{cfg.clean}: {len(photos)} photo(s); need at least {least} "
                           f"({least - 1} held out, --val-count)")
    readable = [img for _, img in iter_readable(photos)]  # unreadable ones: a warning each
    if len(readable) < least:
        raise DistillError(f"{cfg.clean}: {len(readable)} readable photo(s); need at least "
                           f"{least} ({least - 1} held out, --val-count)")
    cut = len(readable) - held_count(cfg.val_count, len(readable))
    try:
        real = load_photos(cfg.real) if cfg.real else []
    except DataError as e:  # "empty: no images found" named no option (an audit)
        raise DistillError(f"real (--real): {e}") from None
    return readable[:cut], readable[cut:], real


def _imitated(cfg: DistillConfig, teacher: nn.Module,
              student: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(teacher part, student part) pairs whose outputs the student learns to match."""
    if cfg.student is not None:
        # The whole student learns the teacher's output. A fresh student trains its
        # batch norms (they have no statistics yet); a continued one (--init) keeps
        # its running statistics, as pruned students keep the teacher's.
        return [(teacher.to(memory_format=torch.channels_last),
                 student.to(memory_format=torch.channels_last).train(not cfg.init))]
    # The detail layers always; the rain layers when the rain network is pruned.
    train_rain = student.cfg.rain_blocks < teacher.cfg.rain_blocks
    pairs = [(teacher.detail_net.to(memory_format=torch.channels_last),
              student.detail_net.to(memory_format=torch.channels_last))]
    s_rain = student.rain_net.to(memory_format=torch.channels_last)
    for p in s_rain.parameters():
        p.requires_grad_(train_rain)
    if train_rain:
        pairs.append((teacher.rain_net.to(memory_format=torch.channels_last), s_rain))
    return pairs


def _learn(cfg: DistillConfig, teacher: nn.Module, student: nn.Module,
           clean: list[np.ndarray], real: list[np.ndarray],
           rng: np.random.Generator) -> tuple[int, float, bool]:
    """The training loop: (steps done, seconds, whether a Ctrl-C/SIGTERM ended it)."""
    from .train import TrainDiverged, _interrupt_after_block, _Progress

    pairs = _imitated(cfg, teacher, student)
    opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=cfg.lr)
    start = time.monotonic()
    step = 0
    interrupted = False
    budget_end = time.time() + 60 * cfg.max_minutes if cfg.max_minutes else None
    with _Progress(enabled=cfg.progress, total=cfg.steps, start=0, label="distill",
                   budget_end=budget_end) as bar:  # (its ETA left the budget out: an audit)
        try:
            while step < cfg.steps:
                if cfg.max_minutes and time.monotonic() - start > 60 * cfg.max_minutes:
                    bar.note(f"time budget reached after {step} steps")
                    break
                # the schedule's progress: the steps', or the time budget's where further
                # (a budget far short of --steps stopped inside the warm-up: an audit)
                spent = ((time.monotonic() - start) / (60 * cfg.max_minutes)
                         if cfg.max_minutes else 0.0)
                done = max(step / cfg.steps, min(1.0, spent))
                lr = cfg.lr * min(1.0, max((step + 1) / max(1, cfg.steps // 20),
                                           spent / 0.05)) * (
                    0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done)))
                for g in opt.param_groups:
                    g["lr"] = lr
                x = _batch(clean, real, cfg, rng)
                with torch.no_grad():
                    targets = [t(x) for t, _ in pairs]
                loss = sum((s(x) - t).abs().mean() for (_, s), t in zip(pairs, targets,
                                                                          strict=True))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                with _interrupt_after_block():  # a Ctrl-C waits for the update
                    opt.step()
                    step += 1
                elapsed = time.monotonic() - start
                value = loss.item()
                if not math.isfinite(value):  # no use in more steps
                    raise TrainDiverged(
                        f"distillation diverged: the loss is {value} at step {step}; nothing "
                        f"is written. {_DIVERGED_ADVICE}")
                bar.update(step, value, lr, step * cfg.batch / max(elapsed, 1e-9))
        except KeyboardInterrupt:
            # distill has no checkpoints: a Ctrl-C or SIGTERM lost every step (an
            # audit); the student is written as it is, as a time budget would
            if step == 0:
                raise
            interrupted = True
            bar.note(f"interrupted after {step} steps: writing the student as it is")
    return step, time.monotonic() - start, interrupted


@contextlib.contextmanager
def _held(out: str | os.PathLike[str]) -> Iterator[None]:
    """``out`` held (``fileio.hold_folders``); another process's hold a ``DistillError``."""
    try:
        with hold_folders([out]):
            yield
    except FolderInUse as e:
        raise DistillError(str(e)) from None


def _write(cfg: DistillConfig, student: nn.Module, label: str, step: int, wall: float,
           before: dict[str, float], after: dict[str, float],
           hardware: str, start: dict[str, str], interrupted: bool = False) -> dict[str, Any]:
    """The student's weights (fp16, or fp32 where a value is beyond fp16's range) and
    manifest entry in ``cfg.out``; returns the entry (``start``: ``train.start_weights`` of
    ``--init``, taken when it was loaded). The caller holds ``cfg.out`` (``_held``)."""
    from .fileio import atomic_write_text
    from .models import get_spec
    from .train import _say, fitting_dtype
    from .weights import save_weights

    out = Path(cfg.out)
    arch = get_spec(cfg.student).arch if cfg.student is not None else "semi-drdnet"
    dtype = fitting_dtype(student.state_dict(), torch.float16, _say)  # else inf in the file
    rec = save_weights(student, out / "model.safetensors", name=cfg.name or default_name(cfg),
                       arch=arch,
                       config=student.cfg, dtype=dtype,
                       metadata={"steps": str(step), "training": f"derain distill from {label}",
                                 **{f"init_{k}": v for k, v in start.items()}})
    rec.status = "candidate"
    rec.training_data = (f"distilled from {label} on synthetic rain over {Path(cfg.clean).name}"
                         + (f" and real rain from {Path(cfg.real).name}" if cfg.real else ""))
    rec.metrics = {"distill_held_out": {**after, "set": f"last {cfg.val_count} photos of "
                                        f"{Path(cfg.clean).name}, synthetic mixed rain"}}
    rec.extra = {"steps": step, "hardware": hardware,
                 **({"interrupted": True} if interrupted else {}),
                 "wall_time_s": round(wall, 1), "teacher": label,
                 "before_distillation": before,
                 **({"continued_from": cfg.init, "init_weights": start} if cfg.init else {})}
    entry = rec.to_dict()
    atomic_write_text(out / "manifest_entry.json", json.dumps(entry, indent=2) + "\n")
    return entry
