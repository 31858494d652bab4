"""Freed memory kept in the process (``derain_cli.cpu_memory``)."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from derain_cli import cpu_memory

glibc_linux = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt is glibc's")

# A small network run on a 1024 px image a few times, as derain runs its tiles: the minor
# page faults of the later passes say whether their activations (16 channels, 64 MiB in
# fp32: each above glibc's largest mmap threshold) were mapped anew every time.
_PROBE = textwrap.dedent("""
    import json, resource, torch
    from torch import nn
    from derain_cli.cpu_memory import keep_freed_memory
    applied = keep_freed_memory()
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1), nn.Sigmoid(),
                        nn.Conv2d(16, 3, 3, padding=1)).eval()
    x = torch.rand(1, 3, 1024, 1024)
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with torch.inference_mode():
        net(x)
        net(x)
        before = faults()
        for _ in range(3):
            net(x)
    print(json.dumps({"applied": applied, "faults": faults() - before}))
""")


def _probe(setting: str) -> dict:
    env = {**os.environ, cpu_memory.ENV: setting}
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_linux
def test_kept_memory_is_reused_without_page_faults() -> None:
    kept, system = _probe("keep"), _probe("system")
    assert kept["applied"] is True and system["applied"] is False
    # 3 passes x (two 64 MiB activations and the 12 MiB output, in 4 KiB pages) at least
    assert system["faults"] > 3 * (2 * 16384 + 3072), system
    assert kept["faults"] < system["faults"] / 10, (kept, system)


def test_setting_reads_the_environment(monkeypatch: pytest.MonkeyPatch,
                                       caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv(cpu_memory.ENV, raising=False)
    assert cpu_memory.setting() == "keep"
    monkeypatch.setenv(cpu_memory.ENV, " System ")
    assert cpu_memory.setting() == "system"
    monkeypatch.setenv(cpu_memory.ENV, "jemalloc")
    with caplog.at_level(logging.WARNING, logger="derain_cli.cpu_memory"):
        assert cpu_memory.setting() == "keep"
    assert "DERAIN_MALLOC=jemalloc is not one of keep, system; ignored" in caplog.text


def test_a_cpu_torch_runner_keeps_freed_memory() -> None:
    """The torch engine on a CPU turns it on (in a fresh process: it is process-wide)."""
    code = ("import torch; from torch import nn; from derain_cli import cpu_memory; "
            "from derain_cli.torch_runner import TorchRunner; "
            "assert cpu_memory._applied is None; "
            "TorchRunner(nn.Conv2d(3, 3, 1), torch.device('cpu'), 'fp32'); "
            "print(cpu_memory._applied)")
    env = {**os.environ, cpu_memory.ENV: "keep"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert out[-1] == str(glibc)
