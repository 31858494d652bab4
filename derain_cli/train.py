"""Training and fine-tuning: ``train(TrainConfig)`` and ``finetune(FinetuneConfig)``.

One loop serves both. Per step: a labeled batch (paired folders and/or synthetic rain on clean
photos) and optionally an unlabeled batch of real rainy photos go through the network in ONE
forward (concatenated, so DDP sees one forward per step); ``losses.Criterion`` returns the
supervised + contrastive loss; AdamW with linear warmup + cosine decay, gradient clipping,
bf16 autocast where it is fast (``amp="auto"``: CUDA, and CPUs with bf16 instructions) and an
EMA of the weights. The EMA weights are what gets validated and exported.

Run folder (``out``):

* ``last.pt``: everything needed to resume exactly (model, EMA, optimizer, schedule step,
  auxiliary feature network, torch/numpy/python/CUDA RNG states, best score, config), written
  atomically every ``ckpt_every`` steps (and at least every :data:`CKPT_MAX_INTERVAL_S`
  seconds), at a time-budget stop and at the end. Plain tensors and
  containers only: ``torch.load(path, weights_only=True)`` reads it.
* ``best.pt``: the same, at the best validation PSNR so far.
* ``log.jsonl``: one JSON object per logged step / validation; ``curves.png``: loss and val
  PSNR curves; ``model.safetensors`` + ``manifest_entry.json``: the exported EMA weights.

Exact resume: the data stream is a pure function of ``(seed, step)`` (see ``derain_cli.data``),
the learning rate a pure function of the step, and every RNG state is restored, so ``N`` steps
in one go and ``k`` steps + resume + ``N - k`` give bitwise identical weights (CPU, same thread
count, ``workers`` irrelevant). A time budget (``time_budget``) makes the schedule follow the
elapsed fraction of the budget where that is further on than the step count, which is not
reproducible by nature.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in
DistributedDataParallel (NCCL on GPUs, gloo on CPUs), every rank draws its own share of each
global batch, and only rank 0 validates, logs and writes files. BatchNorm statistics are those
of the per-rank batch (buffers broadcast from rank 0), or synchronised with ``sync_bn`` on GPU.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import platform
import random
import re
import shlex
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from . import data as D
from . import losses as L
from .cpu_memory import keep_freed_memory
from .engine_choice import cpu_name
from .enhancer import cpu_supports_bf16
from .fileio import atomic_write, atomic_write_text
from .models import build_architecture, config_to_dict, get_spec
from .pairs import RUN_LOCK
from .plain_progress import clock

CKPT_FORMAT = "derain-train-ckpt-v1"


class TrainError(ValueError):
    """A training setup that cannot run (bad options, missing data); the message says why.

    ``every_rank``: every torchrun process meets it alike (a setting: the default), so rank
    0 alone says it; False where it comes from a file each process reads itself (the
    checkpoint and what it holds, --val, --weights, the run's own files: on another node
    they may differ or be missing), which each process says."""

    def __init__(self, message: str, *, every_rank: bool = True) -> None:
        super().__init__(message)
        self.every_rank = every_rank


class TrainDiverged(RuntimeError):
    """The weights went non-finite (NaN, infinity): the run stops and nothing of it is
    exported or scored. A runtime failure (exit 1), not a refused setting."""


class TrainPeerLost(RuntimeError):
    """Another process of a torchrun run stopped (killed, out of memory, a Ctrl-C of its
    own) and this one's collective failed: rank 0 saved the checkpoint of the steps done
    and the message says how to resume (it was gloo's raw "Connection reset by peer",
    every step since the last checkpoint lost: an audit). A runtime failure (exit 1)."""


#: words of a collective failing because its peer is gone: gloo's "Read error ...:
#: Connection reset by peer" or "Connection closed by peer", a socket's broken pipe. Not
#: "nccl" nor "timed out" alone: a process's own NCCL out-of-memory error or its data
#: loader's timeout were called another's (a review)
_PEER_LOST_WORDS = ("connection reset by peer", "connection closed by peer", "broken pipe")


def _peer_lost(e: BaseException) -> bool:
    """True for a collective's error saying its peer went away, not one of the work."""
    text = str(e).lower()
    return "out of memory" not in text and any(w in text for w in _PEER_LOST_WORDS)


class TrainInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, after the checkpoint was saved and the user told so.
    ``step``: the steps done; ``out``: the run folder; ``resumable``: whether it holds a
    checkpoint to resume (``resume=True``, ``derain train -o OUT --resume``). It carried
    nothing, the run's state said only on stderr (an audit of the Python API)."""

    reported = True

    def __init__(self, step: int | None = None, out: Path | None = None,
                 resumable: bool = False) -> None:
        where = f" at step {step}" if step is not None else ""
        then = (f"; {out} resumes with resume=True" if resumable and out is not None else "")
        super().__init__(f"training interrupted{where}{then}")
        self.step, self.out, self.resumable = step, out, resumable


#: Rank 0 also checkpoints when this many seconds passed since its last checkpoint, whatever
#: ``ckpt_every`` says. Why: a run killed without a signal to catch (kill -9, the OOM killer,
#: a power cut) lost up to a whole interval, many minutes on a CPU (500 steps of a big
#: model); now at most this long. Saving does not touch the random streams, so an
#: exact resume is unchanged. Other ranks do not wait for it (no barrier).
CKPT_MAX_INTERVAL_S = 600.0


@dataclass
class TrainConfig:
    """All training options. Most are ``derain train`` flags of the same name (``--weights``
    is ``init_weights``, ``--batchnorm`` ``freeze_bn``); ``weight_decay``, ``min_lr_ratio``,
    ``sync_bn``, ``ssim_weight``, ``l2sp``, ``consistency``, ``license`` and
    ``training_data`` are set from Python only (finetune and recipes use some)."""

    #: the registered model to train; left at this default beside ``arch`` or
    #: ``init_weights``, the network they name is trained (as the CLI does without --model)
    model: str | None = "semi-drdnet-lite"
    #: registry-free model: architecture id + config dict (tests use tiny configs)
    arch: str | None = None
    model_config: dict[str, Any] | None = None
    #: start from these weights (safetensors or .pt); fine-tuning sets it
    init_weights: str | None = None

    pairs: list[str] = field(default_factory=list)
    rainy_dir: str | None = None
    clean_dir: str | None = None
    synthetic: list[str] = field(default_factory=list)
    preset: str = "mixed"
    #: share of synthetic samples left without rain (input = target), so the model learns to
    #: leave rain-free content alone (see data.LabeledDataset)
    clean_fraction: float = 0.0
    unlabeled: list[str] = field(default_factory=list)
    val: str | None = None
    #: the rainy and clean folders of ``val`` where its layout is not recognised
    val_rainy_dir: str | None = None
    val_clean_dir: str | None = None
    val_limit: int = 20
    #: center-crop validation images to at most this size (None: full images)
    val_crop: int | None = None

    out: str = "runs/train"
    steps: int | None = None
    epochs: int | None = None
    batch: int | None = None
    patch: int | None = None
    lr: float = 2e-4
    min_lr_ratio: float = 0.02
    warmup: int = 200
    weight_decay: float = 0.0
    clip: float = 1.0
    ema: float = 0.999
    #: "auto" (bf16 on CUDA and on CPUs with bf16 instructions, fp32 elsewhere), "bf16" or "fp32"
    amp: str = "auto"
    seed: int = 0
    device: str = "auto"
    #: CPU threads of each process (None: PyTorch's default, the physical cores)
    threads: int | None = None
    #: data-loading processes; None: 0 on CPUs (synthesis is cheap and the cores are busy
    #: training), min(4, cores per process) on GPUs
    workers: int | None = None
    val_every: int = 500
    ckpt_every: int = 500
    log_every: int = 10
    resume: bool = False
    #: no banner, progress or notes; the closing lines (what was written, its val PSNR,
    #: how to use it) and warnings stay, as distill's and synth's -q keep theirs
    quiet: bool = False
    #: stop cleanly (checkpoint + export) once this many seconds of training (summed over
    #: resumes) are spent; the lr schedule then follows the budget's elapsed fraction
    time_budget: float | None = None
    sync_bn: bool = False
    #: whole training images used to re-estimate BatchNorm statistics before
    #: validation and export (0: keep the running averages over crops); None: 16 from
    #: scratch, 0 when starting from ``init_weights`` (re-estimating the statistics of a
    #: distilled model wrecks it: semi-drdnet-tiny fell from 29.1 to 16.4 dB on rain100l)
    bn_recalib: int | None = None
    #: keep BatchNorm layers in eval mode (running statistics frozen, affine terms still
    #: trained; a ``bn_recalib`` above 0 is then refused): what fine-tuning needs, see
    #: ``freeze_batchnorm``. None: frozen when starting from ``init_weights`` without a
    #: ``bn_recalib`` (continuing rdmc-lite with running averages over 64 px crops took its
    #: PSNR on the first 10 rain100l pairs from 28.73 to 21.44 dB in 100 steps), else
    #: trained
    freeze_bn: bool | None = None

    #: "auto" | "vgg19" | "self" | "none" (see losses.py)
    contrast_features: str = "auto"
    contrast_weight: float = 0.1
    #: the contrastive terms kept, e.g. "bg,rain" (``losses.CONTRAST_TERMS``); None: all
    contrast_terms: str | None = None
    #: Semi-DRDNet only: the SSIM term's weight beside L1 (RDMC's loss is the paper's fixed
    #: 0.1 MSE + (1 - SSIM), which this does not change: a mutation audit found it unsaid)
    ssim_weight: float = 0.2
    #: RDMC only: weight of an L1 term added to the paper's 0.1 MSE + (1 - SSIM), which
    #: hardly charges a uniform brightness offset (``losses.rdmc_supervised``); 0: the paper's
    l1_weight: float = 0.0
    #: weight of a per-crop PSNR term on the final output (``losses.psnr_loss``; not the
    #: papers'), added to the supervised loss; 0: off
    psnr_weight: float = 0.0

    #: fine-tuning regularisers: L2-SP toward the initial weights, L1 consistency with the
    #: frozen initial model on the unlabeled photos
    l2sp: float = 0.0
    consistency: float = 0.0

    name: str | None = None
    license: str = "MIT"
    training_data: str | None = None
    export_dtype: str = "float16"

    #: The fields the caller set on purpose (the CLI's explicit flags). With ``resume`` the
    #: run's own settings (its config.json) fill in every other one, so ``derain train -o RUN
    #: --resume`` continues the run as it was started. None: the fields set to other values
    #: than their defaults (``TrainConfig(out=RUN, resume=True)`` continues RUN as it was;
    #: list a field here to keep a value equal to its default). ``model`` listed: kept
    #: beside ``arch`` or ``init_weights`` (else its default gives way to their network).
    given: list[str] | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


@dataclass
class TrainResult:
    """What ``train`` and ``finetune`` made: the run folder and its weights file (absolute
    paths), the manifest entry, the run's total ``steps`` (after a resume too), and this
    call's own losses (``losses``, ``final_loss``: the mean of its last ten), the best and
    the last validation (``metrics["val"]``; empty without ``val``)."""

    out: Path
    weights: Path | None
    manifest_entry: dict[str, Any] | None
    steps: int
    final_loss: float | None
    best_psnr: float | None
    metrics: dict[str, Any]
    wall_time_s: float
    stopped_early: bool = False
    losses: list[float] = field(default_factory=list)


