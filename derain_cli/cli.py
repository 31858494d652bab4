"""The ``derain`` command.

``derain PHOTO_OR_FOLDER ...`` derains with no subcommand word; ``models``, ``download``,
``train``, ``finetune``, ``distill``, ``grow``, ``eval``, ``synth`` and the others sit beside
it (each loaded only when named). The first argument decides: a registered subcommand
name runs that subcommand, anything else (a path, a glob, an option) runs the main job.
So a folder named like a subcommand is addressed as ``./train``.

The work is done by :mod:`derain_cli.batch` and :class:`derain_cli.enhancer.Derainer`;
this module only parses, reports and maps outcomes to exit codes (0 all done, skips
included; 1 some file failed or a runtime error; 2 usage error). Heavy imports (torch,
OpenCV) happen inside the commands, so ``--help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib
import importlib.util
import json
import logging
import math
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from . import __version__
from .fileio import one_line_text, terminal_text
from .plain_progress import clock
from .terminal import (  # noqa: F401 - BROKEN_PIPE_STATUS: the subcommands' too
    BROKEN_PIPE_STATUS,
    DerainConsole,
    live_display,
    silence_stdout,
    stdout_gone,
)

try:  # typer >= 0.29 vendors click; older releases use the click package
    from typer._click import Command, Context, HelpFormatter
    from typer._click.exceptions import ClickException, NoSuchOption, UsageError
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import Command, Context, HelpFormatter  # type: ignore[no-redef]
    from click.exceptions import (  # type: ignore[no-redef]
        ClickException,
        NoSuchOption,
        UsageError,
    )

if TYPE_CHECKING:  # pragma: no cover
    from .batch import BatchOptions, FileResult, Job, Summary

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}

#: Subcommands defined in other modules, imported only when used (or listed by --help from
#: their source, without importing it). name -> (module, function).
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("derain_cli.commands_train", "train_cmd"),
    "finetune": ("derain_cli.commands_train", "finetune_cmd"),
    "distill": ("derain_cli.commands_train", "distill_cmd"),
    "grow": ("derain_cli.commands_train", "grow_cmd"),
    "eval": ("derain_cli.commands_train", "eval_cmd"),
    "synth": ("derain_cli.commands_train", "synth_cmd"),
    "export": ("derain_cli.commands_tools", "export_cmd"),
    "bench": ("derain_cli.commands_tools", "bench_cmd"),
}

DEFAULT_COMMAND = "run"


@dataclass
class _State:
    debug: bool = False
    #: the --json text a command asked for it owes if it stops before printing its own (the
    #: main job's summary, eval's result): one stopped in its first second (its modules
    #: loading) printed none (an audit); ``_main`` prints it (``owe_json``)
    json_owed: str | None = None
    #: the main job's warnings, kept for its --json summary (``_KeptWarnings``)
    kept_warnings: list[str] | None = None


_STATE = _State()


def debugging() -> bool:
    """Whether ``derain --debug`` asked for tracebacks (the training commands' errors too)."""
    return bool(_STATE.debug)


# --------------------------------------------------------------------------- small helpers
@functools.cache
def _module_source(module: str) -> ast.Module | None:
    try:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            return None
        return ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    except (ImportError, ValueError, OSError, SyntaxError):
        return None


def _module_constant(module: str, name: str, fallback: Any) -> Any:
    """A literal top-level constant read from a module's source without importing it
    (importing enhancer, images and tiling costs ``--help`` about 0.4 s on a 2-core CPU)."""
    tree = _module_source(module)
    for node in tree.body if tree else []:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else (
            node.target if isinstance(node, ast.AnnAssign) else None)
        if isinstance(target, ast.Name) and target.id == name and node.value is not None:
            with contextlib.suppress(ValueError):
                return ast.literal_eval(node.value)
    return fallback


def _function_doc(module: str, func: str) -> str | None:
    """The docstring of a top-level function, read from source; None if there is no such
    function (or no source)."""
    tree = _module_source(module)
    for node in tree.body if tree else []:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == func:
            return ast.get_docstring(node) or ""
    return None


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    if isinstance(e, KeyError) and type(e).__str__ is KeyError.__str__:
        text = text.strip("'\"")  # KeyError quotes its message
    return text.splitlines()[0] if text else type(e).__name__


def _stderr() -> Console:
    # markup off: a path such as x[/y]/p.png is text (it printed the wrong name, or failed
    # with a MarkupError after the work was done)
    return DerainConsole(stderr=True, highlight=False, soft_wrap=True, markup=False)


def weights_file_option(value: Path | None) -> Path | None:
    """``--weights FILE``: one that does not exist is refused, a model's name with a hint
    to pass it as -m (Click's "does not exist" alone: an audit); a folder is refused, a
    training run's named by its model (Click's "is a directory" left the user to guess:
    an audit)."""
    if value is not None and not value.exists():
        hint = (f"; {value} is a model's name: pass it as -m {value}"
                if str(value) in _registry_names() else "")
        raise typer.BadParameter(f"path '{value}' does not exist{hint}.")
    if value is not None and value.is_dir():
        model = value / "model.safetensors"
        raise typer.BadParameter(
            f"{value} is a folder; " + (f"its run's model is {model}" if model.is_file()
                                        else "give a weights file (.safetensors or .pt)"))
    return value


def say_error(message: str) -> None:
    """``error: message`` on stderr (the subcommands' usage errors), as :func:`print_error`."""
    print_error(_stderr(), message)


def print_error(console: Console, message: str, rank: int = 0) -> None:
    """``error: message`` on stderr, its control characters escaped (``terminal_text``),
    the library's asides for Python callers left out (``command_line_words``)."""
    prefix = f"[rank {rank}] " if rank else ""
    words = command_line_words(message)
    if _ERRORS_SAID:
        _ERRORS_SAID[-1].append(words)
    console.print(Text(f"{prefix}error: ", style="bold red") + Text(terminal_text(words)))


def _under_torchrun() -> bool:
    """Whether this process is one of several (WORLD_SIZE above 1: torchrun's)."""
    world = os.environ.get("WORLD_SIZE", "1").strip()
    return world.isdigit() and int(world) > 1


def torchrun_refusal(command: str) -> str | None:
    """Why ``command``, which runs as one process, cannot run here: started under torchrun
    (WORLD_SIZE above 1), every process did the whole work and their outputs got in each
    other's way (eval: two JSON documents; with --save one process refused as the other
    held the folder, and the other was stopped halfway: an audit). None: it can. The main
    job and train share their work between processes."""
    if not _under_torchrun():
        return None
    world = os.environ["WORLD_SIZE"].strip()
    return (f"derain {command} runs as one process, and WORLD_SIZE={world} says this is one "
            "of several (torchrun's): run it without torchrun, or unset WORLD_SIZE (the "
            "main job and train share their work between torchrun's processes)")


def refuse_torchrun(command: str) -> None:
    """Exit 2 where ``torchrun_refusal`` refuses ``command`` (said by rank 0 alone)."""
    why = torchrun_refusal(command)
    if why is not None:
        if os.environ.get("RANK", "0") == "0":
            print_error(_stderr(), why)
        raise typer.Exit(2)


#: lists that collect what :func:`print_error` says (``_errors_said``), innermost last
_ERRORS_SAID: list[list[str]] = []


@contextlib.contextmanager
def _errors_said() -> Iterator[list[str]]:
    """The error lines said while inside: the main job's ``--json`` names the error it
    stopped on (a run refused for its weights or device printed nothing on stdout)."""
    said: list[str] = []
    _ERRORS_SAID.append(said)
    try:
        yield said
    finally:  # this list itself (remove() compares by value: an empty one nested inside
        del _ERRORS_SAID[next(i for i, s in enumerate(_ERRORS_SAID) if s is said)]  # would go)


#: The library's words for its Python callers, beside the flags the CLI's users type:
#: " (overwrite=True in Python)", "; in Python, find_pairs(..., strict=False) uses ..."
_PYTHON_ASIDE = re.compile(r" \([^()]* in Python\)|; in Python, .*?\.(?=\s|$)")


def command_line_words(message: str) -> str:
    """``message`` without its asides for Python callers: `derain synth`'s refusal told a
    command-line user to pass "overwrite=True in Python" (an audit)."""
    return _PYTHON_ASIDE.sub(lambda m: "." if m.group().startswith(";") else "", message)


# --------------------------------------------------------------------------- the group
def _dashed_path(words: list[str], option: str | None) -> str | None:
    """The first of ``words`` that starts with the unknown ``option`` Click names and is a
    file or folder here: the user meant it as a photo (an option's value that happens to
    be such a file is not: a review)."""
    for w in words:
        if option and w.startswith(option) and w not in ("-", "--") and os.path.exists(w):
            return w
    return None


class _MainContext(typer.Context):
    """Context of the hidden default command: it shows as plain ``derain`` in usage lines."""

    @property
    def command_path(self) -> str:  # type: ignore[override]
        if self.parent is not None:
            return self.parent.command_path
        return super().command_path


class _DefaultCommand(TyperCommand):
    context_class = _MainContext

    def format_help(self, ctx: Context, formatter: HelpFormatter) -> None:
        parent = ctx.parent
        if parent is not None and isinstance(parent.command, DerainGroup):
            parent.command.format_help(parent, formatter)  # one help page for the main job
        else:  # pragma: no cover - the command is only used inside the group
            super().format_help(ctx, formatter)


class DerainGroup(TyperGroup):
    """A group whose first argument may be a path: anything that is not a subcommand name goes
    to the hidden default command. Subcommands from other modules load lazily."""

    #: options of the group itself, allowed before a subcommand name
    GROUP_FLAGS = frozenset({"--debug", "--help", "-h", "--version"})
    _HELP_FLAGS = frozenset({"--help", "-h", "--version"})

    def _lazy_names(self) -> list[str]:
        """Lazy subcommands whose module defines their function (checked in the source)."""
        return [n for n, (mod, func) in LAZY_COMMANDS.items()
                if n not in self.commands and _function_doc(mod, func) is not None]

    def is_command_name(self, name: str) -> bool:
        return name in self.commands or name in self._lazy_names()

    def list_commands(self, ctx: Context) -> list[str]:
        return [*self.commands, *self._lazy_names()]

    def shell_complete(self, ctx: Context, incomplete: str) -> list[Any]:
        """The first word: subcommand names, unless a file or folder here starts as typed:
        then none, and the shell completes the path (``derain ex`` means examples/ as
        often as export)."""
        if incomplete.startswith("-"):  # the group's options and the main job's, which
            # may come first (`derain --threads 1 photo.jpg`; they completed after a path
            # only: an audit)
            items = super().shell_complete(ctx, incomplete)
            main = self.get_command(ctx, DEFAULT_COMMAND)
            if main is not None:
                have = {item.value for item in items}
                items += [item for item in main.shell_complete(ctx, incomplete)
                          if item.value not in have]
            return items
        if incomplete and _path_starts(incomplete):
            return []
        from click.shell_completion import CompletionItem

        items = []  # help from the source: loading the commands imported PyTorch (2 s a Tab)
        for name in self.list_commands(ctx):
            if name == DEFAULT_COMMAND or not name.startswith(incomplete):
                continue
            cmd = self.commands.get(name)
            doc = (cmd.get_short_help_str() if cmd is not None
                   else (_function_doc(*LAZY_COMMANDS[name]) or "").split("\n")[0])
            items.append(CompletionItem(name, help=doc))
        return items

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        cmd = self.commands.get(cmd_name)
        if cmd is None and cmd_name in self._lazy_names():
            cmd = _load_lazy(cmd_name)
            self.commands[cmd_name] = cmd
        return cmd

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        _STATE.debug = False  # a fresh invocation (tests run many in one process)
        args = list(args)
        i = 0
        while i < len(args) and args[i] in self.GROUP_FLAGS:
            i += 1
        if i < len(args):
            if not self.is_command_name(args[i]) or args[i] == DEFAULT_COMMAND:
                # (the hidden main job's own name is a path: a folder named "run" was left
                # out of `derain run c.png` in silence, `derain run` said "no input": an
                # audit)
                args.insert(i, DEFAULT_COMMAND)
            elif args[i] != DEFAULT_COMMAND:
                # `derain eval ... --debug`: the group's flag, taken where users put it
                # (only the main job had its own; the others said "No such option")
                end = args.index("--") if "--" in args else len(args)
                if "--debug" in args[i + 1:end]:
                    args = ["--debug", *(a for k, a in enumerate(args)
                                         if not (i < k < end and a == "--debug"))]
        elif args and not self._HELP_FLAGS.intersection(args) and not ctx.resilient_parsing:
            args.append(DEFAULT_COMMAND)  # `derain --debug`: the main job says what is missing
            # (not while a shell completes `derain --debug gr`: subcommands come next)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: Context) -> Any:
        protected = getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", [])
        name = protected[0] if protected else None
        shadowed = bool(name and name != DEFAULT_COMMAND and os.path.exists(name))
        hint = (f"({name!r} is a subcommand here; to derain the file or folder named "
                f"{name!r}, write ./{name})")
        words = [*protected, *ctx.args]
        if shadowed and self._meant_the_subcommand(ctx, name, words):
            shadowed = False  # `derain train --steps -1` beside a folder train/: the hint
            # followed every refusal of the subcommand's own options (an audit)
        try:
            return super().invoke(ctx)
        except UsageError as e:
            if shadowed and e.ctx is not None and e.ctx.command is not self:
                e.message += "\n" + hint
            dashed = _dashed_path(words[:words.index("--")] if "--" in words else words,
                                  getattr(e, "option_name", None)) if isinstance(
                                      e, NoSuchOption) else None
            if dashed is not None:  # `derain -dash.jpg` said "No such option: -d" alone
                e.message += (f"\n(a file named {dashed!r} is here: to name it, write "
                              f"./{dashed})")  # (an audit)
            _pay_json_owed_as_error(e.format_message())
            raise
        except typer.Exit as e:
            if shadowed and e.exit_code == 2:
                _stderr().print(Text(hint, style="dim"))
            raise

    def _meant_the_subcommand(self, ctx: Context, name: str, words: list[str]) -> bool:
        """Whether ``words`` use an option of subcommand ``name`` that the main job lacks:
        then it was meant, whatever file or folder of that name is here."""
        def options(command: Any) -> set[str]:
            return {o for p in getattr(command, "params", ()) for o in (*p.opts,
                                                                       *p.secondary_opts)}

        try:
            own = options(self.get_command(ctx, name)) - options(
                self.get_command(ctx, DEFAULT_COMMAND))
        except Exception:  # noqa: BLE001 - a hint, never a second error
            return False
        end = words.index("--") if "--" in words else len(words)
        return any(w.split("=", 1)[0] in own for w in words[1:end])

    def format_help(self, ctx: Context, formatter: HelpFormatter) -> None:
        run = self.commands[DEFAULT_COMMAND]
        if self.rich_markup_mode is None:  # pragma: no cover - rich is a dependency
            return super().format_help(ctx, formatter)
        from typer import rich_utils

        run_ctx = run.make_context(
            DEFAULT_COMMAND, [], parent=ctx, resilient_parsing=True
        )
        rich_utils.rich_format_help(obj=run, ctx=run_ctx, markup_mode=self.rich_markup_mode)
        console = DerainConsole(highlight=False)
        rows: list[tuple[str, str]] = []
        for name in self.list_commands(ctx):
            cmd = self.commands.get(name)
            if cmd is not None:
                if cmd.hidden:
                    continue
                text = cmd.short_help or cmd.help or ""
            else:
                mod, func = LAZY_COMMANDS[name]
                text = _function_doc(mod, func) or ""
            rows.append((name, text.strip().split("\n\n")[0].replace("\n", " ")))
        if rows:
            table = Table(show_header=False, box=None, padding=(0, 1), expand=True)
            table.add_column(style="bold cyan", no_wrap=True)
            table.add_column(ratio=10)
            for name, text in rows:
                table.add_row(name, text)
            console.print(Panel(table, title="Commands", title_align="left", border_style="dim"))
        if self.epilog:
            console.print(Padding(Text(self.epilog.strip(), style="dim"), (0, 1, 1, 1)))
        return None


def _load_lazy(name: str) -> Command:
    module, func_name = LAZY_COMMANDS[name]
    try:
        func = getattr(importlib.import_module(module), func_name)
    except Exception as e:
        if _STATE.debug:
            raise
        raise ClickException(
            f"the {name!r} command could not be loaded ({type(e).__name__}: {_one_line(e)})"
        ) from e
    sub = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    sub.command(name, context_settings=CONTEXT_SETTINGS)(func)
    return typer.main.get_command(sub)


# --------------------------------------------------------------------------- app
EPILOG = (
    "A subcommand comes first, after --debug at most (derain models --json, derain --debug "
    "eval ...; --debug may also come later); a subcommand's name later on is a path. A "
    "file or folder named like a subcommand is addressed as a path: derain ./train. Run "
    "under torchrun "
    "(python -m torch.distributed.run --nproc-per-node N -m derain_cli FOLDER) to split a "
    "folder over N processes/GPUs. Exit status: 0 all done (skipped files count as done), "
    "1 a file failed or an error occurred, 2 usage error, 130 interrupted (Ctrl-C; finished "
    "files stay, rerun to resume; SIGTERM and SIGHUP stop the same way, with 143 and 129), "
    "141 when the reader of its output went away (derain ... | head)."
)


def _plain_help_types() -> None:
    """Typer >= 0.2x prints each parameter's Python type in help (``--json <bool>``,
    ``IMAGE_OR_DIR <list[str]>``), which reads as if a flag took a value (``--json true``
    then derained a file named "true"). Flags and arguments show no type here; options that
    take a value keep theirs, a repeatable one as its element (``--pairs <path>``, not
    ``<list[Path]>``). Typer also writes a required argument as ``{CLEAN}`` on the usage
    line; it is the conventional bare ``CLEAN`` here. Guarded: older or newer Typer
    versions are left alone."""
    try:
        from typer.core import TyperArgument, TyperOption
    except ImportError:  # pragma: no cover
        return
    opt = getattr(TyperOption, "display_type_rich", None)
    if opt is not None and not getattr(opt, "_derain_plain", False):
        def option_type(self: Any, ctx: Any) -> str | None:
            if getattr(self, "is_flag", False):
                return None
            shown = opt(self, ctx)
            if isinstance(shown, str) and shown.startswith("<list[") and shown.endswith("]>"):
                shown = f"<{shown[6:-2].lower()}>"  # repeat the option for more
            return shown

        option_type._derain_plain = True  # type: ignore[attr-defined]
        TyperOption.display_type_rich = option_type  # type: ignore[method-assign]
    arg = getattr(TyperArgument, "display_type_rich", None)
    if arg is not None and not getattr(arg, "_derain_plain", False):
        def argument_type(self: Any, ctx: Any) -> str | None:
            return None  # the argument's own name column says what it is

        argument_type._derain_plain = True  # type: ignore[attr-defined]
        TyperArgument.display_type_rich = argument_type  # type: ignore[method-assign]
    usage = getattr(TyperArgument, "_usage_display_name", None)
    if usage is not None and not getattr(usage, "_derain_plain", False):
        def usage_name(self: Any) -> str:
            shown = usage(self)
            if isinstance(shown, str) and shown.startswith("{") and "}" in shown:
                shown = shown[1:].replace("}", "", 1)
            return shown

        usage_name._derain_plain = True  # type: ignore[attr-defined]
        TyperArgument._usage_display_name = usage_name  # type: ignore[method-assign]


_plain_help_types()

app = typer.Typer(
    cls=DerainGroup,
    name="derain",
    help="Remove rain streaks from photos.",
    epilog=EPILOG,
    context_settings=CONTEXT_SETTINGS,
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
)


def _version_callback(value: bool) -> None:
    if not value:
        return
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:  # pragma: no cover
        torch_version = "not installed"
    py = ".".join(map(str, sys.version_info[:3]))
    typer.echo(f"derain {__version__} (torch {torch_version}, Python {py})")
    raise typer.Exit()


def _debug_callback(value: bool) -> bool:
    if value:
        _STATE.debug = True
    return value


VersionOpt = Annotated[
    bool,
    typer.Option("--version", callback=_version_callback, is_eager=True,
                 help="Show the version and exit.", rich_help_panel="Feedback"),
]
DebugOpt = Annotated[
    bool,
    typer.Option("--debug", callback=_debug_callback,
                 help="Show Python tracebacks and debug logs.", rich_help_panel="Feedback"),
]


@app.callback()
def _root(version: VersionOpt = False, debug: DebugOpt = False) -> None:
    """Remove rain streaks from photos."""


# --------------------------------------------------------------------------- run (default)
class OutFormat(str, Enum):
    png = "png"
    jpg = "jpg"
    jpeg = "jpeg"
    webp = "webp"
    tiff = "tiff"
    tif = "tif"
    bmp = "bmp"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"
    int8 = "int8"


class Backend(str, Enum):
    auto = "auto"
    torch = "torch"
    onnx = "onnx"


def _path_starts(prefix: str) -> bool:
    """Whether some file or folder's path starts with ``prefix`` (shell completion)."""
    import glob

    return bool(glob.glob(glob.escape(os.path.expanduser(prefix)) + "*"))


def complete_model(incomplete: str) -> list[str]:
    """Model names for shell completion of ``-m``: the registry's (``derain models``)."""
    return [name for name in _registry_names() if name.startswith(incomplete)]


def complete_model_or_file(incomplete: str) -> list[str]:
    """A model name or a weights file (distill's teacher, grow's source): the names, unless
    a file or folder here starts as typed (then none: the shell completes the path)."""
    return [] if incomplete and _path_starts(incomplete) else complete_model(incomplete)


def complete_published(incomplete: str) -> list[str]:
    """``derain download``: the models with published weights (the manifest's)."""
    from .manifest import load_manifest

    return [name for name in load_manifest() if name.startswith(incomplete)]


def complete_eval_model(incomplete: str) -> list[str]:
    """``derain eval -m``: the registry's names and ``identity`` (the rainy input itself)."""
    return complete_model(incomplete) + (["identity"] if "identity".startswith(incomplete)
                                         else [])


def _registry_names() -> list[str]:
    """The names of ``derain_cli.models.MODELS`` (the registry imports no PyTorch)."""
    from .models import MODELS

    return list(MODELS)


def _check_model(value: str | None) -> str | None:
    if value is None:
        return None
    from .manifest import load_manifest

    if value in load_manifest():  # a shipped model (one the registry lacks is refused when
        return value              # the model loads, as unknown)
    from .models import MODELS, UnknownModelError

    if value not in MODELS:
        raise typer.BadParameter(str(UnknownModelError(value)))
    return value


def _check_device(value: str) -> str:
    v = value.strip().lower()
    ok = v in ("auto", "cpu", "cuda", "mps") or (
        v.startswith("cuda:") and v[5:].isdigit()
    )
    if not ok:
        raise typer.BadParameter(f"{value!r}: use auto, cpu, cuda, cuda:N or mps")
    return v


def _check_ensemble(value: int) -> int:
    from .ensemble import SIZES, SIZES_TEXT

    if value not in SIZES:
        raise typer.BadParameter(f"{value}: use {SIZES_TEXT} (passes averaged)")
    return value


def check_strength(value: float) -> float:
    """--strength: 0 to 1 (a callback of derain and derain eval)."""
    if not 0.0 <= value <= 1.0:  # NaN too: click's range said "less than or equal to 1"
        raise typer.BadParameter(f"{value:g}: use a number from 0 (the photo as it is) to 1 "
                                 "(all of the rain removal)")
    return value


def _check_stats_megapixels(value: float) -> float:
    if not (math.isfinite(value) and value >= 0):  # nan: click said "greater than or equal
        # to 0"; inf passed it and failed in the library's words (an audit)
        raise typer.BadParameter(f"{value:g}: use megapixels, 0 or more (0: every pixel)")
    return value


def parse_rain_angle(value: str) -> float | str:
    """``--rain-angle``'s callback (derain, derain eval): degrees or auto, or a usage error."""
    from .slant import check_setting

    setting: float | str = value  # a number, or the word check_setting knows
    with contextlib.suppress(ValueError):
        setting = float(value)
    try:
        return check_setting(setting)
    except ValueError:
        raise typer.BadParameter(f"{value!r}: use auto or degrees from -90 to 90 (0: rain "
                                 "falling straight down)") from None


DEFAULT_MODEL_NAME = _module_constant("derain_cli.enhancer", "DEFAULT_MODEL", "semi-drdnet-fast")
_DEFAULT_OVERLAP = _module_constant("derain_cli.enhancer", "DEFAULT_OVERLAP", 48)
_DEFAULT_MAX_PIXELS = _module_constant("derain_cli.images", "DEFAULT_MAX_PIXELS", 200_000_000)
_DEFAULT_STATS_MP = _module_constant("derain_cli.tiling", "STATS_MEGAPIXELS", 4.0)

OUT, MODEL, PERF, FEED = "Output", "Model", "Performance", "Feedback"

RUN_HELP = (
    "Remove rain streaks from photos.\n\n"
    "IMAGE_OR_DIR are photos (JPEG, PNG, WebP, TIFF, BMP), folders of photos or glob "
    "patterns. Each result is written beside its input as NAME_derained.EXT, or into -o DIR "
    "under the same name (with -r, mirroring the folder tree). Inputs are never overwritten; "
    "existing results are skipped, so rerunning an interrupted batch resumes it. A file that "
    "cannot be read is reported on one line and the batch goes on.\n\n"
    "Examples:  derain photo.jpg  |  derain holiday/ -r -o derained/  |  "
    "derain 'shots/*.png' --format webp  |  derain models"
)


def owe_json(text: str | None) -> None:
    """What --json prints if the command is stopped before it prints its own (None: owes
    nothing, as once it has printed). Under torchrun rank 0 alone prints."""
    _STATE.json_owed = text if os.environ.get("RANK", "0") == "0" else None


def _owe_json(value: bool) -> bool:
    """--json, noted first of the options (eager): a Ctrl-C while the others are read (their
    checks load modules: most of a second) still gets the summary (``_pay_json_owed``)."""
    from .summary import Summary

    owe_json(Summary(interrupted=True).to_json() if value else None)
    return value


@app.command(DEFAULT_COMMAND, hidden=True, cls=_DefaultCommand, help=RUN_HELP,
             context_settings=CONTEXT_SETTINGS)
def run_cmd(
    ctx: typer.Context,
    inputs: Annotated[
        list[str] | None,
        typer.Argument(metavar="IMAGE_OR_DIR", show_default=False,
                       help="Photos, folders or glob patterns."),
    ] = None,
    output: Annotated[
        str | None,  # a str, not a Path: a trailing "/" (a folder, whatever the name) survives
        typer.Option("-o", "--output", "--out", show_default=False, rich_help_panel=OUT,
                     metavar="PATH", callback=output_not_an_option,
                     help="Output file (single input only) or folder (end it with / to say "
                          "so). \\[default: NAME_derained.EXT beside each input]"),
    ] = None,
    recursive: Annotated[
        bool, typer.Option("-r", "--recursive", rich_help_panel=OUT,
                           help="Walk subfolders (mirrored under -o DIR).")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", rich_help_panel=OUT,
                           help="Redo results that already exist (default: skip them).")
    ] = False,
    fmt: Annotated[
        OutFormat | None,
        typer.Option("--format", case_sensitive=False, show_default=False, rich_help_panel=OUT,
                     metavar="png|jpg|webp|tif|bmp",  # (cut mid-name at 80 columns: audit)
                     help="Output format. \\[default: same as the input]"),
    ] = None,
    quality: Annotated[
        int, typer.Option("--quality", min=1, max=100, rich_help_panel=OUT,
                          help="JPEG and lossy WebP quality (PNG, TIFF, BMP and lossless "
                               "WebP are written losslessly).")
    ] = 95,
    model: Annotated[
        str | None,
        typer.Option("-m", "--model", callback=_check_model, show_default=False,
                     autocompletion=complete_model,
                     rich_help_panel=MODEL, metavar="NAME",
                     help="Registered model (see: derain models). "
                          f"\\[default: {DEFAULT_MODEL_NAME}]"),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option("--weights", readable=True, callback=weights_file_option,
                     rich_help_panel=MODEL, show_default=False, metavar="FILE",
                     help="Your own weights file (.safetensors or .pt) instead of the "
                          "published ones."),
    ] = None,
    strength: Annotated[
        float,
        typer.Option("--strength", callback=check_strength, rich_help_panel=MODEL,
                     metavar="S",
                     help="How much of the rain removal to apply, 0 to 1: 1 all of it, 0.7 a mix "
                          "of 70 % derained and 30 % original, which keeps more fine "
                          "texture where the model softens it."),
    ] = 1.0,
    ensemble: Annotated[
        int,
        typer.Option("--ensemble", callback=_check_ensemble, rich_help_panel=MODEL,
                     metavar="N",
                     help="Average N passes over mirrored copies of each photo (1, 2 or "
                          "4): a little cleaner (2 passes of the default model: +0.06-0.13 "
                          "dB), about N times slower."),
    ] = 1,
    rain_angle: Annotated[
        str,
        typer.Option("--rain-angle", callback=parse_rain_angle, rich_help_panel=MODEL,
                     metavar="DEG|auto",
                     help="Rain slanted this many degrees from vertical, -90 to 90 "
                          "(positive: falling towards the bottom right, like \\; negative: "
                          "like /). The photo is turned so its rain falls straight down for "
                          "the model, which learnt rain within about 30 degrees of "
                          "vertical: past 30 degrees it removes far more, at about twice "
                          "the time at 45. auto: each photo's own, guessed and checked with "
                          "the model (0 unless turning clearly removes more)."),
    ] = "0",
    device: Annotated[
        str, typer.Option("--device", callback=_check_device, rich_help_panel=PERF,
                          help="auto, cpu, cuda, cuda:N or mps.")
    ] = "auto",
    precision: Annotated[
        Precision, typer.Option("--precision", case_sensitive=False, rich_help_panel=PERF,
                                metavar="auto|fp32|fp16|bf16|int8",  # (<...|int / 8> at 80
                                # columns: an audit)
                                help="auto: fp16 on GPUs; on CPUs int8 (ONNX Runtime) where "
                                     "the model ships an int8 graph, or bf16 where that was "
                                     "measured at least 10 % faster on this CPU (once, then "
                                     "cached) and the job is large enough to repay loading "
                                     "PyTorch, else "
                                     "bf16 on CPUs with bf16 instructions (AVX-512-BF16, "
                                     "AMX), else fp32.")
    ] = Precision.auto,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, show_default=False, rich_help_panel=PERF,
                                 help="CPU threads. \\[default: one per physical core]")
    ] = None,
    io_threads: Annotated[
        int | None, typer.Option("--io-threads", min=0, max=16, show_default=False,
                                 rich_help_panel=PERF, metavar="N",
                                 help="Threads that decode the next photos and encode "
                                      "finished ones while the network runs; 0 = in turn. "
                                      "\\[default: 2 on GPUs, 0 on CPUs]")
    ] = None,
    tile: Annotated[
        int | None,
        typer.Option("--tile", min=0, show_default=False, rich_help_panel=PERF, metavar="N",
                     help="Tile size in pixels: tiles hold at most N x N pixels, shaped to "
                          "the image; 0 = whole image at once (memory grows with the photo: "
                          "gigabytes at 12 MP); at least 16 (64 or more "
                          "advised). \\[default: automatic]"),
    ] = None,
    tile_overlap: Annotated[
        int | None, typer.Option(
            "--tile-overlap", min=0, rich_help_panel=PERF, metavar="P",
            help=f"Overlap between tiles in pixels. \\[default: from the model's reach, at "
                 f"most {_DEFAULT_OVERLAP}; 96 for RDMC]")
    ] = None,
    tile_batch: Annotated[
        int | None, typer.Option(
            "--tile-batch", min=0, show_default=False, rich_help_panel=PERF, metavar="N",
            help="Tiles per forward pass; 0 = as many as half the free GPU memory holds "
                 "(up to 8). \\[default: automatic; 1 on CPUs]")
    ] = None,
    stats_megapixels: Annotated[
        float, typer.Option(
            "--stats-megapixels", callback=_check_stats_megapixels, rich_help_panel=PERF,
            metavar="MP",
            help="Semi-DRDNet on images of twice this size or more: estimate its "
                 "whole-image statistics from a sample of about this many megapixels (at "
                 "least a third of the image); 0 = every pixel, slower.")
    ] = _DEFAULT_STATS_MP,
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", min=0, rich_help_panel=PERF,
                          help="Refuse larger images (decompression bombs); 0 = no limit.")
    ] = _DEFAULT_MAX_PIXELS,
    backend: Annotated[
        Backend, typer.Option("--backend", case_sensitive=False, rich_help_panel=PERF,
                              help="Inference engine. auto: onnx (ONNX Runtime) for int8 on "
                                   "CPUs; for fp32 on CPUs whichever of onnx and torch was "
                                   "measured faster on this CPU (once, then cached); torch "
                                   "on GPUs and for bf16.")
    ] = Backend.auto,
    quiet: Annotated[
        bool, typer.Option("-q", "--quiet", rich_help_panel=FEED,
                           help="Only print errors.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", rich_help_panel=FEED, is_eager=True, callback=_owe_json,
                           help="Print the summary as JSON on stdout (no progress bars).")
    ] = False,
    debug: DebugOpt = False,
    version: VersionOpt = False,
) -> None:
    debug = debug or _STATE.debug
    err = _stderr()
    with _friendly_errors(err, debug):
        if not inputs:
            raise UsageError(
                "no input given: name photos, folders or patterns (derain photo.jpg)", ctx=ctx
            )
        # "" is the current folder to pathlib: `derain "$PHOTO"` with an empty variable
        # derained every photo there
        if "" in inputs:
            raise UsageError("an empty path (\"\") among the inputs: name a photo or a "
                             "folder (. for the current one)", ctx=ctx)
        if output == "":
            raise UsageError("-o \"\": name a file or a folder (. for the current one)",
                             ctx=ctx)
        _run(ctx, err, inputs, output=Path(output) if output else None,
             output_is_folder=bool(output) and output.endswith(("/", os.sep)),
             recursive=recursive, overwrite=overwrite,
             fmt=fmt.value if fmt else None, quality=quality, model=model, weights=weights,
             strength=strength, ensemble=ensemble, rain_angle=rain_angle, device=device,
             precision=precision.value, threads=threads,
             io_threads=io_threads, tile=tile,
             tile_overlap=tile_overlap, tile_batch=tile_batch,
             stats_megapixels=stats_megapixels, max_pixels=max_pixels, backend=backend.value,
             quiet=quiet, json_out=json_out, debug=debug)


