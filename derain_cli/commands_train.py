"""``derain train | finetune | distill | grow | eval | synth``: thin Typer wrappers.

Registered by ``derain_cli.cli`` (lazily). Errors the user can fix (bad folders, unmatched
pairs, unknown model, bad options) print one ``error: ...`` line and exit 2; runtime failures
(weights unavailable, out of memory, ...) exit 1. ``--debug`` on ``derain`` shows tracebacks.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from .cli import (
    DEFAULT_MODEL_NAME,
    attach_logging,
    check_strength,
    command_line_words,
    complete_eval_model,
    complete_model,
    complete_model_or_file,
    detach_logging,
    interrupted_import,
    output_not_an_option,
    owe_json,
    parse_rain_angle,
    print_error,
    refuse_torchrun,
    say_error,
    torchrun_refusal,
    weights_file_option,
)
from .fileio import terminal_text
from .terminal import DerainConsole

#: ``--preset`` of ``derain train``, ``finetune`` and ``synth`` (see synth.check_preset)
PRESET_HELP = ("Synthetic rain: light, medium, heavy, storm, veiled, slanted, mixed, or a comma "
               "list drawn from per image (light,mixed).")
#: ``--clean-fraction`` of ``derain train`` and ``derain finetune`` (see data.LabeledDataset)
CleanFractionOption = Annotated[float, typer.Option(
    min=0.0, max=0.9,
    help="Share of synthetic samples left without rain (teaches the model to leave "
         "rain-free content alone).")]
ContrastTermsOption = Annotated[str | None, typer.Option(
    help="Keep only these contrastive terms, comma-separated (Semi-DRDNet: bg, rain, bg_u, "
         "rain_u; RDMC: bg, bg_u; _u = on the unlabeled photos). Default: all. For "
         "ablations; Semi-DRDNet's rain_out and rain_leak are other forms of its rain "
         "branch, only when named.")]

#: ``--amp`` of ``derain train`` and ``derain finetune`` (see train._auto_bf16)
AmpOption = Annotated[str, typer.Option(
    help="auto (bf16 on CUDA and on CPUs with bf16 instructions), bf16 or fp32.")]

_err = DerainConsole(stderr=True, highlight=False, soft_wrap=True, markup=False)  # paths are text


#: --val's folders, named where its layout is not recognised (as eval's --rainy-dir)
ValRainyOption = Annotated[str | None, typer.Option(
    help="Rainy subfolder of --val (where its layout is not recognised).")]
ValCleanOption = Annotated[str | None, typer.Option(
    help="Clean subfolder of --val (where its layout is not recognised).")]

#: Seeds are 32-bit (numpy's generators take them modulo 2**32: -1 was 4294967295).
SEED_MAX = 2**32 - 1


def _debug() -> bool:
    from .cli import debugging

    return debugging()


#: what PyTorch's allocators say when memory runs out (CPU, CUDA)
_OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "not enough memory",
                  "tried to allocate")


@contextlib.contextmanager
def _errors(training: bool = False) -> Iterator[None]:
    """The commands' errors as one line each, and their exit status (``training``: a
    command with --batch and --patch, named where memory runs out)."""
    from .data import DataError
    from .errors import OptionError
    from .fileio import FolderInUse
    from .hub import WeightsUnavailable
    from .images import ImageError
    from .losses import ContrastUnavailable
    from .models import UnknownModelError
    from .pairs import PairDataError, PairsError
    from .train import TrainDiverged, TrainError, TrainPeerLost
    from .weights import WeightsError

    rank = int(os.environ.get("RANK", "0"))

    def say(e: BaseException) -> None:
        hint = ("; a smaller --batch or --patch needs less" if training
                and isinstance(e, MemoryError) else "")  # NumPy's "Unable to allocate
        print_error(_err, _msg(e) + hint, rank)  # 27.9 GiB ..." said no way out (weak list)

    # the library's warnings (a small rain angle, a metadata block left out) said as the
    # main command says them, "warning: ...", not bare; under torchrun by rank 0 alone
    logging_handler = attach_logging(_err, _debug(), quiet=bool(rank))
    try:
        yield
    except typer.Exit:
        raise
    except BrokenPipeError as e:
        from .terminal import BROKEN_PIPE_STATUS, silence_stdout, stdout_gone

        if _debug():
            raise
        if stdout_gone():  # the reader went away (derain eval ... --json | head): quiet
            silence_stdout()
            raise typer.Exit(BROKEN_PIPE_STATUS) from None
        say(e)  # another pipe (a data loader's): an error to report
        raise typer.Exit(1) from None
    except PairDataError as e:  # the folders were right; a file in them is not
        if _debug():
            raise
        say(e)
        raise typer.Exit(1) from None
    except (PairsError, DataError, TrainError, UnknownModelError, FileNotFoundError,
            NotADirectoryError, OptionError, FolderInUse) as e:
        if _debug():
            raise
        # a refused setting or run folder is every rank's alike: rank 0 says it (it came
        # once a process: an audit); what a rank found in the files it reads, each says
        if not rank or not (isinstance(e, (OptionError, UnknownModelError))
                            or getattr(e, "every_rank", False)):
            say(e)
        raise typer.Exit(2) from None
    except (WeightsError, WeightsUnavailable, ContrastUnavailable, ImageError, MemoryError,
            ValueError, OSError, TrainDiverged, TrainPeerLost) as e:
        if _debug():
            raise
        if not rank or not isinstance(e, TrainDiverged | TrainPeerLost):  # (every rank's
            say(e)  # loss diverged; a peer lost: rank 0 saved and says how to resume)
        raise typer.Exit(1) from None
    except RuntimeError as e:  # PyTorch's allocator: "[enforce fail at alloc_cpu.cpp:127]
        # ... DefaultCPUAllocator: can't allocate memory" came out raw (an audit)
        from .train import _peer_lost

        if rank and not _debug() and _peer_lost(e):  # rank 0 stopped before the first
            # collective (its --out in use, say) and says why; rank 1's raw gloo error
            # came first, above that reason (an audit)
            raise typer.Exit(1) from None
        said = [ln.strip() for ln in str(e).splitlines() if any(
            m in ln.lower() for m in _OUT_OF_MEMORY)]
        if _debug() or not said:
            raise
        print_error(_err, f"out of memory ({said[0][:200]})" + (
            "; a smaller --batch or --patch needs less" if training else ""), rank)
        raise typer.Exit(1) from None
    except KeyboardInterrupt as e:
        # training says where it stopped itself; under torchrun rank 0 speaks for all
        if not getattr(e, "reported", False) and not rank:
            _err.print("\ninterrupted")
        raise typer.Exit(130) from None
    finally:
        detach_logging(logging_handler)


@contextlib.contextmanager
def _error_as_json(enabled: bool) -> Iterator[None]:
    """``--json``'s answer where the command stops on an error (``{"error": ...}``) or a
    Ctrl-C before its first result: stdout was empty, and a script reading it learnt only
    the exit status (an audit; the main command's summary has said its error since
    2026-12-07)."""
    enabled = enabled and os.environ.get("RANK", "0") == "0"  # one answer under torchrun
    try:
        yield
    except KeyboardInterrupt as e:
        if enabled and not getattr(e, "reported", False):  # (EvalInterrupted printed its own)
            _echo_json(_NOTHING_SCORED)
        raise
    except typer.Exit:
        raise
    except Exception as e:
        if interrupted_import(e):  # a Ctrl-C while torch loaded: an interrupt, not an error
            if enabled:
                _echo_json(_NOTHING_SCORED)
            raise KeyboardInterrupt from None
        if enabled:
            _echo_json({**_NOTHING_SCORED, "interrupted": False,
                        "error": command_line_words(_msg(e))})
        raise


#: eval --json's answer when stopped before its first pair was scored: every key of a
#: result's (``EvalResult.to_dict``), so one parser reads both (it held four: an audit);
#: written out, as evaluate (and PyTorch) may not be loaded yet
_NOTHING_SCORED = {"model": None, "data_dir": None, "count": 0, "psnr_y": None,
                   "ssim_y": None, "psnr_rgb": None, "images": [], "csv_path": None,
                   "report_path": None, "seconds": 0.0, "engine": "", "rain_angle": None,
                   "total": None, "interrupted": True, "error": None}


def _echo_json(result: dict) -> None:
    """A command's --json on stdout: it owes none after (``owe_json``)."""
    owe_json(None)
    typer.echo(json.dumps(result, indent=2))


