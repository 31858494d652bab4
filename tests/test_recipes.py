"""The recipes in recipes/ are the record of how each bundled weight file was made; these
checks keep them runnable as scripts and keep the manifest pointing at them."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from derain_cli.manifest import load_manifest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.sh"))
#: scripts the model recipes call for one stage; not recipes by themselves
STAGE_SCRIPTS = ("additive-stage.sh", "average-stage.sh", "eval-bundle.sh", "soup-stage.sh")
#: scripts that fetch a recipe's input; neither recipes nor stages (tested on their own)
HELPER_SCRIPTS = ("fast-stage8.sh", "weights-at.sh")

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")


@needs_bash
@pytest.mark.parametrize("script", RECIPES, ids=lambda p: p.name)
def test_every_recipe_parses_as_bash(script: Path) -> None:
    res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_every_bundled_weight_names_a_recipe_that_exists() -> None:
    records = load_manifest()
    assert records
    for name, rec in records.items():
        recipe = rec.to_dict().get("recipe")
        assert recipe, f"{name} has no recipe"
        assert (ROOT / recipe).is_file(), f"{name}: {recipe} is missing"


@needs_bash
@pytest.mark.parametrize("script", STAGE_SCRIPTS)
def test_a_stage_script_refuses_a_wrong_argument_count_before_any_work(
        tmp_path: Path, script: str) -> None:
    res = subprocess.run(["bash", str(ROOT / "recipes" / script), "semi-drdnet-tiny"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 2
    assert "usage:" in res.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("stage", STAGE_SCRIPTS)
def test_each_model_recipe_that_uses_a_stage_script_trains_its_own_name(stage: str) -> None:
    # the stage scripts bundle under their NAME argument: a recipe passing another model's
    # name would overwrite that model's weights
    callers = [s for s in RECIPES if s.name not in STAGE_SCRIPTS]
    assert any(f"recipes/{stage}" in s.read_text() for s in callers)
    for script in callers:
        for line in script.read_text().splitlines():
            words = line.split()
            if f"recipes/{stage}" in words:
                name = words[words.index(f"recipes/{stage}") + 1]
                assert name == script.stem, f"{script.name}: {line}"


def _run_with_stubs(tmp_path: Path, script: str, env_extra: dict[str, str],
                    args: tuple[str, ...] = (), gpu_init: bool = True
                    ) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    """Run a recipe with derain, python and python3 replaced by stand-ins that record each
    call's words exactly (quoted notes keep their spaces); returns the run and the calls.
    It runs in a stand-in checkout under ``tmp_path`` (the recipes and weights linked, the
    data folders the recipes name made empty), so that path options find their folders and
    nothing is written here."""
    repo, data = tmp_path / "repo", tmp_path / "data"
    for name in ("recipes", "weights"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).symlink_to(ROOT / name, target_is_directory=True)
    for folder in (*(data / s for s in ("clean-bsds", "real-rain", "rain100l", "heavy-small",
                                       "sirr-val")), repo / ".data/gpu/clean-bsds",
                   repo / ".data/gpu/val"):
        folder.mkdir(parents=True)
    if gpu_init:  # gpu-session.sh: weights an earlier GPU session brought back
        (repo / ".data/gpu/init.safetensors").touch()
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir(exist_ok=True)
    record = ("{ printf '%s' \"$(basename \"$0\")\"; printf '\\037%s' \"$@\"; "
              f"printf '\\036'; }} >> \"{calls}\"\n")
    make_out = ('args=("$@")\n'
                'for i in "${!args[@]}"; do\n'
                '  case "${args[$i]}" in --out|-o) o="${args[$((i + 1))]}"\n'
                '    case "$o" in  # a file output (a weights average) is a file\n'
                '      *.safetensors|*.onnx) mkdir -p "$(dirname "$o")"; touch "$o";;\n'
                '      *) mkdir -p "$o";;\n'
                '    esac;;\n'
                '  esac\n'
                'done\n')
    fail = ('[[ -n "${STUB_FAIL:-}" && "${3:-}" == "$STUB_FAIL" ]] && exit 1\n'  # python -m x
            '[[ -n "${STUB_PRINT:-}" && "${1:-}" == "-c" ]] && echo "$STUB_PRINT"\n')
    for tool in ("derain", "python", "python3"):
        (bin_dir / tool).write_text("#!/usr/bin/env bash\n" + record + fail + make_out)
        (bin_dir / tool).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
           "RUNS": str(tmp_path / "runs"), "OUT": str(tmp_path / "out"), "DATA": str(data),
           **env_extra}
    res = subprocess.run(["bash", str(repo / "recipes" / script), *args], capture_output=True,
                         text=True, cwd=repo, env=env)
    recorded = calls.read_text().split("\x1e") if calls.exists() else []
    return res, [rec.split("\x1f") for rec in recorded if rec]


def _assert_soup_in_thirds(calls: list[list[str]], start: str, first: str,
                           second: str) -> list[list[str]]:
    """The recipe averaged ``start`` and the run ``first`` half and half, then that average
    and ``second`` at a third: the start and the two runs in thirds (benchmarks/
    average_weights.py; the runs' paths are checked by their ends). Returns the two calls."""
    avgs = [c for c in calls if c[:2] == ["python", "benchmarks/average_weights.py"]]
    assert len(avgs) == 2
    assert avgs[0][2] == start and avgs[0][3].endswith(first)
    assert "--alpha" not in avgs[0]
    assert avgs[1][2] == avgs[0][avgs[0].index("-o") + 1]
    assert avgs[1][3].endswith(second)
    assert float(avgs[1][avgs[1].index("--alpha") + 1]) == pytest.approx(1 / 3)
    # the soup's manifest entry is written from both runs (recipes/soup_entry.py), after the
    # average and before the bundle
    entries = [i for i, c in enumerate(calls) if c[:2] == ["python", "recipes/soup_entry.py"]]
    assert len(entries) == 1
    entry = calls[entries[0]]
    soup = str(Path(avgs[1][avgs[1].index("-o") + 1]).parent)
    assert entry[2] == soup
    assert entry[3].endswith(str(Path(first).parent)) and entry[4].endswith(
        str(Path(second).parent))
    bundle = next(i for i, c in enumerate(calls) if c[:2] == ["python", "recipes/bundle.py"])
    assert calls.index(avgs[1]) < entries[0] < bundle
    return avgs


@needs_bash
@pytest.mark.parametrize(("env_extra", "option", "expected"), [
    ({}, "--preset", "light,medium,mixed"),
    ({"PRESET": "light,medium,heavy,mixed"}, "--preset", "light,medium,heavy,mixed"),
    ({}, "--steps", "100000"),
    # a step count the time budget reaches lets the cosine decay finish (annealed stages)
    ({"STEPS": "3800"}, "--steps", "3800"),
])
def test_additive_stage_passes_env_to_train(tmp_path: Path, env_extra: dict[str, str],
                                            option: str, expected: str) -> None:
    res, calls = _run_with_stubs(tmp_path, "additive-stage.sh", env_extra,
                                 args=("semi-drdnet-tiny", "start.safetensors", "out", "60",
                                       "from", "note"))
    assert res.returncode == 0, res.stderr
    train = next(c for c in calls if c[:2] == ["derain", "train"])
    assert train[train.index(option) + 1] == expected


@needs_bash
def test_rdmc_lite_recipe_runs_only_the_stages_asked_for(tmp_path: Path) -> None:
    # semi-drdnet-lite.sh needs rdmc-lite's distilled stage 1 as its teacher, not the later
    # stages: TO_STAGE=1 must stop before any training
    res, calls = _run_with_stubs(tmp_path / "first", "rdmc-lite.sh", {"TO_STAGE": "1"})
    assert res.returncode == 0, res.stderr
    assert any(c[:2] == ["derain", "distill"] for c in calls)
    assert not any(c[:2] == ["derain", "train"] for c in calls)

    res, calls = _run_with_stubs(tmp_path / "rest", "rdmc-lite.sh",
                                 {"FROM_STAGE": "2", "TO_STAGE": "6"})
    assert res.returncode == 0, res.stderr
    assert not any(c[:2] == ["derain", "distill"] for c in calls)
    trains = [c for c in calls if c[:2] == ["derain", "train"]]
    assert len(trains) == 5
    assert trains[0][trains[0].index("--weights") + 1] == "weights/rdmc-lite.safetensors"
    assert trains[3][trains[3].index("--preset") + 1] == "light,medium,heavy,mixed"
    # stages 2-5 ran until their time budget with the rate near its peak; stage 6 decays it
    # over the 800 steps it ran
    assert [t[t.index("--steps") + 1] for t in trains] == ["100000"] * 4 + ["800"]
    for t in trains:  # TRAIN_ARGS comes last, and a later option wins
        last_patch = len(t) - 1 - t[::-1].index("--patch")
        assert t[last_patch + 1] == "256"
        assert t[t.index("--l1-weight") + 1] == "1"


@needs_bash
def test_rdmc_lite_stage_7_distils_stage_6s_bundle_from_semi_drdnet_lite(tmp_path: Path) -> None:
    # stage 7 continues the bundle (stage 6) under the teacher, with no training on pairs
    res, calls = _run_with_stubs(tmp_path, "rdmc-lite.sh", {"FROM_STAGE": "7", "TO_STAGE": "7"})
    assert res.returncode == 0, res.stderr
    assert not any(c[:2] == ["derain", "train"] for c in calls)
    distills = [c for c in calls if c[:2] == ["derain", "distill"]]
    assert len(distills) == 1
    d = distills[0]
    # semi-drdnet-lite's stage 10 from the git history; the stand-in checkout has none, so
    # today's file, said on stderr
    assert d[d.index("-m") + 1] == "weights/semi-drdnet-lite.safetensors"
    assert "semi-drdnet-lite as bundled at commit 965e5bb" in res.stderr
    assert d[d.index("--student") + 1] == "rdmc-lite"
    assert d[d.index("--init") + 1] == "weights/rdmc-lite.safetensors"
    assert d[d.index("--steps") + 1] == "900"
    evals = [c for c in calls if c[:2] == ["derain", "eval"]]
    assert [c[c.index("--data") + 1].rsplit("/", 1)[1] for c in evals] == [
        "rain100l", "heavy-small", "sirr-val"]


@needs_bash
def test_rdmc_lite_stage_8_distils_stage_7s_bundle_again_with_another_seed(
        tmp_path: Path) -> None:
    res, calls = _run_with_stubs(tmp_path, "rdmc-lite.sh", {"FROM_STAGE": "8", "TO_STAGE": "8"})
    assert res.returncode == 0, res.stderr
    assert not any(c[:2] == ["derain", "train"] for c in calls)
    distills = [c for c in calls if c[:2] == ["derain", "distill"]]
    assert len(distills) == 1
    d = distills[0]
    assert d[d.index("--init") + 1] == "weights/rdmc-lite.safetensors"
    assert d[d.index("--seed") + 1] == "83"
    assert d[d.index("--out") + 1].endswith("/stage8")
    bundles = [c for c in calls if c[:2] == ["python", "recipes/bundle.py"]]
    assert len(bundles) == 1
    assert bundles[0][bundles[0].index("--continued-from") + 1].startswith(
        "stage 7 of recipes/rdmc-lite.sh")
    # the default runs every stage, the last one included
    res, calls = _run_with_stubs(tmp_path / "all", "rdmc-lite.sh", {})
    assert res.returncode == 0, res.stderr
    assert [c[c.index("--out") + 1].rsplit("/", 1)[1] for c in calls
            if c[:2] == ["derain", "distill"]] == [
        "round1", "stage7", "stage8", "stage9-lite", "stage9-fast", "stage10-lite",
        "stage10-fast", "stage11-lite", "stage11-fast"]


@needs_bash
@pytest.mark.parametrize(("stage", "seeds", "teachers"), [
    # stage 9: stage 8's bundle distilled from semi-drdnet-lite's stage 10 (seed 89) and
    # semi-drdnet-fast's stage 8 (seed 97); stage 10: stage 9's, from lite's stage 11 (seed
    # 101) and fast's stage 10 (seed 103); stage 11: stage 10's, the same teachers (107, 109)
    ("9", ["89", "97"], ["semi-drdnet-lite as bundled at commit 965e5bb",
                         "semi-drdnet-fast as bundled at commit 220dd1b"]),
    ("10", ["101", "103"], ["semi-drdnet-lite as bundled at commit a9c78fd",
                            "semi-drdnet-fast as bundled at commit 840d42c"]),
    ("11", ["107", "109"], ["semi-drdnet-lite as bundled at commit a9c78fd",
                            "semi-drdnet-fast as bundled at commit 840d42c"]),
])
def test_rdmc_lite_soup_stage_averages_its_start_with_two_distillations_in_thirds(
        tmp_path: Path, stage: str, seeds: list[str], teachers: list[str]) -> None:
    res, calls = _run_with_stubs(tmp_path, "rdmc-lite.sh",
                                 {"FROM_STAGE": stage, "TO_STAGE": stage})
    assert res.returncode == 0, res.stderr
    distills = [c for c in calls if c[:2] == ["derain", "distill"]]
    start = str(tmp_path / f"runs/distill-rdmc-lite/stage{stage}-start.safetensors")
    assert [d[d.index("--init") + 1] for d in distills] == [start, start]
    assert [d[d.index("--seed") + 1] for d in distills] == seeds
    # the stand-in checkout has no git history: today's files, and it says so for each
    assert [d[d.index("-m") + 1] for d in distills] == [
        "weights/semi-drdnet-lite.safetensors", "weights/semi-drdnet-fast.safetensors"]
    for teacher in teachers:
        assert teacher in res.stderr
    _assert_soup_in_thirds(calls, start, f"stage{stage}-lite/model.safetensors",
                           f"stage{stage}-fast/model.safetensors")
    bundles = [c for c in calls if c[:2] == ["python", "recipes/bundle.py"]]
    assert len(bundles) == 1 and bundles[0][2].endswith(f"/stage{stage}")
    assert bundles[0][bundles[0].index("--continued-from") + 1].startswith(
        f"stage {int(stage) - 1} of recipes/rdmc-lite.sh")


@needs_bash
def test_rdmc_lite_stage_12_trains_two_runs_with_the_contrastive_prior_and_averages_thirds(
        tmp_path: Path) -> None:
    # stage 12: stage 11's bundle trained twice (seeds 5 and 6) on added rain in 256 px crops
    # with RDMC's contrastive prior in self features, then the start and the two in thirds
    res, calls = _run_with_stubs(tmp_path, "rdmc-lite.sh", {"FROM_STAGE": "12"})
    assert res.returncode == 0, res.stderr
    assert not [c for c in calls if c[:2] == ["derain", "distill"]]
    trains = [c for c in calls if c[:2] == ["derain", "train"]]
    start = str(tmp_path / "runs/distill-rdmc-lite/stage12-start.safetensors")
    assert [t[t.index("--weights") + 1] for t in trains] == [start, start]
    assert [t[t.index("--seed") + 1] for t in trains] == ["5", "6"]
    for t in trains:
        assert t[t.index("-m") + 1] == "rdmc-lite"
        assert t[t.index("--contrast-features") + 1] == "self"
        assert t[t.index("--patch") + 1] == "256"
        assert t[t.index("--preset") + 1] == "light,medium,heavy,mixed"
    _assert_soup_in_thirds(calls, start, "stage12-seed5/model.safetensors",
                           "stage12-seed6/model.safetensors")
    bundles = [c for c in calls if c[:2] == ["python", "recipes/bundle.py"]]
    assert len(bundles) == 1 and bundles[0][2].endswith("/stage12")
    assert bundles[0][bundles[0].index("--continued-from") + 1].startswith(
        "stage 11 of recipes/rdmc-lite.sh")


@needs_bash
def test_rdmc_lite_recipe_refuses_a_bad_stage_number(tmp_path: Path) -> None:
    for i, bad in enumerate(({"FROM_STAGE": "five"}, {"TO_STAGE": "13"})):
        res, calls = _run_with_stubs(tmp_path / str(i), "rdmc-lite.sh", bad)
        assert res.returncode == 2
        assert "stage numbers" in res.stderr
        assert not calls


def test_semi_drdnet_lite_takes_only_rdmc_lites_first_stage_as_teacher() -> None:
    text = (ROOT / "recipes" / "semi-drdnet-lite.sh").read_text()
    calls = [line for line in text.splitlines() if "recipes/rdmc-lite.sh" in line
             and not line.lstrip().startswith("#")]
    assert calls and all(line.startswith("TO_STAGE=1 ") for line in calls)


def _script_parser(path: str):  # noqa: ANN202 - an argparse parser or a click command
    """The command line of a repository script a recipe calls."""
    import importlib.util

    import typer

    spec = importlib.util.spec_from_file_location(f"_recipe_{Path(path).stem}", ROOT / path)
    assert spec and spec.loader, path
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str((ROOT / path).parent))  # as when run: its folder's modules import
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str((ROOT / path).parent))
    if hasattr(mod, "parser"):
        return mod.parser()
    app = typer.Typer()
    app.command()(mod.bench_cmd)  # bench_inference.py: typer.run(commands_tools.bench_cmd)
    return typer.main.get_command(app)