class _Exit(Exception):
    """Internal: stop with this exit code after the message was printed."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@contextlib.contextmanager
def _friendly_errors(console: Console, debug: bool, rank: int = 0,
                     again: str = "to resume (finished files are skipped)") -> Iterator[None]:
    """Exceptions become one ``error: ...`` line and exit 1 (tracebacks only with --debug).
    ``again``: what running the command again does after a Ctrl-C."""
    try:
        yield
    except (ClickException, typer.Abort, typer.Exit):
        raise
    except BrokenPipeError as e:
        if not debug and stdout_gone():  # the reader went away (derain ... | head): quiet
            silence_stdout()
            raise typer.Exit(BROKEN_PIPE_STATUS) from None
        if debug:
            raise
        print_error(console, _friendly_message(e), rank)  # another pipe: a real error
        raise typer.Exit(1) from None
    except _Exit as e:
        raise typer.Exit(e.code) from None
    except Exception as e:
        if not interrupted_import(e):
            if debug:
                raise
            print_error(console, _friendly_message(e), rank)
            raise typer.Exit(1) from None
        _say_stopped(console, rank, again, None)
    except KeyboardInterrupt as stop:
        _say_stopped(console, rank, again, getattr(stop, "summary", None))


def _say_stopped(console: Console, rank: int, again: str, done: Any) -> NoReturn:
    """``_friendly_errors``' end of a stopped command: what was kept and how to go on, said
    by rank 0 (under torchrun every process gets the Ctrl-C), exit 130. ``done``: a batch's
    summary (``BatchInterrupted``), or None."""
    _ignore_further_stops()
    if rank == 0:
        kept = (f"{done.processed} photo(s) derained and kept; " if done is not None
                and getattr(done, "world_size", 1) == 1 else "")  # (one process's count
        # only under torchrun: none said there)
        how = "interrupted"
        if _TERMINATED_BY and _under_torchrun():
            how = ("stopped by a termination signal (torchrun sends one to every process "
                   "when one of them fails or is stopped: its report below says which)")
            # (a worker killed with kill -9 read as a Ctrl-C: an audit)
        console.print(f"\n{how}; {kept}run the same command again {again}")
    raise typer.Exit(130) from None


def _stopped_on(e: Exception, said: list[str]) -> str:
    """What ``e`` stopped the main job for, in the words said (or about to be) on stderr."""
    if isinstance(e, ClickException):
        return e.format_message()
    if isinstance(e, (_Exit, typer.Exit)):  # said already, then this exit
        code = e.code if isinstance(e, _Exit) else e.exit_code
        return "; ".join(said) or f"stopped with exit status {code}"
    return command_line_words(_friendly_message(e))


def _friendly_message(e: BaseException) -> str:
    """The exception's own text when it was written for users, else one line with its type."""
    if isinstance(e, MemoryError):  # before any import: one needs memory too, and its own
        # MemoryError chained three tracebacks instead of this line (an audit)
        return f"out of memory: {_one_line(e)}"
    from .hub import WeightsUnavailable
    from .images import ImageError
    from .weights import WeightsError

    if isinstance(e, (WeightsUnavailable, WeightsError, ImageError)):
        return str(e).strip() or type(e).__name__
    if isinstance(e, OSError) and e.strerror:
        where = f" ({e.filename})" if e.filename else ""
        return f"{e.strerror}{where}"
    return f"{type(e).__name__}: {_one_line(e)}"