def _owe_eval_json(value: bool) -> bool:
    """eval --json, noted first of the options (eager), as the main job's is: a Ctrl-C while
    the modules load still gets its answer."""
    owe_json(json.dumps(_NOTHING_SCORED, indent=2) if value else None)
    return value


def _msg(e: BaseException) -> str:
    text = str(e).strip()
    if isinstance(e, KeyError):
        text = text.strip("'\"")
    return text or type(e).__name__


def _start_weights(given: str | None, quiet: bool = False) -> str | None:
    """train's ``--weights``: a file, or a published model's name resolved to its checked
    file (``--weights semi-drdnet-fast`` said "file does not exist", where finetune, distill,
    grow and export take a name; audit)."""
    from .weights import names_a_file, resolve

    if not given:
        return None
    if Path(given).is_dir():  # "no weights named 'run' in the manifest" (a review)
        model = Path(given) / "model.safetensors"
        raise FileNotFoundError(f"--weights {given} is a folder; " + (
            f"its run's model is {model}" if model.is_file() else "give a weights file"))
    if names_a_file(given):
        if not Path(given).is_file():
            raise FileNotFoundError(f"--weights {given}: the file does not exist (or give "
                                    "a published model's name, as derain models lists them)")
        return given
    return str(resolve(given, quiet=quiet))


def _dirs(values: list[Path] | None) -> list[str]:
    return [str(v) for v in values or []]


