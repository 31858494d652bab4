"""The recipes in recipes/ are the record of how each bundled weight file was made; these
checks keep them runnable as scripts and keep the manifest pointing at them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from derain_cli.manifest import load_manifest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.sh"))

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
def test_additive_stage_refuses_a_wrong_argument_count_before_any_work(tmp_path: Path) -> None:
    res = subprocess.run(["bash", str(ROOT / "recipes" / "additive-stage.sh"), "semi-drdnet-tiny"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 2
    assert "usage:" in res.stderr
    assert not any(tmp_path.iterdir())


def test_each_model_recipe_that_uses_the_additive_stage_trains_its_own_name() -> None:
    # the stage script bundles under its NAME argument: a recipe passing another model's
    # name would overwrite that model's weights
    callers = [s for s in RECIPES if s.name != "additive-stage.sh"]
    assert any("recipes/additive-stage.sh" in s.read_text() for s in callers)
    for script in callers:
        for line in script.read_text().splitlines():
            words = line.split()
            if "recipes/additive-stage.sh" in words:
                name = words[words.index("recipes/additive-stage.sh") + 1]
                assert name == script.stem, f"{script.name}: {line}"


def _run_with_stubs(tmp_path: Path, script: str, env_extra: dict[str, str],
                    args: tuple[str, ...] = (), cwd: Path = ROOT
                    ) -> subprocess.CompletedProcess[str]:
    """Run a recipe (from the repository root unless ``cwd`` says otherwise) with derain and
    python replaced by stand-ins that record their arguments (derain also makes its --out
    folder, as the real one does)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "calls"
    (bin_dir / "derain").write_text(
        '#!/usr/bin/env bash\n'
        f'echo "derain $*" >> "{calls}"\n'
        'args=("$@")\n'
        'for i in "${!args[@]}"; do\n'
        '  if [ "${args[$i]}" = --out ]; then mkdir -p "${args[$((i + 1))]}"; fi\n'
        'done\n')
    (bin_dir / "python").write_text(f'#!/usr/bin/env bash\necho "python $*" >> "{calls}"\n')
    for tool in ("derain", "python"):
        (bin_dir / tool).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path),
           "RUNS": str(tmp_path / "runs"), **env_extra}
    return subprocess.run(["bash", str(ROOT / "recipes" / script), *args], capture_output=True,
                          text=True, cwd=cwd, env=env)


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
    res = _run_with_stubs(tmp_path, "additive-stage.sh", env_extra,
                          args=("semi-drdnet-tiny", "start.safetensors", "out", "60", "from",
                                "note"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    train = next(line for line in (tmp_path / "calls").read_text().splitlines()
                 if line.startswith("derain train"))
    words = train.split()
    assert words[words.index(option) + 1] == expected


@needs_bash
def test_rdmc_lite_recipe_runs_only_the_stages_asked_for(tmp_path: Path) -> None:
    # semi-drdnet-lite.sh needs rdmc-lite's distilled stage 1 as its teacher, not the later
    # stages: TO_STAGE=1 must stop before any training
    res = _run_with_stubs(tmp_path, "rdmc-lite.sh", {"TO_STAGE": "1"})
    assert res.returncode == 0, res.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert any(c.startswith("derain distill") for c in calls)
    assert not any(c.startswith("derain train") for c in calls)

    (tmp_path / "calls").unlink()
    res = _run_with_stubs(tmp_path, "rdmc-lite.sh", {"FROM_STAGE": "2"})
    assert res.returncode == 0, res.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert not any(c.startswith("derain distill") for c in calls)
    trains = [c.split() for c in calls if c.startswith("derain train")]
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
def test_rdmc_lite_recipe_refuses_a_bad_stage_number(tmp_path: Path) -> None:
    res = _run_with_stubs(tmp_path, "rdmc-lite.sh", {"FROM_STAGE": "five"})
    assert res.returncode == 2
    assert "stage numbers" in res.stderr
    assert not (tmp_path / "calls").exists()


def test_semi_drdnet_lite_takes_only_rdmc_lites_first_stage_as_teacher() -> None:
    text = (ROOT / "recipes" / "semi-drdnet-lite.sh").read_text()
    calls = [line for line in text.splitlines() if "recipes/rdmc-lite.sh" in line
             and not line.lstrip().startswith("#")]
    assert calls and all(line.startswith("TO_STAGE=1 ") for line in calls)