_OPTION_LIKE = re.compile(r"--?[A-Za-z][A-Za-z0-9-]*|--[A-Za-z][A-Za-z0-9-]*=.*")  # (-o
# --format=webp made a folder of that name: a review)


def output_not_an_option(value: Any) -> Any:
    """``-o``'s value, refused where it is an option's name that names nothing here: Click
    takes the next word whatever it is, so ``-o --help`` wrote a folder named --help and
    ``-o -q`` one named -q (an audit). ``-o -`` is the main job's to refuse (its own words)."""
    text = None if value is None else os.fspath(value)
    if text and _OPTION_LIKE.fullmatch(text) and not os.path.lexists(text):  # (-new.png
        # and -x/new/ are paths: they were refused as options' names too, a review)
        raise typer.BadParameter(f"{text!r} is an option's name, not a file or folder: give "
                                 f"-o a value (-o OUT); a path that starts with '-' is "
                                 f"written ./{text}")
    if text and text.startswith("=") and len(text) > 1 and not os.path.lexists(text):
        # ``-o=out`` gives a short option the value '=out' (Click's reading, as getopt's):
        # a folder named '=out' appeared where out/ was meant (an audit)
        raise typer.BadParameter(f"{text!r} starts with '=': a short option takes the next "
                                 f"word or what follows it as is, so write -o {text[1:]} "
                                 f"(or --output={text[1:]}); a path that starts with '=' "
                                 f"is written ./{text}")
    return value