@needs_bash
@pytest.mark.parametrize("script", [s for s in RECIPES
                                    if s.name not in STAGE_SCRIPTS + HELPER_SCRIPTS],
                         ids=lambda p: p.name)
def test_every_command_a_recipe_runs_parses_with_todays_command_lines(
        tmp_path: Path, script: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A recipe is hours of training: a flag renamed since it was written must fail here, not
    # after the first stage (or on a lent GPU, whose minutes are few). Each recorded call of
    # derain and of the repository's scripts is parsed by the real command line (options,
    # typed values), without running it; `derain train` calls also pass train's own check
    # of the values (--amp, --preset, --contrast-features... are plain strings to the
    # parser). `derain finetune` is parsed only: its checks need the starting weights.
    import typer

    from derain_cli import train as T
    from derain_cli.cli import app

    derain = typer.main.get_command(app)
    monkeypatch.setattr(T, "train", T.check_config)  # the command checks, then stops
    res, calls = _run_with_stubs(tmp_path, script.name, {})
    assert res.returncode == 0, res.stderr
    monkeypatch.chdir(tmp_path)  # where a relative path in a recorded call is made below
    checked = 0
    for words in calls:
        tool, args = words[0], words[1:]
        if tool.startswith("python") and args[:2] == ["-m", "derain_cli"]:
            tool, args = "derain", args[2:]
        if tool == "derain":
            for flag, value in zip(args, args[1:], strict=False):
                made = Path(value)  # by an earlier stage; the parser checks that it exists
                if flag in ("--weights", "--init") and not made.exists():
                    made.parent.mkdir(parents=True, exist_ok=True)
                    made.touch()
            command = derain.get_command(None, args[0])
            ctx = command.make_context(args[0], args[1:])
            if args[0] == "train":
                with ctx:
                    command.invoke(ctx)
        elif args and args[0].endswith(".py"):
            parse = _script_parser(args[0])
            if hasattr(parse, "parse_args") and not hasattr(parse, "make_context"):
                parse.parse_args(args[1:])  # argparse: SystemExit on a bad command line
            else:
                parse.make_context(args[0], args[1:])
        else:
            continue  # python - <<PY, python -m pytest: nothing of ours to parse
        checked += 1
    assert checked, f"{script.name}: no command recorded"


@needs_bash
@pytest.mark.parametrize(("env_extra", "grown_from"), [
    ({}, "semi-drdnet-fast"),
    ({"MODEL": "rdmc"}, "rdmc-lite"),
    ({"GROW_FROM": "none"}, None),
])
def test_a_first_gpu_chunk_starts_from_the_grown_small_model(
        tmp_path: Path, env_extra: dict[str, str], grown_from: str | None) -> None:
    # no weights from an earlier GPU session: the paper-size model starts as the bundled
    # small one grown into it (derain grow, on the device), at the warm-start rate
    res, calls = _run_with_stubs(tmp_path, "gpu-session.sh", {"STAGES": "train", **env_extra},
                                 gpu_init=False)
    assert res.returncode == 0, res.stderr
    grows = [c for c in calls if c[1:4] == ["-m", "derain_cli", "grow"]]
    train = next(c for c in calls if c[1:4] == ["-m", "derain_cli", "train"])
    model = env_extra.get("MODEL", "semi-drdnet")
    assert train[train.index("--model") + 1] == model
    if grown_from is None:
        assert not grows and "--weights" not in train
        assert train[train.index("--lr") + 1] == "3e-4"
        return
    (grow,) = grows
    assert grow[4] == grown_from and grow[grow.index("--to") + 1] == model
    assert train[train.index("--weights") + 1] == grow[grow.index("-o") + 1]
    assert not grow[grow.index("-o") + 1].startswith(".data/")  # never carried back in
    assert train[train.index("--lr") + 1] == "1e-4"
    # the small models' statistics were frozen when they were distilled: refreshing them
    # wrecks them, so a warm start keeps them (and does not re-estimate them)
    assert train[train.index("--batchnorm") + 1] == "keep" and "--bn-recalib" not in train


@needs_bash
@pytest.mark.parametrize(("env_extra", "bn"), [
    ({}, "keep"), ({"GROW_FROM": "none"}, "refresh"),
    ({"GROW_FROM": "none", "WARM_BN": "keep"}, "keep")])
def test_a_later_gpu_chunk_treats_the_statistics_as_its_first_chunk_did(
        tmp_path: Path, env_extra: dict[str, str], bn: str) -> None:
    # weights brought back from an earlier GPU session: a run grown from a small model keeps
    # their statistics; the chunks of a from-scratch run refresh them, as it did in one piece
    res, calls = _run_with_stubs(tmp_path, "gpu-session.sh", {"STAGES": "train", **env_extra})
    assert res.returncode == 0, res.stderr
    assert not [c for c in calls if c[1:4] == ["-m", "derain_cli", "grow"]]
    train = next(c for c in calls if c[1:4] == ["-m", "derain_cli", "train"])
    assert train[train.index("--weights") + 1] == ".data/gpu/init.safetensors"
    assert train[train.index("--batchnorm") + 1] == bn
    assert ("--bn-recalib" in train) == (bn == "refresh")


@needs_bash
def test_a_failed_grow_says_so_and_trains_from_scratch(tmp_path: Path) -> None:
    res, calls = _run_with_stubs(tmp_path, "gpu-session.sh",
                                 {"STAGES": "train", "STUB_FAIL": "grow"}, gpu_init=False)
    assert res.returncode == 0, res.stderr
    assert "grow failed: training from scratch" in res.stdout
    train = next(c for c in calls if c[1:4] == ["-m", "derain_cli", "train"])
    assert "--weights" not in train and train[train.index("--lr") + 1] == "3e-4"


@needs_bash
def test_a_second_gpu_call_on_a_warm_machine_resumes_the_first_ones_run(
        tmp_path: Path) -> None:
    """A review: the second call deleted the first call's last.pt and grew and trained the
    same chunk again; it resumes it now, its time budget counting the whole run."""
    (tmp_path / "derain-run").mkdir(parents=True)
    (tmp_path / "derain-run" / "last.pt").touch()
    res, calls = _run_with_stubs(tmp_path, "gpu-session.sh", {
        "STAGES": "train", "BUDGET": "300", "STUB_PRINT": "120"}, gpu_init=False)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "derain-run" / "last.pt").exists()
    train = next(c for c in calls if c[1:4] == ["-m", "derain_cli", "train"])
    assert "--resume" in train and "--weights" not in train
    assert not any(c[1:4] == ["-m", "derain_cli", "grow"] for c in calls)
    # the run's 120 s so far plus this call's 300 - 90 (less the seconds the script took)
    assert 120 + 200 <= int(train[train.index("--time-budget") + 1]) <= 120 + 210
    # its seconds unreadable: not resumed with a budget it has already spent
    (tmp_path / "again" / "derain-run").mkdir(parents=True)
    (tmp_path / "again" / "derain-run" / "last.pt").touch()
    res, calls = _run_with_stubs(tmp_path / "again", "gpu-session.sh",
                                 {"STAGES": "train", "BUDGET": "300"}, gpu_init=False)
    assert res.returncode == 0 and "not resumed" in res.stdout, res.stdout
    assert not any(c[1:4] == ["-m", "derain_cli", "train"] for c in calls)


