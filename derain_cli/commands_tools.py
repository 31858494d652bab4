"""The ``derain export`` and ``derain bench`` commands: thin Typer layers over
``export.export_onnx`` / ``quantize.build_int8`` and ``bench.bench_main``, kept out of
those library modules so that using them (the ONNX backend exports through ``export``)
never imports Typer."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer

from .cli import (
    attach_logging,
    complete_model,
    debugging,
    detach_logging,
    output_not_an_option,
    refuse_torchrun,
    say_error,
    weights_file_option,
)
from .fileio import FolderInUse, hold_files, remove_empty_folders
from .terminal import DerainConsole
from .tool_defaults import (  # torch-free: bench, export and quantize load PyTorch (their
    CALIB_COUNT,  # --help and completion took 4 s: an audit), imported in the commands
    DEFAULT_KEEP_FP32,
    DEFAULT_OPSET,
    DEFAULT_VARIANTS,
    EXTRA_VARIANTS,
    HELD_OUT_COUNT,
    MIN_OPSET,
)


@contextlib.contextmanager
def _warnings_said() -> Iterator[None]:
    """The library's warnings as ``warning: ...`` lines on stderr, as the main command says
    them (export's "keeping N convolutions in fp32 keeps all" came out bare)."""
    console = DerainConsole(stderr=True, highlight=False, soft_wrap=True, markup=False)
    saved = attach_logging(console, debugging(), quiet=False)
    try:
        yield
    finally:
        detach_logging(saved)


def export_cmd(
    output_arg: Annotated[str | None, typer.Argument(
        metavar="OUTPUT", show_default=False,
        help="Output .onnx file, as -o (default: MODEL.onnx, or the weights file's name; "
             ".int8.onnx with --int8).")
    ] = None,
    output: Annotated[str | None, typer.Option(
        "-o", "--output", "--out", show_default=False, callback=output_not_an_option,
        help="Output .onnx file (.onnx is appended when missing; missing folders are "
             "created), or a folder to write MODEL.onnx in (existing, or ending in /). "
             "Semi-DRDNet also writes <stem>.stats.onnx next to it.")
    ] = None,
    model: Annotated[str | None, typer.Option(
        "-m", "--model", show_default=False, autocompletion=complete_model,
        help="Registered model (default: the default model).")] = None,
    weights: Annotated[Path | None, typer.Option(
        "--weights", callback=weights_file_option, show_default=False,
        help="Weights file of one's own instead of the published weights.")] = None,
    opset: Annotated[int, typer.Option(
        "--opset", help=f"ONNX opset, {MIN_OPSET} to the newest PyTorch's exporter knows "
                        "(20 for torch 2.13).")] = DEFAULT_OPSET,
    random_init: Annotated[bool, typer.Option(
        "--random-init", help="Export a randomly initialised network (no weights needed).")
    ] = False,
    int8: Annotated[Path | None, typer.Option(
        "--int8", exists=True, file_okay=False, show_default=False, metavar="CLEAN_DIR",
        help="Write a static int8 graph instead, calibrated on synthetic rain over these "
             f"clean photos ({CALIB_COUNT + HELD_OUT_COUNT} or more readable ones, "
             f"{CALIB_COUNT} with "
             "--keep-fp32 0; unreadable ones are skipped; takes minutes).")] = None,
    keep_fp32: Annotated[int | None, typer.Option(
        "--keep-fp32", min=0, show_default=False,
        help=f"With --int8: convolutions left in fp32, the most sensitive first (default "
             f"{DEFAULT_KEEP_FP32}).")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace graphs that exist already (default: refuse).")] = False,
    threads: Annotated[int | None, typer.Option(
        "--threads", min=1, show_default=False,
        help="CPU threads for tracing and for ranking convolutions with --int8 (default: "
             "PyTorch's and ONNX Runtime's own choice).")] = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress bar; only the result (and warnings).")] = False,
) -> None:
    """Export a model to ONNX (fp32, or int8 with --int8) for ONNX Runtime & co.

    Inputs: float32 NCHW RGB in [0, 1], any batch size; the output is not clipped.
    Height and width must be multiples of the graph's derain.size_multiple metadata
    (16 for RDMC, 1 for Semi-DRDNet): pad (reflect) to it, crop the output back,
    as derain's own tiler does; other sizes fail in ONNX Runtime.
    """
    refuse_torchrun("export")
    from .data import DataError
    from .enhancer import DEFAULT_MODEL
    from .export import (
        check_opset,
        check_writable,
        export_onnx,
        planned_outputs,
        resolve_output,
        stats_path,
    )
    from .hub import WeightsUnavailable
    from .models import UnknownModelError, build_model
    from .weights import WeightsError, load_pretrained, model_from_file

    if output is not None and output_arg is not None and resolve_output(
            output, model, weights, int8 is not None) != resolve_output(
            output_arg, model, weights, int8 is not None):  # `a.onnx -o a` is one output
        say_error(f"two outputs given ({output_arg} and -o {output}); give one")
        raise typer.Exit(2)
    usage = None
    if keep_fp32 is not None and int8 is None:
        usage = "--keep-fp32 is for int8 graphs; add --int8 CLEAN_DIR or leave it out"
    elif random_init and weights is not None:
        usage = "--random-init and --weights contradict each other; give one"
    if usage is not None:
        say_error(usage)
        raise typer.Exit(2)
    try:
        check_opset(opset)
    except ValueError as e:
        say_error(str(e))
        raise typer.Exit(2) from None
    given = output if output is not None else output_arg
    if given is not None and not given.strip():  # `-o ""` wrote the default name
        say_error("the output name is empty; name a file (model.onnx) or leave it out")
        raise typer.Exit(2)
    target = resolve_output(given, model, weights, int8 is not None)
    if given is not None and target.name.lower().endswith(".stats.onnx"):  # it became
        # a.stats.stats.onnx's partner
        say_error(f"{target}: a name ending in .stats.onnx is what derain reads as a "
                  "statistics graph beside another; name the graph without it")
        raise typer.Exit(2)
    if threads:  # before folders are made: a Ctrl-C in this import left them (a review)
        import torch

        torch.set_num_threads(threads)
    try:  # an -o that cannot be written is an option checked up front: exit 2, as
        made = check_writable(target)  # bench --json, eval --save, synth and distill say
    except OSError as e:
        say_error(str(e))
        raise typer.Exit(2) from None
    with _warnings_said(), contextlib.ExitStack() as held:
        try:
            if weights is not None:
                net = model_from_file(weights, model)
            elif random_init:
                net = build_model(model or DEFAULT_MODEL)
            else:
                net = load_pretrained(model or DEFAULT_MODEL, quiet=True)
            # another export to this name paired its graph with this one's statistics
            # graph, or replaced it in silence (an audit): held, and checked again
            held.enter_context(hold_files([target]))
            _check_held(planned_outputs(net, target), stats_path(target), overwrite)
            if int8 is None:
                paths = export_onnx(net, target, opset=opset)
            else:
                from .plain_progress import count_progress
                from .quantize import build_int8

                with contextlib.ExitStack() as bar:  # minutes in silence (an audit)
                    shown: Callable[[int], None] | None = None

                    def on_step(done: int, total: int) -> None:
                        nonlocal shown
                        if shown is None:
                            shown = bar.enter_context(
                                count_progress("int8 steps", total, not quiet))
                        shown(done)

                    paths, record = build_int8(
                        net, int8, target, opset=opset, threads=threads, on_step=on_step,
                        keep_fp32=DEFAULT_KEEP_FP32 if keep_fp32 is None else keep_fp32)
                typer.echo(json.dumps(record), err=True)
        except KeyboardInterrupt:  # Typer's own handling said nothing (exit 130 in silence)
            remove_empty_folders(made)
            typer.echo("\ninterrupted; no graph was left half-written: the files there "
                       "are the earlier ones or a whole new set", err=True)
            raise typer.Exit(130) from None
        except BaseException as e:
            remove_empty_folders(made)
            if isinstance(e, typer.Exit) or debugging():  # `--debug` printed no traceback (audit)
                raise
            if isinstance(e, (UnknownModelError, DataError, FolderInUse)):  # a wrong name,
                say_error(str(e))  # an unusable folder, another export writing there
                raise typer.Exit(2) from None
            if isinstance(e, (WeightsError, WeightsUnavailable, NotImplementedError, OSError,
                              ValueError)):
                hint = ("; `derain export --random-init` exports the untrained network" if
                        isinstance(e, WeightsError) and "no pretrained weights" in str(e) else "")
                named = (f"{target}: " if isinstance(e, OSError) and not isinstance(
                    e, WeightsError | WeightsUnavailable) and e.filename is None else "")
                say_error(named + str(e) + hint)  # a full disk named no file (an audit)
                raise typer.Exit(1) from None
            raise
    for p in paths:
        typer.echo(str(p))


def _check_held(planned: list[Path], stats: Path, overwrite: bool) -> None:
    """Refuse (exit 2) an output in the way: a folder where a graph goes, or without
    ``overwrite`` a graph there already; a statistics graph beside the target counts even
    for a network without one (the runner would pair it with the new graph, so it goes)."""
    from .export import is_stats_graph

    held = [f for f in dict.fromkeys([*planned, stats]) if f.exists() or f.is_symlink()]
    for f in held:
        if f.is_dir():
            say_error(f"{f} is a folder; choose another output")
            raise typer.Exit(2)
        if f not in planned and not is_stats_graph(f):  # the user's own file, so named
            say_error(f"{f} is in the way: derain would read it as the new graph's "
                      "statistics graph, and it is not one derain wrote; move it or choose "
                      "another output")
            raise typer.Exit(2)
    if held and not overwrite:  # every run's weights are model.safetensors: model.onnx
        what = "" if held[0] in planned else (" (a statistics graph derain would pair with "
                                              "the new graph: --overwrite removes it)")
        say_error(f"{held[0]} exists{what}; pass --overwrite to replace it, or choose "
                  "another output")
        raise typer.Exit(2)


def _parse_size(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"{value!r}: use WIDTHxHEIGHT, e.g. 1000x1000",
                                 param_hint="'--size'") from None
    if w < 16 or h < 16:
        raise typer.BadParameter("the image must be at least 16x16", param_hint="'--size'")
    return h, w


def bench_cmd(
    model: Annotated[list[str] | None, typer.Option(
        "-m", "--model", show_default=False, autocompletion=complete_model,
        help="Model to measure (repeatable; default: every registered model).")] = None,
    megapixels: Annotated[float, typer.Option(
        "--megapixels", min=0.001, help="Test image size (a square).")] = 1.0,
    size: Annotated[str | None, typer.Option(
        "--size", metavar="WxH", show_default=False,
        help="Test image size, overrides --megapixels.")] = None,
    tile: Annotated[int | None, typer.Option(
        "--tile", min=0, show_default=False,
        help="Tile size (default: the device's default; 0 = untiled).")] = None,
    overlap: Annotated[int | None, typer.Option(
        "--tile-overlap", min=0, show_default=False,
        help="Tile overlap in pixels (default: each model's own, as derain uses).")] = None,
    variants: Annotated[str, typer.Option(
        "--variants", show_default=False,
        help="Comma-separated variants (default: all of " + ", ".join(DEFAULT_VARIANTS)
             + "; on request only: " + ", ".join(EXTRA_VARIANTS) + "; bf16_compile takes "
             "minutes to compile).")
    ] = ",".join(DEFAULT_VARIANTS),
    device: Annotated[str, typer.Option(
        "--device", help="auto (CPU, and CUDA when present), or e.g. cpu, cuda, cpu,cuda.")
    ] = "auto",
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed runs (best).")] = 1,
    threads: Annotated[int | None, typer.Option(
        "--threads", min=1, show_default=False,
        help="CPU threads (default: PyTorch's own choice, the physical cores).")] = None,
    force_bf16: Annotated[bool, typer.Option(
        "--force-bf16", help="Run bf16 even on CPUs without native bf16 (emulated).")] = False,
    rss: Annotated[bool, typer.Option(
        "--rss", help="Also measure the default model's peak RSS for a 24 MP photo (slow; "
        "-m and --size do not apply to it).")] = False,
    peak_side: Annotated[int, typer.Option(
        "--peak-side", min=8, help="Feature-map side of the reference conv timing.")] = 512,
    flop_side: Annotated[int, typer.Option(
        "--flop-side", min=16, help="Input side FLOPs are counted on.")] = 128,
    json_path: Annotated[Path | None, typer.Option(
        "--json", metavar="FILE", show_default=False,
        help="Also write the results as JSON ('-': JSON on stdout instead of Markdown).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace the --json file if it exists (default: refuse).")] = False,
) -> None:
    """Measure inference speed, FLOP efficiency, bf16 quality and memory on this machine."""
    refuse_torchrun("bench")
    from .bench import BenchError, BenchInterrupted, bench_main
    from .export import check_writable
    if json_path is not None and str(json_path).startswith("-") and str(json_path) != "-":
        # --json takes a file: `--json --rss` ran without --rss and wrote a file "--rss"
        say_error(f"--json takes a file name (or '-' for stdout), not the option "
                   f"{json_path}")
        raise typer.Exit(2)
    if json_path is not None and not json_path.parent.is_dir():  # known now, not after
        say_error(f"--json {json_path}: no folder {json_path.parent}")
        raise typer.Exit(2)
    if json_path is not None and json_path.is_dir():  # was found after measuring
        say_error(f"--json {json_path} is a folder; name a file in it")
        raise typer.Exit(2)
    if json_path is not None and str(json_path) != "-" and not overwrite and (
            json_path.exists() or json_path.is_symlink()):  # replaced in silence, a file
        # of the user's or an earlier bench's (an audit), where every other command asks
        say_error(f"--json {json_path} exists; pass --overwrite to replace it, or name "
                  "another file")
        raise typer.Exit(2)
    if json_path is not None and str(json_path) != "-":
        try:  # a file written there for real: the JSON was lost after every measurement
            check_writable(json_path)
        except OSError as e:
            say_error(f"--json {e}")
            raise typer.Exit(2) from None
    try:
        with _warnings_said():
            bench_main(
                model or None, megapixels=megapixels, size=_parse_size(size), tile=tile,
                overlap=overlap, variants=[v.strip() for v in variants.split(",") if v.strip()],
                devices=device, repeats=repeats, threads=threads, force_bf16=force_bf16,
                rss=rss, flop_side=flop_side, peak_side=peak_side, json_path=json_path,
                echo=typer.echo, on_row=lambda what: typer.echo(what + " ...", err=True),
            )
    except BenchInterrupted as e:  # Typer's own handling said nothing and kept nothing
        kept = f" (also in {json_path})" if json_path is not None and str(
            json_path) != "-" and e.result.rows else ""
        n = len(e.result.rows)
        typer.echo(f"\ninterrupted; the {n} row{'s' if n != 1 else ''} measured before "
                   f"{'are' if n != 1 else 'is'} above{kept}", err=True)
        raise typer.Exit(130) from None
    except BenchError as e:
        if debugging():
            raise
        say_error(str(e))
        raise typer.Exit(2) from None
    except (ValueError, RuntimeError) as e:
        if debugging():
            raise
        say_error(str(e))
        raise typer.Exit(1) from None