def _usage(ctx: Context, message: str) -> UsageError:
    return UsageError(message, ctx=ctx)


def _refuse_misplaced_subcommands(ctx: Context, inputs: list[str]) -> None:
    """An input that is no file but a subcommand's name, or nearly one, is a usage error
    before any work: ``derain --threads 1 eval pairs/`` derained the pairs folder's images
    into it and then failed on "eval", and ``derain modles`` printed a table of nothing."""
    import difflib

    from .batch import has_glob

    group = ctx.parent.command if ctx.parent is not None else None
    if not isinstance(group, DerainGroup):
        return
    names = [n for n in group.list_commands(ctx) if n != DEFAULT_COMMAND]
    for raw in inputs:
        if (os.path.lexists(raw) or os.sep in raw or "/" in raw or Path(raw).suffix
                or has_glob(raw)):
            continue
        if raw in names:
            raise _usage(ctx, f"{raw!r} is a subcommand: write it first, before any file or option "
                              f"(derain {raw} ...)")
        if raw.lower() in ("help", "version"):
            raise _usage(ctx, f"no file or folder {raw!r}; for the {raw.lower()}, run derain "
                              f"--{raw.lower()}")
        close = difflib.get_close_matches(raw, names, n=1, cutoff=0.75)
        if close:
            raise _usage(ctx, f"no file or folder {raw!r}; did you mean the subcommand "
                              f"{close[0]!r} (derain {close[0]} ...)?")


def _run(
    ctx: Context,
    err: Console,
    inputs: list[str],
    *,
    output: Path | None,
    output_is_folder: bool = False,
    recursive: bool,
    overwrite: bool,
    fmt: str | None,
    quality: int,
    model: str | None,
    weights: Path | None,
    strength: float,
    device: str,
    precision: str,
    ensemble: int,
    rain_angle: float | str,
    threads: int | None,
    io_threads: int | None,
    tile: int | None,
    tile_overlap: int | None,
    tile_batch: int | None,
    stats_megapixels: float,
    max_pixels: int,
    backend: str,
    quiet: bool,
    json_out: bool,
    debug: bool,
) -> None:
    from . import batch
    from .images import warnings_to_log

    _STATE.kept_warnings = None  # (set below, where the warnings are kept)
    # ---- option combinations (exit 2 before any work)
    try:
        _refuse_misplaced_subcommands(ctx, inputs)
        inputs, to_file = _check_output(ctx, inputs, output, output_is_folder=output_is_folder,
                                        recursive=recursive, fmt=fmt)
    except ClickException as e:  # as the refusals after them: --json names it (a review;
        if json_out and os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0's)
            _echo_json(_stderr(), batch.Summary(error=e.format_message()))
        raise
    options = batch.BatchOptions(
        output=output, output_file=to_file, format=fmt, quality=quality, overwrite=overwrite,
        max_pixels=max_pixels or None, raise_errors=debug, io_workers=io_threads,
        started=time.time(),  # before the model loads: results since are another run's
    )

    dist, device = batch.init_distributed(device)
    try:
        with _friendly_errors(err, debug, dist.rank), _errors_said() as said:
            main_rank = dist.is_main
            chatty = main_rank and not (quiet or json_out)
            logging_handler = attach_logging(err, debug, quiet or not main_rank)
            kept = _KeptWarnings() if json_out and main_rank else None
            _STATE.kept_warnings = kept.lines if kept is not None else None
            if kept is not None:  # (with -q too: the JSON is a script's only account)
                logging.getLogger("derain_cli").addHandler(kept)
            decoder_warnings = contextlib.ExitStack()
            if not debug:  # Pillow/OpenCV notes as one "FILE: message" line, not their noise
                decoder_warnings.enter_context(warnings_to_log())
            try:
                exclude = [output] if output is not None and not to_file else []
                # under torchrun rank 0 alone lists the inputs and says whether work is
                # left: ranks that each looked (another node's view, a folder still filling)
                # skipped photos, or waited on each other for ever
                items = batch.share_from_main(dist, batch.collect_inputs(
                    inputs, recursive, exclude=exclude) if main_rank else None)
                jobs = batch.plan_jobs(items, options)
                if _given(ctx, "quality") and main_rank:  # over the results to be written
                    # (a rerun writing none warned of them: a review)
                    _warn_quality_unused(batch.pending_jobs(jobs, options))
                derainer = None
                if batch.share_from_main(dist, bool(batch.pending(jobs, options))
                                         if main_rank else None):
                    work_mp, work_images = batch.pending_workload(  # done photos too: a
                        jobs, options, enough=_WORKLOAD_ENOUGH_MP, done_too=True)  # rerun
                    # picks the engine the first run did (their pixels differ)
                    if not work_images:  # no header readable: unknown, not 0 MP
                        work_mp, work_images = None, None
                    make = functools.partial(
                        _make_derainer,
                        model=model, weights=weights, device=device,
                        tile=tile, tile_overlap=tile_overlap, tile_batch=tile_batch,
                        threads=threads, stats_megapixels=stats_megapixels,
                        strength=strength, ensemble=ensemble, rain_angle=rain_angle,
                        quiet=not chatty,
                        workload_megapixels=work_mp, workload_images=work_images,
                    )
                    derainer = _shared_derainer(dist, make, device=device,
                                                precision=precision, backend=backend)
                    if chatty:
                        _print_setup(err, derainer, dist)
                    if _given(ctx, "stats_megapixels") and getattr(  # said as the library's
                            # warnings are (the handler above: rank 0, not with -q)
                            getattr(derainer, "runner", None), "global_stats_shape", 0) is None:
                        logging.getLogger("derain_cli").warning(
                            "--stats-megapixels does nothing for %s: it has no whole-image "
                            "statistics (Semi-DRDNet has)",
                            getattr(derainer, "model_name", "this model"))
                    unused = [f"--{n.replace('_', '-')}" for n in ("tile_overlap", "tile_batch")
                              if _given(ctx, n)]
                    if unused and getattr(derainer, "tile", None) == 0:  # accepted in silence
                        logging.getLogger("derain_cli").warning(  # (session 70's list)
                            "%s %s nothing with --tile 0 (whole images) unless memory runs "
                            "short and tiles take over", " and ".join(unused),
                            "do" if len(unused) > 1 else "does")
                else:  # all done already: still refuse what a fresh run would refuse
                    _check_device_and_precision(device, precision, backend)
                    _check_model_and_tile(model, weights, tile)
                    _check_int8_request(precision, backend, model, weights, device)
                live = live_display(err)  # (TERM=dumb showed nothing: an audit)
                progress = _RichProgress(err, bars=chatty and live,
                                         report_failures=main_rank, rank=dist.rank,
                                         lines=chatty and main_rank and not live,
                                         world=dist.world_size)
                try:
                    with progress:
                        summary = batch.run_batch(items, derainer, options, progress, dist,
                                                  jobs=jobs)
                except batch.BatchInterrupted as stop:
                    if json_out and main_rank:  # a script still learns what was done
                        _echo_json(err, stop.summary)
                    raise
            except KeyboardInterrupt as stop:  # before the batch began (scan, model load)
                if json_out and main_rank and not isinstance(stop, batch.BatchInterrupted):
                    _echo_json(err, batch.Summary(world_size=dist.world_size,
                                                  interrupted=True))
                raise
            except Exception as e:  # weights, device, model refused: a script reading
                if interrupted_import(e):  # (a Ctrl-C while torch loaded)
                    if json_out and main_rank:
                        _echo_json(err, batch.Summary(world_size=dist.world_size,
                                                      interrupted=True))
                    raise KeyboardInterrupt from None
                if json_out and main_rank:  # --json learns why (stdout was empty)
                    _echo_json(err, batch.Summary(world_size=dist.world_size,
                                                  error=_stopped_on(e, said)))
                raise
            finally:
                decoder_warnings.close()
                detach_logging(logging_handler)
                if kept is not None:
                    logging.getLogger("derain_cli").removeHandler(kept)
            if main_rank:
                _report(err, summary, options, json_out=json_out, quiet=quiet)
            # Nobody leaves before rank 0 has printed: torchrun stops all ranks as soon as
            # one exits non-zero. Only rank 0 carries the batch's exit status.
            batch.barrier(dist)
            if summary.failed and main_rank:
                raise _Exit(1)
    finally:
        batch.shutdown_distributed()