@needs_bash
def test_the_gpu_session_runs_finetune_before_the_benchmarks_and_says_what_it_skips(
        tmp_path: Path) -> None:
    """A review: at BUDGET=560 the finetune stage, gated after the benchmarks behind a
    250 s reserve for training, could never run, and said nothing; train had no timeout
    of its own (a hang met the tool's kill before the weights were copied back)."""
    res, calls = _run_with_stubs(tmp_path, "gpu-session.sh", {"BUDGET": "2000"})
    assert res.returncode == 0, res.stderr
    order = []
    for c in calls:
        what = (c[3] if c[1:3] == ["-m", "derain_cli"] else "pytest" if "pytest" in c
                else c[1].split("/")[-1] if len(c) > 1 and c[1].endswith(".py") else None)
        if what in ("pytest", "finetune", "bench_inference.py", "folder_e2e.py", "train") \
                and what not in order:
            order.append(what)
    assert order == ["pytest", "finetune", "bench_inference.py", "folder_e2e.py", "train"]
    res, calls = _run_with_stubs(tmp_path / "short", "gpu-session.sh", {"BUDGET": "100"})
    assert res.returncode == 0, res.stderr
    for stage in ("tests", "finetune", "bench", "folder", "train"):
        assert f"== {stage} skipped" in res.stdout, stage
    assert not calls or all("derain_cli" not in c for c in calls)
    script = (ROOT / "recipes" / "gpu-session.sh").read_text()
    assert script.count("timeout $((secs + 60)) python3 -m derain_cli train") == 2
    # inside the budget: secs is what is left less 90, so the timeout fires 30 s before
    assert "secs=$(($(left) - 90))" in script


