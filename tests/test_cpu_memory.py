"""Freed memory kept in the process (``derain_cli.cpu_memory``)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import derain_cli
from derain_cli import cpu_memory
from derain_cli import train as T

glibc_linux = pytest.mark.skipif(not cpu_memory._glibc(), reason="mallopt is glibc's")

# The checkout whose derain_cli this test imported: the subprocesses must run the same code.
_SOURCE = str(Path(derain_cli.__file__).resolve().parents[1])

# A small network run on a 1024 px image a few times, as derain runs its tiles. Two readings:
# the bytes glibc holds in separate mappings while a 64 MiB tensor is alive (glibc's
# mallinfo2: what the setting changes), and the minor page faults of the later passes
# (what that costs: each activation, 16 channels in fp32, is 64 MiB).
_PROBE = textwrap.dedent("""
    import ctypes, json, resource, torch
    from torch import nn
    from derain_cli.cpu_memory import keep_freed_memory

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = Mallinfo2
    applied = keep_freed_memory()
    big = torch.ones(64 * 2**20 // 4)
    mapped = mallinfo2().hblkhd
    del big
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1), nn.Sigmoid(),
                        nn.Conv2d(16, 3, 3, padding=1)).eval()
    x = torch.rand(1, 3, 1024, 1024)
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with torch.inference_mode():
        net(x)
        net(x)
        passes = []
        for _ in range(4):  # each pass's own: the fewest (a pass whose threads took a
            before = faults()  # fresh malloc arena faulted it in once: a flaky 49k)
            net(x)
            passes.append(faults() - before)
    print(json.dumps({"applied": applied, "mapped": mapped, "faults": min(passes)}))
""")


def _python(code: str, setting: str) -> str:
    env = {**os.environ, cpu_memory.ENV: setting,
           "PYTHONPATH": os.pathsep.join(filter(None, [_SOURCE, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, cwd=_SOURCE)
    return out.stdout.strip().splitlines()[-1]


@glibc_linux
def test_kept_memory_is_reused_without_page_faults() -> None:
    kept, system = (json.loads(_python(_PROBE, s)) for s in ("keep", "system"))
    assert kept["applied"] is True and system["applied"] is False
    assert system["mapped"] >= 64 * 2**20 > kept["mapped"], (kept, system)
    # glibc's own way, every pass maps its activations anew: about 140k faults a pass with
    # 4 KiB pages against none to 5k kept (fewer both ways where huge pages back the
    # mappings); the fewest of four passes each (a pass after which a thread took a fresh
    # malloc arena faulted once: 49k in one CI run of three passes)
    assert kept["faults"] * 10 < system["faults"], (kept, system)


def test_a_cpu_torch_runner_keeps_freed_memory() -> None:
    """The torch engine on a CPU turns it on (in a fresh process: it is process-wide)."""
    code = ("import torch; from torch import nn; from derain_cli import cpu_memory; "
            "from derain_cli.torch_runner import TorchRunner; "
            "assert cpu_memory._applied is None; "
            "TorchRunner(nn.Conv2d(3, 3, 1), torch.device('cpu'), 'fp32'); "
            "print(cpu_memory._applied)")
    assert _python(code, "keep") == str(cpu_memory._glibc())
    assert _python(code, "system") == "False"


def test_training_on_a_cpu_keeps_freed_memory(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(T, "keep_freed_memory", lambda: calls.append(1) or True)
    with pytest.raises(T.TrainError, match="no training data"):  # stops after the setting
        T.train(T.TrainConfig(model="semi-drdnet-tiny", out=str(tmp_path), device="cpu",
                              quiet=True))
    assert calls == [1]


def test_setting_and_mode_read_the_environment(monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(cpu_memory, "_applied", None)
    monkeypatch.setattr(cpu_memory, "_glibc", lambda: True)
    monkeypatch.delenv(cpu_memory.ENV, raising=False)
    assert cpu_memory.setting() == "keep" == cpu_memory.mode()
    monkeypatch.setenv(cpu_memory.ENV, " System ")
    assert cpu_memory.setting() == "system" == cpu_memory.mode()
    monkeypatch.setenv(cpu_memory.ENV, "jemalloc")
    with caplog.at_level(logging.WARNING, logger="derain_cli.cpu_memory"):
        assert cpu_memory.setting() == "keep"
    assert "DERAIN_MALLOC=jemalloc is not one of keep, system; ignored" in caplog.text
    monkeypatch.delenv(cpu_memory.ENV)
    monkeypatch.setattr(cpu_memory, "_glibc", lambda: False)  # nothing to set: glibc's way
    assert cpu_memory.mode() == "system"
    assert cpu_memory._apply() is False


_TRIM_PROBE = textwrap.dedent("""
    import ctypes, json, os
    import numpy as np
    from derain_cli import cpu_memory

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    applied = cpu_memory.keep_freed_memory()
    big = np.ones(300 * 2**20, np.uint8)  # from the heap once kept: its pages stay mapped
    small = np.ones(1000, np.uint8)  # above it: glibc's own top trim cannot reach it
    del big
    before = rss()
    spared = cpu_memory.release_freed_memory(keep=400 * 2**20)  # less than that free: kept
    spared_rss = rss()
    trimmed = cpu_memory.release_freed_memory(keep=100 * 2**20)
    print(json.dumps({"applied": applied, "spared": spared, "trimmed": trimmed,
                      "counts_free": hasattr(ctypes.CDLL(None), "mallinfo2"),
                      "kept_mb": (before - spared_rss) / 2**20,
                      "returned_mb": (spared_rss - rss()) / 2**20}))