def _check_output(
    ctx: Context, inputs: list[str], output: Path | None, *, output_is_folder: bool,
    recursive: bool, fmt: str | None,
) -> tuple[list[str], bool | None]:
    """``-o`` checked against the inputs and ``--format``: a usage error (exit 2) before any
    work. Returns the inputs (without what a shell glob picked up from the output folder)
    and whether ``-o`` names one result file (None without ``-o``)."""
    from . import batch
    from .images import format_for_path

    if output is None:
        return inputs, None
    if str(output) == "-":  # the shell idiom for standard output made a folder named "-"
        raise _usage(ctx, "-o -: derain does not write images to standard output; name a "
                          "file (-o out.jpg) or a folder (-o out/; a folder named '-': "
                          '-o "$PWD/-")')
    if (not output.is_dir() and not output_is_folder
            and output.suffix.lower() in batch.FOREIGN_IMAGE_SUFFIXES):
        raise _usage(ctx, f"-o {output}: derain cannot write {output.suffix} files; "
                          "use .png, .jpg, .webp, .tiff or .bmp, or a folder name")
    to_file = batch.output_is_file(output) and not output_is_folder
    single = len(inputs) == 1 and Path(inputs[0]).is_file()
    if to_file and len(inputs) == 1 and not single and not Path(inputs[0]).is_dir():
        inputs, single = _one_input(ctx, inputs[0], output)
    if (not to_file and single and output.suffix and not output.exists()
            and not output_is_folder):
        raise _usage(ctx, f"-o {output}: '{output.suffix}' is not an image type derain "
                          "writes (.png, .jpg, .webp, .tif, .bmp); to write into a folder "
                          f"of that name, end it with a slash (-o {output}/)")
    if to_file:
        if not single:
            raise _usage(ctx, f"-o {output} names a file, which takes exactly one input "
                              "file; to write several results give a folder: -o DIR")
        if fmt is not None and format_for_path(output) != format_for_path(output, fmt):
            raise _usage(ctx, f"--format {fmt} contradicts -o {output}; drop one of them")
        if output.exists() and batch._same_file(Path(inputs[0]), output):  # a failed file with a
            # progress bar and a summary table, exit 1 (an audit): the command line's fault
            src = Path(inputs[0])
            raise _usage(ctx, f"-o {output} is the input itself: derain never replaces a "
                              "photo; name another file, or leave -o out to write "
                              f"{src.stem}{batch.OUTPUT_TAG}{src.suffix} beside it")
    elif output.exists() and not output.is_dir():
        if output_is_folder:
            raise _usage(ctx, f"-o {output}/ names a folder, but {output} is a file")
        raise _usage(ctx, f"-o {output} exists and is not a folder or an image file")
    else:
        _check_output_folder_can_be(ctx, output)
        inputs = batch.without_shell_leftovers(inputs, output, recursive)
        for raw in inputs:
            p = Path(raw)
            if p.is_dir() and output.is_dir() and os.path.samefile(p, output):
                if len(inputs) > 1:  # its results would go to out/out/...: no replacing
                    raise _usage(ctx, f"-o {output} is also among the inputs (as a shell's * "
                                      "gives it) and holds photos: choose another output "
                                      "folder, or leave it out of the inputs")
                raise _usage(ctx, f"-o {output} is an input folder: the results would "
                                  "replace the originals; choose another folder")
    return inputs, to_file


def _check_output_folder_can_be(ctx: Context, output: Path) -> None:
    """A usage error for an output folder that cannot be made at all: below a file
    (``-o notes.txt/out``), or a link that leads nowhere (a loop, a target gone). Each photo
    failed with the same line ("cannot write to ...: ... is a file", "File exists": an
    audit)."""
    if os.path.islink(output) and not output.exists():
        try:
            target = os.readlink(output)
        except OSError:
            target = "?"
        raise _usage(ctx, f"-o {output} is a link that leads nowhere (to {target}: a loop, "
                          "or its target is gone); make its target, or name another folder")
    for parent in output.parents:
        if os.path.islink(parent) and not parent.exists():  # through a link to nowhere:
            # its target's folders were made (a review)
            raise _usage(ctx, f"-o {output}: {parent} is a link that leads nowhere; make "
                              "its target, or name another folder")
        if parent.exists():  # the nearest existing one decides
            if not parent.is_dir():
                raise _usage(ctx, f"-o {output}: {parent} is a file, not a folder")
            return


def _one_input(ctx: Context, given: str, output: Path) -> tuple[list[str], bool]:
    """The one input of ``-o FILE`` that is not a plain file: a pattern that matches one
    photo is that photo; a missing file or a FIFO goes on to the batch, which says what is
    wrong with it (all were refused as "takes exactly one input file", one being given: an
    audit). A pattern that matches several is refused."""
    from . import batch
    from .images import is_image_path

    if os.path.lexists(given) or not any(c in given for c in "*?["):
        return [given], True
    matches = batch.expand_pattern(given)
    photos = [m for m in matches if is_image_path(m) and os.path.isfile(m)]
    folders = [m for m in matches if os.path.isdir(m)]
    if len(photos) > 1 or folders:  # (a folder among them failed with an internal error,
        # or was left out in silence beside one photo: a review)
        found = " and ".join(f"{n} {what}" for n, what in (
            (len(photos), "photo(s)"), (len(folders), "folder(s)")) if n)
        raise _usage(ctx, f"-o {output} names a file, which takes exactly one input file; "
                          f"'{given}' matches {found}: to write several results give a "
                          "folder: -o DIR")
    return (photos or [given]), True


def _shared_derainer(dist: Any, make: Callable[..., Any], *, device: str, precision: str,
                     backend: str) -> Any:
    """The Derainer ``make`` builds, one choice for every process.

    Under torchrun rank 0 alone picks (and may time) the CPU engine; the others take its
    pick, so no two ranks race to measure or differ. A device or precision it would refuse
    is refused by every rank first: the others waited for its pick and died with a gloo
    error."""
    from . import batch

    main_rank = dist.is_main
    if dist.enabled:
        _check_device_and_precision(device, precision, backend, speak=main_rank)
    derainer = make(precision=precision, backend=backend) if main_rank else None
    chosen = batch.share_from_main(dist, (
        derainer.backend, derainer.precision) if derainer is not None else None)
    if not main_rank:
        derainer = make(backend=chosen[0], precision=chosen[1])
        derainer.engine_note = "rank 0's choice"
    return derainer


def _report(err: Console, summary: Any, options: Any, *, json_out: bool, quiet: bool) -> None:
    """Rank 0's account of the batch: the other ranks' failures (they stay quiet), then
    the summary, as JSON or as text."""
    for r in summary.files:
        if r.status == "failed" and r.rank != 0:
            _print_failure(err, r)
    if json_out:
        if not _echo_json(err, summary):
            raise _Exit(1)
    elif not quiet:
        _print_summary(err, summary, options)


def _echo_json(err: Console, summary: Any) -> bool:
    """``--json``'s summary on stdout; False (said on stderr) where stdout takes nothing:
    `--json > FILE` on a full disk said "error: No space left on device" alone, as if the
    photos had failed (an audit). After a Ctrl-C the interrupted status stays."""
    owe_json(None)
    if _STATE.kept_warnings and not summary.warnings:
        summary.warnings = list(_STATE.kept_warnings)
    try:
        typer.echo(summary.to_json())
    except BrokenPipeError:
        raise  # the reader went away: quiet, 141 (``_friendly_errors``)
    except OSError as e:
        silence_stdout()  # (the unwritten text is not flushed again at exit)
        done = (f"{summary.processed} derained, {summary.skipped} skipped, "
                f"{len(summary.failed)} failed")
        print_error(err, f"--json: cannot write the summary to standard output "
                         f"({e.strerror or e}); " + (
                             f"interrupted, the photos done were kept: {done}"
                             if summary.interrupted else f"the photos were done all the "
                                                         f"same: {done}"))
        return False
    return True


#: Counting a folder's megapixels stops here: far more than decides the CPU engine
_WORKLOAD_ENOUGH_MP = 200.0


def _make_derainer(**kw: Any) -> Any:
    from .enhancer import Derainer

    try:
        return Derainer(**kw)
    except Exception as e:
        from .models import UnknownModelError

        if not isinstance(e, (ValueError, UnknownModelError)):
            raise
        print_error(_stderr(), _one_line(e))  # bad --device/--precision/--model values
        raise _Exit(2) from None


def _check_model_and_tile(model: str | None, weights: Path | None, tile: int | None) -> None:
    """What a fresh run refuses about the tile, the model and the weights file, checked
    without loading a network: a rerun over a finished folder accepted ``--tile 8``, a
    ``--weights`` that is no weights file and an untrained ``-m``, and a cron job over a
    growing folder learnt of it only when a new photo came."""
    from .enhancer import MIN_TILE, SMALLEST_TILE

    err = _stderr()
    if tile is not None and 0 < tile < SMALLEST_TILE:
        print_error(err, f"tile must be 0 (whole image) or at least {SMALLEST_TILE} px, "
                         f"not {tile} ({MIN_TILE} or more keeps the result intact)")
        raise _Exit(2)
    if weights is not None:
        problem = _weights_file_problem(weights)
        if problem:
            print_error(err, f"{weights}: {problem}")
            raise _Exit(1)
        if model is not None:  # the file must fit -m, as a fresh run checks: this loads
            # it (torch, a second or so), only for the rare rerun naming both
            from .models import UnknownModelError
            from .weights import WeightsError, model_from_file

            try:
                model_from_file(weights, model)
            except UnknownModelError as e:
                print_error(err, str(e))
                raise _Exit(2) from None
            except WeightsError as e:
                print_error(err, _one_line(e))
                raise _Exit(1) from None
        return
    if model is None:
        return
    from .manifest import load_manifest

    if model in load_manifest():
        return
    from .models import MODELS, UnknownModelError

    if model not in MODELS:
        print_error(err, str(UnknownModelError(model)))
        raise _Exit(2)
    from .weights import untrained_message

    print_error(err, untrained_message(model))
    raise _Exit(1)


def _check_int8_request(precision: str, backend: str, model: str | None,
                        weights: Path | None, device: str = "auto") -> None:
    """``--precision int8`` where it cannot run (``--backend torch``, a ``--weights`` file, a
    model without an int8 graph), refused without loading a network (exit 2)."""
    if precision != "int8":
        return
    from .fast_path import int8_request_problem, surely_cpu
    from .manifest import load_manifest

    if device.strip().lower() == "auto" and not surely_cpu(device):  # a GPU may be there:
        from .torch_runner import resolve_device  # a fresh run refuses int8 on it, and a
        # rerun took "auto" for a CPU and accepted it (a review of a mutation audit)
        device = resolve_device(device).type
    record = None if weights is not None else load_manifest().get(model or DEFAULT_MODEL_NAME)
    problem = int8_request_problem(backend, record, device)
    if problem:
        print_error(_stderr(), problem)
        raise _Exit(2)


def _weights_file_problem(path: Path) -> str | None:
    """Why ``path`` is not a weights file, from its first bytes, or None."""
    from .manifest import PICKLE_SUFFIXES

    if not path.is_file():
        return "no such weights file"
    try:
        with open(path, "rb") as f:
            if path.suffix in PICKLE_SUFFIXES:  # read_state's rule: torch.save's zip or
                # an old pickle; any other name is read as safetensors
                head = f.read(4)
                return None if head[:2] == b"PK" or head[:1] == b"\x80" else _NOT_WEIGHTS
            size = int.from_bytes(f.read(8), "little")
            if not 2 <= size <= 100_000_000:
                return _NOT_WEIGHTS
            json.loads(f.read(size))
    except (OSError, ValueError):
        return _NOT_WEIGHTS
    return None


_NOT_WEIGHTS = "not a weights file (safetensors, or a PyTorch .pt/.pth/.ckpt)"


def _check_device_and_precision(device: str, precision: str, backend: str = "auto",
                                speak: bool = True) -> None:
    """Validate explicit --device / --precision without loading a model (exit 2 if bad), so
    a rerun that skips every file answers like the first run did. Defaults cost nothing.
    ``speak`` False: exit without a word (torchrun's other ranks; rank 0 says it)."""
    if device == "auto" and precision in ("auto", "fp32", "int8"):
        return
    from .torch_runner import resolve_device, resolve_precision

    try:
        dev = resolve_device(device)
        if precision not in ("auto", "int8"):
            resolve_precision(precision, dev, backend)
    except ValueError as e:
        if speak:
            print_error(_stderr(), _one_line(e))
        raise _Exit(2) from None


_ENGINE = {"torch": "PyTorch", "onnx": "ONNX Runtime"}


def _warn_quality_unused(jobs: Sequence[Any]) -> None:
    """A warning where --quality was given and every result is written losslessly (-o
    x.png, --format png, or PNG photos keeping their format): it was ignored in silence,
    the file as large as without it (audits). A folder of mixed formats takes it where it
    applies."""
    from .images import format_for_path, format_name

    names: set[str] = set()
    for job in jobs:
        if job.output is None or job.error is not None:
            continue
        try:
            names.add(format_for_path(job.output))
        except Exception:  # an unknown format is refused elsewhere
            return
    if names and names <= {"PNG", "TIFF", "BMP"}:
        logging.getLogger("derain_cli").warning(
            "--quality does nothing here: %s %s written losslessly (it applies to JPEG and "
            "lossy WebP)", " and ".join(format_name(n) for n in sorted(names)),
            "is" if len(names) == 1 else "are")


def _given(ctx: Context, name: str) -> bool:
    """Whether option ``name`` was typed on the command line (not its default). By the
    source's name: Typer carries its own copy of click, whose enum is not click's."""
    return getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"