@needs_bash
def test_the_gpu_sessions_folder_benchmarks_run_models_that_have_weights(tmp_path: Path) -> None:
    # folder_e2e.py, tile_batch.py and ensemble_cost.py load pretrained weights; the first
    # lent GPU (2026-12-04) lost its folder figure to `-m semi-drdnet`, which has none yet.
    from derain_cli.weights import load_manifest

    res, calls = _run_with_stubs(tmp_path, "gpu-session.sh", {"STAGES": "folder"})
    assert res.returncode == 0, res.stderr
    models = [c[c.index("-m") + 1] for c in calls
              if len(c) > 1 and c[1].endswith(("folder_e2e.py", "tile_batch.py",
                                              "ensemble_cost.py"))]
    assert len(models) == 3 and set(models) <= set(load_manifest()), models


@needs_bash
@pytest.mark.parametrize(("env_extra", "preset", "contrast"), [
    ({}, "light,medium,heavy,mixed", "self"),
    ({"PRESET": "light,veiled", "CONTRAST": "none"}, "light,veiled", "none"),
])
def test_a_gpu_chunk_trains_on_added_rain_with_self_contrast(
        tmp_path: Path, env_extra: dict[str, str], preset: str, contrast: str) -> None:
    # semi-drdnet-lite's stage 10 (light to heavy added rain) raised a grown model on the
    # CPU; the first GPU chunk's veiled draw lost light rain; on that added-rain draw `self`
    # beat no contrastive terms in two seeds (2026-12-04, README, Training your own)
    res, calls = _run_with_stubs(tmp_path, "gpu-session.sh", {"STAGES": "train", **env_extra})
    assert res.returncode == 0, res.stderr
    train = next(c for c in calls if c[1:4] == ["-m", "derain_cli", "train"])
    assert train[train.index("--preset") + 1] == preset
    assert train[train.index("--contrast-features") + 1] == contrast