def train_cmd(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Registered model to train.",
                                       autocompletion=complete_model)] =
    "semi-drdnet-lite",
    pairs: Annotated[list[Path] | None, typer.Option(
        "--pairs", help="Paired rainy/clean folder (repeatable; layout auto-detected).")] = None,
    synthetic: Annotated[list[Path] | None, typer.Option(
        "--synthetic", help="Folder of clean photos: rain is synthesized on the fly.")] = None,
    preset: Annotated[str, typer.Option(help=PRESET_HELP)] = "mixed",
    clean_fraction: CleanFractionOption = 0.0,
    unlabeled: Annotated[list[Path] | None, typer.Option(
        "--unlabeled", help="Real rainy photos without ground truth (contrastive terms).")] = None,
    rainy_dir: Annotated[str | None, typer.Option(
        help="Rainy subfolder of every --pairs folder.")] = None,
    clean_dir: Annotated[str | None, typer.Option(
        help="Clean subfolder of every --pairs folder.")] = None,
    val: Annotated[Path | None, typer.Option(help="Validation pairs folder.")] = None,
    val_rainy_dir: ValRainyOption = None,
    val_clean_dir: ValCleanOption = None,
    val_limit: Annotated[int, typer.Option(help="Validate on at most N pairs.")] = 20,
    val_crop: Annotated[int | None, typer.Option(help="Center-crop val images to N px.")] = None,
    out: Annotated[Path, typer.Option(
        "--out", "--output", "-o", callback=output_not_an_option, help="Run folder.")] = Path(
        "runs/train"),
    steps: Annotated[int | None, typer.Option(help="Optimizer steps (default 10000).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs instead of --steps.")] = None,
    batch: Annotated[int | None, typer.Option(
        help="Patches per step per process (default 16 on GPUs, 4 on CPUs).")] = None,
    patch: Annotated[int | None, typer.Option(
        help="Patch size in pixels (default 128 on GPUs, 96 on CPUs).")] = None,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = 2e-4,
    warmup: Annotated[int, typer.Option(
        help="Linear warmup steps (at most a tenth of the steps, and of --time-budget).")
    ] = 200,
    clip: Annotated[float, typer.Option(help="Gradient-norm clip (0: off).")] = 1.0,
    ema: Annotated[float, typer.Option(help="EMA decay of the exported weights.")] = 0.999,
    amp: AmpOption = "auto",
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Random seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    threads: Annotated[int | None, typer.Option(
        min=1, show_default=False,
        help="CPU threads per process (default: PyTorch's, the physical cores).")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Data-loading processes (default: 0 on CPUs, up to 4 on GPUs).")] = None,
    val_every: Annotated[int, typer.Option(help="Validate every N steps.")] = 500,
    ckpt_every: Annotated[int, typer.Option(
        help="Checkpoint every N steps (and at least every 10 minutes).")] = 500,
    log_every: Annotated[int, typer.Option(help="Log (log.jsonl) every N steps.")] = 10,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the run in --out, with its own settings (data, model, "
                         "batch, patch, validation, ...) unless given again.")] = False,
    time_budget: Annotated[float | None, typer.Option(
        help="Stop training after this many seconds (a resumed run counts its earlier "
             "time too; validations along the way count in it), then validate, checkpoint "
             "and export (their time comes on top); "
             "the learning rate decays with the elapsed time or the steps, whichever is "
             "further.")] = None,
    contrast_features: Annotated[str, typer.Option(
        help="Contrastive feature space: auto, vgg19, self, none.")] = "auto",
    contrast_weight: Annotated[float, typer.Option(help="Weight of the contrastive terms.")] =
    0.1,
    contrast_terms: ContrastTermsOption = None,
    l1_weight: Annotated[float, typer.Option(
        help="RDMC: add an L1 term of this weight to the paper's 0.1 MSE + (1 - SSIM), "
             "which hardly charges a brightness offset (0: the paper's loss).")] = 0.0,
    psnr_weight: Annotated[float, typer.Option(
        help="Subtract this weight times each crop's PSNR (dB) from the supervised loss, "
             "as the evaluation averages PSNR per image (not the papers'; 0: off; README: "
             "A PSNR term).")] = 0.0,
    weights: Annotated[str | None, typer.Option(
        metavar="FILE|NAME", show_default=False,
        help="Initialise from these weights: a file, or a published model's name (its "
             "bundled or downloaded weights, as derain models lists them).")] = None,
    name: Annotated[str | None, typer.Option(help="Name in manifest_entry.json.")] = None,
    export_dtype: Annotated[str, typer.Option(
        help="float16, bfloat16 or float32.")] = "float16",
    bn_recalib: Annotated[int | None, typer.Option(
        show_default=False,
        help="Whole training images to re-estimate BatchNorm statistics on before "
             "validation and export (0: off). Default: 16, or 0 with --weights (a "
             "distilled model's statistics must be kept).")] = None,
    batchnorm: Annotated[str | None, typer.Option(
        show_default=False,
        help="BatchNorm statistics: keep (frozen at --weights' statistics) or refresh (batch "
             "statistics while training; re-estimated before each validation and the export "
             "where --bn-recalib is above 0, the default from scratch). Default: keep with "
             "--weights (unless --bn-recalib is given), refresh from scratch.")] = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress output; only the closing lines (and warnings).")
    ] = False,
    arch: Annotated[str | None, typer.Option(hidden=True, help="Registry-free architecture.")]
    = None,
    model_config: Annotated[str | None, typer.Option(
        hidden=True, help="JSON config of --arch (tests, experiments).")] = None,
) -> None:
    """Train a deraining model (synthetic rain, paired folders, unlabeled real photos)."""
    from .train import TrainConfig, freeze_bn_from, train

    with _errors(training=True):
        cfg = TrainConfig(
            model=model, init_weights=_start_weights(weights, quiet), pairs=_dirs(pairs),
            rainy_dir=rainy_dir, clean_dir=clean_dir, synthetic=_dirs(synthetic), preset=preset,
            clean_fraction=clean_fraction, unlabeled=_dirs(unlabeled),
            val=str(val) if val else None, val_rainy_dir=val_rainy_dir,
            val_clean_dir=val_clean_dir, val_limit=val_limit,
            val_crop=val_crop, out=str(out), steps=steps, epochs=epochs, batch=batch,
            patch=patch, lr=lr, warmup=warmup, clip=clip, ema=ema, amp=amp, seed=seed,
            device=device, threads=threads, workers=workers, val_every=val_every,
            ckpt_every=ckpt_every,
            log_every=log_every, resume=resume, quiet=quiet, time_budget=time_budget,
            contrast_features=contrast_features, contrast_weight=contrast_weight,
            contrast_terms=contrast_terms, name=name, export_dtype=export_dtype,
            l1_weight=l1_weight, psnr_weight=psnr_weight, bn_recalib=bn_recalib,
            freeze_bn=freeze_bn_from(batchnorm), arch=arch,
            model_config=json.loads(model_config) if model_config else None,
        )
        if arch is not None:
            cfg.model = None
        given = _given_fields(ctx)
        _refuse_idle_validation(given, val, resume)
        if weights is not None and "model" not in given:
            cfg.model = None  # the network the weights file names (train.py reads it)
        cfg.given = given  # on a resume the run's own settings but these; a -m typed is
        # kept beside --weights (train.py: a default model gives way to the file's)
        train(cfg)