def _print_setup(err: Console, derainer: Any, dist: Any) -> None:
    dev = getattr(derainer, "device_name", "?")  # not .device: that would import torch
    tile = getattr(derainer, "tile", None)
    overlap = getattr(derainer, "overlap_used", None)
    batch = getattr(derainer, "tile_batch", 1)
    tiles = "off" if not tile else f"{tile}px" + (
        f" (overlap {overlap}px)" if isinstance(overlap, int) else "") + (
        f", {batch} a pass" if isinstance(batch, int) and batch > 1 else "")
    where = f", {dist.world_size} processes" if dist.enabled else ""
    note = getattr(derainer, "engine_note", "")
    why = f" ({note})" if note else ""
    strength = getattr(derainer, "strength", 1.0)
    where += f", strength {strength:g}" if strength < 1.0 else ""
    # at strength 0 the network never runs: passes and turns were said for nothing (an audit)
    passes = getattr(derainer, "ensemble", 1) if strength > 0 else 1
    where += f", ensemble of {passes} passes" if passes > 1 else ""
    angle = getattr(derainer, "rain_angle", 0.0) if strength > 0 else 0.0
    where += (", rain turned upright where it slants (auto)" if angle == "auto" else
              f", rain turned upright from {angle:g} degrees" if angle else "")
    where += ": photos written as they are" if strength == 0 else ""
    err.print(
        Text.assemble(
            ("derain ", "bold"), f"{__version__}: model ",
            # (a name from a weights file's metadata, a path: escaped, as every name
            # shown is; ESC[2J cleared the screen: an audit)
            (terminal_text(str(getattr(derainer, "model_name", "?"))), "cyan"),
            f"{_weights_phrase(derainer)} on {dev} "
            f"({_ENGINE.get(getattr(derainer, 'backend', ''), '?')}), "
            f"{getattr(derainer, 'precision', '?')}{why}, tiles {tiles}{where}",
        )
    )


def _weights_phrase(derainer: Any) -> str:
    """' (interim weights)' for the model's own weights, ' [weights FILE]' for a user's
    file: the banner names the model once."""
    status = getattr(derainer, "weights_status", None)
    if status:
        return f" ({status} weights)"
    return f" [weights {terminal_text(str(getattr(derainer, 'weights_label', '?')))}]"


class _KeptWarnings(logging.Handler):
    """The warnings a main job says, one line each, for its ``--json`` summary: a script
    learnt nothing of photos a scan left out or of a first frame derained alone (an
    audit)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(one_line_text(record.getMessage()))
        except Exception:  # pragma: no cover
            self.handleError(record)


class _LogHandler(logging.Handler):
    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console
        #: the least level shown; info records marked ``note`` are shown above it too
        self.shown = logging.WARNING

    def emit(self, record: logging.LogRecord) -> None:
        try:
            noted = record.levelno < logging.WARNING and getattr(record, "note", False)
            if record.levelno < self.shown and not noted:
                return  # (info records reach here for the notes among them)
            level = "note" if noted else record.levelname.lower()
            # a file name in a message may hold an escape sequence or a line break (a
            # forged second line): its arguments on one line each, the rest escaped
            text = record.getMessage()
            if isinstance(record.args, tuple) and record.args:
                text = str(record.msg) % tuple(
                    one_line_text(os.fspath(a)) if isinstance(a, (str, os.PathLike)) else a
                    for a in record.args)
            text = terminal_text(text)
            self.console.print(Text(f"{level}: ", style="yellow") + Text(text))
        except Exception:  # pragma: no cover
            self.handleError(record)


def attach_logging(console: Console, debug: bool, quiet: bool) -> tuple[Any, ...]:
    """Route the library's log messages (e.g. out-of-memory retries) through rich, above the
    progress bars; returns what :func:`detach_logging` needs to undo it. Until then the
    ``derain_cli`` logger does not propagate: pytest's ``caplog`` sees none of its records
    in a CLI run (assert on the command's output instead)."""
    handler = _LogHandler(console)
    logger = logging.getLogger("derain_cli")
    saved = (handler, logger.level, logger.propagate)
    handler.shown = logging.DEBUG if debug else logging.ERROR if quiet else logging.WARNING
    handler.setLevel(logging.DEBUG if debug else logging.ERROR if quiet else logging.INFO)
    logger.addHandler(handler)
    # info records reach the handler, which shows those marked as notes
    # (``engine_choice.NOTE``: the first run's engine timing) and drops the rest
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False
    return saved


def detach_logging(saved: tuple[Any, ...]) -> None:
    handler, level, propagate = saved
    logger = logging.getLogger("derain_cli")
    logger.removeHandler(handler)
    logger.setLevel(level)
    logger.propagate = propagate


def _print_failure(console: Console, r: FileResult) -> None:
    console.print(Text("failed: ", style="bold red")
                  + Text(one_line_text(f"{r.input}: {r.reason}")))


class _RichProgress:
    """Bars over files and over the tiles of a large image (stderr); failure lines.

    The files bar counts files; the tiles bar shows a percentage of the image's work
    (``tiling.run_tiled``'s ``on_tile`` counts pixels through the network), so its time
    estimate holds across the cheap statistics tiles and the final pass's. Where stderr is
    not a terminal, ``lines`` prints the same progress as a plain line at most once a
    minute (``plain_progress``): a long folder job in a log file is not silent."""

    def __init__(self, console: Console, *, bars: bool, report_failures: bool, rank: int,
                 lines: bool = False, every_s: float = 60.0, world: int = 1) -> None:
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        class _Remaining(TimeRemainingColumn):  # the files bar's own estimate (below)
            def render(self, task: Any) -> Any:
                if "eta" not in task.fields:
                    return super().render(task)
                return Text(task.fields["eta"], style="progress.remaining")

        self.console = console
        self.report_failures = report_failures
        self.world = world
        self.bars = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            TextColumn("{task.fields[count]}", markup=False),
            TimeElapsedColumn(),
            _Remaining(),
            console=console,
            transient=True,
            disable=not bars,
        )
        self.files: Any = None
        self.files_done = self.files_total = 0
        self.tiles: Any = None
        self.name = ""
        #: what the estimate of the rest is made from: the photos started, those whose
        #: derain ended (not skipped or failed; ids), the photo at work (id) and its share
        #: done, and the seconds since the start
        self.started = 0
        self.worked: set[int] = set()
        self.current: int | None = None
        self.fraction = 0.0
        self.t0 = time.monotonic()
        self.lines: Any = None
        if lines:
            from .plain_progress import PlainProgress

            self.lines = PlainProgress(console, every_s)

    def __enter__(self) -> _RichProgress:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()

    def start(self, total: int) -> None:
        self.files_done, self.files_total = 0, total
        self.started, self.worked, self.current, self.fraction = 0, set(), None, 0.0
        self.t0 = time.monotonic()
        self.files = self.bars.add_task("derain", total=total, count=f"0/{total}",
                                        eta=clock(float("nan")))

    def eta(self) -> float:
        """Seconds left: the time per photo derained so far (the current one's share of
        its work counted) times the photos left. Skipped results cost nothing and are not
        photos derained: counted as done, they made a resumed run's estimate 10 times too
        short; and a large photo now moves the estimate while it runs (it stood at 2 s
        through a 46 s photo: an audit). A photo counts as derained when its last tile is
        done: the pipelined loop (GPUs) reports it a photo later, after its write (a
        review: the estimate divided by the next photo's share alone, 13 times too long)."""
        share = self.fraction if self._at_work() else 0.0
        left = self.files_total - self.started + (1.0 - share if self._at_work() else 0.0)
        if left <= 0:
            return 0.0  # (an all-skipped rerun's last line said "ETA -:--:--": a review)
        worked = len(self.worked) + share
        if worked <= 0:
            return float("nan")
        return (time.monotonic() - self.t0) / worked * left

    def _at_work(self) -> bool:
        """Whether a photo has started and its derain has not ended."""
        return self.current is not None and self.current not in self.worked

    def _line(self) -> str:
        """The plain line of a log: the files, the times and the photo at work."""
        share = (f" (this process's share, 1 of {self.world} processes)" if self.world > 1
                 else "")  # (under torchrun "6/6 files" of a run of 12: an audit)
        line = (f"derain {self.files_done}/{self.files_total} files{share} "
                + self.lines.timing(self.files_done, self.files_total, eta=self.eta()))
        if self._at_work() and self.fraction > 0:
            line += f"; {self.name}: {100 * self.fraction:.0f}% of its work"
        return line

    def file_start(self, job: Job) -> None:
        from rich.markup import escape

        # cut to what the terminal leaves beside the bar, the count and the times (40
        # characters hid them all on a narrow one: an audit); a log's lines have room
        room = 40 if self.lines is not None else max(12, min(40, self.console.width - 48))
        name = escape(one_line_text(job.item.path.name))  # the bar's description is markup
        self.name = name if len(name) <= room else name[:room - 3] + "..."
        self.started += 1
        self.current, self.fraction = id(job), 0.0
        self.bars.update(self.files, description=self.name)

    def file_left(self, job: Job) -> None:
        self.started -= 1  # started again at the end (it went past the total: a review)
        if self.current == id(job):
            self.current = None

    def tile(self, done: int, total: int) -> None:
        if self._at_work():
            self.fraction = min(done / max(total, 1), 1.0)
            if self.fraction >= 1.0:  # its derain ended: worked, whenever it is reported
                self.worked.add(self.current)  # type: ignore[arg-type]
        self.bars.update(self.files, eta=clock(self.eta()))
        if done >= total and self.tiles is None:  # one piece (untiled, or one tile): no bar
            return
        count = f"{100 * done // max(total, 1):>3d}%"
        if self.lines is not None and self._at_work() and self.lines.due():  # one line:
            self.lines.print(self._line())  # the photo's share took every slot (an audit)
        if self.tiles is None:
            self.tiles = self.bars.add_task("  tiles", total=total, count=count)
        self.bars.update(self.tiles, completed=done, total=total, count=count)

    def file_done(self, job: Job, result: FileResult) -> None:
        if self.tiles is not None:
            self.bars.remove_task(self.tiles)
            self.tiles = None
        self.files_done += 1
        if result.status == "processed":  # (one no tile reported as ended)
            self.worked.add(id(job))
        elif id(job) == self.current:  # skipped or failed: no share at work
            self.current = None
        self.bars.update(self.files, advance=1, count=f"{self.files_done}/{self.files_total}",
                         eta=clock(self.eta()))
        if result.status == "failed" and self.report_failures:  # before the line that
            _print_failure(self.console, result)  # counts it (a log read: a review)
        last = self.files_done == self.files_total
        if self.lines is not None and (self.lines.due() or last):
            self.lines.print(self._line())


def _print_summary(console: Console, s: Summary, options: BatchOptions) -> None:
    table = _summary_table(s)  # by measure: a constant of 64 cut the last header at 64-65
    if Measurement.get(console, console.options.update_width(1000), table).maximum > \
            console.width:  # the table's numbers would be cut to "…"
        console.print(Text(
            f"processed {s.processed}, skipped {s.skipped}, failed {len(s.failed)}, "
            f"{s.megapixels:.2f} megapixels in {s.seconds:.1f} s "
            f"({s.megapixels_per_s:.2f} megapixels/s)",
            style="bold red" if s.failed else ""))
    else:
        console.print(table)
    done = [r for r in s.files if r.status == "processed"]
    if len(done) == 1:
        console.print(Text(f"wrote {one_line_text(str(done[0].output))}"))
    elif done:
        where = (f"into {one_line_text(str(options.output))}" if options.output is not None
                 else "beside the inputs as NAME_derained.EXT")
        console.print(Text(f"wrote {len(done)} files {where}"))
    if done and (s.engine or {}).get("rain_angle") == "auto":  # which photos were turned
        turned = [r for r in done if r.rain_angle]
        said = ", ".join(f"{one_line_text(r.input)} {r.rain_angle:+g}" for r in turned[:5])
        more = f" and {len(turned) - 5} more (--json lists each)" if len(turned) > 5 else ""
        console.print(Text(f"--rain-angle auto turned {len(turned)} of {len(done)} photo(s)"
                           + (f": {said}{more}" if turned else "")))
    if s.skipped:
        from .batch import CLAIMED, EXISTS_UNMARKED

        unmarked = sum(1 for r in s.files if r.status == "skipped"
                       and r.reason == EXISTS_UNMARKED)
        raced = sum(1 for r in s.files if r.status == "skipped"
                    and (r.reason or "").startswith("output appeared meanwhile"))
        claimed = sum(1 for r in s.files if r.status == "skipped" and r.reason == CLAIMED)
        if s.skipped > unmarked + raced + claimed:
            console.print(f"skipped {s.skipped - unmarked - raced - claimed} file(s) whose "
                          "result already exists (--overwrite redoes them)")
        if claimed:
            console.print(f"skipped {claimed} file(s) another derain run took (their "
                          "results come from it)")
        if raced:  # counted as "already exists (--overwrite redoes them)" (an audit)
            console.print(f"skipped {raced} file(s) whose result another run wrote while "
                          "this one derained them (kept)")
        if unmarked:  # "--overwrite redoes them" replaced a photo of the user's (an audit)
            console.print(Text(
                f"skipped {unmarked} file(s): a file of the result's name is already in "
                f"{one_line_text(str(options.output))}, a folder derain did not mark as its "
                "results (it held other files when first used, or its marker was deleted): "
                "results of an earlier run are kept; a photo "
                "of yours would be replaced by --overwrite, so choose another -o for it"))
    if s.failed:  # a folder that could not be read, a pattern that matched nothing: no
        kinds = Counter(_failed_kind(path, why) for path, why in s.failed)  # files (audit)
        parts = [f"{kinds[k]} {k}(s)" for k in ("file", "folder", "pattern") if kinds[k]]
        console.print(Text(f"{' and '.join(parts)} failed (reasons above)", style="bold red"))