@needs_bash
def test_the_gpu_sessions_finetune_stage_runs_finetunes_gpu_defaults_and_scores_both(
        tmp_path: Path) -> None:
    # issue 4: `derain finetune`'s GPU defaults (1000 steps of 8 x 128 px) were never timed
    # on a GPU; the stage must run them as a user would (no step, batch or patch flags)
    res, calls = _run_with_stubs(tmp_path, "gpu-session.sh", {"STAGES": "finetune"})
    assert res.returncode == 0, res.stderr
    ft = [c for c in calls if c[1:4] == ["-m", "derain_cli", "finetune"]]
    assert len(ft) == 1 and not {"--steps", "--batch", "--patch"} & set(ft[0])
    assert ft[0][ft[0].index("--rainy") + 1] == ".data/gpu/real"
    evals = [c for c in calls if c[1:4] == ["-m", "derain_cli", "eval"]]
    assert [e[4] for e in evals] == ["-m", "--weights"]  # the start, then the result
    res, calls = _run_with_stubs(tmp_path / "small", "gpu-session.sh",
                                 {"STAGES": "finetune", "FT_ARGS": "--steps 3 --batch 2"})
    ft = next(c for c in calls if c[1:4] == ["-m", "derain_cli", "finetune"])
    assert ft[ft.index("--steps") + 1] == "3" and ft[ft.index("--batch") + 1] == "2"


@needs_bash
def test_semi_drdnet_lite_stage_10_grows_the_defaults_stage_8_not_todays_default(
        tmp_path: Path) -> None:
    # stage 10 grew semi-drdnet-fast's stage 8; the default's stage 9 replaced it later, so
    # the recipe takes stage 8 from the git history (a real checkout: git runs here), and
    # says so where there is none (the stand-in checkout)
    text = (ROOT / "recipes" / "semi-drdnet-lite.sh").read_text()
    assert 'FAST8_FILE=$(bash recipes/fast-stage8.sh "$RUNS/fast-stage8.safetensors")' in text
    res, calls = _run_with_stubs(tmp_path, "semi-drdnet-lite.sh", {})
    assert res.returncode == 0, res.stderr
    grows = [c for c in calls if c[:2] == ["derain", "grow"]]
    assert len(grows) == 1 and grows[0][2] == "weights/semi-drdnet-fast.safetensors"
    assert "no git history here with semi-drdnet-fast as bundled at commit 220dd1b" in res.stderr


@needs_bash
def test_soup_stage_trains_two_runs_from_its_start_and_averages_the_three_in_thirds(
        tmp_path: Path) -> None:
    # semi-drdnet-lite's stage 11 and semi-drdnet-fast's stage 10: added rain, then the
    # veiled draw, each with the contrast flags given (split into words), then START and
    # the two with equal shares, bundled under NAME
    res, calls = _run_with_stubs(tmp_path, "soup-stage.sh", {}, args=(
        "semi-drdnet-fast", "start.safetensors", "runs/r10",
        "--contrast-features self --contrast-terms bg", "some data", "from", "a note"))
    assert res.returncode == 0, res.stderr
    trains = [c for c in calls if c[:2] == ["derain", "train"]]
    assert [t[t.index("--out") + 1] for t in trains] == ["runs/r10-added", "runs/r10-veiled"]
    assert [t[t.index("--preset") + 1].count("veiled") for t in trains] == [0, 1]
    for t in trains:
        assert t[t.index("--weights") + 1] == "start.safetensors"
        assert t[t.index("--contrast-terms") + 1] == "bg"
        assert t[t.index("--contrast-features") + 1] == "self"
        assert t[t.index("--time-budget") + 1] == "600"
        assert t[t.index("--seed") + 1] == "5"
    avgs = _assert_soup_in_thirds(calls, "start.safetensors",
                                  "runs/r10-added/model.safetensors",
                                  "runs/r10-veiled/model.safetensors")
    assert avgs[1][avgs[1].index("-o") + 1] == "runs/r10-soup/model.safetensors"
    bundles = [c for c in calls if c[:2] == ["python", "recipes/bundle.py"]]
    assert len(bundles) == 1 and bundles[0][2] == "runs/r10-soup"
    assert bundles[0][bundles[0].index("--name") + 1] == "semi-drdnet-fast"
    assert bundles[0][bundles[0].index("--note") + 1] == "a note"


