"""A folder split over 2 processes with torchrun (gloo, CPU): each file once, one summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow


def _torchrun(*args: str | Path, cwd: Path,
              env_set: dict[str, str | None] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    for k, v in (env_set or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "derain_cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=240)


def test_torchrun_two_processes(tmp_path: Path, tiny_weights: Path) -> None:
    src = tmp_path / "rainy"
    src.mkdir()
    for i in range(6):
        arr = np.random.default_rng(i).integers(0, 256, (10, 14, 3), dtype=np.uint8)
        Image.fromarray(arr).save(src / f"p{i}.png")

    p = _torchrun(src, "--weights", tiny_weights, "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)  # exactly one JSON document: only rank 0 printed
    assert summary["world_size"] == 2
    assert (summary["processed"], summary["skipped"], summary["failed"]) == (6, 0, [])
    names = sorted(Path(f["input"]).name for f in summary["files"])
    assert names == [f"p{i}.png" for i in range(6)]  # every file exactly once
    assert {f["rank"] for f in summary["files"]} == {0, 1}  # and both ranks worked
    assert sorted(x.name for x in src.glob("*_derained.png")) == [
        f"p{i}_derained.png" for i in range(6)]

    # Rerun without --json: everything is skipped, and the table appears once (rank 0 only).
    p = _torchrun(src, "--weights", tiny_weights, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("megapixels/s") == 1
    assert "skipped 6 file(s)" in p.stderr
    # a run that writes nothing takes back the -o folder it made: the other rank's hold on
    # it kept rank 0 from doing so (a review)
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(2):
        (bad / f"b{i}.png").write_bytes(b"not a png")
    p = _torchrun(bad, "-o", tmp_path / "ob", "--weights", tiny_weights, cwd=tmp_path)
    assert p.returncode == 1 and not (tmp_path / "ob").exists(), p.stderr


def test_torchrun_ranks_take_rank_0s_engine(tmp_path: Path, tiny_weights: Path) -> None:
    """fp32 on CPUs is timed once (engine_choice): by rank 0 alone, whose pick every rank
    runs, so no two ranks time at once on the same cores or run different engines."""
    src = tmp_path / "rainy"
    src.mkdir()
    for i in range(4):
        arr = np.random.default_rng(i).integers(0, 256, (40, 50, 3), dtype=np.uint8)
        Image.fromarray(arr).save(src / f"p{i}.png")
    cache = tmp_path / "cache"
    p = _torchrun(src, "--weights", tiny_weights, "--json", "--precision", "fp32",
                  "--device", "cpu", "--threads", "1", cwd=tmp_path,
                  env_set={"DERAIN_CACHE": str(cache), "DERAIN_CPU_FP32": None})
    assert p.returncode == 0, p.stderr
    engine = json.loads(p.stdout)["engine"]
    first, second = engine["ranks"]
    assert first["note"].startswith("measured now") and second["note"] == "rank 0's choice"
    assert (first["backend"], first["precision"]) == (second["backend"], second["precision"])
    assert second["precision"] == "fp32" and engine["backend"] == first["backend"]
    assert len(json.loads((cache / "engines.json").read_text())) == 1


def test_rank_0_lists_the_inputs_for_every_rank(tmp_path: Path, tiny_weights: Path) -> None:
    """Each process listed the folder itself: where their views differed (another node, a
    folder still filling) photos were skipped without a word, or the ranks waited on each
    other for ever (an audit). Rank 1 here sees one more photo than rank 0."""
    views = {}
    for side in ("a", "b"):
        folder = tmp_path / side / "late"
        folder.mkdir(parents=True)
        for i in range(6):
            arr = np.random.default_rng(i).integers(0, 256, (10, 14, 3), dtype=np.uint8)
            Image.fromarray(arr).save(folder / f"p{i}.png")
        views[side] = folder.parent
    # sorted first, it shifts rank 1's share of its own list onto rank 0's photos
    Image.fromarray(np.zeros((10, 14, 3), np.uint8)).save(views["b"] / "late" / "a_new.png")
    wrapper = tmp_path / "view.py"
    wrapper.write_text(
        "import os, runpy, sys\n"
        f"if os.environ.get('RANK') == '1':\n    os.chdir({str(views['b'])!r})\n"
        "sys.argv[0] = 'derain'\n"
        "runpy.run_module('derain_cli', run_name='__main__')\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", str(wrapper), "late", "-o", str(out), "--weights", str(tiny_weights), "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=views["a"],
                       timeout=240)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert (summary["processed"], summary["skipped"], summary["failed"]) == (6, 0, [])
    assert sorted(x.name for x in out.glob("*.png")) == [f"p{i}.png" for i in range(6)]


def test_a_refused_precision_is_said_once_and_every_rank_exits(tmp_path: Path,
                                                               tiny_weights: Path) -> None:
    """fp16 on CPUs: rank 0 refused it while picking the engine, and rank 1, waiting for
    that pick, died with a gloo "Connection closed by peer" error (an audit)."""
    src = tmp_path / "rainy"
    src.mkdir()
    Image.fromarray(np.zeros((10, 14, 3), np.uint8)).save(src / "p0.png")
    p = _torchrun(src, "--weights", tiny_weights, "--precision", "fp16", "--device", "cpu",
                  cwd=tmp_path)
    assert p.returncode != 0
    assert p.stderr.count("fp16 is not supported on the CPU") == 1, p.stderr
    assert "gloo" not in p.stderr and "Connection closed" not in p.stderr, p.stderr