def _refuse_idle_validation(given: Iterable[str], val: Path | None, resume: bool) -> None:
    """Validation settings without ``--val`` (train's or finetune's) are a usage error:
    they were accepted, then unused (an audit; finetune's too: a review)."""
    idle = [f"--{f.replace('_', '-')}" for f in _VALIDATION_FLAGS if f in given]
    if idle and val is None and not resume:
        raise _usage_error(f"{', '.join(idle)} set(s) the validation, and there is none: "
                           "add --val PAIRS_DIR, or leave them out")


#: ``derain train``'s validation settings, idle without --val
_VALIDATION_FLAGS = ("val_limit", "val_crop", "val_every", "val_rainy_dir", "val_clean_dir")

#: ``derain train`` flags whose TrainConfig field has another name
_FIELD_OF_FLAG = {"weights": "init_weights", "batchnorm": "freeze_bn"}


def _given_params(ctx: typer.Context) -> list[str]:
    """The parameters set on this command line (not left at their defaults)."""
    def defaulted(name: str) -> bool:  # by the enum's name: typer may bundle its own click
        source = ctx.get_parameter_source(name)
        return source is None or getattr(source, "name", "") in ("DEFAULT", "DEFAULT_MAP")

    return [name for name in ctx.params if not defaulted(name)]


def _given_fields(ctx: typer.Context) -> list[str]:
    """The TrainConfig fields set by flags on this command line (not left at defaults)."""
    return [_FIELD_OF_FLAG.get(name, name) for name in _given_params(ctx)]