@needs_bash
def test_soup_stage_takes_its_runs_seed_from_SEED(tmp_path: Path) -> None:
    # semi-drdnet-tiny's round 9: round 8's soup again with seed 6, and the PSNR term
    # passed through the flags
    res, calls = _run_with_stubs(tmp_path, "soup-stage.sh", {"SEED": "6"}, args=(
        "semi-drdnet-tiny", "start.safetensors", "runs/r9",
        "--contrast-features self --contrast-terms bg --psnr-weight 0.005", "data", "from",
        "a note"))
    assert res.returncode == 0, res.stderr
    trains = [c for c in calls if c[:2] == ["derain", "train"]]
    assert len(trains) == 2
    for t in trains:
        assert t[t.index("--seed") + 1] == "6"
        assert t[t.index("--psnr-weight") + 1] == "0.005"


def _has_commit(commit: str) -> bool:
    return shutil.which("git") is not None and subprocess.run(
        ["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT,
        capture_output=True).returncode == 0


#: the earlier bundles recipes fetch with recipes/weights-at.sh: name, commit, sha256
EARLIER_BUNDLES = [
    ("semi-drdnet-fast", "220dd1b",
     "d6ce3ab16713e6d1a802d47e7b4f6ada623f297425117378a6bb88f027359073"),  # fast-stage8.sh
    ("semi-drdnet-lite", "965e5bb",
     "6aca6ee063936d2d7ba1eae84e1cfb18171b18199be7f906ae67e27a0bbe572c"),  # rdmc-lite 7-9
    ("semi-drdnet-lite", "a9c78fd",
     "34a86dd95bf9990cb9330019ce4d46d9b0451dc5d842d5536be362152dda57d9"),  # rdmc-lite 10-11
    ("semi-drdnet-fast", "840d42c",
     "f8117ccb33567963be97246ac6bec5a07d618ff1a4451afef7d1a0e50fb2c224"),  # rdmc-lite 10-11
]


def test_every_earlier_bundle_a_recipe_fetches_is_listed_here() -> None:
    # a commit and sha256 that a recipe fetches but the test below never checks would fail
    # only when someone reruns that recipe
    text = "".join(s.read_text() for s in RECIPES).replace("\\\n", " ")
    calls = re.findall(r'(?:weights-at\.sh"?|teacher) +([a-z][a-z-]+) +([0-9a-f]{7,40}) +'
                       r'([0-9a-f]{64})\b', text)
    assert set(calls) == set(EARLIER_BUNDLES)


@needs_bash
@pytest.mark.parametrize(("name", "commit", "sha"), EARLIER_BUNDLES,
                         ids=[f"{n}@{c}" for n, c, _ in EARLIER_BUNDLES])
def test_an_earlier_bundle_comes_from_the_git_history_with_its_sha256(
        tmp_path: Path, name: str, commit: str, sha: str) -> None:
    if not _has_commit(commit):
        pytest.skip("no git history (not a full clone)")
    dest = tmp_path / "sub" / "w.safetensors"
    res = subprocess.run(["bash", "recipes/weights-at.sh", name, commit, sha, str(dest)],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(dest) and not res.stderr
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == sha
    # a wrong sha256 is not trusted: today's file, said, nothing left behind
    res = subprocess.run(["bash", "recipes/weights-at.sh", name, commit, "0" * 64, str(dest)],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == f"weights/{name}.safetensors"
    assert "no git history here" in res.stderr and not dest.exists()


@needs_bash
@pytest.mark.skipif(not _has_commit("220dd1b"), reason="no git history (not a full clone)")
def test_fast_stage8_is_weights_at_with_its_commit(tmp_path: Path) -> None:
    dest = tmp_path / "fast8.safetensors"
    res = subprocess.run(["bash", "recipes/fast-stage8.sh", str(dest)], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(dest)
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == EARLIER_BUNDLES[0][2]


@needs_bash
def test_fast_stage8_falls_back_to_todays_file_outside_a_clone(tmp_path: Path) -> None:
    # an archive of the repo has no history: today's file, said on stderr, nothing left behind
    (tmp_path / "recipes").mkdir()
    for helper in HELPER_SCRIPTS:
        shutil.copy(ROOT / "recipes" / helper, tmp_path / "recipes")
    dest = tmp_path / "fast8.safetensors"
    res = subprocess.run(["bash", "recipes/fast-stage8.sh", str(dest)], cwd=tmp_path,
                         capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "GIT_CEILING_DIRECTORIES": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "weights/semi-drdnet-fast.safetensors"
    assert "no git history here" in res.stderr and not dest.exists()
    res = subprocess.run(["bash", "recipes/fast-stage8.sh"], cwd=tmp_path, capture_output=True,
                         text=True)
    assert res.returncode == 2 and "usage:" in res.stderr


def test_a_soup_is_the_same_file_in_every_process(tmp_path: Path) -> None:
    # The recipes bundle benchmarks/average_weights.py's output as it is: its bytes must not
    # depend on the process (safetensors writes its header in a per-process hash order), so
    # that a rerun of a soup stage can be compared with the shipped file byte for byte.
    import torch
    from safetensors.torch import load_file, save_file

    names = [f"layer{i}.weight" for i in range(12)]
    a = {n: torch.full((2, 3), float(i), dtype=torch.float16) for i, n in enumerate(names)}
    b = {n: torch.full((2, 3), float(i + 3), dtype=torch.float16) for i, n in enumerate(names)}
    # metadata as derain writes it: several keys (their order is the one that varied)
    save_file(a, tmp_path / "a.safetensors",
              metadata={k: f"value of {k}" for k in ("name", "arch", "config", "format", "x")})
    save_file(b, tmp_path / "b.safetensors")
    blobs = []
    for i in range(3):
        out = tmp_path / f"soup{i}.safetensors"
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "average_weights.py"),
                        str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
                        "--alpha", "0.3333333", "-o", str(out)], check=True,
                       capture_output=True)
        blobs.append(out.read_bytes())
    assert blobs[0] == blobs[1] == blobs[2]
    soup = load_file(tmp_path / "soup0.safetensors")
    assert torch.equal(soup["layer4.weight"], torch.full((2, 3), 5.0, dtype=torch.float16))


def test_a_soup_says_what_it_is_not_what_its_first_member_was(tmp_path: Path,
                                                               tiny_weights: Path) -> None:
    # Before, A's metadata was copied whole: a soup claimed A's step count and training, or
    # that it was "grown from" another model with an exact agreement. Now A's identity is
    # kept and every member is listed with its share, sha256 and own metadata, a chain of
    # averages (the soup stages average twice) flattened into one list.
    import hashlib
    import json

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from derain_cli.weights import model_from_file

    with safe_open(str(tiny_weights), framework="pt") as f:
        identity = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    files = {}
    for name, shift, extra in (("a", 0, {"steps": "900", "training": "derain distill"}),
                               ("b", 3, {"steps": "40", "training": "derain train"}),
                               ("c", 6, {"grown_from": "x", "exact": "true"})):
        files[name] = tmp_path / f"{name}.safetensors"
        save_file({k: v + shift for k, v in state.items()}, files[name],
                  metadata=identity | extra)

    def soup(a: Path, b: Path, out: Path, alpha: str) -> dict[str, str]:
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "average_weights.py"),
                        str(a), str(b), "--alpha", alpha, "-o", str(out)], check=True,
                       capture_output=True)
        with safe_open(str(out), framework="pt") as f:
            return f.metadata()

    half = soup(files["a"], files["b"], tmp_path / "half.safetensors", "0.5")
    meta = soup(tmp_path / "half.safetensors", files["c"], tmp_path / "soup.safetensors",
                "0.3333333")
    for key in ("format", "name", "arch", "config"):
        assert meta[key] == identity[key] == half[key]
    assert "steps" not in meta and "grown_from" not in meta and "exact" not in meta
    assert meta["training"] == half["training"] != "derain distill"
    listed = json.loads(meta["averaged_from"])
    sha = {n: hashlib.sha256(p.read_bytes()).hexdigest() for n, p in files.items()}
    assert [m["sha256"] for m in listed] == [sha["a"], sha["b"], sha["c"]]
    assert [m["share"] for m in listed] == pytest.approx([1 / 3, 1 / 3, 1 / 3], abs=1e-6)
    assert listed[0]["metadata"] == {"steps": "900", "training": "derain distill"}
    assert listed[2]["metadata"] == {"exact": "true", "grown_from": "x"}
    assert json.loads(half["averaged_from"])[1]["share"] == 0.5
    # and derain still reads it as the network A was, the tensors a third of each
    loaded = model_from_file(tmp_path / "soup.safetensors").state_dict()
    key = next(k for k, v in state.items() if v.is_floating_point())
    expected = state[key].float() + 3  # the mean of +0, +3 and +6
    assert torch.allclose(loaded[key].float(), expected, atol=1e-2)