# --------------------------------------------------------------------------- helpers
def _dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) under torchrun, as the deraining batch reads them
    (``batch.DistInfo``: a malformed variable is not a traceback)."""
    from .batch import DistInfo

    info = DistInfo.from_env()
    return info.rank, info.world_size, info.local_rank


def _resolve_device(name: str, local_rank: int, world: int) -> torch.device:
    """The device; under torchrun each local rank its own GPU (``cuda:N`` given to several
    processes on the machine: refused), as ``batch.init_distributed`` picks it (more ranks
    than GPUs share them round-robin)."""
    from .enhancer import resolve_device

    dev = resolve_device(name)  # (cuda:N for several processes: batch.init_distributed)
    if dev.type == "cuda" and world > 1 and dev.index is None:
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    return dev


def _model_identity(cfg: TrainConfig) -> tuple[str, str, dict[str, Any]]:
    """(name, arch, config dict) of the model being trained."""
    if cfg.model_config and cfg.arch is None:  # it trained the registry's model instead,
        raise TrainError("--model-config configures --arch: give --arch too (with --model "  # in
                         "NAME the registry's configuration is used)")  # silence (an audit)
    if cfg.arch is not None:
        conf = cfg.model_config or {}
        _check_network_size(cfg.arch, conf)
        with torch.device("meta"):  # its config alone: nothing allocated (a whole build
            model = build_architecture(cfg.arch, conf)  # here, the network was made twice)
        return cfg.name or cfg.model or cfg.arch, cfg.arch, config_to_dict(model.cfg)
    if cfg.init_weights and not cfg.model:
        from .weights import WeightsError, own_architecture, read_state

        _, meta = read_state(cfg.init_weights)
        if "arch" not in meta:
            raise TrainError(f"{cfg.init_weights}: the file does not name its architecture; "
                             "pass --model NAME too", every_rank=False)
        try:
            arch, conf = own_architecture(meta, str(cfg.init_weights))
        except WeightsError as e:
            raise TrainError(str(e), every_rank=False) from None
        return cfg.name or meta.get("name", arch), arch, conf
    if not cfg.model:
        raise TrainError("no model given")
    try:
        spec = get_spec(cfg.model)
    except KeyError as e:
        raise TrainError(str(e)) from None
    return cfg.name or cfg.model, spec.arch, spec.config_dict()


@contextlib.contextmanager
def _interrupt_after_block(held: int = 1, then_raise: bool = True) -> Iterator[list[int]]:
    """Hold a Ctrl-C (SIGINT) that arrives inside the block until it ends, then raise it;
    likewise SIGTERM and SIGHUP where a Python handler stops the run with them (the CLI's:
    a batch scheduler's preemption must save a checkpoint that resumes exactly too).

    Only in the main thread (elsewhere signals cannot be caught), and SIGINT only with
    Python's default handler in place (else someone else handles it). ``held`` signals are
    held; one more inside the block stops at once (a hung block can still be stopped).
    ``then_raise`` False: those held are only listed in the list the block is given (the
    checkpoint written after a Ctrl-C: a second, impatient one cut it short, and the steps
    since the last checkpoint were lost, an audit).
    """
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    handlers = {signal.SIGINT: signal.getsignal(signal.SIGINT)}
    if handlers[signal.SIGINT] is not signal.default_int_handler:
        del handlers[signal.SIGINT]
    for name in ("SIGTERM", "SIGHUP", "SIGBREAK"):  # (Ctrl-Break: Windows', which the CLI
        sig = getattr(signal, name, None)  # stops like Ctrl-C: not held, read in an audit)
        if sig is not None and callable(signal.getsignal(sig)):
            handlers[sig] = signal.getsignal(sig)

    def hold(signum: int, frame: object) -> None:
        if len(caught) >= held:
            handlers[signum](signum, frame)  # one too many: stop now
        caught.append(signum)

    for sig in handlers:
        signal.signal(sig, hold)
    try:
        yield caught
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if caught and not then_raise:  # a held SIGTERM still sets the exit status (143): its
        # handler runs, the stop it asks for being under way already
        for sig in caught:
            if sig != signal.SIGINT:
                with contextlib.suppress(KeyboardInterrupt):
                    handlers[sig](sig, None)
    if caught and then_raise:
        handlers[caught[0]](caught[0], None)
        raise KeyboardInterrupt  # (a handler that returned)


#: The most of a time budget the warmup may take (``lr_at``).
WARMUP_BUDGET_SHARE = 0.1


def lr_at(cfg: TrainConfig, step: int, total: int, progress: float | None = None) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from ``lr`` to ``lr * min_lr_ratio``.

    ``progress`` (the elapsed fraction of a time budget) moves the decay on when time runs
    out before the steps do; the steps still count, so a run whose ``total`` steps end
    before its budget is annealed too (before 2026-12-03 the budget alone set the decay,
    and such a run stopped with its rate still halfway up). The warmup ends after its
    steps or a tenth of the budget, whichever comes first (as it is at most a tenth of
    ``total``), so a run whose budget ends before its warmup steps do still warms up
    and decays. Until 2026-12-04 the warmup's share of the budget was ``warmup / total``, and
    ``total`` of a budgeted run is usually a cap it never reaches (100000 in the CPU
    recipes, 10000 by default), so such runs started at the full rate after a second or
    two: a warm start began by jolting the weights it was given.
    """
    warm = min(cfg.warmup, max(1, total // 10))
    if step < warm:
        frac = (step + 1) / warm
        if progress is not None:
            frac = max(frac, progress / WARMUP_BUDGET_SHARE)
        if frac < 1.0:
            return cfg.lr * frac
    t = (step - warm) / max(1, total - warm)
    if progress is not None:
        t = max(t, progress)
    t = min(max(t, 0.0), 1.0)
    lo = cfg.lr * cfg.min_lr_ratio
    return lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * t))


def _model_group_kept(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """``saved`` (a checkpoint's optimizer state) fitted to the optimizer ``now`` where
    they differ only in the self encoder's group after the model's (the contrastive
    setting changed on a resume: ``--contrast-weight 0`` dropped it, and the resume was
    refused, naming --contrast-features, after finetune's whole pseudo-clean pass: an
    audit): the model's group and its moments are kept, the encoder's starts afresh or
    is left out. Anything else is returned as it was (and refused by the optimizer)."""
    g_saved, g_now = saved.get("param_groups", []), now.get("param_groups", [])
    if (len(g_saved) == len(g_now) or not g_saved or not g_now
            or len(g_saved) > 2 or len(g_now) > 2
            or len(g_saved[0]["params"]) != len(g_now[0]["params"])):
        return saved
    kept = set(g_saved[0]["params"])
    return {"state": {k: v for k, v in saved["state"].items() if k in kept},
            "param_groups": [g_saved[0], *g_now[1:]]}


class _Wrapper(nn.Module):
    """Makes ``forward`` return everything the loss needs, so DDP sees a single forward."""

    def __init__(self, model: nn.Module, arch: str) -> None:
        super().__init__()
        self.model, self.arch = model, arch

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = x.contiguous(memory_format=torch.channels_last)
        if self.arch == "semi-drdnet":
            p = self.model.forward_parts(x)
            return p.out, p.coarse, p.rain
        return tuple(self.model.forward_stages(x))


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """One EMA step, in two multi-tensor calls (bitwise the same as a lerp per tensor): the
    paper-size Semi-DRDNet has 530 parameters and 198 buffers, each a kernel launch on a
    GPU otherwise (a review of the GPU paths)."""
    e_params, m_params = list(ema.parameters()), [p.detach() for p in model.parameters()]
    e_bufs, m_bufs = list(ema.buffers()), list(model.buffers())
    if len(e_params) != len(m_params) or len(e_bufs) != len(m_bufs):
        raise ValueError("the EMA copy and the model differ in their tensors")
    torch._foreach_lerp_(e_params, m_params, 1.0 - decay)
    torch._foreach_copy_(e_bufs, m_bufs)


def boundary_state(model: nn.Module, criterion: Any = None) -> dict[str, Any]:
    """The random state and BatchNorm statistics at a step boundary, taken after every
    step: a Ctrl-C that lands mid-step (in the forward, the losses) saves these, not what
    the unfinished step has advanced, so --resume redoes that step exactly as an
    uninterrupted run. Its cost per step: ``python benchmarks/boundary_cost.py``."""
    return {"rng": _rng_state(), "gen": None if criterion is None else criterion.rng_state(),
            "buffers": {k: v.detach().clone() for k, v in model.named_buffers()}}


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
        "python_version": int(py_state[0]),
        "python_state": torch.tensor(py_state[1], dtype=torch.int64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state((
        "MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(state["numpy_pos"]),
        int(state["numpy_has_gauss"]), float(state["numpy_gauss"]),
    ))
    random.setstate((int(state["python_version"]),
                     tuple(int(v) for v in state["python_state"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(Exception):
            torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_torch_save(obj: Any, path: Path) -> None:
    try:
        atomic_write(path, lambda tmp: torch.save(obj, tmp), durable=True)
    except RuntimeError as e:  # torch's zip writer: "unexpected pos 2958784 vs 2958680"
        import shutil

        try:
            free = f"; {shutil.disk_usage(path.parent).free / 1e6:.0f} MB free there"
        except OSError:
            free = ""
        raise OSError(f"cannot write {path} ({_why_a_write_stops()}{free}): {e}") from None


def _why_a_write_stops() -> str:
    """What may have cut a write short, where the writer's error does not say: a full disk,
    or this process's file size limit (``ulimit -f``), which was said "a full disk?" with
    gigabytes free (session 69's list)."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, OSError, ValueError):  # (no resource module on Windows)
        return "a full disk?"
    if limit == resource.RLIM_INFINITY:
        return "a full disk?"
    size = f"{limit / 1e6:.0f} MB" if limit >= 1e6 else f"{limit} bytes"
    return f"the file size limit of {size} (ulimit -f), or a full disk?"


#: the curves.png files that could not be drawn: each said once
_PLOT_FAILED: set[str] = set()


def _plot_or_warn(records: list[dict[str, Any]], path: Path, has_val: bool) -> None:
    """``plot_curves``, its write failure a warning: a picture of the log is no reason to
    stop a run (a folder named curves.png ended one at its next validation, the step
    just trained lost: an audit)."""
    try:
        plot_curves(records, path, has_val=has_val)
    except OSError as e:
        if str(path) not in _PLOT_FAILED:
            _PLOT_FAILED.add(str(path))
            _say(f"warning: {path} not drawn ({e.strerror or e}); the run goes on, its "
                 "log.jsonl holds the same figures")


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a training checkpoint safely (``weights_only=True``; refused where its entries
    unpack to far more than the file: ``weights.inflation_problem``)."""
    from .weights import inflation_problem

    inflated = inflation_problem(path)
    if inflated is not None:
        raise TrainError(f"{path}: {inflated}", every_rank=False)
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged zip raises KeyError, RuntimeError...
        # (not PyTorch's own text: it suggests weights_only=False, unsafe on untrusted files)
        raise TrainError(f"{path}: cannot read this checkpoint ({type(e).__name__}); it is "
                         "damaged or not a derain checkpoint. Restore it, or start over in "
                         "another --out", every_rank=False) from None
    if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT:
        raise TrainError(f"{path}: not a derain training checkpoint", every_rank=False)
    return ck


def _hardware(device: torch.device, world: int, amp: str) -> str:
    """Where and in which precision (``amp``, e.g. "fp32") the weights were trained."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"{world}x {name}, {amp}"
    n = torch.get_num_threads()
    return f"{world}x CPU ({cpu_name()}, {n} thread{'s' if n != 1 else ''}, {amp})"


def _same_hardware(was: str, now: str) -> bool:
    """Whether a checkpoint's ``hardware`` names this machine's: before 2026-12-06 a CPU
    was named by ``platform.processor()`` (often just "x86_64"), not its model name, and
    one thread was "1 threads" (a run of that time resumed here was warned as moved to
    other hardware, its manifest naming one machine twice: an upgrade audit)."""
    if was == now:
        return True
    was = was.replace(", 1 threads, ", ", 1 thread, ")
    older = now.replace(f"({cpu_name()}, ", f"({platform.processor() or platform.machine()}, ", 1)
    return was in (now, older)


#: a segment trained before checkpoints recorded where (2026-12-03)
_UNRECORDED = "not recorded"


def hardware_summary(segments: list[dict[str, Any]], current: str) -> str:
    """The manifest's ``hardware`` for a run trained in segments (resumed elsewhere): each
    place with its steps, e.g. "1x CPU (...) (steps 0-500); 1x NVIDIA H200, bf16 autocast
    (steps 500-2000)"; ``current`` alone when one place did all of it."""
    merged: list[dict[str, Any]] = []
    for seg in segments:
        if _same_hardware(seg["hardware"], current):  # this machine under its older name
            seg = dict(seg, hardware=current)  # (one machine, not two: a review)
        if merged and merged[-1]["hardware"] == seg["hardware"] and merged[-1]["to"] == seg["from"]:
            merged[-1] = dict(merged[-1], to=seg["to"])
        else:
            merged.append(dict(seg))
    if all(m["hardware"] == _UNRECORDED for m in merged):  # before 2026-12-03
        return current
    if len(merged) == 1:
        return merged[0]["hardware"]
    return "; ".join(f"{m['hardware']} (steps {m['from']}-{m['to']})" for m in merged)


def _describe_data(cfg: TrainConfig) -> str:
    parts = [f"paired {Path(p).name}" for p in cfg.pairs]
    parts += [f"synthetic rain ({cfg.preset}) on {Path(p).name}" for p in cfg.synthetic]
    parts += [f"unlabeled rainy {Path(p).name}" for p in cfg.unlabeled]
    return "; ".join(parts)


# --------------------------------------------------------------------------- logging / plots
class _RunLog:
    """log.jsonl writer (rank 0 only); on resume, drops entries after the checkpoint's step."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None) -> None:
        self.path, self.enabled = path, enabled
        self.records: list[dict[str, Any]] = []
        if not enabled:
            return
        if resume_step is not None and path.exists():
            for line in path.read_text().splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    r = json.loads(line)
                    if int(r.get("step", 0)) <= resume_step:
                        self.records.append(r)
        atomic_write_text(path, "".join(self._line(r) for r in self.records))

    @staticmethod
    def _line(record: dict[str, Any]) -> str:
        """One JSON line, a non-finite number (a skipped step's NaN loss) as null: NaN is
        not JSON, and strict readers refused the line (an audit)."""
        return json.dumps({k: None if isinstance(v, float) and not math.isfinite(v) else v
                           for k, v in record.items()}, allow_nan=False) + "\n"

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(self._line(record))


def plot_curves(records: list[dict[str, Any]], path: Path,
                size: tuple[int, int] = (900, 360), *, has_val: bool = True) -> None:
    """Draw train loss (log scale; linear where a loss is not positive, as with
    ``--psnr-weight``) and val PSNR against step into a PNG with PIL, with gridlines labelled
    at quarters. ``has_val``: False says the run validates nothing."""
    from PIL import Image, ImageDraw

    w, h = size
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    logged = [r for r in records if r.get("kind") == "train" and math.isfinite(r["loss"])]
    # a PSNR term makes the loss negative: a log axis dropped every point of such a run
    log_loss = all(r["loss"] > 0 for r in logged)
    train = [(r["step"], r["loss"]) for r in logged]
    # the scores on the set validated on last: a resume with another --val scored other
    # pairs, which do not compare, and one line joined them (an audit)
    vals = [r for r in records if r.get("kind") == "val"]
    current = vals[-1].get("val_set") if vals else None
    val = [(r["step"], r["val_psnr"]) for r in vals if r.get("val_set") == current]
    others = len(vals) - len(val)
    val_title = "val PSNR-Y (dB)" + (f" on {current}" if current and others else "") + (
        f"; {others} on another set left out" if others else "")
    # the supervised part beside the total: with contrastive terms on the user's photos
    # a fine-tuning run's total rises while it works (read as divergence in an audit)
    sup = [(r["step"], r["sup"]) for r in logged
           if "sup" in r and math.isfinite(r["sup"]) and (r["sup"] > 0 or not log_loss)]
    if sup and all(abs(v - t) < 1e-9 for (_, v), (_, t) in zip(sup, train, strict=False)):
        sup = []  # nothing but the supervised loss: one line says it
    title = ("train loss (log)" if log_loss else "train loss") + (
        "; orange: supervised part (logged steps)" if sup else "")
    panels = [(title, train, log_loss, (31, 119, 180)),
              (val_title, val, False, (214, 39, 40))]
    pw = w // 2
    for k, (title, pts, logy, color) in enumerate(panels):
        more = sup if k == 0 else []
        x0, y0, x1, y1 = k * pw + 50, 25, (k + 1) * pw - 15, h - 35
        d.rectangle([x0, y0, x1, y1], outline=(0, 0, 0))
        d.text((x0, 6), title, fill=(0, 0, 0))
        if not pts:
            empty = "no data yet" if logy or has_val else "no validation (no --val given)"
            d.text((x0 + 10, y0 + 10), empty, fill=(120, 120, 120))
            continue
        xs = [p[0] for p in pts]
        ys = [math.log10(p[1]) if logy else p[1] for p in pts]
        ys_more = [math.log10(p[1]) if logy else p[1] for p in more]
        xmin, xmax = min(xs), max(xs)
        ymin, ymax = min(ys + ys_more), max(ys + ys_more)
        if xmax == xmin:  # one point: from step 0 to it
            xmin = 0 if xmax > 0 else xmax - 1
        if ymax - ymin < 1e-9:  # a flat line: a little room above and below
            pad = 0.05 if logy else 0.25
            ymin, ymax = ymin - pad, ymax + pad

        def px(x: float, y: float, x0: float = x0, x1: float = x1, y0: float = y0,
               y1: float = y1, xmin: float = xmin, xmax: float = xmax, ymin: float = ymin,
               ymax: float = ymax) -> tuple[float, float]:
            return (x0 + (x - xmin) / (xmax - xmin) * (x1 - x0),
                    y1 - (y - ymin) / (ymax - ymin) * (y1 - y0))

        lab = (lambda v: f"{10**v:.3g}") if logy else (lambda v: f"{v:.2f}")
        for q in range(5):  # gridlines and labels at quarters of each axis
            gy = y1 - q / 4 * (y1 - y0)
            gx = x0 + q / 4 * (x1 - x0)
            if 0 < q < 4:
                d.line([(x0 + 1, gy), (x1 - 1, gy)], fill=(225, 225, 225))
                d.line([(gx, y0 + 1), (gx, y1 - 1)], fill=(225, 225, 225))
            # labels left of this panel's own frame, and under it
            d.text((x0 - 48, gy - 5), lab(ymin + q / 4 * (ymax - ymin)), fill=(0, 0, 0))
            step = xmin + q / 4 * (xmax - xmin)
            d.text((gx - (30 if q == 4 else 0), y1 + 5),
                   f"{step:.0f}" if q < 4 else f"step {step:.0f}", fill=(0, 0, 0))
        if len(more) > 1:
            d.line([px(x, y) for (x, _), y in zip(more, ys_more, strict=True)],
                   fill=(255, 127, 14), width=2)
        coords = [px(x, y) for x, y in zip(xs, ys, strict=True)]
        if len(coords) > 1:
            d.line(coords, fill=color, width=2)
        for c in coords if len(coords) < 50 else []:
            d.ellipse([c[0] - 2, c[1] - 2, c[0] + 2, c[1] + 2], fill=color)
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


# --------------------------------------------------------------------------- validation
@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, images: Iterable[np.ndarray], device: torch.device
) -> nn.Module:
    """Re-estimate BatchNorm running statistics on whole images, in place.

    Training sees small crops; at inference the networks see whole photos, and
    RDMC's deepest levels (1/16 resolution) get very different statistics from
    a 4x4 crop feature map than from a photo's. Cumulative averages over whole
    training images fix that mismatch (on rain100l, rdmc-lite went from 17.9 to
    28.9 dB on five images); the weights themselves are unchanged.

    Images too small for every layer to see more than one value per channel (a 1x1 photo
    among the training ones ended a finished run with PyTorch's "Expected more than 1 value
    per channel" at export, an audit) are passed over; with none left the statistics stay
    as they were, with a warning.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    least = max(BN_MIN_SIDE, int(getattr(model, "size_multiple", 1)) + 1)
    saved = [(m.momentum, copy.deepcopy(m.state_dict())) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    used = skipped = 0
    with torch.no_grad():
        for img in images:
            if min(img.shape[:2]) < least:
                skipped += 1
                continue
            model(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None].to(device))
            used += 1
    for m, (mom, state) in zip(bns, saved, strict=True):
        m.momentum = mom
        if not used:
            m.load_state_dict(state)
    said = (skipped, least, bool(used))
    if skipped and said not in _BN_SKIPS_SAID:  # once: every validation re-estimates
        _BN_SKIPS_SAID.add(said)
        _say(f"warning: batch-norm statistics: {skipped} image(s) under {least} px a side "
             "passed over" + ("; none left, so the statistics stay as they were"
                              if not used else ""))
    model.train(was_training)
    return model


#: The shortest side an image needs for :func:`recalibrate_batchnorm` (each layer sees
#: more than one value per channel; RDMC needs more than its size multiple)
BN_MIN_SIDE = 8
#: (images passed over, the side, any used) said already: warned once a process
_BN_SKIPS_SAID: set[tuple[int, int, bool]] = set()


def freeze_bn_from(mode: str | None) -> bool | None:
    """``--batchnorm`` (train, finetune) as ``TrainConfig.freeze_bn``: keep -> True,
    refresh -> False, None -> None (train's default, decided in ``_defaults``)."""
    if mode not in (None, "keep", "refresh"):
        raise TrainError(f"unknown --batchnorm {mode!r}; use keep or refresh")
    return None if mode is None else mode == "keep"


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Put every BatchNorm layer of a training model in eval mode, in place.

    Fine-tuning must not swap a trained model's running statistics for the batch statistics
    of 4 small crops: several bundled models were distilled with their statistics frozen
    (``derain distill --init``), and a default ``derain finetune`` of semi-drdnet-tiny that
    let them move dropped rain100l from 28.72 to 23.1 dB in 100 steps.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model


def _recalibrated(ema: nn.Module, labeled: Any, n: int, seed: int,
                  device: torch.device) -> nn.Module:
    """A copy of the EMA model with BN statistics from ``n`` whole training images."""
    if n <= 0 or not hasattr(labeled, "full_rainy"):
        return ema
    model = copy.deepcopy(ema)
    idx = np.random.default_rng(seed).permutation(len(labeled))[:n]
    return recalibrate_batchnorm(model, (labeled.full_rainy(int(i), seed) for i in idx), device)


def _val_pairs(pairs_dir: str, limit: int | None, rainy_dir: str | None,
               clean_dir: str | None) -> list[Any]:
    """The validation pairs, the first ``limit`` of them (None or 0: all)."""
    from .pairs import find_pairs

    pairs = find_pairs(Path(pairs_dir), rainy_dir, clean_dir)
    return pairs[:limit] if limit else pairs


def _load_val(pairs_dir: str, limit: int | None, crop: int | None,
              cache: dict[Any, Any] | None, rainy_dir: str | None = None,
              clean_dir: str | None = None,
              digests: dict[str, tuple[str, str]] | None = None,
              ) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The validation pairs as (name, rainy, clean) 8-bit RGB arrays (centre-cropped to
    ``crop``), kept in ``cache`` so that each validation decodes none. ``digests`` (where
    given, and not found in ``cache``) receives each pair's (rainy, clean) pixel digests,
    uncropped, for ``_warn_val_in_training``."""
    key = (pairs_dir, limit, crop, rainy_dir, clean_dir)
    if cache is not None and key in cache:
        return cache[key]
    pairs = _val_pairs(pairs_dir, limit, rainy_dir, clean_dir)
    images = []
    for p in pairs:
        r, c = D.load_rgb_u8(p.rainy), D.load_rgb_u8(p.clean)
        if digests is not None:
            digests[p.name] = (D.pixel_digest(r), D.pixel_digest(c))
        if crop and r.shape == c.shape:
            h, w = r.shape[:2]
            ch, cw = min(crop, h), min(crop, w)
            y, x = (h - ch) // 2, (w - cw) // 2
            r, c = r[y : y + ch, x : x + cw], c[y : y + ch, x : x + cw]
        images.append((p.name, r, c))
    if cache is not None:
        cache[key] = images
    return images


def validate(
    model: nn.Module, pairs_dir: str, *, device: torch.device, limit: int | None = 20,
    crop: int | None = None, cache: dict[Any, Any] | None = None,
    rainy_dir: str | None = None, clean_dir: str | None = None,
) -> dict[str, float]:
    """Mean PSNR/SSIM on Y (8-bit rounded outputs) of ``model`` on up to ``limit`` pairs
    (``rainy_dir``/``clean_dir``: the folders of ``pairs_dir``, as ``find_pairs`` takes them).
    Images (or ``crop``s) under 256 px run mirrored out, as ``derain`` runs them
    (``tiling.pad_small``): unpadded, small crops were scored on behaviour ``derain`` no
    longer has (an audit), several dB apart for rdmc-lite."""
    from . import metrics, tiling
    from .evaluate import PSNR_CAP

    images = _load_val(pairs_dir, limit, crop, cache, rainy_dir, clean_dir)
    was_training = model.training
    model.eval()
    ps, ss = [], []
    for _, r, c in images:
        r, crop = tiling.pad_small(r)  # a small image or crop, as ``derain`` runs it
        x = D.to_tensor(r)[None].to(device)
        with torch.no_grad():  # any model: the EMA copy needs no grad, a caller's may
            y = model(x).float().clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy()[crop]
        if not np.isfinite(y).all():  # finite weights whose activations overflow: said as
            # a divergence (the metrics' own refusal named neither the run nor its remedy)
            model.train(was_training)
            raise TrainDiverged(
                "training diverged: the model's output on a validation image holds NaN or "
                "infinite values (its weights are finite: its activations overflow); nothing "
                "of it is scored. Start again with a lower --lr (or --amp fp32)")
        ps.append(min(metrics.psnr_y(y, c), PSNR_CAP))  # as eval: one exact match is not inf
        ss.append(metrics.ssim_y(y, c))
    model.train(was_training)
    return {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "count": len(images)}


# --------------------------------------------------------------------------- the loop
def _defaults(cfg: TrainConfig, device: torch.device) -> TrainConfig:
    cfg = dataclasses.replace(cfg)
    on_gpu = device.type == "cuda"
    if cfg.batch is None:
        cfg.batch = 16 if on_gpu else 4
    if cfg.patch is None:
        cfg.patch = 128 if on_gpu else 96
    if cfg.workers is None:
        world = max(1, _dist_info()[1])
        cfg.workers = min(4, max(1, (os.cpu_count() or 2) // world)) if on_gpu else 0
    if cfg.freeze_bn is None:  # asking for re-estimated statistics means they may move
        cfg.freeze_bn = bool(cfg.init_weights) and not cfg.bn_recalib
    if cfg.bn_recalib is None:
        cfg.bn_recalib = 0 if cfg.init_weights else 16
    cfg.pairs, cfg.synthetic, cfg.unlabeled = (
        _resolved(cfg.pairs), _resolved(cfg.synthetic), _resolved(cfg.unlabeled))
    if cfg.val:  # recorded absolute too: a resume may start in another directory
        cfg.val = _resolved([cfg.val])[0]
    if cfg.init_weights:
        cfg.init_weights = _resolved([cfg.init_weights])[0]
    return cfg


#: what ``check_config`` accepts for the named string options
_EXPORT_DTYPES = ("float16", "fp16", "float32", "fp32", "bfloat16")
_FEATURES = ("auto", "vgg19", "self", "none")
_SMALLEST_PATCH = 16


def _data_flag(key: str, finetune: bool) -> str:
    """The flag that names a data-folder setting (``pairs``, ``synthetic``, ``unlabeled``)
    to the user of each command: finetune has its own (--clean, --rainy), and its messages
    named train's (audits)."""
    if key == "synthetic":
        return "--clean" if finetune else "--synthetic"
    if key == "unlabeled":
        return "--rainy" if finetune else "--unlabeled"
    return f"--{key}"


def _check_whole(name: str, value: object) -> None:
    """``TrainError`` where a whole-number setting (None: unset) is anything else: a Python
    caller's steps=2.5 trained 3 steps, steps="3" failed in a comparison (audits)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise TrainError(f"--{name.replace('_', '-')} must be a whole number, not {value!r}")


def check_config(cfg: TrainConfig, finetune: bool = False) -> None:
    """Refuse options that cannot work before any data is read or any step is taken, so a
    mistake costs seconds, not a training run (the export dtype used to fail only at the
    end, ``--epochs 0`` meant 10000 steps, ``--batch 0`` divided by zero). ``finetune``:
    its folders are named by its own flags (--clean, --rainy)."""
    from .synth import PRESET_NAMES, check_preset

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise TrainError(msg)

    for name in ("steps", "epochs", "batch", "threads", "patch", "workers", "warmup",
                 "val_every", "ckpt_every", "log_every", "val_limit", "val_crop", "seed",
                 "bn_recalib"):
        _check_whole(name, getattr(cfg, name, None))
    need(cfg.steps is None or cfg.epochs is None,
         "give --steps or --epochs, not both")
    need(cfg.steps is None or cfg.steps >= 1, f"--steps must be at least 1, not {cfg.steps}")
    need(cfg.epochs is None or cfg.epochs >= 1,
         f"--epochs must be at least 1, not {cfg.epochs}")
    need(cfg.batch is None or cfg.batch >= 1, f"--batch must be at least 1, not {cfg.batch}")
    need(cfg.threads is None or cfg.threads >= 1,
         f"--threads must be at least 1, not {cfg.threads}")
    need(cfg.patch is None or cfg.patch >= _SMALLEST_PATCH,
         f"--patch must be at least {_SMALLEST_PATCH} px, not {cfg.patch}")
    for name in ("lr", "min_lr_ratio", "weight_decay", "clip", "ema", "time_budget",
                 "contrast_weight", "ssim_weight", "l1_weight", "psnr_weight", "l2sp",
                 "consistency", "clean_fraction"):  # a Python caller's lr="1e-4" failed
        v = getattr(cfg, name)  # deep in a comparison, weight_decay="0.1" inside the
        need((v is None and name == "time_budget")  # optimizer after the run began, a NaN
             or (isinstance(v, (int, float)) and not isinstance(v, bool) and v == v),
             f"--{name.replace('_', '-')} must be a number, not {v!r}")  # weight trained on
        # skipping every update and exported the start (an audit of the Python API)
    # name="" wrote weights named "" (the same audit)
    need(cfg.name is None or (isinstance(cfg.name, str) and bool(cfg.name.strip())),
         f"--name must be a non-empty name, not {cfg.name!r} (leave it out for the "
         "model's own)")
    if cfg.arch is not None:  # a Python caller's arch="unet" was a bare ValueError from the
        from .models import _config_class  # model registry, not a TrainError

        try:
            _config_class(cfg.arch)
        except ValueError as e:
            raise TrainError(str(e)) from None
    for flag, v in (("--lr", cfg.lr), ("--l1-weight", cfg.l1_weight),
                    ("--psnr-weight", cfg.psnr_weight), ("--clip", cfg.clip),
                    ("--contrast-weight", cfg.contrast_weight), ("--l2sp", cfg.l2sp),
                    ("--consistency", cfg.consistency)):  # `--lr inf` trained to a NaN
        need(not math.isinf(v), f"{flag} must be a finite number, not {v:g}")  # model (audit)
    need(cfg.lr > 0, f"--lr must be positive, not {cfg.lr:g}")
    for flag, v in (("--ssim-weight", cfg.ssim_weight), ("--weight-decay", cfg.weight_decay)):
        need(v >= 0 and not math.isinf(v), f"{flag} must be 0 (off) or more, not {v:g}")
    need(0 <= cfg.min_lr_ratio <= 1, "--min-lr-ratio (the learning rate's floor, a share of "
                                     f"--lr) must be in [0, 1], not {cfg.min_lr_ratio:g}")
    need(cfg.l1_weight >= 0, f"--l1-weight must be 0 (off) or more, not {cfg.l1_weight:g}")
    need(cfg.psnr_weight >= 0,
         f"--psnr-weight must be 0 (off) or more, not {cfg.psnr_weight:g}")
    need(cfg.warmup >= 0, f"--warmup must be 0 or more, not {cfg.warmup}")
    need(cfg.workers is None or cfg.workers >= 0, f"--workers must be 0 or more, not {cfg.workers}")
    need(cfg.clip >= 0, f"--clip must be 0 (off) or more, not {cfg.clip:g}")
    need(0 <= cfg.ema < 1, f"--ema must be in [0, 1), not {cfg.ema:g}")
    for flag, v in (("--val-every", cfg.val_every), ("--ckpt-every", cfg.ckpt_every),
                    ("--log-every", cfg.log_every), ("--val-limit", cfg.val_limit)):
        need(v >= 1, f"{flag} must be at least 1, not {v}")
    need(bool(cfg.val) or not (cfg.val_rainy_dir or cfg.val_clean_dir),  # (ignored: audit)
         "--val-rainy-dir and --val-clean-dir name folders inside --val: give --val too")
    need(bool(cfg.pairs) or not (cfg.rainy_dir or cfg.clean_dir),  # (ignored too: an audit)
         "--rainy-dir and --clean-dir name folders inside --pairs: give --pairs too")
    need(cfg.val_crop is None or cfg.val_crop >= _SMALLEST_PATCH,
         f"--val-crop must be at least {_SMALLEST_PATCH} px, not {cfg.val_crop}")
    need(cfg.time_budget is None or cfg.time_budget > 0,
         f"--time-budget must be positive, not {cfg.time_budget}")
    need(cfg.bn_recalib is None or cfg.bn_recalib >= 0,
         f"--bn-recalib must be 0 (off) or more, not {cfg.bn_recalib}")
    need(not (cfg.freeze_bn and cfg.bn_recalib),
         "--bn-recalib re-estimates the BatchNorm statistics that --batchnorm keep freezes; "
         "pass one of them")
    need(cfg.contrast_weight >= 0,
         f"--contrast-weight must be 0 or more, not {cfg.contrast_weight:g}")
    need(cfg.l2sp >= 0, f"--l2sp must be 0 (off) or more, not {cfg.l2sp:g}")
    need(0 <= cfg.seed < 2**32, f"--seed must be 0 to {2**32 - 1}, not {cfg.seed}")
    need(cfg.consistency >= 0, f"--consistency must be 0 (off) or more, not {cfg.consistency:g}")
    for flag, folders in (("--pairs", cfg.pairs), ("--synthetic", cfg.synthetic),
                          ("--unlabeled", cfg.unlabeled)):  # named twice: its data twice
        seen: dict[str, str] = {}  # (`--pairs P --pairs ./P/`, a link: an audit)
        for f, key in zip(folders, _resolved(folders), strict=True):
            need(key not in seen, f"{flag} names one folder twice ({seen.get(key)}, {f}): "
                                  "its images would count twice; name each once")
            seen[key] = f
    from .pairs import reads_into

    for flag, folders in (("--pairs", cfg.pairs),
                          (_data_flag("synthetic", finetune), cfg.synthetic),
                          (_data_flag("unlabeled", finetune), cfg.unlabeled),
                          ("--val", [cfg.val] if cfg.val else [])):
        for f in folders:  # the folders are read recursively: the run's files would be data
            via = reads_into(f, cfg.out)
            same = via is not None and os.path.realpath(cfg.out) == os.path.realpath(f)
            need(via is None,
                 (f"--out {cfg.out} is the {flag} folder itself" if same else
                  f"--out {cfg.out} is inside the {flag} folder {f}")
                 + ("" if via is None or via == Path(f).expanduser() else f" (through {via})")
                 + ": its files (curves.png, checkpoints) would be read as photos next time; "
                 "choose an --out outside it")
    try:
        check_preset(cfg.preset)
    except ValueError:
        need(False, f"unknown --preset {cfg.preset!r}; use {', '.join(PRESET_NAMES)} "
                    "or a comma list of them (light,mixed)")
    need(cfg.contrast_features in _FEATURES,
         f"unknown --contrast-features {cfg.contrast_features!r}; use {', '.join(_FEATURES)}")
    need(cfg.export_dtype in _EXPORT_DTYPES,
         f"unknown --export-dtype {cfg.export_dtype!r}; use float16, float32 or bfloat16")
    need(cfg.amp in ("auto", "bf16", "fp32"),
         f"unknown amp mode {cfg.amp!r}; use auto, bf16 or fp32")
    need(not Path(cfg.out).exists() or Path(cfg.out).is_dir(),
         f"--out {cfg.out} is a file; name a folder for the run")
    from .fileio import why_unwritable

    unwritable = why_unwritable(cfg.out)  # a file above it said "[Errno 20] Not a
    need(unwritable is None, f"cannot write to --out {cfg.out}: {unwritable}")  # directory"


def _check_val_pairs(cfg: TrainConfig, warn: bool = True,
                     ) -> tuple[dict[Any, Any], dict[str, tuple[str, str]]]:
    """Every validation pair decoded now and checked (readable, same size after EXIF
    orientation, big enough to score), rather than at the first validation, which threw
    away the training since the last checkpoint (a swapped or truncated pair passed a
    header check). Returns ``validate``'s cache, filled, and each pair's pixel digests.
    ``warn``: say which pairs hold one grayscale and one colour image (rank 0 only)."""
    from .evaluate import is_gray, pair_problem, unlike_pairs
    from .pairs import NAME_FOLDERS_HINT, PairsError

    cache: dict[Any, Any] = {}
    digests: dict[str, tuple[str, str]] = {}
    try:
        images = _load_val(cfg.val, cfg.val_limit, cfg.val_crop, cache, cfg.val_rainy_dir,
                           cfg.val_clean_dir, digests)
    except D.DataError as e:
        raise TrainError(f"--val: {e}", every_rank=False) from None
    except PairsError as e:  # --val has no --rainy-dir/--clean-dir to name its folders
        raise TrainError(f"--val: {e}".replace(
            NAME_FOLDERS_HINT, "Name its folders with --val-rainy-dir and --val-clean-dir"),
            every_rank=False) from None
    unlike = []
    for name, r, c in images:
        problem = pair_problem(name, r, c)
        if problem:
            raise TrainError(f"--val: {problem}", every_rank=False)
        if is_gray(r) != is_gray(c):
            unlike.append(name)
    if unlike and warn:  # validated in silence, as eval scored them until an audit
        _say(f"warning: --val: {unlike_pairs(unlike)}: check those pairs; their scores (on "
             "Y) compare brightness only")
    return cache, digests


def _warn_val_in_training(cfg: TrainConfig, digests: dict[str, tuple[str, str]],
                          labeled: Any, unlabeled: Any) -> None:
    """Say where --val pairs are training images too: a clean image among the training
    targets (synthetic pairs made from the photos the run trains on: the README's first
    training recipe did that), a rainy one among the --unlabeled photos. Their scores then
    read high and best.pt is picked on images the model has seen. Compared by decoded
    pixels, so a re-encoded copy (``derain synth`` writes PNGs) is found, and one that
    finetune downscaled to its ``--max-side`` (the validation's rainy image downscaled
    alike); one the user resized or cropped is not."""
    seen: dict[str, str] = {}
    for source in getattr(labeled, "sources", ()):
        seen.update((D.pixel_digest(img), name)
                    for img, name in zip(source.clean, source.names, strict=True))
    found = [(name, seen[c]) for name, (_, c) in digests.items() if c in seen]
    if found:
        _say(f"warning: --val: {len(found)} of its {len(digests)} pairs have a clean image "
             f"the run trains on (pairs named by their rainy files, validation = training: "
             f"{_named(found)}): validation scores read high and best.pt "
             "is picked on images the model has seen; make the validation pairs from photos "
             "kept out of training")
    if unlabeled is not None and getattr(unlabeled, "images", None):
        photos = {D.pixel_digest(img) for img in unlabeled.images}
        fitted = _val_rainy_fitted(cfg, unlabeled.fitted_to) if unlabeled.fitted_to else {}
        rainy = [name for name, (r, _) in digests.items()
                 if r in photos or fitted.get(name) in photos]
        if rainy:
            _say(f"warning: --val: {len(rainy)} of its {len(digests)} rainy images are "
                 f"among the {unlabeled.flag} photos ({', '.join(rainy[:3])}"
                 f"{', ...' if len(rainy) > 3 else ''}): the run learns from them, so "
                 "validation scores read high")


def _val_rainy_fitted(cfg: TrainConfig, side: int) -> dict[str, str]:
    """The pixel digests of the --val rainy images longer than ``side``, downscaled to it
    as finetune's photos are (``data.fit_long_side``); decoded again, the validation's
    cache holding them cropped."""
    fitted = {}
    for p in _val_pairs(str(cfg.val), cfg.val_limit, cfg.val_rainy_dir, cfg.val_clean_dir):
        r = D.load_rgb_u8(p.rainy)
        if max(r.shape[:2]) > side:
            fitted[p.name] = D.pixel_digest(D.fit_long_side(r, side))
    return fitted


def _named(found: list[tuple[str, str]]) -> str:
    """The first three (validation name, training name) matches, as "a = b": pairs by
    their rainy files' names (said so: "rain-001.png = 901_2.png" under words of clean
    images read as two clean files, an audit)."""
    return ", ".join(a if a == b else f"{a} = {b}" for a, b in found[:3]) + (
        ", ..." if len(found) > 3 else "")


def _check_resume(cfg: TrainConfig, ckpt: dict[str, Any], arch: str, conf: dict[str, Any],
                  out: Path, warn: bool = True, recalib_given: bool = True,
                  freeze_given: bool = True, world: int = 1,
                  notes: list[str] | None = None) -> TrainConfig:
    """A resumed run must be the same run: same network, same data (folders compared as
    resolved paths, so ``syn`` and ``/abs/syn`` agree). A longer ``--steps`` is fine (that
    is what resuming is for); other changed settings get a warning. Returns ``cfg`` with
    the run's own BatchNorm settings when none were given (a run started from ``--weights``
    keeps its statistics when resumed without it). ``notes``: the warning goes there, to be
    said once the resume is accepted (it was printed before a refusal that came later)."""
    if ckpt.get("arch") != arch or json.loads(ckpt.get("model_config") or "{}") != conf:
        raise TrainError(f"--resume: {out} was trained as {ckpt.get('name')} "
                         f"({ckpt.get('arch')}), another network than the one asked for; "
                         "leave out -m and --weights to continue it with its own", every_rank=False)
    try:
        before = json.loads(ckpt.get("config") or "{}")
    except ValueError:
        return cfg
    if not recalib_given and before.get("bn_recalib") is not None:
        cfg = dataclasses.replace(cfg, bn_recalib=int(before["bn_recalib"]))
    if not freeze_given and before.get("freeze_bn") is not None:
        cfg = dataclasses.replace(cfg, freeze_bn=bool(before["freeze_bn"]))
    now = dataclasses.asdict(cfg)
    folders = ("pairs", "synthetic", "unlabeled")
    for key in folders:
        if isinstance(before.get(key), list):
            before[key] = _resolved(before[key])
    # the preset makes rain on clean photos and the contrastive terms' extra samples: a
    # paired run without those did not use it, and was refused as "other data" (an audit)
    preset_used = bool(before.get("synthetic") or now.get("synthetic")) or \
        _run_kind(out) == "finetune" or \
        {before.get("contrast_features"), now.get("contrast_features")} != {"none"}
    finetune = _run_kind(out) == "finetune"
    flag = {key: _data_flag(key, finetune) for key in folders}
    gone = []
    for key in folders:  # the run's folders moved (none is where it was): those given
        old, new = before.get(key), now.get(key)  # stand in; their image count is checked
        if (isinstance(old, list) and isinstance(new, list) and old and len(old) == len(new)
                and old != new and not any(os.path.exists(f) for f in old)):
            gone.append(f"{flag[key]} {', '.join(map(str, old))} is gone; "
                        f"{', '.join(map(str, new))} stands in")  # (refused as other data,
            before[key] = new  # and without the new place no folder: an audit)
    if gone and warn:
        (notes.append if notes is not None else _say)(
            "warning: --resume: " + "; ".join(gone) + " (moved photos resume as they were; "
            "other photos make it another run)")
    data_keys = (*folders, "rainy_dir", "clean_dir", *(("preset",) if preset_used else ()))
    changed = [k for k in data_keys if k in before and before[k] != now.get(k)]
    w0, w1 = before.get("init_weights"), now.get("init_weights")
    other_start = _changed_start(ckpt, w1)  # the starting point, L2-SP anchor and teacher
    if other_start is None:  # no record: the file it started from, where it still is
        other_start = bool(w0 and w1 and _other_file(w0, w1))
    if other_start:
        changed.append("init_weights")
        before.setdefault("init_weights", None)
    if changed:
        def shown(value: Any) -> str:  # (Python's list reprs were printed: an audit)
            return ", ".join(map(str, value)) if isinstance(value, list) else repr(value)

        raise TrainError("--resume: the run was trained on other data ("
                         + "; ".join(f"{flag.get(k, k)}: {shown(before[k])}, now "
                                     f"{shown(now.get(k))}" for k in changed)
                         + (" (other weights than the run started from)"
                            if "init_weights" in changed else "")
                         + "); start a new run with another --out", every_rank=False)
    soft = ("batch", "patch", "lr", "warmup", "clip", "ema", "contrast_features",
            "contrast_weight", "contrast_terms", "clean_fraction", "seed", "l2sp",
            "consistency", "freeze_bn", "bn_recalib")  # (finetune --batchnorm changed on
    # resume went unsaid: an audit)
    if _run_kind(out) == "finetune":  # its warmup follows --steps: no flag of its own
        soft = tuple(k for k in soft if k != "warmup")
    moved = [f"{k} {before[k]!r} -> {now.get(k)!r}" for k in soft
             if k in before and before[k] != now.get(k)
             and not (k in ("freeze_bn", "bn_recalib") and now.get(k) is None)]  # (unset:
    # the defaults follow, as the run's did)
    if isinstance(before.get("steps"), int) and now.get("steps") is not None \
            and now["steps"] < before["steps"]:  # longer is what resuming is for
        moved.append(f"steps {before['steps']} -> {now['steps']} (the run ends sooner and "
                     "its learning rate decays on the shorter schedule)")
    spent = before.get("time_budget")
    if spent and not now.get("time_budget"):  # the schedule followed the budget's clock
        steps = f"{now['steps']} steps" if now.get("steps") else "the run's steps"
        moved.append(f"time budget {spent} s -> none (the run's learning rate decayed over "
                     f"its {spent} s budget; it now follows a schedule of {steps}, so it "
                     "rises again: give --time-budget to continue the "
                     "budgeted schedule)")
    was = ckpt.get("world")  # checkpoints before 2026-12-03 did not record it
    if isinstance(was, int) and was != world:
        moved.append(f"processes {was} -> {world} (the global batch becomes "
                     f"{cfg.batch}x{world}, was {before.get('batch', cfg.batch)}x{was}, and "
                     "log.jsonl's epoch numbers shift: an epoch is a different number of "
                     "steps)")
    if validation_changed(before, now):
        moved.append("validation " + " -> ".join(
            ", ".join(f"{k} {v!r}" for k, v in zip(_VALIDATION, _validation_of(d), strict=True)
                      if v) if d.get("val") else "none"  # no pairs: its limit is no
            for d in ({**now, **before}, now))  # validation ("val_limit 20 -> ...": audit)
            + " (the best score so far, taken on the old validation, no longer counts: "
            "best.pt is replaced at the next validation)")
    if moved and warn:
        text = "warning: --resume with changed settings: " + ", ".join(moved)
        if notes is not None:
            notes.append(text)
        else:
            _say(text)
    return cfg


def _changed_start(ckpt: dict[str, Any], path: str | None) -> bool | None:
    """Whether the starting weights at ``path`` hold other tensors than those the run
    started from, by the record its checkpoints keep (``start_weights``, since 2026-12-05);
    None where there is no record (an older checkpoint) or nothing to compare. The tensors
    count, not the file: a copy elsewhere or a new header is the same start, a file
    replaced in place with other weights is not (a review: it went unnoticed, and was
    recorded as the run's start)."""
    was = (ckpt.get("start_weights") or {}).get("tensors_sha256")
    if not was or not path:
        return None
    from .weights import WeightsError, read_state

    try:
        now = tensors_sha256(read_state(Path(path).expanduser())[0])
    except (OSError, WeightsError):
        return None  # gone or unreadable: loading it says so
    return now != was


#: the settings that decide what a validation score measures
_VALIDATION = ("val", "val_rainy_dir", "val_clean_dir", "val_limit", "val_crop")


def validation_changed(before: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether a resumed run (config ``before``) validates on other pairs than ``now``
    asks (an older config lacking a setting is completed from ``now``)."""
    return _validation_of({**now, **before}) != _validation_of(now)


def _validation_of(config: dict[str, Any]) -> tuple[Any, ...]:
    """What a run's validation measures, from its config (a dict of TrainConfig's fields;
    an older run's config that lacks one is completed from the new config before comparing):
    the pairs folder (absolute, so another working directory is the same folder), its
    layout overrides, the count and the crop. A resumed run whose validation differs may
    not compare its scores with the best kept from before (an audit: a resume with another
    --val kept the old set's best score and best.pt, and its record mixed the two)."""
    folder = config.get("val")
    if isinstance(folder, str):
        folder = str(Path(folder).expanduser().resolve())
    return (folder, *(config.get(k) for k in _VALIDATION[1:]))


def _other_file(first: str, second: str) -> bool:
    """Whether two weights files differ in content (the same model's weights lie at
    another path on another machine or install); False when the first is not here."""
    from .hub import sha256_file

    a, b = Path(first).expanduser(), Path(second).expanduser()
    if not a.is_file() or not b.is_file() or a.resolve() == b.resolve():
        return False
    return sha256_file(a) != sha256_file(b)


def _resolved(folders: Iterable[str]) -> list[str]:
    """Absolute forms of data folders: what a run records, so a resume from another working
    directory, or with the folder spelled differently, is still recognised."""
    return [str(Path(f).expanduser().resolve()) for f in folders]


def _auto_bf16(device: torch.device) -> bool:
    """``--amp auto``: bf16 autocast on GPUs and CPUs with native bf16 instructions (on a
    GPU before Ampere, which only emulates it, fp32).

    On the AVX-512-BF16 test CPU a default ``derain train`` of semi-drdnet-lite ran 200 steps
    in 370 s against 432 s in fp32 with weights as good (rain100l 24.20 against 24.23 dB);
    the 20-minute benchmark (benchmarks/train_lite_cpu.py: batch 8 of 64 px, no contrastive
    terms) made 2922 steps against 1364 and scored 27.32 against 26.38 dB.
    """
    if device.type == "cuda":  # native bf16 from Ampere on; a T4 or V100 emulates it, slowly
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and cpu_supports_bf16()


def _bf16_grads_finite(model: nn.Module, arch: str, batch: int, patch: int) -> bool:
    """One bf16-autocast training step of a copy of ``model`` on random crops of the run's
    shape, in its channels_last layout: are all the weight gradients finite?

    Why: on a 2-core AMD EPYC with AVX-512-BF16, CPU family 26 (torch 2.13.0, 2026-12-02),
    oneDNN's bf16 weight-gradient kernel returned NaN for channels_last 3x3 convolutions of 24
    channels with dilation 3 (rdmc-lite's encoder), on every step and from any weights, while
    fp32 and the forward pass were fine: every update was skipped and the run stopped after
    20 steps (an earlier AVX-512-BF16 EPYC had trained the same model in bf16). The
    check costs one step; the model, its BatchNorm statistics and the random streams are
    left untouched.
    """
    probe = copy.deepcopy(model).train()
    device = next(probe.parameters()).device
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(batch, 3, patch, patch, generator=gen, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        outs = _Wrapper(probe, arch)(x)
    sum(o.float().square().mean() for o in outs).backward()
    return all(bool(torch.isfinite(p.grad).all())
               for p in probe.parameters() if p.grad is not None)


def _mean_over_ranks(window: Sequence[float], world: int,
                     device: torch.device) -> float | None:
    """The mean of every rank's logged losses (None when none has any): under torchrun
    the log, bars and curves showed rank 0's own batches alone. A collective: every rank
    calls it at the same steps."""
    if world == 1:
        return float(np.mean(window)) if window else None
    t = torch.tensor([float(sum(window)), float(len(window))], dtype=torch.float64,
                     device=device)
    dist.all_reduce(t)
    return float(t[0] / t[1]) if t[1] > 0 else None


#: the most parameters a network derain trains may have: 6 times the largest registered
#: model (paper-size RDMC, 16 M), so that a config no run of derain's holds is refused
#: before it is built
MAX_TRAIN_PARAMS = 100_000_000


def _build_model(cfg: TrainConfig, arch: str, conf: dict[str, Any]) -> nn.Module:
    if not cfg.init_weights:  # (its size checked with its identity: _model_identity)
        return build_architecture(arch, conf)
    # shapes checked before anything is built (without -m the architecture comes from the
    # file's own metadata); the file read once
    from .weights import FORMAT, WeightsError, build_fitting, read_state

    state, meta = read_state(cfg.init_weights)
    try:
        return build_fitting(arch, conf, state, str(cfg.init_weights),
                             header=not cfg.model and cfg.arch is None)  # (the file's own)
    except WeightsError as e:  # say what the file is, as derain --weights does (audit)
        if cfg.model and meta.get("format") == FORMAT and "arch" in meta:
            raise WeightsError(  # as finetune, derain and export say it (exit 1; an audit)
                f"{cfg.init_weights}: the file holds {meta.get('name') or meta['arch']} "
                f"weights ({meta['arch']}, {meta.get('config')}) that do not fit --model "
                f"{cfg.model}; leave out --model to train the file's own architecture ({e})"
            ) from None
        raise

def _check_network_size(arch: str, conf: dict[str, Any]) -> None:
    """TrainError where ``conf`` builds a network past ``MAX_TRAIN_PARAMS`` (counted on the
    meta device: nothing allocated). A run folder's config.json asking for width 8192 and
    64 blocks allocated gigabytes a layer on --resume until the machine ran out (an audit
    of downloaded runs); --model-config alike."""
    try:
        with torch.device("meta"):
            net = build_architecture(arch, conf)
    except (TypeError, ValueError, KeyError):
        return  # the real build says what is wrong with the config
    count = sum(p.numel() for p in net.parameters())
    if count > MAX_TRAIN_PARAMS:
        raise TrainError(f"the model config {json.dumps(conf)[:160]} builds a network of "
                         f"{count / 1e6:.0f} M parameters, more than derain trains "
                         f"({MAX_TRAIN_PARAMS / 1e6:.0f} M; paper-size RDMC holds 16 M): a "
                         "damaged or foreign run, or a --model-config typo")


def train(
    config: TrainConfig,
    *,
    _hooks: dict[str, Callable[..., Any]] | None = None,
) -> TrainResult:
    """Train (or resume) a model as ``config`` says; see the module docstring."""
    cfg = _paths_as_text(config)
    _resume_flag(cfg)
    if cfg.model == TrainConfig.model and (cfg.arch is not None or cfg.init_weights) and not (
            cfg.given is not None and "model" in cfg.given):  # (the CLI's -m typed: kept)
        # the default beside another network's description: that network, as the CLI does
        # without --model (a Python caller's init_weights failed "do not fit --model
        # semi-drdnet-lite", an arch run was named semi-drdnet-lite: an audit)
        cfg = dataclasses.replace(cfg, model=None)
    rank, world, local = _dist_info()
    is_main = rank == 0
    started_dist = False
    if world > 1 and not dist.is_initialized():
        # one way of joining torchrun for both commands: NCCL with a GPU per rank, gloo
        # otherwise, and a timeout long enough for rank 0's validation while the others wait
        from .batch import init_distributed

        init_distributed(cfg.device)
        started_dist = True
    try:
        with contextlib.ExitStack() as held:  # the run folder's lock, released at the end
            held.enter_context(_callers_state_kept())
            return _train(cfg, rank, world, local, is_main, _hooks or {}, held)
    finally:
        if started_dist and dist.is_initialized():
            dist.destroy_process_group()


_Config = TypeVar("_Config")


@contextlib.contextmanager
def _callers_state_kept() -> Iterator[None]:
    """The process-wide settings a run changes, put back when it ends: PyTorch's thread
    count (``threads``) and the random generators of torch (CPU), numpy and Python, which
    the run seeds with ``seed``: a notebook's own random draws repeated after every
    ``train()``, and it ran on one thread after ``threads=1`` (an audit)."""
    threads = torch.get_num_threads()
    states = torch.random.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.random.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])


#: The config fields that hold a list of folders (one given alone is taken as a list of it)
_FOLDER_LISTS = frozenset({"pairs", "synthetic", "unlabeled"})


def _resume_flag(cfg: Any) -> None:
    """``resume`` must be a bool: "no" was truthy and resumed a run (an audit of the Python
    API)."""
    if not isinstance(cfg.resume, bool):
        raise TrainError(f"resume must be True or False, not {cfg.resume!r}")


def _paths_as_text(cfg: _Config) -> _Config:
    """``cfg`` (a TrainConfig or FinetuneConfig) with its ``pathlib.Path`` (any
    ``os.PathLike``) values, alone or in lists, as strings: ``out=Path(...)`` passed every
    check and then failed writing the run's JSON config, leaving a run folder behind (an
    audit of the Python API)."""
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in _FOLDER_LISTS and isinstance(value, str | os.PathLike):  # one folder:
            changes[f.name] = [os.fspath(value)]  # its letters were taken for folders (an
            # audit: "--synthetic names one folder twice (/, /)")
        elif isinstance(value, os.PathLike):
            changes[f.name] = os.fspath(value)
        elif isinstance(value, list | tuple) and any(isinstance(v, os.PathLike) for v in value):
            changes[f.name] = [os.fspath(v) if isinstance(v, os.PathLike) else v
                               for v in value]
    return dataclasses.replace(cfg, **changes) if changes else cfg  # type: ignore[type-var]


#: Settings of the machine or the session, never taken over from the run being resumed
#: as they are (``time_budget`` counts over the whole run and is taken over by
#: ``_resumed_budget``'s rule).
_NOT_INHERITED = frozenset({"out", "resume", "quiet", "given", "device", "threads", "workers",
                            "time_budget"})
#: Settings that only make sense together: one given on purpose keeps the others out too.
_INHERITED_TOGETHER = (("steps", "epochs"), ("model", "arch", "model_config"),
                       ("bn_recalib", "freeze_bn", "init_weights"))


def with_run_settings(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the resumed run's own settings wherever ``cfg.given`` names no choice
    (see :attr:`TrainConfig.given`), read from the run's config.json or, where that is lost
    or damaged, from its last.pt. With neither readable the config is returned as it is, and
    resuming reports what is missing."""
    if not cfg.resume:
        return cfg
    cfg = _with_given(cfg)
    run = Path(cfg.out)
    saved: Any = None
    try:
        saved = json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        pass
    if not isinstance(saved, dict):  # config.json lost or damaged: last.pt has it too
        try:
            saved = json.loads(load_checkpoint(run / "last.pt").get("config") or "{}")
        except (OSError, ValueError, TrainError):
            return cfg
    if not isinstance(saved, dict):
        return cfg
    return _inherit(cfg, saved, _INHERITED_TOGETHER)


def _with_given(cfg: Any) -> Any:
    """``cfg`` with ``given`` filled in where None (a Python caller's config): the fields
    set to other values than their defaults (a field without one, as finetune's ``rainy``:
    set to other than None)."""
    if cfg.given is not None:
        return cfg
    changed = []
    for f in dataclasses.fields(cfg):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        if getattr(cfg, f.name) != default:
            changed.append(f.name)
    return dataclasses.replace(cfg, given=changed)


def _inherit(cfg: Any, saved: dict[str, Any], together: Iterable[Sequence[str]]) -> Any:
    """``cfg`` (a TrainConfig or FinetuneConfig) with ``saved``'s value for every field
    ``cfg.given`` makes no choice of (one field of a ``together`` group given keeps the
    whole group out; ``_NOT_INHERITED`` never comes from a run); ``given`` cleared."""
    given = set(cfg.given or ())
    for group in together:
        if given & set(group):
            given |= set(group)
    fields = {f.name for f in dataclasses.fields(cfg)} - _NOT_INHERITED - given
    taken = {k: saved[k] for k in fields if k in saved}
    budget = None if "time_budget" in given else _resumed_budget(
        Path(cfg.out), saved, steps_given=bool(given & {"steps", "epochs"}))
    if budget is not None:
        taken["time_budget"] = budget
    return dataclasses.replace(cfg, **taken, given=None)


def _resumed_budget(run: Path, saved: dict[str, Any], steps_given: bool) -> float | None:
    """The run's own ``time_budget`` for its resume, counted over the whole run. Kept where
    the run stopped before spending it (Ctrl-C, a killed job): a resume of a budgeted run
    dropped the budget and trained on toward the step cap, hours (audit). A spent one is
    kept too where the resume asks for no more steps: the run stopped on it and only its
    export may be owed (``_run_length``); dropped in silence, a run stopped during that
    export trained on for hours. With ``--steps``/``--epochs`` given a spent budget is
    dropped (the resume warning says to give --time-budget to keep a budget)."""
    budget = saved.get("time_budget")
    if not isinstance(budget, int | float) or isinstance(budget, bool) or budget <= 0:
        return None
    last = run / "last.pt"  # or best.pt, which a run stopped before its first last.pt
    wall = _checkpoint_wall(last if last.exists() else run / "best.pt")  # resumes from
    if wall is None:  # (_checkpoint_to_resume), which says what is wrong with it
        return None
    return float(budget) if wall < float(budget) or not steps_given else None


def _checkpoint_wall(path: Path) -> float | None:
    """A checkpoint's time on the budget's clock (``budget_clock``), or None where it
    cannot be read. Memory-mapped: the weights and optimiser state are not read, so the
    resume's own load (``_checkpoint_to_resume``) is the only full read."""
    from .weights import inflation_problem

    try:
        if inflation_problem(path) is not None:
            return None  # (the resume's own load refuses it, saying why)
        ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return budget_clock(ck) if isinstance(ck, dict) else None
    except Exception:  # noqa: BLE001 - missing, damaged (a zip error, ...), not ours
        return None


def budget_clock(ckpt: dict[str, Any]) -> float:
    """The run's time on the ``--time-budget`` clock at ``ckpt``: its training, set-up left
    out (``budget_s``; checkpoints before 2026-12-06 had only ``wall_time_s``)."""
    return float(ckpt.get("budget_s", ckpt.get("wall_time_s", 0.0)))


def budget_spent(cfg: Any, ckpt: dict[str, Any] | None) -> bool:
    """Whether the resumed run ``ckpt`` has already trained for ``cfg.time_budget``."""
    return bool(ckpt is not None and cfg.time_budget and budget_clock(ckpt) >= cfg.time_budget)


def _refuse_unresumable(cfg: TrainConfig, hooks: dict[str, Callable[..., Any]]) -> None:
    """``--resume`` where there is nothing to resume (or only a finetune run, which
    ``derain finetune --resume`` continues): said before the run's settings and data are
    looked for."""
    if not cfg.resume:
        return
    last = Path(cfg.out) / "last.pt"
    # finetune() passes its hooks (run_started writes finetune.json); train resumed alone
    # in a finetune run asked for --pairs/--synthetic, then said "other data"
    if "run_started" not in hooks and _run_kind(last.parent) == "finetune":
        raise TrainError(f"--resume: {last.parent} is a `derain finetune` run; continue it "
                         f"with `derain finetune -o {shlex.quote(str(last.parent))} --resume`",
                         every_rank=False)
    if not last.exists():
        if (last.parent / "best.pt").exists() and not (last.parent / "model.safetensors").exists():
            return  # stopped between its first best.pt and its first last.pt: resumed from best.pt
        done = [h for h in ("model.safetensors", "best.pt") if (last.parent / h).exists()]
        if done:  # a finished run whose last.pt was cleaned up: nothing to continue from
            raise TrainError(f"--resume: {last.parent} holds a finished run ({done[0]}) "
                             f"without its checkpoint {last.name}, so it cannot be continued; "
                             "start from its weights in a new run (--weights "
                             f"{shlex.quote(str(last.parent / 'model.safetensors'))} -o "
                             "NEW_FOLDER)",
                             every_rank=False)
        if _in_use(last.parent):  # a run there before its first checkpoint (an audit:
            # "no run to resume there" while one was going)
            raise TrainError(f"--resume: {last.parent} is in use by another derain process "
                             "(a run there is still going, with no checkpoint yet); wait for "
                             "it to end, or stop it and resume then", every_rank=False)
        raise TrainError(f"--resume: no checkpoint at {last}: no run to resume there (check "
                         "-o, or leave out --resume to start a new run)", every_rank=False)


def _in_use(out: Path) -> bool:
    """Whether another process holds ``out``'s run lock (``_lock_run``), asked without
    taking it; False where there is no lock file or no locking."""
    try:
        import fcntl

        with open(out / RUN_LOCK, "rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
    except (ImportError, OSError):
        return False
    return False


@dataclass
class _Setup:
    """What a run settled on before any data or weights are touched."""

    cfg: TrainConfig
    device: torch.device
    name: str
    arch: str
    conf: dict[str, Any]
    use_bf16: bool
    #: the decoded validation pairs (rank 0 only: the others never validate)
    val_cache: dict[Any, Any]
    #: whether --bn-recalib / --freeze-bn were given (a resume warns when they differ)
    recalib_given: bool
    freeze_given: bool
    #: each validation pair's (rainy, clean) pixel digests (rank 0 only)
    val_digests: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: a resume's warnings, said once the checkpoint is restored (none were refused)
    resume_notes: list[str] = field(default_factory=list)


def _settle(cfg: TrainConfig, hooks: dict[str, Callable[..., Any]], local: int, world: int,
            is_main: bool) -> _Setup:
    """The run's settings (a resumed run's own where none were given), device, model
    identity and precision, every setting checked: a mistake fails here, on every rank,
    not minutes into the run."""
    cfg = with_run_settings(cfg)
    check_config(cfg, finetune="run_started" in hooks)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = _resolve_device(cfg.device, local, world)
    if device.type == "cpu":  # large activations and gradients reuse mapped pages
        keep_freed_memory()
    recalib_given = cfg.bn_recalib is not None
    freeze_given = cfg.freeze_bn is not None
    cfg = _defaults(cfg, device)
    name, arch, conf = _model_identity(cfg)
    if not cfg.pairs and not cfg.synthetic and "make_labeled" not in hooks:
        raise TrainError("no training data: pass --pairs DIR and/or --synthetic CLEAN_DIR")
    try:
        L.parse_contrast_terms(arch, cfg.contrast_terms)
    except ValueError as e:
        raise TrainError(f"--contrast-terms: {e}") from None
    if cfg.l1_weight and arch != "rdmc":
        raise TrainError(f"--l1-weight is for RDMC's loss; {arch}'s supervised loss already "
                         "is L1 + SSIM")
    val_cache: dict[Any, Any] = {}
    val_digests: dict[str, tuple[str, str]] = {}
    if cfg.val:  # fail now, on every rank, rather than at the first validation
        val_cache, val_digests = _check_val_pairs(cfg, warn=is_main)
        if not is_main:  # only rank 0 validates: the others drop the decoded images
            val_cache, val_digests = {}, {}
    use_bf16 = cfg.amp == "bf16" or (cfg.amp == "auto" and _auto_bf16(device))
    if use_bf16 and device.type == "cpu" and not cpu_supports_bf16():
        # Without AVX-512-BF16/AMX, PyTorch runs bf16 convolutions through its slow reference
        # kernels: a semi-drdnet-lite step took ~26 s instead of ~3.5 s in fp32 (AVX2 EPYC).
        if is_main:
            _say("warning: --amp bf16: this CPU has no bf16 instructions; training in fp32 "
                 "(bf16 would run ~7x slower here)")
        use_bf16 = False
    return _Setup(cfg, device, name, arch, conf, use_bf16, val_cache, recalib_given,
                  freeze_given, val_digests)


def _checkpoint_to_resume(s: _Setup, out: Path, is_main: bool,
                          world: int) -> dict[str, Any] | None:
    """``last.pt`` of the run being resumed (``s.cfg`` then checked against it), or None for a
    new run, refused where ``out`` already holds one."""
    if s.cfg.resume:
        source = out / "last.pt"
        if not source.exists():  # killed after its first best.pt, before its first last.pt
            source = out / "best.pt"  # (_refuse_unresumable let only that case through)
            if is_main:
                _say(f"note: {out} has no last.pt yet; resuming from best.pt (the step "
                     "of its best validation so far)")
        ckpt = load_checkpoint(source)
        s.cfg = _check_resume(s.cfg, ckpt, s.arch, s.conf, out, warn=is_main,
                              recalib_given=s.recalib_given, freeze_given=s.freeze_given,
                              world=world, notes=s.resume_notes)
        return ckpt
    # (a run that failed before its first checkpoint holds only logs: started afresh)
    for held in ("last.pt", "model.safetensors", "best.pt"):
        if (out / held).exists():  # a finished run whose last.pt was cleaned up counts
            if (out / "model.safetensors").exists():  # ended: "pass --resume" met "already
                # at step 20 of the 20 asked for" (a finetune audit)
                raise TrainError(
                    f"{out} already holds a run that has ended (its model: "
                    f"{out / 'model.safetensors'}); choose another --out"
                    + (", or pass --resume with a larger --steps to train it further"
                       if (out / "last.pt").exists() else ""))
            raise TrainError(f"{out} already holds a run ({held}); pass --resume to "
                             "continue it or choose another --out")
    foreign = _files_not_of_a_run(out)
    if foreign:  # replaced in silence (an audit)
        raise TrainError(f"{out} holds {' and '.join(foreign)}, not written by a derain run: "
                         "the run would replace them; choose another --out (or move them)")
    image = _an_image_not_derains(out)
    if image is not None:  # the run's lock then hid it from every later photo scan (audit)
        raise TrainError(
            f"{out} holds images ({image.relative_to(out)}, ...): a run's folder is left out "
            "of later photo scans (train, finetune, distill), and they with it; choose an "
            "empty or new --out")
    return None


def _an_image_not_derains(out: Path) -> Path | None:
    """An image in ``out`` or below it that derain did not write, or None: a run's
    ``curves.png``, ``NAME_derained.*`` results and the folders of runs and of results (their
    lock or marker) left out, as photo scans leave them; the walk stops at the first
    (``--out ~`` is a large tree)."""
    from .batch import OUTPUT_MARKER, is_output_name
    from .pairs import _is_image

    for here, dirs, files in os.walk(out):
        if Path(here) != out and (RUN_LOCK in files or OUTPUT_MARKER in files):
            dirs[:] = []
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            p = Path(here) / f
            if _is_image(p) and p != out / "curves.png" and not is_output_name(p):
                return p
    return None


def _files_not_of_a_run(out: Path) -> list[str]:
    """Which of the files a run writes (config.json, log.jsonl) ``out`` holds that are not a
    derain run's own (one that failed before its first checkpoint left them: replaced)."""
    found = []
    try:
        saved = json.loads((out / "config.json").read_text())
        if not (isinstance(saved, dict) and {"steps", "lr", "out"} <= saved.keys()):
            found.append("config.json")
    except FileNotFoundError:
        pass
    except (OSError, ValueError):
        found.append("config.json")
    first = ""
    try:
        with open(out / "log.jsonl", encoding="utf-8") as f:
            first = f.readline()
        if first.strip() and not (isinstance(record := json.loads(first), dict)
                                  and "kind" in record):
            found.append("log.jsonl")
    except FileNotFoundError:
        pass
    except ValueError:  # a run killed while it wrote its first line left part of it
        if not first.startswith('{"kind": '):
            found.append("log.jsonl")
    except OSError:
        found.append("log.jsonl")
    return found


def _lock_run(out: Path) -> contextlib.AbstractContextManager[Any]:
    """``out`` held for this run: an open file with an exclusive lock, released when the
    returned context closes it. Two runs started on one folder both ran, interleaved their
    logs and left one's model beside the other's checkpoints (an audit). Also drops the
    temporary files a killed run left there (those over an hour old, as the batch does: a
    younger one may be an export's at work). Not guarded where the system has no such
    locks (Windows), nor where the file system has none (some NFS, Lustre or FUSE mounts:
    said). The
    lock file is made either way: it also marks the folder as a run's, which a folder run
    of photos and the pair readers pass over (on Windows a run's curves.png was derained
    with the photos: an audit)."""
    import errno

    from .fileio import sweep_stale_temporaries

    out.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        (out / RUN_LOCK).touch()
        sweep_stale_temporaries([out])
        return contextlib.nullcontext()
    handle = open(out / RUN_LOCK, "a")  # noqa: SIM115 - closed by the caller
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        handle.close()
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise TrainError(f"{out} is in use by another derain process (a run there is "
                             "still going); wait for it to end, or choose another --out"
                             ) from None
        _say(f"note: {out} cannot be locked ({e.strerror or e}); another run started on "
             "it meanwhile would not be stopped")
        return contextlib.nullcontext()
    sweep_stale_temporaries([out])
    return handle


def _take_back_unused(out: Path) -> Callable[[], None]:
    """What removes, when the run ends, a run folder it made that holds nothing but its lock:
    a run whose data or features failed their checks after the lock was taken (an empty
    --synthetic folder, --contrast-features vgg19 offline) left an empty --out holding
    only ``.derain-run.lock`` (audit). A folder the user made stays; its lock goes if the
    run made it and wrote nothing else there (a refused run left it among the user's own
    files, and later photo scans then passed them over: an audit)."""
    lock = out / RUN_LOCK
    made_folder, made_lock = not out.exists(), not os.path.lexists(lock)
    try:
        before = set() if made_folder else set(os.listdir(out))
    except OSError:
        before = None  # unlistable: its lock is left as it is

    def take_back() -> None:
        try:
            left = os.listdir(out)
            if made_lock and before is not None and set(left) - {lock.name} == before:
                lock.unlink(missing_ok=True)
                left = [name for name in left if name != lock.name]
            if made_folder and not left:
                out.rmdir()
        except OSError:
            pass  # best effort: an unreadable or busy folder stays as it is

    return take_back


def _contrast_features(cfg: TrainConfig, world: int, is_main: bool) -> tuple[Any, str]:
    """The feature network of the contrastive terms and its label for the banner (None,
    "none" without them). It may download VGG19's weights: rank 0 first, the others then
    find them in the cache."""
    if not (cfg.contrast_weight > 0 and cfg.contrast_features != "none"):
        return None, "none"
    if world > 1 and not is_main:
        dist.barrier()
    features, label = L.build_features(cfg.contrast_features, quiet=cfg.quiet)
    if world > 1 and is_main:
        dist.barrier()
    return features, label


def _datasets(cfg: TrainConfig, hooks: dict[str, Callable[..., Any]], arch: str,
              features: Any, is_main: bool) -> tuple[Any, Any, bool]:
    """The labeled data set, the unlabeled one (or None) and whether the run uses the
    unlabeled photos at all (only the contrastive terms and finetune's consistency do).
    A folder that is missing or holds no images is named with its option (with several
    folders given, "no such folder: X" left the user to work out which flag held X)."""
    from .pairs import PairsError

    try:
        return _datasets_of(cfg, hooks, arch, features, is_main)
    except (D.DataError, PairsError, FileNotFoundError, NotADirectoryError) as e:
        finetune = "run_started" in hooks  # its folders have flags of their own (they
        text = str(e)  # were said without any: an audit)
        for flag, dirs in (("--pairs", cfg.pairs),
                           (_data_flag("synthetic", finetune), cfg.synthetic),
                           (_data_flag("unlabeled", finetune), cfg.unlabeled)):
            if any(text in (f"no such folder: {d}", f"not a folder: {d}")
                   or text.startswith(f"{d}: ") for d in dirs or ()):
                gone = (f" (the run's folder: moved? pass its new place, {flag} NEW_PLACE, "
                        "with --resume)" if cfg.resume and text.startswith("no such folder")
                        else "")  # (a resume of a moved folder had no way out: an audit)
                raise type(e)(f"{flag} {text}{gone}") from None
        raise


def _datasets_of(cfg: TrainConfig, hooks: dict[str, Callable[..., Any]], arch: str,
                 features: Any, is_main: bool) -> tuple[Any, Any, bool]:
    unl = bool(cfg.unlabeled) and (features is not None or cfg.consistency > 0)
    with_aug = features is not None and arch == "semi-drdnet"
    if "make_labeled" in hooks:  # finetune: pseudo-clean backgrounds of the user's photos
        labeled = hooks["make_labeled"](cfg, with_aug)
    else:
        labeled = D.LabeledDataset(
            pairs_dirs=cfg.pairs, clean_dirs=cfg.synthetic, rainy_dir=cfg.rainy_dir,
            clean_dir=cfg.clean_dir, patch=cfg.patch, preset=cfg.preset, seed=cfg.seed,
            with_aug=with_aug, clean_fraction=cfg.clean_fraction,
        )
    from .pairs import pairs_held

    finetune = "run_started" in hooks  # its own flags (train's were named: an audit)
    for flag, folders, wrong in (
            (_data_flag("synthetic", finetune), cfg.synthetic,
             "its rainy images get more rain as clean photos"),
            (_data_flag("unlabeled", finetune), cfg.unlabeled,
             "its clean images are taken for rainy photos")):
        for folder in folders if is_main else ():  # (each was read in silence: an audit)
            held = pairs_held(Path(folder))
            if held:
                _say(f"warning: {flag} {folder} holds a set of {held} (as derain eval reads "
                     f"it): {wrong}; pairs are for "
                     + ("--val" if finetune else "--pairs (or --val)"))
    if cfg.clean_fraction and not cfg.synthetic and "make_labeled" not in hooks and is_main:
        _say(f"warning: --clean-fraction {cfg.clean_fraction:g} does nothing here: it leaves "
             "the rain off a share of --synthetic photos, and this run has none (pairs "
             "bring their own rain)")  # (ignored in silence: an audit)
    both = sorted(set(_resolved(cfg.synthetic)) & set(_resolved(cfg.unlabeled)))
    if both and is_main:  # `finetune --clean X --rainy X` went by in silence (an audit)
        _say(f"warning: {', '.join(both)} is named for clean photos (synthetic rain is laid "
             "on them: --synthetic, finetune's --clean) and for rainy ones (--unlabeled, "
             "finetune's --rainy): where its photos hold rain, the model learns to keep it; "
             "clean photos are rain-free ones")
    fits = labeled.largest_fitting_patch() if hasattr(labeled, "largest_fitting_patch") else None
    if fits is not None and cfg.patch > fits and is_main:
        way = (f"; --patch {_SMALLEST_PATCH} to {fits} trains on the images as they are" if
               fits >= _SMALLEST_PATCH else f"; --patch {_SMALLEST_PATCH}, the least, pads "
               "the least" if cfg.patch > _SMALLEST_PATCH else "")  # it suggested sizes
        # the option refuses (an audit), or the one given (a review)
        _say(f"warning: --patch {cfg.patch} is larger than every training image (the "
             f"largest square that fits is {fits} px): each crop is mirror-padded to "
             f"{cfg.patch} px and costs that much a step{way}")
    if "make_unlabeled" in hooks:
        unlabeled = hooks["make_unlabeled"](cfg)
    else:
        unlabeled = D.UnlabeledDataset(cfg.unlabeled, patch=cfg.patch, seed=cfg.seed + 1) \
            if cfg.unlabeled else None
    if cfg.unlabeled and not unl and is_main and not cfg.quiet:
        off = ("--contrast-weight 0" if cfg.contrast_weight <= 0 else  # the flag that
               "--contrast-features none")  # left them off, not always this one (an audit)
        _say("note: the unlabeled photos are not used: only the contrastive terms use "
             f"them (off here: {off}), and finetune's consistency term")
    terms = L.parse_contrast_terms(arch, cfg.contrast_terms) if features is not None else ()
    if terms and not unlabeled and all(t.endswith("_u") for t in terms) and is_main:
        _say(f"warning: --contrast-terms {','.join(terms)} work on --unlabeled photos and "
             "none are given: no contrastive term trains (add --unlabeled DIR, or ask for "
             "bg or rain)")
    return labeled, unlabeled, unl


def _run_length(cfg: TrainConfig, n_labeled: int, world: int, ckpt: dict[str, Any] | None,
                out: Path) -> tuple[int, bool]:
    """The run's total steps, and whether a resumed run only has to validate and export
    (stopped after its last step or on its spent time budget, before its export: a Ctrl-C
    then)."""
    steps_per_epoch = max(1, n_labeled // (cfg.batch * world))
    total = cfg.steps if cfg.steps is not None else (
        (cfg.epochs or 0) * steps_per_epoch if cfg.epochs else 10000)
    if total <= 0:
        raise TrainError("--steps/--epochs must be positive")
    spent = budget_spent(cfg, ckpt)
    done = ckpt is not None and (int(ckpt["step"]) == total or spent)
    finishing = done and not _exported_at(out, int(ckpt["step"]))  # type: ignore[index]
    if ckpt is not None and spent and not finishing:
        step = int(ckpt["step"])  # (a --time-budget given again, as spent, lands here too)
        raise TrainError(f"--resume: {out} has spent its --time-budget of "
                         f"{cfg.time_budget:g} s ({step} step{'s' if step != 1 else ''}, "
                         "exported); to train further pass a larger --time-budget (the whole "
                         "run's), or --steps without --time-budget", every_rank=False)
    if ckpt is not None and int(ckpt["step"]) >= total and not finishing:
        raise TrainError(f"--resume: {out} is already at step {ckpt['step']} of the {total} "
                         "asked for; pass a larger --steps to train further", every_rank=False)
    return total, finishing


def _exported_at(out: Path, step: int) -> bool:
    """Whether ``out`` holds the export of step ``step``: model.safetensors saying so and
    the manifest entry naming that file (its sha256). A run stopped during its export kept
    an older segment's model, or a model without its entry, and --resume then refused
    ("already at step N") to export it (an audit)."""
    from safetensors import safe_open

    from .fileio import sha256_file

    weights = out / "model.safetensors"
    try:
        with safe_open(str(weights), framework="pt") as f:
            steps = (f.metadata() or {}).get("steps")
        entry = json.loads((out / "manifest_entry.json").read_text())
        return steps == str(step) and entry.get("sha256") == sha256_file(weights)
    except Exception:  # noqa: BLE001 - missing, unreadable or not ours: not exported
        return False


class _Learner:
    """The network, its EMA, the loss, the optimiser, and what one training step does
    with them. Built in one fixed order: the random streams, and so an exact resume,
    depend on it."""

    def __init__(self, s: _Setup, features: Any, unl: bool, world: int, is_main: bool,
                 hooks: dict[str, Callable[..., Any]]) -> None:
        cfg, device, arch = s.cfg, s.device, s.arch
        self.cfg, self.device, self.arch, self.world = cfg, device, arch, world
        # reseeded so the initial weights do not depend on whether contrast features (which
        # draw from the same generator) were built: a with/without-contrast ablation starts
        # from the same model.
        # channels_last: oneDNN's fast convolution layout on CPUs (1.6x per training step
        # for semi-drdnet-lite, fp32) and the tensor-core layout on GPUs
        torch.manual_seed(cfg.seed)
        model = _build_model(cfg, arch, s.conf).to(device, memory_format=torch.channels_last)
        if "model_built" in hooks:
            hooks["model_built"](model)
        self.use_bf16 = s.use_bf16
        if self.use_bf16 and device.type == "cpu" and not _bf16_grads_finite(
                model, arch, cfg.batch, cfg.patch):
            if is_main:
                _say("warning: bf16 autocast gives non-finite weight gradients for this model "
                     "on this CPU (a oneDNN kernel fault); training in fp32")
            self.use_bf16 = False
        #: the starting weights, for the L2-SP pull towards them (finetune)
        self.init_state = {k: v.detach().clone() for k, v in model.named_parameters()} \
            if cfg.l2sp > 0 else None
        #: the frozen starting model, for finetune's consistency on unlabeled photos
        self.base_model = None
        if cfg.consistency > 0 and unl:
            self.base_model = copy.deepcopy(model).eval().requires_grad_(False)
        # the EMA keeps plain BatchNorm: only rank 0 validates, and re-estimating a
        # SyncBatchNorm's statistics there waited for ranks sitting in a barrier
        self.ema = copy.deepcopy(model).eval().requires_grad_(False)
        if cfg.sync_bn and device.type == "cuda" and world > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model
        self.criterion = L.Criterion(arch, features, contrast_weight=cfg.contrast_weight,
                                     ssim_weight=cfg.ssim_weight, terms=cfg.contrast_terms,
                                     l1_weight=cfg.l1_weight,
                                     psnr_weight=cfg.psnr_weight).to(device)
        wrapper = _Wrapper(model, arch)
        self.net: nn.Module = wrapper
        if world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                wrapper, device_ids=[device.index] if device.type == "cuda" else None)
        groups = [{"params": list(model.parameters()), "weight_decay": cfg.weight_decay}]
        self.aux_params = list(self.criterion.aux_parameters())
        if self.aux_params:  # the self encoder learns at its own pace (SELF_FEATURES_LR)
            groups.append({"params": self.aux_params, "weight_decay": 0.0,
                           "fixed_lr": L.SELF_FEATURES_LR})
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))

    @property
    def amp_label(self) -> str:
        """The precision, for the banner and the manifest."""
        return "bf16 autocast" if self.use_bf16 else "fp32"

    def restore(self, ckpt: dict[str, Any]) -> None:
        """The weights, EMA, optimiser and feature-head states of a checkpoint."""
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        try:
            self.opt.load_state_dict(_model_group_kept(ckpt["optimizer"],
                                                       self.opt.state_dict()))
        except ValueError as e:  # other trainable parts: the contrastive projection heads
            was = json.loads(ckpt.get("config") or "{}")
            raise TrainError(
                f"--resume: the run's optimizer state does not fit these settings ({e}); it "
                f"was trained with --contrast-features {was.get('contrast_features')} and "
                f"--contrast-weight {was.get('contrast_weight')}: pass those, or start a new "
                "run in another --out", every_rank=False) from None
        if ckpt.get("aux"):
            self.criterion.load_aux_state(ckpt["aux"])

    def set_lr(self, lr: float) -> None:
        for g in self.opt.param_groups:
            g["lr"] = g.get("fixed_lr") or lr

    def loss(self, batch: dict[str, torch.Tensor],
             it_u: Iterator[dict[str, torch.Tensor]] | None,
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """The step's loss and its named parts: the labeled batch, and the next unlabeled
        batch in the same forward (one forward per step for DDP)."""
        cfg, device, arch = self.cfg, self.device, self.arch
        rainy = batch["rainy"].to(device, non_blocking=True)
        clean = batch["clean"].to(device, non_blocking=True)
        aug = batch.get("rainy_aug")
        aug = aug.to(device, non_blocking=True) if aug is not None else None
        n_l = rainy.shape[0]
        x = rainy
        if it_u is not None:
            ub = next(it_u)
            x = torch.cat([rainy, ub["rainy"].to(device, non_blocking=True)])
        # bf16 autocast covers the network only; every loss is computed in fp32
        # (SSIM variances and InfoNCE logits overflow or cancel in bf16)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            outs = self.net(x)
            ref = None
            if self.base_model is not None and x.shape[0] > n_l:
                with torch.no_grad():
                    ref = self.base_model(x[n_l:])
        outs = tuple(o.float() for o in outs)
        loss, parts = self.criterion(x=x, outputs=outs, clean=clean, rainy_aug=aug,
                                     n_labeled=n_l, rain_free=batch.get("rain_free"))
        if ref is not None:
            final = outs[0] if arch == "semi-drdnet" else outs[-1]
            cons = L.consistency_loss(final[n_l:], ref)
            loss = loss + cfg.consistency * cons
            parts["consistency"] = float(cons.detach())
        if self.init_state is not None:  # logged; the pull itself is in update()
            with torch.no_grad():
                parts["l2sp"] = float(sum(((p - self.init_state[k]) ** 2).sum()
                                          for k, p in self.model.named_parameters()))
        return loss, parts

    def backward(self, loss: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Gradients of ``loss``, clipped: the gradient norm, and whether the loss and the
        gradients are finite (on every rank: all ranks take the same decision)."""
        cfg, world = self.cfg, self.world
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1 and self.aux_params:
            # one exchange that every rank joins: a rank whose labeled rows were all
            # rain-free (--clean-fraction) computed no encoder loss, so its gradients were
            # None, it skipped the all_reduce the others made, and gloo aborted (NCCL
            # would hang); zeros count as its share of the mean
            had = any(p.grad is not None for p in self.aux_params)
            grads = [p.grad if p.grad is not None else torch.zeros_like(p)
                     for p in self.aux_params]
            flat = torch.cat([g.reshape(-1) for g in grads]
                             + [torch.full((1,), float(had), device=grads[0].device)])
            dist.all_reduce(flat)
            if flat[-1].item() == 0:  # no rank had any: skipped, as one process skips them
                for p in self.aux_params:
                    p.grad = None
            else:
                flat /= world
                for p, g in zip(self.aux_params, flat[:-1].split([q.numel() for q in grads]),
                                strict=True):
                    p.grad = g.view_as(p).clone()
        gnorm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), cfg.clip if cfg.clip and cfg.clip > 0 else math.inf)
        finite = bool(torch.isfinite(loss.detach()) & torch.isfinite(gnorm))
        if world > 1:
            flag = torch.tensor([0.0 if finite else 1.0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            finite = bool(flag.item() == 0)
        return gnorm, finite

    def update(self, step: int, lr: float) -> None:
        """The optimiser's step, the L2-SP pull and the EMA's step, ``step`` counting
        this one.

        L2-SP is decoupled, as AdamW's weight decay: every weight moves ``lr * l2sp`` of
        its distance back to its starting value. Until 2026-12-06 it was a penalty added to
        the loss, which Adam's per-weight scaling made inert: at finetune's default (1e-3)
        the drift from the start was 0.3 % smaller than without it (an audit)."""
        self.opt.step()
        if self.init_state is not None:
            with torch.no_grad():
                for k, p in self.model.named_parameters():
                    p.sub_(p - self.init_state[k], alpha=min(1.0, lr * self.cfg.l2sp))
        _ema_update(self.ema, self.model, min(self.cfg.ema, (1 + step) / (10 + step)))

    def skip(self) -> None:
        """Drop the step's gradients (a non-finite loss or gradient), as AMP's grad
        scalers do, rather than poison the weights."""
        self.opt.zero_grad(set_to_none=True)


def _train(
    cfg: TrainConfig, rank: int, world: int, local: int, is_main: bool,
    hooks: dict[str, Callable[..., Any]], held: contextlib.ExitStack,
) -> TrainResult:
    t_start = time.time()
    _refuse_unresumable(cfg, hooks)
    setup = _settle(cfg, hooks, local, world, is_main)
    device = setup.device
    out = Path(setup.cfg.out)
    if is_main:
        take_back = _take_back_unused(out)  # what is there before the lock is tried
        held.enter_context(_lock_run(out))
        # only a run that got the lock takes back what it made: one refused beside a run
        # that had just made the folder removed that run's lock (review)
        held.callback(take_back)
    ckpt = _checkpoint_to_resume(setup, out, is_main, world)
    cfg = setup.cfg
    if ckpt is not None and cfg.steps is not None:  # before the data: finetune's derains
        _run_length(cfg, 0, world, ckpt, out)  # every photo first (an audit)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    features, feat_label = _contrast_features(cfg, world, is_main)
    labeled, unlabeled, unl = _datasets(cfg, hooks, setup.arch, features, is_main)
    if is_main and setup.val_digests:
        _warn_val_in_training(cfg, setup.val_digests, labeled, unlabeled if unl else None)
    data_count = {"labeled": len(labeled), "unlabeled": len(unlabeled or ())}
    if ckpt is not None and is_main and ckpt.get("data") not in (None, data_count):
        def said(counts: Any) -> str:  # (a Python dict was printed: an audit)
            if not isinstance(counts, dict):
                return str(counts)
            return ", ".join(f"{v} {k}" for k, v in counts.items())

        setup.resume_notes.append(
            f"warning: --resume: the training data changed since the checkpoint (images: "
            f"{said(ckpt['data'])} then; {said(data_count)} now): the run goes on, but no "
            "longer as one uninterrupted run would")
    if device.type == "cuda":  # speed over bitwise reproducibility on GPUs
        # after the data sets: finetune's pseudo-clean pass runs each photo at its own
        # size, and autotuning would re-tune every convolution for each new shape
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    total, finishing = _run_length(cfg, len(labeled), world, ckpt, out)
    learner = _Learner(setup, features, unl, world, is_main, hooks)
    run = _Run(setup, learner, ckpt, total, finishing, rank, world, is_main, hooks, t_start,
               labeled, unlabeled if unl else None, data_count)
    was = run.segments_before[-1]["hardware"] if run.segments_before else _UNRECORDED
    if is_main and device.type == "cpu" and not finishing and was != _UNRECORDED and not \
            _same_hardware(was, run.hardware) and world == (ckpt or {}).get("world", world):
        # (other processes: said already; GPU steps are not bitwise anyway: autotuning)
        # --threads is the machine's, not the run's: a resume without it took the cores'
        # default, and nothing said its steps were no longer the uninterrupted run's (audit)
        setup.resume_notes.append(
            f"warning: --resume: the run trained on {was}, this segment on {run.hardware}: "
            "it goes on, but its steps are not bitwise those of one uninterrupted run (the "
            "same --threads and --amp give them)")
    for note in setup.resume_notes:  # the resume accepted: its checkpoint restored
        _say(note)
    if is_main:  # photos not used are not counted as training data (an audit)
        run.start(feat_label, unlabeled if unl else None)
    run.steps()
    return run.finish()


class _Run:
    """One training run from its first (or resumed) step to its export: the step count,
    the best validation, the log, the checkpoints, the loop. (These were closures over
    ``_train``'s locals.) What happens, and in which order, is fixed: the random streams,
    and so an exact resume, depend on it."""

    def __init__(self, setup: _Setup, learner: _Learner, ckpt: dict[str, Any] | None,
                 total: int, finishing: bool, rank: int, world: int, is_main: bool,
                 hooks: dict[str, Callable[..., Any]], t_start: float, labeled: Any,
                 unlabeled: Any, data_count: dict[str, int]) -> None:
        self.setup, self.cfg, self.learner = setup, setup.cfg, learner
        self.out = Path(setup.cfg.out)
        self.ckpt, self.total, self.finishing = ckpt, total, finishing
        self.rank, self.world, self.is_main, self.hooks = rank, world, is_main, hooks
        self.t_start, self.data_count = t_start, data_count
        self.labeled, self.unlabeled = labeled, unlabeled  # unlabeled: None when unused
        self.step, self.wall_before = 0, 0.0
        #: the earlier segments' time on the budget's clock (their training, set-up not
        #: counted); a resume read their wall time, set-up included, and found less of
        #: the budget left than the run had not spent (an audit)
        self.budget_before = 0.0
        self.best_psnr: float | None = None
        self.best_step: int | None = None
        #: the validation differs from the resumed run's: its scores do not carry over
        self.val_changed = False
        #: where the run started (``start_weights``), hashed when it started: a resume
        #: keeps the record (checkpoints before 2026-12-05 had none: hashed on resume)
        self.start_record: dict[str, str] = (ckpt or {}).get("start_weights") or (
            start_weights(setup.cfg.init_weights) if is_main else {})  # rank 0 writes it
        #: where earlier segments of a resumed run trained: {"hardware", "from", "to"} each
        self.segments_before: list[dict[str, Any]] = []
        if ckpt is not None:
            learner.restore(ckpt)
            self.step = int(ckpt["step"])
            self.best_psnr = ckpt.get("best_psnr")
            self.best_step = ckpt.get("best_step")
            try:
                before = json.loads(ckpt.get("config") or "{}")
            except ValueError:
                before = None
            now = dataclasses.asdict(self.cfg)
            if isinstance(before, dict) and validation_changed(before, now):  # said by
                # _check_resume
                self.best_psnr = self.best_step = None
                self.val_changed = True
            self.wall_before = float(ckpt.get("wall_time_s", 0.0))
            self.budget_before = budget_clock(ckpt)
            # checkpoints before 2026-12-03 did not say where they trained
            self.segments_before = list(ckpt.get("hardware_segments") or (
                [{"hardware": _UNRECORDED, "from": 0, "to": self.step}] if self.step else []))
            _set_rng_state(ckpt["rng"])
        self.log = _RunLog(self.out / "log.jsonl", is_main,
                           self.step if ckpt is not None else None)
        self.segment_start = self.step
        self.hardware = _hardware(setup.device, world, learner.amp_label)
        self.validating = False  # inside validate_and_keep_best (for the checkpoint)
        self.last_val: dict[str, float] | None = None
        self.losses_seen: list[float] = []
        self.stopped_early = finishing and self.step < total  # on a budget spent before
        # BatchNorm re-estimation before validation and export; frozen statistics stay
        self.recalib = 0 if self.cfg.freeze_bn else self.cfg.bn_recalib

    def write_config(self) -> None:
        atomic_write_text(self.out / "config.json", json.dumps(
            dataclasses.asdict(self.cfg), indent=2, sort_keys=True) + "\n")

    def start(self, feat_label: str, unlabeled: Any) -> None:
        """Rank 0: the run folder, its settings and the banner."""
        cfg, ckpt = self.cfg, self.ckpt
        self.out.mkdir(parents=True, exist_ok=True)
        if ckpt is None:  # a resumed run's settings replace the run's own once it has
            self.write_config()  # checkpointed at them (a resume cut at its banner kept them)
        if "run_started" in self.hooks and ckpt is None:  # finetune's own settings, for
            self.hooks["run_started"](self.out)  # its --resume (a resumed run's: once stepped)
        if not cfg.quiet:
            s = self.setup
            _say(f"training {s.name} ({s.arch}) "
                 + (f"from {cfg.init_weights} " if cfg.init_weights else
                    "" if self.step else "from scratch ")  # (a resumed run "from scratch
                 # ... resuming at step 10" read as two things at once: an upgrade audit)
                 + f"on {s.device} x{self.world}; data: "
                 f"{self.labeled.describe()}"
                 + (f" + {len(unlabeled)} unlabeled" if unlabeled is not None else "")
                 + f"; contrastive features: {feat_label}; "
                 + f"{self.total} step{'s' if self.total != 1 else ''}"
                 + ((f" or {clock(max(0.0, cfg.time_budget - self.budget_before))}"
                     + (" left of --time-budget" if self.budget_before else " (--time-budget)")
                     + ", whichever ends first") if cfg.time_budget else "")
                 + f", batch {cfg.batch}x{self.world}, patch {cfg.patch}, "
                 + self.learner.amp_label
                 + (f"; resuming at step {self.step}" if self.step else "")
                 + (("; every step done" if self.step >= self.total
                     else "; its --time-budget spent") + ": validating and exporting"
                    if self.finishing else ""))

    def segments_now(self) -> list[dict[str, Any]]:
        """Where this run has trained, segment by segment, up to ``step``."""
        return self.segments_before + (
            [{"hardware": self.hardware, "from": self.segment_start, "to": self.step}]
            if self.step > self.segment_start else [])

    def checkpoint_obj(self) -> dict[str, Any]:
        learner, s, step = self.learner, self.setup, self.step
        aux = learner.criterion.aux_state()
        if aux:
            aux["gen"] = self.boundary["gen"]
        weights = learner.model.state_dict()
        weights.update({k: v for k, v in self.boundary["buffers"].items() if k in weights})
        return {
            "format": CKPT_FORMAT,
            "config": self.cfg.to_json(),
            "name": s.name, "arch": s.arch, "model_config": json.dumps(s.conf),
            "world": self.world,  # processes: a resume with another count is warned about
            "step": step, "epoch": self.sampler.epoch_of(step),
            "model": weights, "ema": learner.ema.state_dict(),
            "optimizer": learner.opt.state_dict(),
            "scheduler": {"step": step, "total": self.total, "lr": self.cfg.lr},
            "aux": aux,
            "rng": self.boundary["rng"],
            "best_psnr": self.best_psnr, "best_step": self.best_step,
            "wall_time_s": self.wall_time(),
            "budget_s": self.budget_time(),
            "hardware_segments": self.segments_now(),
            "data": self.data_count,  # a resume says when the data changed in between
            "val_pending": self.validating,  # a Ctrl-C during this step's validation
            "start_weights": self.start_record,  # the file, hashed when the run started
            # the steps since the last log line: a resume logs them with the next ones, as
            # the run would have (they were lost from log.jsonl: an audit); rank 0's, used
            # by a one-process run only
            "log_window": {"losses": list(getattr(self, "window", [])),
                           "parts": list(getattr(self, "parts_window", []))},
        }

    def wall_time(self) -> float:
        """Seconds this run has taken, earlier segments included."""
        return self.wall_before + time.time() - self.t_start

    def budget_time(self) -> float:
        """Seconds on the ``--time-budget`` clock: the training of every segment so far, set-up
        left out (before this segment's loop: the earlier segments')."""
        frozen = getattr(self, "budget_stopped", None)  # the training's end: the final
        if frozen is not None:  # validation and checkpoint come on top, as --help says (a
            return frozen  # resume with 10 s more got 2: an audit)
        t0 = getattr(self, "budget_t0", None)  # set as the loop starts
        return self.budget_before if t0 is None else time.time() - t0

    def save_last(self) -> None:
        _atomic_torch_save(self.checkpoint_obj(), self.out / "last.pt")
        if self.ckpt is not None:
            self.write_config()
            if "run_started" in self.hooks:
                self.hooks["run_started"](self.out)

    def validations_left(self, step: int) -> int:
        """How many validations the run makes from ``step`` on (that step's too: the bar
        moves before it validates): every ``--val-every`` steps and at the last step (for
        the ETA)."""
        cfg, total = self.cfg, self.total
        if not cfg.val or step > total:
            return 0
        done = max(step - 1, 0) // cfg.val_every
        return total // cfg.val_every - done + (total % cfg.val_every > 0)

    def validate_and_keep_best(self, relog: bool = False) -> dict[str, float]:
        """Score the EMA (BatchNorm statistics re-estimated where asked) on --val, log it,
        and keep it as best.pt when it is the best so far. The best score is recorded only
        once best.pt holds it: a Ctrl-C during that write left last.pt and the manifest
        naming a best step that best.pt was not (an audit). A Ctrl-C anywhere in here
        leaves ``validating`` set: the checkpoint says so and the resume validates again."""
        cfg, s, step = self.cfg, self.setup, self.step
        self.validating = True
        t_val = time.monotonic()
        # step 0: the starting model as it is, with its own statistics (re-estimated on a
        # few crops first, it scored 5 dB below itself, and a worse run read as a gain over
        # it: an audit)
        calibrated = _recalibrated(self.learner.ema, self.labeled,
                                   self.recalib if step else 0, cfg.seed, s.device)
        check_finite(calibrated.state_dict(), "the averaged weights", step)
        scores = validate(calibrated, cfg.val, device=s.device, limit=cfg.val_limit,
                          crop=cfg.val_crop, cache=s.val_cache,
                          rainy_dir=cfg.val_rainy_dir, clean_dir=cfg.val_clean_dir)
        improved = self.best_psnr is None or scores["psnr"] > self.best_psnr
        if relog or not any(r.get("kind") == "val" and r.get("step") == step
                            for r in self.log.records):
            self.log.write({"kind": "val", "step": step, "val_psnr": scores["psnr"],
                            "val_ssim": scores["ssim"], "val_count": scores["count"],
                            "val_set": Path(cfg.val).name if cfg.val else None,
                            "time_s": self.wall_time()})
        self.progress.note(f"step {step}: val PSNR {scores['psnr']:.2f} dB, "
                           f"SSIM {scores['ssim']:.4f}" + (" (best)" if improved else ""))
        if improved:  # with the network validation scored, BN statistics re-estimated:
            # what `derain --weights best.pt` then runs
            before = self.best_psnr, self.best_step
            self.best_psnr, self.best_step = scores["psnr"], step
            try:
                _atomic_torch_save({**self.checkpoint_obj(), "val_pending": False,  # done
                                    "validated": calibrated.state_dict()}, self.out / "best.pt")
            except BaseException:
                self.best_psnr, self.best_step = before
                raise
        _plot_or_warn(self.log.records, self.out / "curves.png", bool(cfg.val))
        self.validating = False
        progress = getattr(self, "progress", None)  # (none at the export)
        if progress is not None:
            progress.validated(time.monotonic() - t_val)
        return scores

    def steps(self) -> None:
        """Train from ``step`` to the end (or the time budget); a Ctrl-C saves the
        checkpoint and raises TrainInterrupted."""
        cfg, learner, device, world = self.cfg, self.learner, self.setup.device, self.world
        total, labeled, unlabeled = self.total, self.labeled, self.unlabeled
        self.sampler = D.StepBatchSampler(len(labeled), cfg.batch, seed=cfg.seed,
                                          rank=self.rank, world=world, start_step=self.step,
                                          total_steps=total)
        pin = device.type == "cuda"
        loader = D.make_loader(labeled, self.sampler, workers=cfg.workers, pin_memory=pin)
        uloader = None
        if unlabeled is not None:
            usampler = D.StepBatchSampler(len(unlabeled), cfg.batch, seed=cfg.seed + 1,
                                          rank=self.rank, world=world, start_step=self.step,
                                          total_steps=total)
            uloader = D.make_loader(unlabeled, usampler, workers=cfg.workers, pin_memory=pin)
        self.boundary = boundary_state(learner.model, learner.criterion)

        self.window: list[float] = []  # losses since the last log line
        #: the loss's parts (sup, c_bg...) of those steps, averaged alike in the log line
        self.parts_window: list[dict[str, float]] = []
        # (one process only: under torchrun the checkpoint holds rank 0's window, and the
        # next line, a mean over the processes, would weigh it as theirs: an audit)
        held = (self.ckpt or {}).get("log_window") if self.world == 1 and (
            self.ckpt or {}).get("world", 1) == 1 else None
        logged = any(r.get("kind") == "train" and r.get("step") == self.step
                     for r in self.log.records)  # a time budget's stop logs after saving
        if held and self.step % cfg.log_every and not logged:  # stopped between two log
            # lines: those steps join the next line, as without the stop
            self.window = [float(v) for v in held.get("losses", [])]
            self.parts_window = [dict(p) for p in held.get("parts", [])]
        self.bad_steps = 0  # non-finite steps in a row
        self.t_window, self.n_window = time.time(), 0
        # the budget's clock runs from here, after set-up (the schedule's warmup and decay
        # follow it), over the earlier segments' own (``budget_s`` in the checkpoint)
        self.budget_t0 = time.time() - self.budget_before
        self.t_saved = time.time()  # rank 0's last checkpoint (or the start)
        self.progress = _Progress(
            enabled=self.is_main and not cfg.quiet, total=total, start=self.step,
            budget_end=self.budget_t0 + cfg.time_budget if cfg.time_budget else None,
            vals_left=self.validations_left,
            label="finetune" if "make_unlabeled" in self.hooks else "train")  # (its bar
        # and log lines said train: a review)

        learner.model.train()
        if cfg.freeze_bn:
            freeze_batchnorm(learner.model)
        it_u = iter(uloader) if uloader is not None else None
        try:
            with self.progress:
                # a validation a Ctrl-C cut short, redone; or the starting model's score
                # (step 0): what the run's are read against (finetune did not say whether
                # it helped: an audit). Rank 0's; every rank learns whether it diverged
                redo = bool(self.ckpt is not None and self.ckpt.get("val_pending"))
                if cfg.val and not self.finishing and (redo or (
                        self.ckpt is None and cfg.init_weights)):
                    diverged = None
                    if self.is_main:
                        try:
                            scores = self.validate_and_keep_best()
                        except TrainDiverged as e:
                            diverged = e
                        else:
                            if redo:
                                self.last_val = scores
                        self.t_window = time.time()  # not training speed either
                    self._stop_if_diverged(diverged)
                for batch in () if self.finishing else loader:  # a spent budget: no step
                    frac = None
                    if cfg.time_budget:
                        frac = min(1.0, (time.time() - self.budget_t0) / cfg.time_budget)
                    lr = lr_at(cfg, self.step, total, frac)
                    learner.set_lr(lr)
                    learner.criterion.ramp(self.step)
                    loss, parts = learner.loss(batch, it_u)
                    gnorm, finite = learner.backward(loss)
                    # a Ctrl-C that lands in here waits for the update to finish: a
                    # checkpoint taken halfway (weights stepped, EMA not, step counted)
                    # would not resume exactly
                    with _interrupt_after_block():
                        self._update(loss, parts, gnorm, finite, lr)
                    self._record(lr, parts, batch["rainy"].shape[0])
                    t_paused = time.time()  # validation and checkpoints are not training speed
                    stop = self._stop_validate_save()
                    self.t_window += time.time() - t_paused
                    if stop:  # a window not yet logged (an empty one logs nothing)
                        self._record(lr, parts, 0, last=True)
                    if "after_step" in self.hooks:
                        self.hooks["after_step"](self.step)
                    if stop and self.step < total:
                        self.stopped_early = True
                        self.progress.note(f"time budget reached at step {self.step}; saved")
                        break
        except KeyboardInterrupt:
            if self.is_main:
                self._say_interrupted()
                raise TrainInterrupted(self.step, self.out, any(
                    (self.out / f).exists() for f in ("last.pt", "best.pt"))) from None
            raise
        except SystemExit:  # the reader of the progress went away (`... 2>&1 | head`: 141):
            if self.is_main and self.step > self.segment_start:  # the steps are kept
                self.save_last()
            raise
        except RuntimeError as e:
            if self.world <= 1 or not _peer_lost(e):
                raise
            # a collective failed in the step (before its update: the state is the last
            # step's), or after it: rank 0's state is whole either way
            said = ""
            if self.is_main:
                said = self._peer_lost_text(e)
            raise TrainPeerLost(said or "another process of this run stopped") from e

    def _update(self, loss: torch.Tensor, parts: dict[str, float], gnorm: Any, finite: bool,
                lr: float) -> None:
        """Count the step and apply its update (or skip a non-finite one)."""
        self.step += 1
        step, learner = self.step, self.learner
        if not finite:  # skipped; given up only when it keeps happening
            learner.skip()
            self.bad_steps += 1
            self.log.write({"kind": "skip", "step": step, "loss": float(loss.detach()),
                            "grad_norm": float(gnorm)})
            self.progress.note(f"step {step}: non-finite loss/gradient, update skipped")
            if self.bad_steps >= 20:
                raise TrainDiverged(f"loss or gradients non-finite for {self.bad_steps} steps "
                                    f"in a row (step {step}); lower --lr or use --amp fp32")
        else:
            self.bad_steps = 0
            learner.update(step, lr)
            # the logged loss leaves out the self-feature encoder's own objective
            lv = float(loss.detach()) - parts.get("enc", 0.0)
            self.losses_seen.append(lv)
            self.window.append(lv)
            self.parts_window.append({k: v for k, v in parts.items() if k != "loss"})
        self.boundary = boundary_state(learner.model, learner.criterion)

    def _record(self, lr: float, parts: dict[str, float], batch_size: int,
                last: bool = False) -> None:
        """The log line (every ``log_every`` steps, averaged over ranks) and the bar.
        ``last``: the run stops here (its time budget): the steps since the last line are
        logged too (they were lost from log.jsonl and the curves: an audit)."""
        cfg, step = self.cfg, self.step
        self.n_window += batch_size * self.world
        logged = None
        if step % cfg.log_every == 0 or step == self.total or last:  # every rank: a
            # collective (``last`` too: every rank agreed on the stop)
            logged = _mean_over_ranks(self.window, self.world, self.setup.device)
        if logged is None:
            self.progress.advance_to(step)  # the bar and its ETA move every step
            return
        dt = max(time.time() - self.t_window, 1e-9)
        rec = {"kind": "train", "step": step, "loss": logged,
               "lr": lr, "patches_per_s": self.n_window / dt,
               "epoch": self.sampler.epoch_of(step - 1),
               "time_s": self.wall_time()}
        # the parts over the same steps as the loss (they were the last step's alone, set
        # beside a mean of --log-every steps: an audit); this rank's
        for key in dict.fromkeys(k for p in self.parts_window for k in p):
            seen = [p[key] for p in self.parts_window if key in p]
            rec[key] = sum(seen) / len(seen)
        if not self.parts_window:  # a window of skipped (non-finite) steps only
            rec.update({k: v for k, v in parts.items() if k != "loss"})
        self.log.write(rec)
        self.progress.update(step, rec["loss"], lr, rec["patches_per_s"])
        self.window, self.t_window, self.n_window = [], time.time(), 0
        self.parts_window = []

    def _stop_validate_save(self) -> bool:
        """After a step: whether the time budget is spent (all ranks agree), then the
        validation and the checkpoint that are due. Returns whether to stop."""
        cfg, step, world, total = self.cfg, self.step, self.world, self.total
        stop = bool(cfg.time_budget) and time.time() - self.budget_t0 >= cfg.time_budget
        if world > 1 and cfg.time_budget:
            flag = torch.tensor([1.0 if stop else 0.0], device=self.setup.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item() > 0)
        if stop or step == total:  # the training ends: its clock stops before the last
            # validation (``budget_time``); a stop all ranks agreed on is the whole budget
            # spent (rank 0's clock, started after its set-up, may read a little less, and
            # a resume then trained a step more: a review)
            self.budget_stopped = max(self.budget_time(), cfg.time_budget or 0.0) if stop \
                else self.budget_time()
        do_val = cfg.val and (step % cfg.val_every == 0 or step == total or stop)
        if do_val or step == total or stop:  # every rank: they hold the same weights, and
            # none waits at a barrier for a rank 0 that stopped (a review)
            check_finite(self.learner.ema.state_dict(), "the averaged weights", step)
        diverged = None
        if do_val and self.is_main:
            try:
                self.last_val = self.validate_and_keep_best()
            except TrainDiverged as e:  # (its BatchNorm re-estimate: rank 0's alone)
                diverged = e
            except OSError as e:  # best.pt not written (a full disk): last.pt, often
                # smaller, still may be; the steps since the last checkpoint were lost
                # with it (an audit)
                raise OSError(f"{e}; {self._last_saved_anyway()}") from None
        if do_val:
            self._stop_if_diverged(diverged)
        overdue = time.time() - self.t_saved >= CKPT_MAX_INTERVAL_S
        if self.is_main and (step % cfg.ckpt_every == 0 or step == total or stop or overdue):
            self.save_last()
            self.t_saved = time.time()
        if world > 1 and (do_val or step % cfg.ckpt_every == 0):
            dist.barrier()
        return stop

    def _last_saved_anyway(self) -> str:
        """After a failed write of best.pt: last.pt written if it can be, and what that
        means for a resume, in words."""
        try:
            with _interrupt_after_block(held=1, then_raise=False):
                self.save_last()
        except OSError as e:
            return (f"last.pt not written either ({e.strerror or e}): free space, "
                    f"then continue with: {self._resume_command()}"
                    if self.ckpt is not None or (self.out / "last.pt").exists() else
                    "last.pt not written either")
        return (f"last.pt holds step {self.step}: free space, then continue with: "
                f"{self._resume_command()}")

    def _stop_if_diverged(self, diverged: TrainDiverged | None) -> None:
        """Raise ``diverged`` (rank 0's, from the weights it alone validates or exports) on
        every rank: the others went on to a barrier, and their gloo error followed rank
        0's message (a torchrun audit). A collective: every rank calls it at the same
        points."""
        if self.world > 1:
            flag = torch.tensor([0.0 if diverged is None else 1.0], device=self.setup.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() > 0 and diverged is None:
                diverged = TrainDiverged("training diverged (rank 0 says how)")
        if diverged is not None:
            raise diverged

    def _say_interrupted(self) -> None:
        step = self.step
        if step > self.segment_start:  # nothing new otherwise: last.pt keeps its settings
            with _interrupt_after_block(held=1, then_raise=False) as impatient:
                self.save_last()
            _say(f"interrupted at step {step}; checkpoint saved, continue with: "
                 f"{self._resume_command()}"
                 + (" (the further stop signal waited for it)" if impatient else ""))
        elif self.ckpt is None and (self.out / "best.pt").exists():  # the starting model's
            _say("interrupted before the first step; the starting model's score is kept "
                 "(best.pt): continue with --resume")  # step-0 validation (a review)
        elif self.ckpt is None:
            _say("interrupted before the first step: nothing trained yet, so nothing "
                 "to resume; start the run again without --resume")
        else:
            _say(f"interrupted at step {step}, before a step of this segment; its "
                 "checkpoint is as it was")

    def _resume_command(self) -> str:
        """The whole command that resumes this run, as the other hints give theirs (an
        audit): under torchrun on one machine with its process count (pasted, it resumed
        on one process: an audit); several machines take their own torchrun options."""
        kind = "finetune" if "make_unlabeled" in self.hooks else "train"
        local_text = os.environ.get("LOCAL_WORLD_SIZE", "").strip()
        local = int(local_text) if local_text.isdigit() else self.world
        runner = ("derain" if self.world <= 1 else
                  f"torchrun --nproc-per-node {local} -m derain_cli" if local == self.world
                  else "torchrun (the same nodes and options as before) -m derain_cli")
        # --threads belongs to the session, not the run: pasted without it, a run on one
        # thread resumed on every core and warned its steps were no longer bitwise (an audit)
        threads = f" --threads {self.cfg.threads}" if self.cfg.threads else ""
        return f"{runner} {kind} -o {shlex.quote(str(self.out))} --resume{threads}"

    def _peer_lost_text(self, e: BaseException) -> str:
        """Rank 0, its collective failed for a peer gone: the steps since the last
        checkpoint saved, and what to do, in one message."""
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
        why = re.sub(r"^\[[^\]]*\]\s*", "", first)[:160]  # gloo's "[.../pair.cc:537]"
        head = (f"another process of this torchrun run stopped at step {self.step} (its "
                f"own message, or torchrun's report, says why; here: {why})")
        if self.step > self.segment_start:
            with _interrupt_after_block(held=1, then_raise=False):
                self.save_last()
            return f"{head}; checkpoint saved, continue with: {self._resume_command()}"
        if self.ckpt is not None:
            return (f"{head}; no step since the checkpoint, which is as it was: continue "
                    f"with: {self._resume_command()}")
        return f"{head}; nothing trained yet: start the run again"

    def start_score(self) -> float | None:
        """The starting model's --val PSNR (its step-0 validation, logged where a run from
        ``init_weights`` began), or None: none logged, or on another validation set."""
        for r in self.log.records:
            if (r.get("kind") == "val" and r.get("step") == 0 and not self.val_changed
                    and r.get("val_set") == (Path(self.cfg.val).name if self.cfg.val else None)):
                return float(r["val_psnr"])
        return None

    def _validate_and_export(self) -> tuple[Path | None, dict[str, Any] | None,
                                            dict[str, float] | None, float]:
        """finish()'s work on rank 0: the last validation a stopped run still owes, then the
        export. Returns the weights' path and manifest entry (None on other ranks), the last
        validation and the wall time."""
        cfg, s, out, step = self.cfg, self.setup, self.out, self.step
        if self.finishing and cfg.val and self.is_main:  # the interrupted run's last
            done = [r for r in self.log.records  # validation, logged
                    if r.get("kind") == "val" and r.get("step") == step]
            pending = bool((self.ckpt or {}).get("val_pending"))  # best.pt may not hold it
            self.last_val = ({"psnr": done[-1]["val_psnr"], "ssim": done[-1]["val_ssim"],
                              "count": done[-1]["val_count"]}
                             if done and not pending and not self.val_changed
                             else self.validate_and_keep_best(relog=self.val_changed))
            # (already logged and kept: stopped during the export; logged but cut short in
            # best.pt's write, or scored on another validation than this resume's: redone,
            # and logged again under its own set)
        wall = self.wall_time()
        if not self.is_main:
            return None, None, self.last_val, wall
        _plot_or_warn(self.log.records, out / "curves.png", bool(cfg.val))
        final = _recalibrated(self.learner.ema, self.labeled, self.recalib, cfg.seed,
                              s.device)
        try:
            with _interrupt_after_block():  # the weights and their manifest entry together
                weights_path, entry = _export(
                    cfg, final, s.name, s.arch, s.conf, out, step, wall, self.last_val,
                    self.best_psnr, self.best_step,
                    hardware_summary(self.segments_now(), self.hardware), self.start_record)
        except KeyboardInterrupt:
            if (out / "model.safetensors").exists() and _exported_at(out, step):
                _say(f"interrupted after the export: wrote {out / 'model.safetensors'} "
                     f"({step} steps); the run is complete")
            raise
        return weights_path, entry, self.last_val, wall

    def finish(self) -> TrainResult:
        """The last validation a stopped run still owes, the export (rank 0) and the
        result."""
        cfg, out, step = self.cfg, self.out, self.step
        try:
            weights_path, entry, last_val, wall = self._validate_and_export()
        except TrainDiverged as e:  # rank 0's: every rank stops with it
            self._stop_if_diverged(e)
            raise
        self._stop_if_diverged(None)
        if self.is_main:
            start = self.start_score()  # under -q too: where it went, its score (an audit)
            dtype = entry.get("dtype") or cfg.export_dtype  # (float32 where float16
            # overflowed: it said float16, a review)
            _say(f"wrote {weights_path} (EMA weights, {dtype}) after {step} "
                 f"step{'s' if step != 1 else ''}, {wall / 60:.1f} min"
                 + (f"; val PSNR {last_val['psnr']:.2f} dB" if last_val else "")
                 + (" of the weights in float32 (the file's rounding moves it a little: "
                    "derain eval scores the file)" if last_val and dtype != "float32"
                    else "")  # (it passed for the file's: an audit)
                 + (f" (the starting model: {start:.2f} dB)"
                    if last_val and start is not None and step else ""))
            quoted = shlex.quote(str(weights_path))  # pasted as printed (an audit)
            _say(f"use it: derain PHOTO --weights {quoted}; score it on pairs: "
                 f"derain eval --weights {quoted} --data PAIRS_DIR")
            if (last_val and self.best_psnr is not None and self.best_step != step
                    and self.best_psnr > last_val["psnr"] + 0.005):
                _say(f"note: the starting model scored higher on --val ({self.best_psnr:.2f}"
                     f" dB): this run did not improve it there; keep {cfg.init_weights}"
                     if self.best_step == 0 else
                     f"note: best.pt scored higher on --val, {self.best_psnr:.2f} dB at "
                     f"step {self.best_step}: derain PHOTO --weights "
                     f"{shlex.quote(str(out / 'best.pt'))}")
        if self.world > 1:
            dist.barrier()
        losses = self.losses_seen
        return TrainResult(  # (absolute: relative ones led elsewhere after a chdir: an audit)
            out=Path(os.path.abspath(out)), manifest_entry=entry, steps=step,
            weights=Path(os.path.abspath(weights_path)) if weights_path else None,
            final_loss=float(np.mean(losses[-10:])) if losses else None,
            best_psnr=self.best_psnr, metrics={"val": last_val} if last_val else {},
            wall_time_s=wall, stopped_early=self.stopped_early, losses=losses,
        )


def check_finite(state: dict[str, torch.Tensor], where: str, step: int,
                 advice: str = "Start again with a lower --lr (or --amp fp32), or resume from "
                               "a copy of the run saved before it diverged") -> None:
    """Raise TrainDiverged where ``state`` holds NaN or infinity. Why: a diverged run (a
    far too large --lr) exported NaN weights with exit 0, and they turned every photo
    black; its validations scored the black outputs as 7 dB and kept the "best" (audit)."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(
        torch.isfinite(v).all())]
    if bad:
        raise TrainDiverged(
            f"training diverged: {len(bad)} of the {len(state)} tensors of {where} are NaN or "
            f"infinite at step {step} (the first: {bad[0]}); nothing of it is exported or "
            f"scored. {advice}")


def fitting_dtype(state: dict[str, torch.Tensor], dtype: torch.dtype,
                  say: Callable[[str], None]) -> torch.dtype:
    """``dtype``, or float32 where a tensor of ``state`` is finite in float32 but beyond
    ``dtype``'s range (it would be infinity in the file: an audit), said through ``say``."""
    if dtype == torch.float32:
        return dtype
    over = [k for k, v in state.items() if v.is_floating_point() and not bool(
        torch.isfinite(v.to(dtype)).all())]
    if over:
        name = str(dtype).removeprefix("torch.")
        say(f"warning: {len(over)} tensor(s) hold values beyond {name}'s range (the first: "
            f"{over[0]}, largest magnitude {float(state[over[0]].abs().max()):.3g}): "
            "exported in float32")
        return torch.float32
    return dtype


def _export(
    cfg: TrainConfig, ema: nn.Module, name: str, arch: str, conf: dict[str, Any], out: Path,
    step: int, wall: float, last_val: dict[str, float] | None, best_psnr: float | None,
    best_step: int | None, hardware: str, start: dict[str, str] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """The run's weights and manifest entry (``start``: ``start_weights`` as the run
    started; None: taken now)."""
    from .weights import save_weights

    dtype = {"float16": torch.float16, "fp16": torch.float16, "float32": torch.float32,
             "fp32": torch.float32, "bfloat16": torch.bfloat16}.get(cfg.export_dtype)
    if dtype is None:
        raise TrainError(f"unknown export dtype {cfg.export_dtype!r}")
    export_model = build_architecture(arch, conf)
    export_model.load_state_dict(ema.state_dict())
    state = export_model.state_dict()
    check_finite(state, "the averaged weights", step)
    dtype = fitting_dtype(state, dtype, _say)
    path = out / "model.safetensors"
    start = start_weights(cfg.init_weights) if start is None else start
    meta = {"steps": str(step), "training": f"derain {_run_kind(out) or 'train'}",
            **{f"init_{k}": v for k, v in start.items()}}
    rec = save_weights(export_model, path, name=name, arch=arch, config=conf, dtype=dtype,
                       metadata=meta)
    rec.license = cfg.license
    rec.training_data = cfg.training_data or _describe_data(cfg)
    metrics: dict[str, Any] = {}
    if last_val:
        metrics["val"] = {"set": Path(cfg.val).name if cfg.val else None,
                          "psnr": round(last_val["psnr"], 3), "ssim": round(last_val["ssim"], 4),
                          "count": last_val["count"], "step": step}
        if best_psnr is not None:
            metrics["val"]["best_psnr"] = round(best_psnr, 3)
            metrics["val"]["best_step"] = best_step
    rec.metrics = metrics
    rec.status = "candidate"
    rec.extra = {"steps": step, "hardware": hardware,
                 "wall_time_s": round(wall, 1), **({"init_weights": start} if start else {})}
    entry = rec.to_dict()
    atomic_write_text(out / "manifest_entry.json", json.dumps(entry, indent=2) + "\n")
    return path, entry


def start_weights(path: str | os.PathLike[str] | None) -> dict[str, str]:
    """Where a run started (``--weights``, ``--init``): the file's name, sha256 and the
    model name it declares; {} for a run from scratch. Written into the run's weights and
    manifest entry, which named the start nowhere: a run from a published model's weights
    carries that model's name, and read as trained from scratch under it (an audit)."""
    if not path:
        return {}
    from .hub import sha256_file
    from .weights import WeightsError, read_state

    file = Path(path).expanduser()
    start = {"weights": file.name}
    try:
        start["sha256"] = sha256_file(file)
        state, meta = read_state(file)
    except (OSError, WeightsError):
        return start  # gone since the run started: its name is all there is
    start["tensors_sha256"] = tensors_sha256(state)
    if meta.get("name"):
        start["name"] = meta["name"]
    return start


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state's tensors alone (names, dtypes, shapes, values), not of the file
    that holds them: a new header (the bundled soups got one on 2026-12-05) or another
    file holding the same tensors is the same start."""
    from .onnx_backend import hash_tensors

    h = hashlib.sha256()
    hash_tensors(h, sorted(state.items()))
    return h.hexdigest()


def _say(msg: str) -> None:
    from .fileio import terminal_text
    from .terminal import DerainConsole

    # a message may name a photo found in a folder: its control characters escaped
    DerainConsole(stderr=True, highlight=False, soft_wrap=True, markup=False).print(
        terminal_text(msg))


class _Progress:
    """A rich progress bar with loss, lr, patches/s and ETA (a no-op when disabled).

    Where stderr is not a terminal (a log file, a CI job, ``nohup``) a live bar would
    show nothing until the end, so plain lines are printed instead
    (:class:`~derain_cli.plain_progress.PlainProgress`: at most one every ``every_s``
    seconds, and the last step's): an hour-long run in a log is not silent.

    The ETA is the steps left at this segment's time per step (validations left out) plus
    the validations left (``vals_left(step)``) at their measured mean: the steps' rate
    alone left the validations out (on a CPU one can take as long as many steps).
    """

    def __init__(self, *, enabled: bool, total: int, start: int, every_s: float = 60.0,
                 console: Any = None, budget_end: float | None = None,
                 vals_left: Callable[[int], int] | None = None, label: str = "train",
                 ) -> None:
        self.enabled = enabled
        self.label = label  # the command's: distill's said "train" (an audit)
        self.total, self.start = total, start
        #: when --time-budget stops the run (time.time()); the step ETA alone overshot it
        self.budget_end = budget_end
        self.every_s = every_s
        self.vals_left = vals_left
        self._console = console
        self._p = None
        self._task = None
        self._lines: Any = None
        self._t0 = time.monotonic()
        self._val_seconds: list[float] = []  # each validation's time, this segment
        #: plain lines: the last update's line, and whether it was printed (a run that a
        #: time budget stopped within the minute printed none: an audit)
        self._last_line: str | None = None
        self._last_printed = False

    def validated(self, seconds: float) -> None:
        """A validation took ``seconds``: not step time, and the measure of those to come."""
        self._val_seconds.append(seconds)

    def eta(self, step: int) -> float:
        """Seconds left (nan before the first step), the time budget's end where sooner."""
        done = step - self.start
        left = float("nan")
        if done > 0:
            spent = time.monotonic() - self._t0 - sum(self._val_seconds)
            left = max(spent, 0.0) / done * (self.total - step)
            if self._val_seconds and self.vals_left is not None:
                left += self.vals_left(step) * (sum(self._val_seconds) / len(self._val_seconds))
        if self.budget_end is not None:
            budget = max(0.0, self.budget_end - time.time())
            left = budget if not math.isfinite(left) else min(left, budget)
        return left

    def __enter__(self) -> _Progress:
        self._t0 = time.monotonic()
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            from .plain_progress import PlainProgress
            from .terminal import DerainConsole, live_display

            # stderr: with the log lines; stdout stays for data
            console = self._console or DerainConsole(stderr=True)
            if not live_display(console):
                self._lines = PlainProgress(console, self.every_s)
                return self
            from rich.table import Column

            # the bar and the loss text share what the step count and the times leave
            # (the text's full width squeezed them to "…" at 80 columns: an audit)
            self._p = Progress(
                TextColumn(f"[bold]{self.label}"),
                BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=5)),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}", table_column=Column(
                    ratio=3, no_wrap=True, overflow="ellipsis")),
                TimeElapsedColumn(), TextColumn("ETA"),
                TextColumn("{task.fields[eta]}"), transient=False, console=console,
                expand=True,
            )
            self._p.__enter__()
            self._task = self._p.add_task("train", total=self.total, completed=self.start,
                                          info="", eta="-:--:--")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lines is not None and self._last_line and not self._last_printed:
            self._lines.print(self._last_line)  # where the run stopped
        if self._p is not None:
            task = self._p.tasks[0] if self._p.tasks else None
            if task is not None and task.total is not None and task.completed >= task.total:
                # the bar stays on screen: its last estimate, taken before the final
                # validation and export, read "ETA 0:00:07" over a finished run (an audit)
                self._p.update(self._task, eta=clock(0.0))
            self._p.__exit__(*exc)

    def update(self, step: int, loss: float, lr: float, rate: float) -> None:
        info = f"loss {loss:.4f} lr {lr:.2e} {rate:.1f} patch/s"
        left = None if self.budget_end is None else max(0.0, self.budget_end - time.time())
        if left is not None:
            info += " (time budget)"
        if self._p is not None:
            self._p.update(self._task, completed=step, info=info, eta=clock(self.eta(step)))
        elif self._lines is not None:
            due = self._lines.due() or step >= self.total
            timing = self._lines.timing(step - self.start, self.total - self.start, left,
                                        eta=self.eta(step))
            self._last_line = f"{self.label} {step}/{self.total} {info} {timing}"
            self._last_printed = due
            if due:
                self._lines.print(self._last_line)

    def advance_to(self, step: int) -> None:
        """Move the bar between logged steps (their loss and rate stay until the next)."""
        if self._p is not None:
            self._p.update(self._task, completed=step, eta=clock(self.eta(step)))

    def note(self, msg: str) -> None:
        if self._p is not None:
            self._p.console.print(msg, markup=False)
        elif self._lines is not None:
            if self._last_line and not self._last_printed:  # where it stood, before the
                self._lines.print(self._last_line)  # note (it came after "time budget
                self._last_printed = True  # reached": a review)
            self._lines.print(msg)


# --------------------------------------------------------------------------- fine-tuning
@dataclass
class FinetuneConfig:
    """``derain finetune``: adapt a trained model to the user's own rainy photos."""

    #: the user's photos (None only with ``resume``: the run's own, from its finetune.json)
    rainy: str | None
    out: str = "runs/finetune"
    model: str | None = None
    weights: str | None = None
    clean: str | None = None
    preset: str = "mixed"
    clean_fraction: float = 0.0
    steps: int | None = None
    batch: int | None = None
    patch: int | None = None
    lr: float = 2e-5
    #: off since 2026-12-06: as a loss term (before then) 1e-3 did nothing measurable, and
    #: the decoupled pull (``_Learner.update``) is untuned; --consistency keeps the model
    #: near its start
    l2sp: float = 0.0
    #: 1.0 since 2026-12-03: at 0.1 the contrastive terms darkened the user's photos by
    #: 2.5-3.2 levels of Y against the base model and cost 1-2 dB on rain100l (README)
    consistency: float = 1.0
    contrast_features: str = "auto"
    contrast_weight: float = 0.05
    #: None: ``losses.FINETUNE_CONTRAST_TERMS`` (the background branches, bg and bg_u)
    contrast_terms: str | None = None
    #: "keep": BatchNorm statistics frozen at the base model's (``freeze_batchnorm``);
    #: "refresh": batch statistics while training, re-estimated over 16 whole training
    #: images before each validation and at the end (how a model trained from scratch
    #: treats them)
    batchnorm: str = "keep"
    device: str = "auto"
    threads: int | None = None
    workers: int | None = None
    seed: int = 0
    resume: bool = False
    quiet: bool = False
    amp: str = "auto"
    time_budget: float | None = None
    name: str | None = None
    val: str | None = None
    val_rainy_dir: str | None = None
    val_clean_dir: str | None = None
    ckpt_every: int = 100
    #: validate every N steps; None: four times a run (a quarter of ``steps``)
    val_every: int | None = None
    #: the user's photos are downscaled to this long side (0: never) before anything else:
    #: the base model derains them once (pseudo-clean), and crops are drawn from them
    max_side: int = 1024
    #: tiny registry-free models for tests
    arch: str | None = None
    model_config: dict[str, Any] | None = None
    #: with ``resume``: the fields the caller chose (the CLI's flags on the command line);
    #: every other one is the run's own, from its finetune.json. None: the fields set to
    #: other values than their defaults (``FinetuneConfig(out=RUN, resume=True)`` continues
    #: RUN with its own photos and model: it failed "needs --rainy": an audit)
    given: list[str] | None = None


#: the finetune settings a run keeps beside config.json, for ``finetune --resume``
FINETUNE_JSON = "finetune.json"
#: where one is given, the others are not taken from the run either
_FT_TOGETHER = (("model", "weights", "arch", "model_config"),)


def _run_kind(run: Path) -> str | None:
    """"finetune" or "train" for the run in ``run``, None when it cannot tell (no run, or
    no readable config.json): finetune runs write finetune.json, and said "finetuned from"
    in their config.json's training data before they did."""
    if (run / FINETUNE_JSON).exists():
        return "finetune"
    try:
        saved = json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or not (run / "last.pt").exists():
        return None
    return ("finetune" if str(saved.get("training_data") or "").startswith("finetuned from")
            else "train")


def finetune_run_settings(fc: FinetuneConfig) -> FinetuneConfig:
    """``fc`` with the resumed run's own settings (its finetune.json) wherever ``fc.given``
    names no choice: ``derain finetune -o RUN --resume`` continues RUN as it was started,
    with its photos, model, steps, batch and patch (it took the defaults instead)."""
    if not fc.resume:
        return fc
    fc = _with_given(fc)
    try:
        saved = json.loads((Path(fc.out) / FINETUNE_JSON).read_text())
    except (OSError, ValueError):
        return dataclasses.replace(fc, given=None)
    if not isinstance(saved, dict):
        return dataclasses.replace(fc, given=None)
    return _inherit(fc, saved, _FT_TOGETHER)


def _check_finetune_resume(fc: FinetuneConfig) -> None:
    """A resume that downscales the photos to another ``--max-side`` trains on other data
    (and re-derains other pseudo-clean backgrounds): refused as train refuses another
    ``--preset`` (it went through in silence: an audit)."""
    if not fc.resume:
        return
    try:
        saved = json.loads((Path(fc.out) / FINETUNE_JSON).read_text())
    except (OSError, ValueError):
        return
    if isinstance(saved, dict) and "max_side" in saved and saved["max_side"] != fc.max_side:
        raise TrainError(f"--resume: the run was trained on other data (its photos fitted to "
                         f"--max-side {saved['max_side']}, now {fc.max_side}); resume with "
                         f"--max-side {saved['max_side']}, or start a new run with another "
                         "--out", every_rank=False)


def _init_weights_for(fc: FinetuneConfig) -> tuple[str | None, str, str]:
    """(weights file, origin, short name): --weights FILE, else the published weights of
    --model NAME.

    A file's origin is its path: a run of ``derain train`` names its weights after the model
    it trains, so that name alone would pass them off as the published ones; it is still
    the short name of the fine-tuned result.
    """
    if fc.weights:
        from .weights import read_state

        if fc.resume and not Path(fc.weights).exists():  # (a bare "no such weights
            # file" said nothing of a moved one: an audit)
            raise TrainError(f"--resume: the starting weights {fc.weights} are gone; where "
                             "the file moved, pass --weights with its new place",
                             every_rank=False)
        _, meta = read_state(fc.weights)
        return fc.weights, str(fc.weights), fc.model or meta.get("name") or Path(
            fc.weights).stem
    if fc.model is None and fc.arch is None:
        raise TrainError("finetune needs --model NAME or --weights FILE")
    if fc.arch is not None:
        return None, fc.arch, fc.arch
    from .weights import load_manifest, resolve

    if fc.model not in load_manifest():
        get_spec(fc.model)  # a typo is an unknown model (listing the names), not "no weights"
        from .weights import WeightsError, untrained_message  # as eval, export: exit 1

        raise WeightsError(untrained_message(fc.model))
    return str(resolve(fc.model, quiet=fc.quiet)), fc.model, fc.model


def finetuned_name(short: str) -> str:
    """The name a fine-tuned model gets without --name: NAME-finetuned, once. Fine-tuning
    a fine-tuned file again named it semi-drdnet-fast-finetuned-finetuned (the still-weak
    list)."""
    return short if short.endswith("-finetuned") else f"{short}-finetuned"


def _load_photos(folder: str, max_side: int) -> list[np.ndarray]:
    """The user's photos, downscaled; unreadable ones skipped with a warning
    (``data.load_photos``)."""
    return D.load_photos(folder, max_side)


def finetune(config: FinetuneConfig) -> TrainResult:
    """Semi-supervised adaptation to ``config.rainy`` (see the module and CLI docs).

    Supervised pairs: synthetic rain over ``--clean`` photos if given, else over *pseudo-clean
    backgrounds*: the starting model's own outputs on the user's photos (so the pairs live in
    the user's domain). The unlabeled photos feed the contrastive terms and a consistency loss
    with the frozen starting model; that consistency and a low lr keep the model near its
    starting point (``l2sp`` adds a decoupled pull toward the starting weights, off by
    default).
    """
    config = _paths_as_text(config)  # (out=Path failed after the run folder was made)
    _resume_flag(config)
    run = Path(config.out)
    if config.resume and not (run / "last.pt").exists() and not (run / FINETUNE_JSON).exists():
        raise TrainError(f"--resume: no run in {run} to resume (check -o, or leave out "
                         "--resume to start a new run)", every_rank=False)
    if config.resume and _run_kind(run) == "train":
        raise TrainError(f"--resume: {run} is a `derain train` run; continue it with "
                         f"`derain train -o {run} --resume`", every_rank=False)
    fc = finetune_run_settings(config)
    for name in ("steps", "batch", "patch", "max_side"):  # compared below, before
        _check_whole(name, getattr(fc, name))  # check_config
    _check_finetune_resume(fc)
    if not fc.rainy:
        raise TrainError("finetune needs --rainy MY_RAINY_DIR (the run in --out has no "
                         f"{FINETUNE_JSON} to take it from)" if fc.resume else
                         "finetune needs --rainy MY_RAINY_DIR")
    from .enhancer import resolve_device

    if fc.name is not None and not fc.name.strip():  # fell back to NAME-finetuned (a review)
        raise TrainError("--name is empty; give one, or leave it out for NAME-finetuned")
    keep_bn = freeze_bn_from(fc.batchnorm)
    if keep_bn is False and not fc.val and not fc.resume:  # said only with --val (audit)
        _say("warning: --batchnorm refresh re-estimates the BatchNorm statistics, which the "
             "bundled models were distilled with frozen: a few steps can take several dB "
             "off them (README: Training your own), and without --val nothing here "
             "measures it; keep (the default) leaves them as they are")
    device = resolve_device(fc.device)
    on_gpu = device.type == "cuda"
    weights, label, short = _init_weights_for(fc)
    steps = fc.steps if fc.steps is not None else (1000 if on_gpu else 200)
    if steps < 1:
        raise TrainError(f"--steps must be at least 1, not {steps}")
    batch = fc.batch if fc.batch is not None else (8 if on_gpu else 4)
    patch = fc.patch if fc.patch is not None else (128 if on_gpu else 96)
    if fc.max_side and fc.max_side < patch:
        raise TrainError(f"--patch {patch} is larger than --max-side {fc.max_side}, the long "
                         "side your photos are downscaled to (0 keeps them as they are): give "
                         "a smaller --patch or a larger --max-side")  # (--patch 2048 alone
        # was said as "--max-side must be 0 or at least the patch": an audit)
    cfg = TrainConfig(
        model=fc.model if fc.arch is None else None, arch=fc.arch, model_config=fc.model_config,
        init_weights=weights, synthetic=[fc.clean] if fc.clean else [], preset=fc.preset,
        clean_fraction=fc.clean_fraction, unlabeled=[fc.rainy], val=fc.val,
        val_rainy_dir=fc.val_rainy_dir, val_clean_dir=fc.val_clean_dir, out=fc.out, steps=steps,
        batch=batch, patch=patch,
        lr=fc.lr, warmup=min(50, steps // 10 or 1), min_lr_ratio=0.1, l2sp=fc.l2sp,
        consistency=fc.consistency, contrast_features=fc.contrast_features,
        contrast_weight=fc.contrast_weight, contrast_terms=fc.contrast_terms,
        device=fc.device, threads=fc.threads, workers=fc.workers,
        seed=fc.seed, resume=fc.resume, quiet=fc.quiet, amp=fc.amp,
        time_budget=fc.time_budget, ckpt_every=fc.ckpt_every,
        val_every=fc.val_every if fc.val_every is not None else max(steps // 4, 1),
        name=fc.name or finetuned_name(short),
        training_data=f"finetuned from {label} on {Path(fc.rainy).name}"
        + (f" with synthetic rain on {Path(fc.clean).name}" if fc.clean
           else " (pseudo-clean backgrounds from the base model, re-rained)"),
        ema=0.99, freeze_bn=keep_bn, bn_recalib=0 if keep_bn else 16,
        # every field is finetune's choice (its run's settings were merged above): none
        # is taken from config.json, a value equal to TrainConfig's default included
        # (--consistency 0 on a resume kept the run's 0.5: a review)
        given=[f.name for f in dataclasses.fields(TrainConfig)],
    )
    if fc.contrast_terms is None:
        cfg.contrast_terms = ",".join(L.FINETUNE_CONTRAST_TERMS[_model_identity(cfg)[1]])
    check_config(cfg, finetune=True)  # before the photos are read and derained
    if (fc.clean and fc.rainy and not fc.quiet
            and os.path.realpath(fc.clean) == os.path.realpath(fc.rainy)):
        _say("warning: --clean names your --rainy folder: rain is added on top of rainy "
             "photos, and the model learns to keep their rain; give photos without rain, "
             "or leave --clean out (your photos' derained versions stand in)")  # (an audit)
    loaded: list[list[np.ndarray]] = []

    def user_photos() -> list[np.ndarray]:
        """The photos, read when train() first asks: after its checks of a --resume (a
        resume refused for its -m read and decoded the whole folder first: an audit)."""
        if not loaded:  # (the folder as the run records it: a typo's error then names
            # --rainy, as --clean's does: an audit)
            loaded.append(_load_photos(_resolved([fc.rainy])[0], fc.max_side))
        return loaded[0]

    kept = {k: v for k, v in dataclasses.asdict(fc).items() if k not in ("given", "resume")}
    for k in ("rainy", "clean", "val", "weights"):  # a resume from elsewhere finds them
        if kept[k]:
            kept[k] = str(Path(kept[k]).expanduser().resolve())
    # as run, not None: a CPU run resumed on a GPU keeps its own (not the GPU defaults)
    kept.update(steps=steps, batch=batch, patch=patch)
    hooks: dict[str, Callable[..., Any]] = {
        "make_unlabeled": lambda c: D.UnlabeledDataset(
            images=user_photos(), patch=c.patch, seed=c.seed + 1, fitted_to=fc.max_side,
            flag="--rainy"),
        "run_started": lambda out: atomic_write_text(
            out / FINETUNE_JSON, json.dumps(kept, indent=2, sort_keys=True) + "\n"),
    }
    if not fc.clean:
        def make_labeled(c: TrainConfig, with_aug: bool) -> D.LabeledDataset:
            return D.LabeledDataset(
                clean_images=_pseudo_clean(c, user_photos(), device, weights),
                patch=c.patch, preset=fc.preset, seed=fc.seed, with_aug=with_aug,
                clean_fraction=fc.clean_fraction)

        hooks["make_labeled"] = make_labeled
    return train(cfg, _hooks=hooks)


@torch.no_grad()
def _pseudo_clean(
    cfg: TrainConfig, photos: list[np.ndarray], device: torch.device, weights: str | None,
) -> list[np.ndarray]:
    """The starting model's outputs on the user's photos (uint8), via the tiled Derainer."""
    from .enhancer import Derainer

    if weights is not None:  # on the run's --threads (it timed, then ran, its engines on
        # every core, and filed the timing under the default's: an audit)
        derainer = Derainer(model=cfg.model, weights=weights, device=str(device),
                            threads=cfg.threads)
        run: Callable[[np.ndarray], np.ndarray] = derainer.derain_array
    else:  # registry-free tiny model (tests): run it directly, untrained
        _, arch, conf = _model_identity(cfg)
        model = build_architecture(arch, conf).to(device).eval()

        def run(rgb: np.ndarray) -> np.ndarray:
            y = model(D.to_tensor(rgb)[None].to(device))
            return y[0].permute(1, 2, 0).float().cpu().numpy()

    talk = not cfg.quiet and _dist_info()[0] == 0  # under torchrun, rank 0 alone
    if talk:  # a minute or more on a busy CPU, before any training line
        _say(f"deraining your {len(photos)} photo{'s' if len(photos) != 1 else ''} with the "
             "starting model for pseudo-clean backgrounds...")
    outs = []
    from .plain_progress import count_progress

    with count_progress("pseudo-clean", len(photos), enabled=talk) as done:
        for img in photos:
            y = np.clip(run(img.astype(np.float32) / 255.0), 0.0, 1.0)
            outs.append(np.rint(y * 255.0).astype(np.uint8))
            done(len(outs))
    return outs