def finetune_cmd(
    ctx: typer.Context,
    rainy: Annotated[Path | None, typer.Option(
        "--rainy", show_default=False,
        help="Your own rainy photos (with --resume: the run's own unless given).")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", autocompletion=complete_model,
                                              help="Start from this published model.")] = None,
    weights: Annotated[Path | None, typer.Option(
        callback=weights_file_option, help="Start from this weights file.")
    ] = None,
    clean: Annotated[Path | None, typer.Option(
        help="Any clean photos (else pseudo-clean outputs of the model, re-rained).")] = None,
    out: Annotated[Path, typer.Option("--out", "--output", "-o", callback=output_not_an_option,
                                      help="Run folder.")] = Path("runs/finetune"),
    preset: Annotated[str, typer.Option(help=PRESET_HELP)] = "mixed",
    clean_fraction: CleanFractionOption = 0.0,
    steps: Annotated[int | None, typer.Option(help="Steps (default 1000 GPU / 200 CPU).")] =
    None,
    batch: Annotated[int | None, typer.Option(help="Batch (default 8 GPU / 4 CPU).")] = None,
    patch: Annotated[int | None, typer.Option(help="Patch (default 128 GPU / 96 CPU).")] = None,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 2e-5,
    l2sp: Annotated[float, typer.Option(
        help="Pull toward the starting weights (L2-SP, decoupled like AdamW's weight decay: "
             "each step every weight moves lr x this of its distance back to its start; "
             "0 = off, the default: --consistency keeps the model near its start).")] = 0.0,
    consistency: Annotated[float, typer.Option(
        help="L1 consistency with the frozen starting model on your photos (keeps the "
             "result near it: brightness and colour).")] = 1.0,
    contrast_features: Annotated[str, typer.Option(help="auto, vgg19, self, none.")] = "auto",
    contrast_weight: Annotated[float, typer.Option(help="Weight of the contrastive terms.")] =
    0.05,
    contrast_terms: Annotated[str | None, typer.Option(
        help="Keep only these contrastive terms, comma-separated (Semi-DRDNet: bg, rain, "
             "bg_u, rain_u; RDMC: bg, bg_u; _u = on your photos; all = every one). Default: "
             "bg,bg_u: Semi-DRDNet's rain branches did not help fine-tuning. Semi-DRDNet's "
             "rain_out and rain_leak are other forms of its rain branch, only when named.")
    ] = None,
    batchnorm: Annotated[str, typer.Option(
        help="BatchNorm statistics: keep (frozen at the starting model's) or refresh "
             "(batch statistics while training, re-estimated before each validation and at "
             "the end).")] = "keep",
    val: Annotated[Path | None, typer.Option(help="Validation pairs folder.")] = None,
    val_rainy_dir: ValRainyOption = None,
    val_clean_dir: ValCleanOption = None,
    val_every: Annotated[int | None, typer.Option(
        show_default=False, help="Validate (--val) every N steps (default: a quarter of "
        "--steps).")] = None,
    ckpt_every: Annotated[int, typer.Option(
        help="Checkpoint every N steps (and at least every 10 minutes).")] = 100,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    threads: Annotated[int | None, typer.Option(
        min=1, show_default=False,
        help="CPU threads (default: PyTorch's, the physical cores).")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Data-loading processes (default: 0 on CPUs, up to 4 on GPUs).")] = None,
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Random seed.")] = 0,
    amp: AmpOption = "auto",
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the run in --out, with its own photos, model and "
                         "settings unless given again.")] = False,
    time_budget: Annotated[float | None, typer.Option(
        help="Stop training after N seconds (with --resume: counted over the whole run; "
             "validations along the way, the starting model's too, count in it), then "
             "validate and export (their time comes on top).")] = None,
    max_side: Annotated[int, typer.Option(
        help="Downscale your photos to this long side first (0: keep).")] = 1024,
    name: Annotated[str | None, typer.Option(help="Name in manifest_entry.json.")] = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress output; only the closing lines (and warnings).")
    ] = False,
) -> None:
    """Adapt a model to your own rainy photos (semi-supervised, stays near its start)."""
    from .train import FinetuneConfig, finetune

    with _errors(training=True):
        missing = ([] if model is not None or weights is not None or resume else [
            f"--model NAME or --weights FILE (the model to adapt; `derain PHOTO` runs "
            f"{DEFAULT_MODEL_NAME}: -m {DEFAULT_MODEL_NAME})"]) + (
            [] if rainy is not None or resume else
            ["--rainy MY_RAINY_DIR (your own rainy photos)"])
        if missing:  # both at once (one at a time before), with the default model named
            raise _usage_error("pass " + ", and ".join(missing))  # (an audit)
        _refuse_idle_validation(_given_params(ctx), val, resume)
        finetune(FinetuneConfig(
            rainy=str(rainy) if rainy else None, model=model,
            weights=str(weights) if weights else None,
            clean=str(clean) if clean else None, out=str(out), preset=preset, steps=steps,
            clean_fraction=clean_fraction,
            batch=batch, patch=patch, lr=lr, l2sp=l2sp, consistency=consistency,
            contrast_features=contrast_features, contrast_weight=contrast_weight,
            contrast_terms=contrast_terms, batchnorm=batchnorm,
            val=str(val) if val else None, val_rainy_dir=val_rainy_dir,
            val_clean_dir=val_clean_dir, val_every=val_every, ckpt_every=ckpt_every,
            device=device, threads=threads, workers=workers, seed=seed,
            resume=resume, time_budget=time_budget, name=name, quiet=quiet, max_side=max_side,
            amp=amp, given=_given_params(ctx) if resume else None,
        ))