def _failed_kind(path: str, why: str) -> str:
    """"file", "folder" or "pattern": what a failed input of the summary was."""
    if Path(path).is_dir() or why.startswith("cannot read folder"):
        return "folder"
    return "pattern" if why.startswith("no images match") else "file"


def _summary_table(s: Summary) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col in ("processed", "skipped", "failed", "megapixels", "seconds", "megapixels/s"):
        table.add_column(col, justify="right")
    table.add_row(
        str(s.processed), str(s.skipped),
        Text(str(len(s.failed)), style="bold red" if s.failed else ""),
        f"{s.megapixels:.2f}", f"{s.seconds:.1f}", f"{s.megapixels_per_s:.2f}",
    )
    return table


# --------------------------------------------------------------------------- models
def _count_params(arch: str, config: Any) -> int | None:
    import torch

    from .models import build_architecture

    try:
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            net = build_architecture(arch, config)
    except Exception:  # noqa: BLE001 - fall back to a real build
        try:
            net = build_architecture(arch, config)
        except Exception:  # noqa: BLE001
            return None
    return sum(p.numel() for p in net.parameters())


def _weights_location(rec: Any) -> str:
    from . import weights

    if rec is None:
        return "none"
    if (weights.bundled_dir() / rec.file).exists():
        return "bundled"
    source = rec.hub_source()
    if source is not None:
        from .hub import cached_copy

        try:  # the copy runs would use: verified (a damaged one said "cached"), of any
            # commit (the branch moves), and one a mirror served for an unpublished entry
            found = cached_copy(*source, rec.sha256)  # (it said "damaged": audits)
        except Exception:  # noqa: BLE001 - an unreadable cache is just "not cached"
            found = None
        if found is not None:
            return "cached"
        if rec.hub.get("published", True):  # else "remote = downloaded on first use"
            return "remote"  # could only fail (an audit)
    # a manifest entry that nothing can fetch is one installed with derain: its file gone,
    # it is damaged bundled weights (it said "none": not published yet, train your own)
    return "bundled"