def test_a_soups_manifest_entry_is_the_soups_not_a_runs(tmp_path: Path,
                                                         tiny_weights: Path) -> None:
    # The recipes copied one run's manifest_entry.json as the soup's: the manifest gave the
    # soup that run's validation score, step count and time (an audit).
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT / "recipes"))
    try:
        import soup_entry
    finally:
        sys.path.pop(0)
    with safe_open(str(tiny_weights), framework="pt") as f:
        identity = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    runs = []
    for i, (steps, wall, psnr) in enumerate(((900, 600.5, 33.4), (700, 590.0, 33.1))):
        run = tmp_path / f"run{i}"
        run.mkdir()
        save_file({k: v + i + 1 for k, v in state.items()}, run / "model.safetensors",
                  metadata=identity | {"steps": str(steps)})
        sha = hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
        (run / "manifest_entry.json").write_text(json.dumps({
            "name": "tiny", "arch": "semi-drdnet", "file": "model.safetensors", "sha256": sha,
            "size": 1, "license": "MIT", "training_data": "run data", "steps": steps,
            "wall_time_s": wall, "hardware": "1x CPU", "status": "candidate",
            "metrics": {"val": {"set": "rain100l", "psnr": psnr, "ssim": 0.9, "count": 10,
                                "step": steps, "best_psnr": psnr, "best_step": steps}},
            "before_distillation": {"student_psnr": 1.0}}))
        runs.append(run)
    soup = tmp_path / "soup"
    soup.mkdir()
    for args in ([str(tiny_weights), str(runs[0] / "model.safetensors"), "-o",
                  str(tmp_path / "half.safetensors")],
                 [str(tmp_path / "half.safetensors"), str(runs[1] / "model.safetensors"),
                  "--alpha", "0.3333333", "-o", str(soup / "model.safetensors")]):
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "average_weights.py"), *args],
                       check=True, capture_output=True)
    res = subprocess.run([sys.executable, str(ROOT / "recipes" / "soup_entry.py"), str(soup),
                          str(runs[0]), str(runs[1]), "--training-data", "soup data",
                          "--set", "teacher=someone"], capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    entry = json.loads((soup / "manifest_entry.json").read_text())
    assert entry["sha256"] == hashlib.sha256(
        (soup / "model.safetensors").read_bytes()).hexdigest()
    assert entry["metrics"] == {} and "before_distillation" not in entry
    assert entry["steps"] == 1600 and entry["wall_time_s"] == 1190.5
    assert entry["hardware"] == "1x CPU"
    assert entry["training_data"] == "soup data" and entry["teacher"] == "someone"
    shares = [m["share"] for m in entry["soup"]]
    assert shares == pytest.approx([1 / 3] * 3, abs=1e-6)
    assert entry["soup"][0]["sha256"] == hashlib.sha256(tiny_weights.read_bytes()).hexdigest()
    assert "run" not in entry["soup"][0]
    assert [m.get("run") for m in entry["soup"][1:]] == ["run0", "run1"]
    assert entry["soup"][2]["val"] == {"set": "rain100l", "psnr": 33.1, "ssim": 0.9,
                                       "count": 10}
    # a run named twice counts once; a member averaged in twice is listed twice, its run's
    # steps counted once; two runs with the same weights cannot be told apart: refused
    again = soup_entry.soup_entry(soup, [runs[0], runs[1], runs[0] / ".." / runs[0].name])
    assert again["steps"] == 1600 and len(again["soup"]) == 3
    twice = tmp_path / "twice"
    twice.mkdir()
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "average_weights.py"),
                    str(runs[0] / "model.safetensors"), str(runs[0] / "model.safetensors"),
                    "-o", str(twice / "model.safetensors")], check=True, capture_output=True)
    doubled = soup_entry.soup_entry(twice, [runs[0]])
    assert [m["run"] for m in doubled["soup"]] == ["run0", "run0"]
    assert doubled["steps"] == 900 and doubled["wall_time_s"] == 600.5
    clone = tmp_path / "clone"
    shutil.copytree(runs[0], clone)
    with pytest.raises(SystemExit, match="hold the same weights"):
        soup_entry.soup_entry(twice, [runs[0], clone])
    # a run that is not a member is refused, and so is a file that is not a soup
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "manifest_entry.json").write_text(json.dumps({"sha256": "0" * 64}))
    with pytest.raises(SystemExit, match="not a member"):
        soup_entry.soup_entry(soup, [runs[0], stray])
    with pytest.raises(SystemExit, match="lists no members"):
        soup_entry.soup_entry(runs[0], [runs[0]])