""")


@glibc_linux
def test_a_service_can_hand_kept_memory_back() -> None:
    """With freed memory kept, a process that derained photos of many sizes held about
    1 GB, most of it free memory glibc kept, with no way back short of DERAIN_MALLOC=system
    (slower on every tile) or exiting."""
    kept = json.loads(_python(_TRIM_PROBE, "keep"))
    if kept["counts_free"]:  # glibc 2.33+: below `keep`, nothing is released
        assert not kept["spared"] and abs(kept["kept_mb"]) < 20, kept
        assert kept["trimmed"] and kept["returned_mb"] > 250, kept
    else:  # older glibc cannot say how much is free: every call releases
        assert kept["spared"] and kept["kept_mb"] > 250, kept
    assert kept["applied"], kept
    system = json.loads(_python(_TRIM_PROBE, "system"))  # glibc's own way: nothing to do
    assert not system["applied"] and not system["spared"] and not system["trimmed"], system


_HOLES_PROBE = textwrap.dedent("""
    import ctypes, json, os
    import numpy as np
    from derain_cli import cpu_memory

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    applied = cpu_memory.keep_freed_memory()
    chunks = [np.ones(100 * 2**10, np.uint8) for _ in range(3000)]  # 300 MB, heap-sized
    last = chunks.pop()  # the top chunk stays: glibc's own trim cannot reach below it
    del chunks
    before = rss()
    trimmed = cpu_memory.release_freed_memory(keep=100 * 2**20)
    print(json.dumps({"applied": applied, "trimmed": trimmed,
                      "counts_free": hasattr(ctypes.CDLL(None), "mallinfo2"),
                      "returned_mb": (before - rss()) / 2**20}))
""")


@glibc_linux
def test_freed_memory_goes_back_under_glibcs_own_setting_too() -> None:
    """DERAIN_MALLOC=system leaves holes as well (a service seeing ever new sizes grew as
    much), and release_freed_memory() did nothing there (an audit)."""
    system = json.loads(_python(_HOLES_PROBE, "system"))
    assert not system["applied"], system
    assert system["trimmed"] and system["returned_mb"] > 200, system


def test_an_empty_setting_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """``DERAIN_MALLOC=`` (set empty, as a shell or a service file leaves it) must mean what
    unset means, freed memory kept, not glibc's own way, slower on every tile (a mutation
    audit)."""
    monkeypatch.setattr(cpu_memory, "_applied", None)
    monkeypatch.setattr(cpu_memory, "_glibc", lambda: True)
    for empty in ("", "  "):
        monkeypatch.setenv(cpu_memory.ENV, empty)
        assert cpu_memory.setting() == "keep" == cpu_memory.mode(), repr(empty)


def test_mode_reports_the_decision_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the process has decided, ``mode()`` says what it decided (``engine_choice`` files
    its timings under it): glibc refusing mallopt, or DERAIN_MALLOC changed after the first
    engine, must read "system", not "keep" (a mutation audit)."""
    monkeypatch.setattr(cpu_memory, "_glibc", lambda: True)
    monkeypatch.delenv(cpu_memory.ENV, raising=False)  # would say "keep" if undecided
    monkeypatch.setattr(cpu_memory, "_applied", False)
    assert cpu_memory.mode() == "system"
    monkeypatch.setenv(cpu_memory.ENV, "system")  # would say "system" if undecided
    monkeypatch.setattr(cpu_memory, "_applied", True)
    assert cpu_memory.mode() == "keep"
