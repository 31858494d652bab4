"""Time ``derain PHOTO`` end to end, as a user runs it: wall seconds and peak RSS.

Why: issue 3's rule (a 12-megapixel photo in under 2 minutes with the default model)
and issue 6's (under 60 s) are about the whole command, not the network alone: start-up,
JPEG decoding, the tiler's statistics pass, every tile, blending and encoding.

    python benchmarks/photo_e2e.py [--megapixels 12] [-m MODEL ...] [--repeats 1]
        [--photo PHOTO.jpg] [--tree OTHER_CHECKOUT ...] [--env NAME=VALUE ...]
        [-- EXTRA DERAIN ARGS]

Without ``--photo`` it builds the test photo itself: the four bundled rainy examples
(``examples/*_rain.jpg``, made by ``examples/make_examples.py``) resized into a 2x2
mosaic of 4:3 aspect with the requested pixel count, saved as a quality-92 JPEG. Each
model runs in a fresh ``derain`` process (``--json --overwrite``: no bars, and the
summary says which engine ran; defaults otherwise, plus its own and the extra
arguments); models are interleaved round by round so that a busy moment hits all of
them alike. Peak RSS is the child process's own (``os.wait4``).
``--tree`` and ``--env`` add configurations run beside each model: another source tree, or
one more environment setting (``--env DERAIN_MALLOC=system``: glibc's own allocation
behaviour, against ``cpu_memory``'s default).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]



def count(text: str) -> int:
    """--repeats: 0 crashed on min() of nothing (an audit). Named as argparse says it."""
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n

def add_model_args(ap: argparse.ArgumentParser) -> None:
    """The options of the in-process benchmarks (``folder_e2e``, ``tile_batch``): one
    registered model on one device, a mosaic of this size."""
    ap.add_argument("-m", "--model", default=None, help="registered model (default: default)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--megapixels", type=float, default=12.0)
    ap.add_argument("--repeats", type=count, default=2,
                    help="timed runs of each configuration, interleaved (best)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")


def make_photo(path: Path, megapixels: float, variant: int = 0) -> tuple[int, int]:
    """A 4:3 mosaic of the bundled rainy examples with about ``megapixels`` MP.

    ``variant`` n > 0 rotates the examples' order by n and mirrors them when n is odd,
    for folders of different photos (``folder_e2e.py``)."""
    w = int(round((megapixels * 1e6 * 4 / 3) ** 0.5 / 2)) * 2
    h = w * 3 // 4
    examples = sorted((ROOT / "examples").glob("*_rain.jpg"))[:4]
    if len(examples) < 4:
        raise SystemExit("examples/*_rain.jpg missing: run python examples/make_examples.py")
    canvas = Image.new("RGB", (w, h))
    for i in range(4):
        tile = Image.open(examples[(i + variant) % 4]).convert("RGB").resize(
            (w // 2, h // 2), Image.LANCZOS)
        if variant % 2:
            tile = ImageOps.mirror(tile)
        canvas.paste(tile, ((i % 2) * (w // 2), (i // 2) * (h // 2)))
    canvas.save(path, quality=92)
    return w, h


def run_once(photo: Path, out: Path, model: str | None, extra: list[str],
             tree: Path | None = None, env_set: dict[str, str | None] | None = None,
             ) -> tuple[float, float, str, str]:
    """Seconds, peak RSS (GB), engine ("onnx int8"...) and the engine choice's note of one
    ``derain`` process;
    ``tree``: run the ``derain_cli`` of that source tree (another checkout) instead of the
    installed one; ``env_set``: with these environment variables set (None: removed)."""
    cmd = [sys.executable, "-m", "derain_cli", str(photo), "-o", str(out), "--json",
           "--overwrite"]
    if model:
        cmd += ["-m", model]
    env, cwd = dict(os.environ), None
    for var, value in (env_set or {}).items():
        if value is None:
            env.pop(var, None)
        else:
            env[var] = value
    if tree is not None:  # -m puts the working directory first on sys.path: run from /
        env["PYTHONPATH"] = str(tree.resolve())
        cwd = "/"
    with tempfile.TemporaryFile("w+") as summary:  # --json: the summary, no bars
        start = time.perf_counter()
        proc = subprocess.Popen(cmd + extra, env=env, cwd=cwd, stdout=summary)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd + extra)} failed with exit code {proc.returncode}")
        summary.seek(0)
        engine = json.loads(summary.read()).get("engine") or {}  # older trees: none
    how = f"{engine.get('backend', '?')} {engine.get('precision', '?')}" if engine else "?"
    # the note: what a measured engine choice timed, and why this engine
    return seconds, usage.ru_maxrss / 1024**2, how, engine.get("note") or ""  # KiB on Linux


Config = tuple[str, Path | None, dict[str, str | None]]


def _configurations(trees: list[Path], settings: list[str]) -> list[Config]:
    """(row label, source tree, environment changes) of each configuration run beside a
    model: this checkout, each ``--tree``, each ``--env NAME=VALUE``. The rows without a
    setting run with its variable unset, so the caller's environment cannot blur the A/B."""
    if len(set(settings)) < len(settings):
        raise SystemExit("--env: the same setting given twice")
    parsed = [(setting, *setting.split("=", 1)) for setting in settings if "=" in setting]
    if len(parsed) < len(settings) or any(not var for _, var, _ in parsed):
        raise SystemExit(f"--env {settings!r}: expected NAME=VALUE each")
    unset: dict[str, str | None] = {var: None for _, var, _ in parsed}
    return ([("", None, unset)] + [(f" [{t}]", t, unset) for t in trees]
            + [(f" [{setting}]", None, {**unset, var: value}) for setting, var, value in parsed])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--megapixels", type=float, default=12.0)
    ap.add_argument("--photo", type=Path, help="time this photo instead of the mosaic")
    ap.add_argument("-m", "--model", action="append",
                    help="model(s); default: the default. A value may carry its own derain "
                         "arguments, to compare settings: -m 'semi-drdnet-tiny "
                         "--stats-megapixels 0'")
    ap.add_argument("--repeats", type=count, default=1)
    ap.add_argument("--tree", type=Path, action="append", default=[],
                    help="also run each model from this source tree (e.g. a `git worktree` "
                         "of an older commit), interleaved with this one: an A/B of code")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="also run each model with this environment variable set, "
                         "interleaved: an A/B of a setting (the other rows run with the "
                         "variable unset)")
    ap.add_argument("--fresh-cache", action="store_true",
                    help="start each configuration (this tree, each --tree, each --env) on "
                         "an empty derain cache of its own (DERAIN_CACHE in a temporary "
                         "folder, kept across its repeats): its first run of each model "
                         "exports graphs and times engine choices, as on a new machine")
    ap.add_argument("extra", nargs="*", help="more derain arguments (after --)")
    args = ap.parse_args()

    if args.fresh_cache and any(e.split("=", 1)[0] == "DERAIN_CACHE" for e in args.env):
        raise SystemExit("--fresh-cache gives each configuration its own DERAIN_CACHE; "
                         "--env DERAIN_CACHE=... would override it")
    work = Path(tempfile.mkdtemp(prefix="derain-e2e-"))
    try:
        photo = args.photo
        if photo is None:
            photo = work / "photo.jpg"
            w, h = make_photo(photo, args.megapixels)
            print(f"test photo: {w}x{h} mosaic of examples/*_rain.jpg ({w * h / 1e6:.1f} MP)")
        models = args.model or [None]
        configs = _configurations(args.tree, args.env)
        if args.fresh_cache:  # one empty cache per configuration: no row inherits another's
            configs = [(label, tree, {**env_set, "DERAIN_CACHE": str(work / f"cache-{i}")})
                       for i, (label, tree, env_set) in enumerate(configs)]
        rows: dict[str, list[tuple[float, float, str, str]]] = {
            (m or "(default)") + label: [] for m in models for label, _, _ in configs}
        for _ in range(args.repeats):
            for m in models:
                name, *own = shlex.split(m) if m else [None]
                for label, tree, env_set in configs:
                    rows[(m or "(default)") + label].append(
                        run_once(photo.resolve(), (work / "out.jpg").resolve(), name,
                                 own + args.extra, tree, env_set))
        print("| model | engine | seconds (best) | all runs | peak RSS |")
        print("| --- | --- | ---: | --- | ---: |")
        notes: list[str] = []
        for name, runs in rows.items():
            secs = [s for s, _, _, _ in runs]
            engines = ", ".join(dict.fromkeys(e for _, _, e, _ in runs))
            notes += [f"- {name}: {e} ({note})" for _, _, e, note in runs if note]
            print(f"| {name} | {engines} | {min(secs):.1f} | "
                  f"{', '.join(f'{s:.1f}' for s in secs)} | "
                  f"{max(r for _, r, _, _ in runs):.2f} GB |")
        if notes:
            print("\nWhy each engine (the banner's note, each run):")
            print("\n".join(notes))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