@needs_bash
def test_the_defaults_stage_9_and_the_average_stage_write_the_soups_own_entry(
        tmp_path: Path) -> None:
    # semi-drdnet-fast's stage 9 averages four runs (two averages of two, then those two):
    # its entry lists all four runs; average-stage.sh (a cycle and its start) the cycle
    res, calls = _run_with_stubs(tmp_path / "fast", "semi-drdnet-fast.sh", {})
    assert res.returncode == 0, res.stderr
    entries = [c for c in calls if c[:2] == ["python", "recipes/soup_entry.py"]]
    stage9 = [c for c in entries if c[2].endswith("fast-r9-soup")]
    assert len(stage9) == 1
    assert [Path(r).name for r in stage9[0][3:7]] == [f"fast-r9{x}" for x in "abcd"]
    assert stage9[0][stage9[0].index("--training-data") + 1].startswith(
        "synthetic rain (light,medium,heavy,mixed; two of the four runs also veiled")
    res, calls = _run_with_stubs(tmp_path / "avg", "average-stage.sh", {}, args=(
        "semi-drdnet-tiny", "start.safetensors", "runs/cycle", "runs/avg", "from", "a note",
        "the data"))
    assert res.returncode == 0, res.stderr
    entries = [c for c in calls if c[:2] == ["python", "recipes/soup_entry.py"]]
    assert entries == [["python", "recipes/soup_entry.py", "runs/avg", "runs/cycle",
                        "--training-data", "the data"]]


def test_bundle_takes_a_soups_own_validation(tmp_path: Path, tiny_weights: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # eval-bundle.sh scores a soup on the validation pairs (derain eval --limit 10) and
    # bundle.py's --val-eval makes that its metrics.val, with how it was measured
    import json

    sys.path.insert(0, str(ROOT / "recipes"))
    try:
        import bundle
    finally:
        sys.path.pop(0)
    from derain_cli.manifest import load_manifest as load
    from derain_cli.manifest import write_manifest as write

    dest = tmp_path / "weights"
    dest.mkdir()
    manifest = dest / "manifest.json"
    monkeypatch.setattr(bundle, "bundled_dir", lambda: dest)
    monkeypatch.setattr(bundle, "load_manifest", lambda: load(manifest))
    monkeypatch.setattr(bundle, "write_manifest", lambda records: write(records, manifest))
    run = tmp_path / "soup"
    run.mkdir()
    shutil.copy(tiny_weights, run / "model.safetensors")
    (run / "manifest_entry.json").write_text(json.dumps({
        "name": "tiny", "arch": "semi-drdnet", "config": {}, "dtype": "float16",
        "file": "model.safetensors", "sha256": "x", "size": 1, "metrics": {}, "soup": []}))
    (run / "val.json").write_text(json.dumps({
        "data_dir": "/data/rain100l", "psnr_y": 32.97057, "ssim_y": 0.948287,
        "psnr_rgb": 31.0, "count": 10}))
    bundle.main([str(run), "--name", "tiny-soup", "--val-eval", str(run / "val.json")])
    rec = load(manifest)["tiny-soup"].to_dict()
    assert rec["metrics"]["val"] == {
        "set": "rain100l", "psnr": 32.971, "ssim": 0.9483, "count": 10,
        "measured_by": bundle.VAL_EVAL.format(count=10)}
    assert rec["sha256"] == hashlib.sha256((dest / "tiny-soup.safetensors").read_bytes()
                                           ).hexdigest()


@needs_bash
@pytest.mark.parametrize("soup", [True, False])
def test_eval_bundle_scores_a_soup_on_the_validation_pairs(tmp_path: Path, soup: bool) -> None:
    run = tmp_path / "repo" / "runs" / "s"
    run.mkdir(parents=True)
    (run / "manifest_entry.json").write_text('{"soup": []}' if soup else '{"steps": 3}')
    res, calls = _run_with_stubs(tmp_path, "eval-bundle.sh", {}, args=(
        "semi-drdnet-tiny", "runs/s", "from", "a note"))
    assert res.returncode == 0, res.stderr
    evals = [c for c in calls if c[:2] == ["derain", "eval"]]
    limited = [e for e in evals if "--limit" in e]
    bundles = [c for c in calls if c[:2] == ["python", "recipes/bundle.py"]]
    assert len(bundles) == 1 and len(evals) == 3 + soup
    if soup:
        assert limited[0][limited[0].index("--limit") + 1] == "10"
        assert limited[0][limited[0].index("--data") + 1].endswith("/rain100l")
        assert bundles[0][bundles[0].index("--val-eval") + 1] == "runs/s/val-rain100l.json"
    else:
        assert not limited and "--val-eval" not in bundles[0]
