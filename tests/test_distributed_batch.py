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