def distill_cmd(
    clean: Annotated[Path, typer.Option(
        help="Clean photos: rain is synthesized over them; the last --val-count are held "
             "out for the before/after scores.")],
    teacher: Annotated[str, typer.Option(
        "--teacher", "-m", autocompletion=complete_model_or_file,
        help="Model to imitate: a name or a weights file (a Semi-DRDNet; any architecture "
             "with --student).")] =
    "semi-drdnet-lite",
    detail_blocks: Annotated[int | None, typer.Option(
        min=1, show_default=False,
        help="Detail blocks the student keeps (fewer is faster). \\[default: 2, or one "
             "fewer than the teacher's]")] = None,
    rain_blocks: Annotated[int | None, typer.Option(
        min=1, help="Rain blocks the student keeps (default: all, frozen; fewer are "
                    "trained too and also shorten the tiling statistics pass).")] = None,
    student: Annotated[str | None, typer.Option(
        autocompletion=complete_model,
        help="Train this registered model of any architecture (e.g. rdmc-lite) from "
             "scratch to imitate the teacher, instead of a pruned copy of it.")] = None,
    init: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False,
        help="Continue from this earlier student (same shape) instead of the pruned "
             "teacher or a fresh --student.")] = None,
    real: Annotated[Path | None, typer.Option(
        help="Rainy photos of your own, mixed into the crops (no ground truth needed).")] =
    None,
    out: Annotated[Path, typer.Option("--out", "--output", "-o", callback=output_not_an_option,
                                      help="Run folder.")] = Path("runs/distill"),
    steps: Annotated[int, typer.Option(
        min=1, help="Training steps (300: about 6 minutes for semi-drdnet-tiny on a 2-core "
                     "AVX-512 CPU, 36 minutes for semi-drdnet-lite on AVX2).")] = 300,
    max_minutes: Annotated[float | None, typer.Option(
        min=0.01, help="Stop earlier after this many minutes (the weights are still written)."
    )] = None,
    batch: Annotated[int, typer.Option(min=1, help="Crops per step.")] = 8,
    patch: Annotated[int, typer.Option(min=32, help="Crop size.")] = 128,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-4,
    val_count: Annotated[int | None, typer.Option(
        min=1, show_default=False, help="Clean photos held out to score the student before "
        "and after (default: a fifth of them, at most 25).")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads.")] = None,
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Random seed.")] = 0,
    name: Annotated[str | None, typer.Option(
        show_default=False, help="The weights' name (in the file and manifest_entry.json). "
        "\\[default: STUDENT-distilled; semi-drdnet-distilled for a pruned teacher]")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace the model an earlier run left in --out.")] = False,
    teacher_flips: Annotated[bool, typer.Option(
        "--teacher-flips", help="Learn the mean of the teacher's outputs on each crop as "
        "is and flipped three ways (four teacher passes a step; needs --student).")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress output; only the closing lines (and warnings).")
    ] = False,
) -> None:
    """Distil a Semi-DRDNet into a faster, shallower one, or into another architecture
    (no ground truth needed)."""
    refuse_torchrun("distill")
    from .distill import DistillConfig, DistillError, DistillInterrupted, distill

    with _errors(training=True):
        try:
            r = distill(DistillConfig(
                out=str(out), clean=str(clean), teacher=teacher, detail_blocks=detail_blocks,
                rain_blocks=rain_blocks, student=student, init=str(init) if init else None,
                real=str(real) if real else None, steps=steps, max_minutes=max_minutes,
                batch=batch, patch=patch, lr=lr, seed=seed, val_count=val_count,
                threads=threads, progress=not quiet, name=name, overwrite=overwrite,
                teacher_flips=teacher_flips))
        except DistillError as e:
            raise _usage_error(str(e)) from None
        except DistillInterrupted as e:
            _say_distilled(e.result, "interrupted: ")
            # (how to go on was said nowhere: an audit)
            weights = shlex.quote(str(e.result.weights))
            _err.print(f"to go on from it: the same command with --init {weights} (in place "
                       "of any --init) and --overwrite; its learning rate warms up and "
                       "decays again over the new --steps", markup=False)
            raise typer.Exit(130) from None
        _say_distilled(r)


def _say_distilled(r: Any, lead: str = "") -> None:
    b, a = r.before, r.after
    _err.print(f"{lead}{r.steps} steps in {r.wall_s:.0f} s -> {terminal_text(str(r.weights))}\n"
               f"held-out PSNR: student {b['student_psnr']:.2f} -> {a['student_psnr']:.2f} "
               f"dB (teacher {a['teacher_psnr']:.2f}); agreement with the teacher "
               f"{b['agreement_psnr']:.1f} -> {a['agreement_psnr']:.1f} dB",
               markup=False)


def grow_cmd(
    source: Annotated[str, typer.Argument(
        metavar="SOURCE", show_default=False, autocompletion=complete_model_or_file,
        help="A registered model (its published weights) or a weights file.")],
    to: Annotated[str, typer.Option(
        "--to", show_default=False, autocompletion=complete_model,
        help="The registered model to grow into (e.g. "
        "semi-drdnet, rdmc): the same architecture, as wide and deep or more.")],
    out: Annotated[Path, typer.Option(
        "--output", "--out", "-o", show_default=False, callback=output_not_an_option,
        help="Weights file to write (.safetensors).")],
    seed: Annotated[int, typer.Option(
        min=0, max=SEED_MAX, help="Seed of the new weights' initialisation.")] = 0,
    calib: Annotated[str | None, typer.Option(
        "--calib", show_default=False, metavar="DIR",
        help="Photos whose rainy crops set the new channels' BatchNorm statistics "
             "(default: procedural scenes; none: leave them at 0 and 1).")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing output file.")] = False,
    threads: Annotated[int | None, typer.Option(
        min=1, show_default=False,
        help="CPU threads (default: PyTorch's, the physical cores).")] = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress bar; only the result (and warnings).")] = False,
) -> None:
    """Grow trained weights into a bigger model of their architecture, output unchanged
    (RDMC's added recursions: close): a start for derain train --weights FILE."""
    refuse_torchrun("grow")
    from .grow import GrowError, grow_file
    from .plain_progress import count_progress

    with _errors():
        with contextlib.ExitStack() as bar:  # the bar goes before the last lines
            done: Callable[[int], None] | None = None

            def on_step(k: int, total: int) -> None:  # known from the first call
                nonlocal done
                if done is None:
                    done = bar.enter_context(count_progress("growing", total, not quiet))
                done(k)

            try:
                r = grow_file(source, to, out, seed=seed, overwrite=overwrite,
                              calibration=calib, on_step=on_step, threads=threads)
            except GrowError as e:
                raise _usage_error(str(e)) from None
        how = ("the same output" if r.exact else
               "not the same output: RDMC's added recursion reuses its weights")
        _err.print(f"{r.source} ({r.source_params / 1e6:.2f} M parameters) grown into "
                   f"{r.target} ({r.target_params / 1e6:.2f} M) -> "
                   f"{terminal_text(str(r.weights))}\n"
                   f"{how}: max |difference| {r.max_abs_diff:.1e}, agreement "
                   f"{r.agreement_db:.1f} dB on a probe image (fp32)")


def _usage_error(msg: str) -> Exception:
    from .train import TrainError

    return TrainError(msg)  # an option: every rank's alike (TrainError's default)


def eval_cmd(
    data_arg: Annotated[Path | None, typer.Argument(
        metavar="DATA", help="Folder of rainy/clean pairs (or --data).")] = None,
    data_opt: Annotated[Path | None, typer.Option(
        "--data", help="Folder of rainy/clean pairs.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", autocompletion=complete_eval_model,
        help="Registered model, or 'identity' to score the rainy input. "
                              f"\\[default: {DEFAULT_MODEL_NAME}]")] =
    None,
    weights: Annotated[Path | None, typer.Option(
        callback=weights_file_option, help="Weights file to evaluate.")] = None,
    save: Annotated[Path | None, typer.Option(
        help="Save derained outputs (PNG) here, with scores.csv unless --csv.")] = None,
    report: Annotated[str | None, typer.Option(  # (str: a trailing / is kept, and refused)
        metavar="PATH",
        help="Write an HTML report here, its thumbnails in STEM_files/ beside it (move them "
             "together), with its CSV beside it (STEM.csv) unless --csv or --save (then "
             "scores.csv in --save's folder).")] = None,
    csv_path: Annotated[str | None, typer.Option(
        "--csv", metavar="PATH", help="Per-image CSV \\[default: STEM.csv beside --report, "
                                      "or scores.csv in --save's folder; none without "
                                      "either].")] = None,
    rainy_dir: Annotated[str | None, typer.Option(help="Rainy subfolder.")] = None,
    clean_dir: Annotated[str | None, typer.Option(help="Clean subfolder.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N pairs.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    tile: Annotated[int | None, typer.Option(help="Tile size (0: whole image).")] = None,
    precision: Annotated[str, typer.Option(
        metavar="auto|fp32|fp16|bf16|int8", help="As for deraining (fp32: the figures the "
        "README quotes).")] = "auto",
    backend: Annotated[str, typer.Option(metavar="auto|torch|onnx",
                                         help="As for deraining.")] = "auto",
    threads: Annotated[int | None, typer.Option(
        min=1, show_default=False, help="CPU threads (default: one per physical core).")
    ] = None,
    ensemble: Annotated[int, typer.Option(
        metavar="N", help="Average N passes over mirrored copies (1, 2 or 4), as derain "
                          "--ensemble does.")] = 1,
    rain_angle: Annotated[str, typer.Option(
        "--rain-angle", callback=parse_rain_angle, metavar="DEG|auto",
        help="Turn the rain upright from this slant (-90 to 90), or auto: each image's own, "
             "as derain --rain-angle does; the per-image scores say each turn.")] = "0",
    strength: Annotated[float, typer.Option(
        "--strength", metavar="S", callback=check_strength,
        help="Score part of the rain removal (0 to 1), as derain --strength applies it.")
    ] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", is_eager=True, callback=_owe_eval_json,
                                          help="Print the result as JSON.")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace existing files of --save, --report and --csv.")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress bar; only the result (and warnings).")] = False,
) -> None:
    """PSNR/SSIM (Y channel, 8-bit outputs) of a model on paired images."""
    from .evaluate import EvalInterrupted, evaluate
    from .plain_progress import count_progress

    if data_arg is None and data_opt is None:
        raise typer.BadParameter("give the pairs folder: derain eval DATA or --data DATA")
    if data_arg is not None and data_opt is not None:
        raise typer.BadParameter("give the pairs folder once: DATA or --data DATA, not both")
    data = data_arg or data_opt
    if model == "identity" and weights is not None:  # was "unknown model 'identity'"
        raise typer.BadParameter("-m identity scores the rainy photos themselves; it takes "
                                 "no --weights")
    with _errors(), _error_as_json(as_json):
        refused = torchrun_refusal("eval")  # (inside: --json answers it, as README says)
        if refused is not None:
            from .errors import OptionError

            raise OptionError(refused)
        if weights is not None:
            from .enhancer import Derainer

            target: object = Derainer(model=model, weights=weights, device=device, tile=tile,
                                      precision=precision, backend=backend, threads=threads,
                                      ensemble=ensemble, rain_angle=rain_angle,
                                      strength=strength)
        else:
            from .enhancer import DEFAULT_MODEL

            target = model or DEFAULT_MODEL
        engine = {} if weights is not None else dict(  # the Derainer above has them
            device=device, tile=tile, precision=precision, backend=backend, threads=threads,
            ensemble=ensemble, rain_angle=rain_angle, strength=strength)
        bar = contextlib.ExitStack()  # pairs scored: a bar, or a line a minute in a log
        done: Callable[[int], None] = lambda k: None  # noqa: E731 (a long set was silent)

        def on_start(total: int) -> None:  # shown from the first pair's start (an audit)
            nonlocal done
            done = bar.enter_context(count_progress("pairs", total, not as_json and not quiet))

        try:
            with bar:
                res = evaluate(target, data, save_dir=save, report=report,
                               csv_path=csv_path, rainy_dir=rainy_dir, clean_dir=clean_dir,
                               limit=limit, overwrite=overwrite, on_start=on_start,
                               on_image=lambda k, total, score: done(k), **engine)
        except EvalInterrupted as e:
            got = e.result
            files = " and ".join(str(p) for p in (got.csv_path, got.report_path) if p)
            _err.print(f"\ninterrupted after {got.count} of {e.total} pairs; their scores "
                       f"(mean PSNR-Y {got.psnr_y:.2f} dB over those) "
                       + (f"are in {files}; the same command with --overwrite scores them "
                          "all" if files else "are in the JSON" if as_json else
                          "are not kept (--csv FILE keeps them)"))
            if as_json:  # as the main command's summary says what was done (an audit)
                _echo_json({**got.to_dict(), "interrupted": True, "error": None})
            e.reported = True  # type: ignore[attr-defined]
            raise
        if as_json:  # the keys of an interrupted run's too
            _echo_json({**res.to_dict(), "interrupted": False, "error": None})
        else:
            typer.echo(terminal_text(res.summary()))  # (names from files: escaped)
            if res.csv_path:
                typer.echo(f"per-image scores: {res.csv_path}")
            if res.report_path:
                typer.echo(f"report: {res.report_path}")


def synth_cmd(
    clean: Annotated[Path, typer.Argument(
        metavar="CLEAN", show_default=False, help="Folder of clean photos.")],
    out_arg: Annotated[Path | None, typer.Argument(
        metavar="OUT", show_default=False, help="Output folder, as -o.")] = None,
    out: Annotated[Path | None, typer.Option(
        "-o", "--output", "--out", show_default=False, callback=output_not_an_option,
        help="Output folder (rainy/ + clean/).")] = None,
    preset: Annotated[str, typer.Option(help=PRESET_HELP)] = "mixed",
    count: Annotated[int | None, typer.Option(
        min=1, help="Number of pairs (default: one each).")] = None,
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Random seed.")] = 0,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace same-named pairs in an output that already holds some.")
    ] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress bar; only the last line (and warnings).")] = False,
) -> None:
    """Write synthetic rainy/clean pairs from clean photos."""
    refuse_torchrun("synth")
    from .evaluate import synth_pairs
    from .plain_progress import count_progress

    if out is not None and out_arg is not None and out != out_arg:
        say_error(f"two outputs given ({out_arg} and -o {out}); give one")
        raise typer.Exit(2)
    out = out or out_arg
    if out is None:
        say_error("no output folder: derain synth CLEAN PAIRS_DIR, or -o PAIRS_DIR")
        raise typer.Exit(2)
    with _errors():
        with contextlib.ExitStack() as bar:  # the bar goes before the last line
            done: Callable[..., None] | None = None
            made = 0

            def on_pair(k: int, total: int) -> None:  # the total is known at the first
                nonlocal done, made
                if done is None:
                    done = bar.enter_context(count_progress("pairs", total, not quiet))
                made = k
                done(k, total)  # one photo fewer for each unreadable one

            try:
                n = synth_pairs(clean, out, preset=preset, count=count, seed=seed,
                                overwrite=overwrite, on_image=on_pair)
            except KeyboardInterrupt as e:
                bar.close()
                _err.print(f"\ninterrupted after {made} pair{'s' if made != 1 else ''}, each "
                           "whole; the same command with --overwrite writes them again, the "
                           "same pairs, and the rest" if made else
                           "\ninterrupted before the first pair was written")
                e.reported = True  # type: ignore[attr-defined]
                raise
        typer.echo(f"wrote {n} pair{'s' if n != 1 else ''} to {out}/rainy and {out}/clean")