def _fmt_number(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    return f"{v:.2f}" if abs(v) >= 2 else f"{v:.4f}"


def _fmt_metrics(metrics: dict[str, Any], sep: str = "; ") -> str:
    """Evaluation sets as 'set PSNR/SSIM' (Y channel); training-time entries are left out.
    The same order for every model: light rain, heavy rain, real-like rain, then the rest."""
    parts = []
    known = {name: i for i, name in enumerate(("rain100l", "heavy-small", "sirr-val"))}
    for key, value in sorted(metrics.items(), key=lambda kv: (known.get(kv[0], 3), kv[0])):
        if isinstance(value, dict) and "psnr_y" in value:
            ssim = f"/{value['ssim_y']:.4f}" if "ssim_y" in value else ""
            parts.append(f"{key} {value['psnr_y']:.2f}{ssim}")
        elif not isinstance(value, dict):
            parts.append(f"{key} {_fmt_number(value)}")
    return sep.join(parts) or "-"


def _fmt_size(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


def model_rows() -> list[dict[str, Any]]:
    """One dict per registered model (and per manifest weight without a registry entry)."""
    from . import weights
    from .enhancer import DEFAULT_MODEL
    from .fast_path import int8_problem
    from .models import MODELS, config_to_dict

    manifest = weights.load_manifest()
    names = [*MODELS, *(n for n in manifest if n not in MODELS)]
    rows = []
    for name in names:
        spec = MODELS.get(name)
        rec = manifest.get(name)
        arch = spec.arch if spec is not None else rec.arch
        config = spec.config if spec is not None else rec.config
        where = _weights_location(rec)
        have = where in ("bundled", "cached")
        damaged = None  # a bundled file that no longer matches its manifest: every run
        if where == "bundled":  # refuses it, and the list said "bundled" (an audit)
            try:
                if weights.sha256_file(weights.bundled_dir() / rec.file) != rec.sha256:
                    damaged = "its sha256 does not match the manifest"
            except FileNotFoundError:
                damaged = f"its file {rec.file} is missing"
            except OSError as e:
                damaged = f"cannot be read ({e.strerror or e})"
        rows.append({
            "name": name,
            "default": name == DEFAULT_MODEL,
            "arch": arch,
            "summary": spec.summary if spec is not None else "",
            # (the registry's record: building a network for its count imports PyTorch)
            "params": spec.params if spec is not None and spec.params is not None else
            _count_params(arch, config),
            "config": config_to_dict(config) if not isinstance(config, dict) else config,
            "weights": where,
            "bundled_size": rec.size if rec is not None and where == "bundled" else None,
            "size": rec.size if rec is not None else None,
            # why the bundled weights cannot be used (reinstalling derain restores them)
            "weights_problem": damaged,
            "license": rec.license if rec is not None else None,
            "training_data": rec.training_data if rec is not None else None,
            "metrics": rec.metrics if rec is not None else {},
            "status": rec.status if rec is not None else None,
            "hub": rec.hub if rec is not None else {},
            # an int8 graph for CPUs ships with these weights (derain_cli.quantize); it is
            # bundled and runs with weights from the Hub cache too (hidden then: an audit)
            "int8": bool(rec is not None and rec.extra.get("int8") and have),
            # why that graph cannot be used (missing, altered), else None
            "int8_problem": int8_problem(rec) if rec is not None and have else None,
        })
    return rows


@app.command("models", context_settings=CONTEXT_SETTINGS)
def models_cmd(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """List the registered models: size, where the weights are, license, measured quality."""
    err = _stderr()
    with _friendly_errors(err, _STATE.debug):
        rows = model_rows()
        if json_out:
            typer.echo(json.dumps(rows, indent=2))
            return
        # piped or redirected: no terminal to fit (unless COLUMNS says), so do not cut the
        # table at rich's fallback of 80 columns
        if sys.stdout is None:  # stdout closed (derain models >&-): nowhere to list
            return
        piped = not sys.stdout.isatty() and "COLUMNS" not in os.environ
        out = DerainConsole(width=200) if piped else DerainConsole()
        # narrow terminals: drop the architecture first (it is in the name), then the
        # license and size, as each is needed to fit (by measure: at 80 columns the table
        # was 84 wide, and wrapped: an audit); names and scores are never cut (a cut name is
        # an unknown model)
        dropped: set[str] = set()
        for drop in ((), ("arch",), ("license",), ("size",)):
            dropped.update(drop)
            table = _models_table(rows, dropped)
            natural = Measurement.get(out, out.options.update_width(1000), table).maximum
            if natural <= out.width:
                break
        footer = out
        if natural > out.width:  # narrower still: the terminal wraps lines; rich would cut
            # names and scores (a cut name is an unknown model); the note below is folded
            # at the terminal's own width (at the table's, every line of it overflowed)
            out = DerainConsole(width=natural, force_terminal=out.is_terminal)
        out.print(table)
        footer.print(Text(
            "* default model.  params: millions of parameters; size: the weights file.  "
            "weights: bundled = installed with derain; cached = in the Hugging Face cache; "
            "remote = downloaded on first use (or: derain download NAME); none = not "
            "published yet (train your own, use --weights FILE); interim = trained on a CPU "
            "only, far below the papers' figures; + int8 (CPU) = also an int8 graph, which "
            "CPUs run where it is the faster.  metrics: fp32, PSNR (dB) / SSIM on the Y "
            "channel, higher is better, on three evaluation sets (README: Models and "
            "weights).", style="dim"))


def _models_table(rows: list[dict[str, Any]], dropped: set[str]) -> Table:
    """``derain models``' table of ``rows`` without the columns ``dropped``."""
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, show_edge=False,
                  padding=(0, 1, 0, 0), expand=False)
    cols = [("name", {"style": "cyan"}), ("arch", {}), ("params", {"justify": "right"}),
            ("size", {"justify": "right"}), ("weights", {}), ("license", {}),
            ("metrics (Y PSNR/SSIM)", {})]
    for col, kw in cols:
        if col in dropped:
            continue
        wrap = col == "license"  # metrics: one evaluation set per line, never folded
        table.add_column(col, no_wrap=not wrap, overflow="fold", min_width=min(len(col), 8),
                         **kw)
    colour = {"bundled": "green", "cached": "green", "remote": "yellow", "none": "dim"}
    for r in rows:
        params = f"{r['params'] / 1e6:.2f} M" if r["params"] else "?"
        where = Text(r["weights"], style=colour[r["weights"]])
        if r["weights_problem"]:
            where.append(": damaged, reinstall derain", style="red")
        if r["status"]:
            where.append(f"\n{r['status']}", style="yellow" if r["status"] == "interim"
                         else "")
        if r["int8"]:
            where.append("\n+ int8 (CPU)")
            if r["int8_problem"]:
                where.append(": damaged, not used", style="red")
        cells = {"name": r["name"] + (" *" if r["default"] else ""), "arch": r["arch"],
                 "params": params, "size": _fmt_size(r["size"] if r["weights"] != "none"
                                                     else None), "weights": where,
                 "license": r["license"] or "-",
                 "metrics (Y PSNR/SSIM)": _fmt_metrics(r["metrics"], "\n")}
        table.add_row(*(v for k, v in cells.items() if k not in dropped))
    return table


# --------------------------------------------------------------------------- download
@app.command("download", context_settings=CONTEXT_SETTINGS)
def download_cmd(
    ctx: typer.Context,
    names: Annotated[
        list[str] | None,
        typer.Argument(metavar="NAME", show_default=False, help="Models to fetch.",
                       autocompletion=complete_published),
    ] = None,
    model: Annotated[list[str] | None, typer.Option(
        "-m", "--model", show_default=False, autocompletion=complete_published,
        help="A model to fetch, as NAME (repeatable; -m as in the other commands).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Fetch every published model.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Download again even if cached.")
    ] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress bar.")] = False,
) -> None:
    """Fetch published weights into the Hugging Face cache (for offline use later)."""
    refuse_torchrun("download")
    err = _stderr()
    # (a file cut short is not resumed: "to resume" promised what the rerun does not do)
    with _friendly_errors(err, _STATE.debug, again="(the weights fetched are kept; one cut "
                                                  "short may start over)"):
        from . import hub, weights

        manifest = weights.load_manifest()
        known = ", ".join(manifest) or "none published yet"
        names = [*(names or []), *(model or [])]
        if all_ and names:
            raise _usage(ctx, "give model names or --all, not both")
        if not all_ and not names:
            raise _usage(ctx, f"name the models to fetch, or --all (known: {known})")
        targets = list(manifest) if all_ else list(dict.fromkeys(names or []))
        from .models import MODELS

        typos = [n for n in targets if n not in manifest and n not in MODELS]
        if typos:  # every one named, before anything is fetched
            raise _usage(ctx, f"no published weights named {', '.join(map(repr, typos))} "
                              f"(known: {known})")
        # a registered architecture without weights: say why there is nothing to fetch,
        # fetch the others, exit 1 at the end (as `derain IMG -m NAME` does)
        untrained = [n for n in targets if n not in manifest]
        for name in untrained:
            print_error(err, weights.untrained_message(name, "derain --weights"))  # (download
            # has no --weights of its own: an audit)
        targets = [n for n in targets if n in manifest]
        if all_:
            for name in (n for n in MODELS if n not in manifest):
                typer.echo(f"{name}: no weights published yet, skipped "
                           "(train your own: derain train --help)")
        if not targets:
            if untrained:
                raise typer.Exit(1)
            typer.echo("no published weights in the manifest yet; nothing to do")
            return
        failures = len(untrained)
        from .fast_path import int8_problem

        logged = attach_logging(err, _STATE.debug, quiet)  # a repaired cache said as
        try:  # "warning: ..." (it came out bare)
            for name in targets:  # the library's own lookup: bundled, cached, else fetched
                try:
                    path = weights.resolve(name, quiet=quiet, force=force)
                except hub.WeightsUnavailable as e:  # its own message names what and why
                    text = str(e).replace("\n" + hub.WEIGHTS_FILE_HINT, "")  # no --weights here
                    print_error(err, text[:-1] + "." if text.endswith(";") else text)
                    failures += 1
                    continue
                except weights.WeightsError as e:  # a damaged bundled file
                    print_error(err, f"{name}: {e}")
                    failures += 1
                    continue
                if path.parent == weights.bundled_dir():
                    broken = int8_problem(manifest[name])
                    if broken:  # its int8 graph is part of what is bundled
                        print_error(err, f"{name}: bundled weights verified, but its int8 graph "
                                         f"is not usable: {broken}; reinstalling derain restores "
                                         "it (until then another engine runs instead)")
                        failures += 1
                        continue
                    typer.echo(f"{name}: bundled, nothing to do (sha256 verified)")
                else:
                    typer.echo(f"{name}: {path} (sha256 verified)")
        finally:
            detach_logging(logged)
        if failures:
            asked = len(targets) + len(untrained)
            if asked > 1:  # after several models' lines the end said nothing (an audit)
                err.print(f"{failures} of {asked} models not fetched (reasons above); "
                          f"{asked - failures} ready", highlight=False)
            raise typer.Exit(1)


# --------------------------------------------------------------------------- entry point
#: The termination signal received (SIGTERM, SIGHUP), which stops the work as Ctrl-C does
_TERMINATED_BY: list[int] = []


#: set by :func:`main`: this process is the derain command (not a program or a test calling
#: the Typer app), so it may set how the process answers signals as it ends
_OWN_PROCESS: list[bool] = []


def _ignore_further_stops() -> None:
    """Once a Ctrl-C (or SIGTERM, SIGHUP) is being handled, further Ctrl-Cs are ignored while
    the process ends: a second Ctrl-C during the clean-up printed a traceback from
    PyTorch's exit handlers, or ended the process by the signal (status -2, the --json
    summary's promise of 130 broken): an audit. The first stop has done its work (the
    photo being written removed, a training checkpoint saved): the process only exits."""
    import signal
    import threading

    if not _OWN_PROCESS or threading.current_thread() is not threading.main_thread():
        return
    for name, then in (("SIGINT", signal.SIG_IGN), ("SIGBREAK", signal.SIG_IGN),
                       # a kill (torchrun's SIGTERM) ends the process outright, as by
                       # default: not a second KeyboardInterrupt in its exit handlers
                       ("SIGTERM", signal.SIG_DFL), ("SIGHUP", signal.SIG_DFL)):
        sig = getattr(signal, name, None)
        if sig is not None:
            with contextlib.suppress(OSError, ValueError):
                signal.signal(sig, then)


#: the read end of a pipe Python writes each caught signal's number into (``_watch_stops``)
_STOP_PIPE: list[int] = []
_STOPPED: list[bool] = []


def _watch_stops() -> None:
    """Note every Ctrl-C (``signal.set_wakeup_fd``), leaving Python's own handler in place
    (training holds a Ctrl-C only under it): one that lands while a C extension loads
    (numpy, torch: the run's first second or two) surfaces as an ImportError ("initialization
    failed"), and the run ended "error: ..." with exit 1, its --json an error (an audit)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    _STOPPED.clear()  # a new command (tests call main() again in one process)
    if _STOP_PIPE:  # one pipe a process: each main() opened another (a review)
        with contextlib.suppress(OSError):
            while os.read(_STOP_PIPE[0], 4096):  # the last command's signals, drained
                pass
        return
    try:
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except (OSError, ValueError, AttributeError):  # (Windows takes a socket: not watched)
        return
    _STOP_PIPE[:] = [r]


def interrupted_import(e: BaseException) -> bool:
    """Whether ``e`` is an import that a Ctrl-C, SIGTERM or SIGHUP cut short."""
    if not isinstance(e, ImportError):
        return False
    if _TERMINATED_BY or _STOPPED:
        return True
    if _STOP_PIPE:
        import signal

        stops = {int(s) for s in (signal.SIGINT, getattr(signal, "SIGBREAK", None))
                 if s is not None}
        with contextlib.suppress(OSError):
            while True:  # every byte there (a DataLoader's SIGCHLDs among them)
                got = os.read(_STOP_PIPE[0], 4096)
                if not got:
                    break
                if stops & set(got):
                    _STOPPED.append(True)
    return bool(_STOPPED)


def _stop_like_ctrl_c(signum: int, frame: object) -> None:
    if not _TERMINATED_BY:
        _TERMINATED_BY.append(signum)
    raise KeyboardInterrupt


def _printable_stdout() -> None:
    """stdout writes what its encoding cannot hold as escapes: on Windows a pipe or file
    is the ANSI code page (cp1252), and a path with a character outside it failed the
    command after its work was done ("'charmap' codec can't encode...", exit 1: synth,
    export, eval; an audit). stderr does so already (Python's default)."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    encoding = (getattr(sys.stdout, "encoding", "") or "").lower().replace("-", "")
    if reconfigure is None or getattr(sys.stdout, "errors", "strict") != "strict":
        return
    with contextlib.suppress(Exception):  # a replaced stdout may take no such setting
        # UTF-8: a file name's undecodable bytes (Latin-1 on Linux) written back as they
        # are, as the C locale does (strict, synth failed after its work: a review);
        # another code page: what it cannot hold as escapes
        reconfigure(errors="surrogateescape" if encoding in ("utf8", "utf_8")
                    else "backslashreplace")


def _catch_termination() -> None:
    """SIGTERM (``timeout``, ``docker stop``, systemd, Slurm, a CI cancel) and SIGHUP (a
    closed terminal) end the run the way Ctrl-C does: the temporary file of the photo being
    written removed, ``--json``'s summary printed, a training run's checkpoint saved; the
    exit status stays the signal's (128 + N). Python's default killed the process outright
    and left a ``.derain-*.tmp`` beside the user's photos. A signal someone set to be
    ignored (``nohup``'s SIGHUP) stays ignored; only the main thread can catch signals."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    for name in ("SIGTERM", "SIGHUP", "SIGBREAK"):  # SIGBREAK: Windows' Ctrl-Break
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _stop_like_ctrl_c)


def _sane_terminal_size() -> None:
    """``COLUMNS=0`` (Emacs' shell, some fish set-ups) made rich print nothing at all, errors
    included (an audit), and under 20 columns its error box held no words (a review): such a
    size is left to the terminal (or 80 columns). For this process only: derain runs as a
    program of its own."""
    for var, least in (("COLUMNS", 20), ("LINES", 1)):
        value = os.environ.get(var)
        if value is not None and not (value.strip().isdigit() and int(value) >= least):
            del os.environ[var]


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (also ``python -m derain_cli``)."""
    _OWN_PROCESS[:] = [True]
    _printable_stdout()
    _sane_terminal_size()
    _catch_termination()
    _watch_stops()
    # typer prints help and usage errors through consoles of its own: while derain runs,
    # every rich console ends a closed pipe as DerainConsole does (141, not 1)
    plain = Console.on_broken_pipe
    Console.on_broken_pipe = DerainConsole.on_broken_pipe  # type: ignore[method-assign]
    _enable_completion()
    try:
        _main(argv)
    finally:  # a program calling main() in its own process gets its consoles back
        Console.on_broken_pipe = plain  # type: ignore[method-assign]


#: What a shell's completion script sets, whatever the program was started as
#: (``python -m derain_cli`` too): ``eval "$(_DERAIN_COMPLETE=bash_source derain)"``.
COMPLETE_VAR = "_DERAIN_COMPLETE"
_SHELLS = ("bash", "zsh", "fish", "powershell", "pwsh")


def _enable_completion() -> None:
    """Shell completion, on a completion script's request only: Typer's completion classes
    registered (without them every request said "Shell source not supported": an audit),
    and Click's spelling of the request (``bash_source``) taken beside Typer's own
    (``source_bash``). Not offered as --install-completion options: they crowded --help
    and cost every start an import."""
    value = os.environ.get(COMPLETE_VAR)
    if not value:
        return
    import typer.completion

    typer.completion.completion_init()
    first, _, rest = value.partition("_")
    if first in _SHELLS and rest:
        os.environ[COMPLETE_VAR] = f"{rest}_{first}"


def _unhandled_interrupt(e: BaseException) -> bool:
    """Whether ``e`` is Typer's exit for a KeyboardInterrupt no derain code handled: Typer
    raises its Exit *from* the interrupt; derain's handlers say "interrupted" and raise
    theirs from None."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e.__cause__, KeyboardInterrupt):
            return True
        e, seen = e.__context__, seen + 1  # type: ignore[assignment]
    return False


def _pay_json_owed() -> None:
    """The ``--json`` answer a command owes (``owe_json``: the main job's summary or eval's
    result, interrupted, nothing done) where it was stopped before it could print one: in
    its first second, while its modules loaded, a Ctrl-C or SIGTERM left stdout empty for
    the script reading it (an audit)."""
    owed, _STATE.json_owed = _STATE.json_owed, None
    if owed:
        with contextlib.suppress(OSError):
            typer.echo(owed)


def _pay_json_owed_as_error(message: str) -> None:
    """The owed ``--json`` answer (``owe_json``), as an error: an option refused while the
    command line was read (``--strength 1.5``, ``-m nope``) left stdout empty, though the
    command's own refusals print ``{"error": ...}`` (an audit)."""
    owed, _STATE.json_owed = _STATE.json_owed, None
    if not owed:
        return
    answer = json.loads(owed)
    answer.update(interrupted=False, error=command_line_words(message))
    with contextlib.suppress(OSError):
        typer.echo(json.dumps(answer, indent=2))


def _exit_interrupted() -> NoReturn:
    """The end of a stop no command handled: the owed --json, "interrupted", 130 (or the
    termination signal's status)."""
    _ignore_further_stops()
    _pay_json_owed()
    print("\ninterrupted", file=sys.stderr)
    sys.exit(128 + _TERMINATED_BY[0] if _TERMINATED_BY else 130)


def _main(argv: list[str] | None) -> None:
    _STATE.json_owed = _STATE.kept_warnings = None
    try:
        app(args=argv, prog_name="derain", complete_var=COMPLETE_VAR)
    except SystemExit as e:
        if e.code == 130 or _TERMINATED_BY:  # (a subcommand's own Ctrl-C handling)
            _ignore_further_stops()
            _pay_json_owed()
        if e.code == 130 and _unhandled_interrupt(e):  # Typer ends a Ctrl-C that no command
            print("\ninterrupted", file=sys.stderr)  # handled (one while a subcommand's
            # modules load) with 130 and no word: an audit saw a silent exit
        if _TERMINATED_BY and e.code == 130:  # stopped as for Ctrl-C: the signal's status
            sys.exit(128 + _TERMINATED_BY[0])
        raise
    except KeyboardInterrupt:
        _exit_interrupted()
    except Exception as e:  # errors of lazily loaded subcommands
        if interrupted_import(e):  # a Ctrl-C while one of their modules loaded
            _exit_interrupted()
        debug = _STATE.debug or "--debug" in (argv if argv is not None else sys.argv[1:])
        if isinstance(e, BrokenPipeError) and not debug and stdout_gone():
            silence_stdout()  # the reader went away: quiet (see BROKEN_PIPE_STATUS)
            sys.exit(BROKEN_PIPE_STATUS)
        if _STATE.debug or "--debug" in (argv if argv is not None else sys.argv[1:]):
            raise
        print(f"error: {terminal_text(command_line_words(_friendly_message(e)))}",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
