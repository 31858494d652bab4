"""The measured choice between int8 (ONNX Runtime) and bf16 (PyTorch) on CPUs
(derain_cli.engine_choice)."""

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from derain_cli import engine_choice, fast_path, torch_runner
from derain_cli.cli import app
from derain_cli.enhancer import DEFAULT_MODEL, Derainer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A fresh cache folder and no engine pinned by the environment."""
    import tempfile

    monkeypatch.setenv("DERAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(engine_choice.ENV, raising=False)
    (tmp_path / "tmp").mkdir()  # the fallback of an unwritable cache: not the machine's
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    return tmp_path / "cache"


@pytest.fixture
def bf16_cpu(monkeypatch):
    """Pretend the CPU has bf16 instructions (PyTorch emulates them where it has not)."""
    monkeypatch.setattr(engine_choice, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(torch_runner, "cpu_supports_bf16", lambda: True)


def _plan():
    plan = fast_path.plan(DEFAULT_MODEL, None, "cpu", "auto", "auto")
    assert plan is not None, "the default model ships an int8 graph"
    return plan


def _fake_measure(engine, calls):
    def measure(plan, threads):
        calls.append((plan.record.name, threads))
        return {"engine": engine, "seconds": {"int8": 1.0, "bf16": 0.5 if engine == "bf16"
                                               else 2.0}, "measured": "2026-12-01"}
    return measure


def _choose(threads, measured, calls):
    """cpu_engine for the default model, with a fake measurement that finds ``measured``."""
    return engine_choice.cpu_engine(_plan(), threads, measure_fn=_fake_measure(measured, calls))


def test_pick_prefers_int8_unless_bf16_is_clearly_faster():
    assert engine_choice.pick({"int8": 1.0, "bf16": 0.95}) == "int8"
    assert engine_choice.pick({"int8": 1.0, "bf16": 0.85}) == "bf16"
    assert engine_choice.pick({"int8": 1.0, "bf16": 1.5}) == "int8"


def test_cpu_flags_are_read_without_torch(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    monkeypatch.setattr(engine_choice, "_CPUINFO", info)
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512f\n\n"
                    "processor\t: 1\nflags\t\t: avx512_bf16\n")
    assert not engine_choice.cpu_has_bf16()  # the first processor's flags count
    assert engine_choice.cpu_signature().startswith("Some CPU [")
    info.write_text("model name\t: Some CPU\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n")
    assert engine_choice.cpu_has_bf16()
    info.unlink()
    monkeypatch.setattr(engine_choice, "numpy_cpu_features", lambda: {})
    monkeypatch.setattr(engine_choice.platform, "processor", lambda: "")
    assert not engine_choice.cpu_has_bf16()
    assert engine_choice.cpu_signature().startswith("unknown CPU")


def test_cpu_flags_come_from_numpy_without_proc_cpuinfo(tmp_path, monkeypatch):
    """Windows and macOS have no /proc/cpuinfo: NumPy's CPUID table answers there."""
    monkeypatch.setattr(engine_choice, "_CPUINFO", tmp_path / "missing")
    monkeypatch.setattr(engine_choice.platform, "processor", lambda: "Some CPU")
    table = {"AVX512F": True, "AVX512BF16": False, "AVX512_SPR": False}
    monkeypatch.setattr(engine_choice, "numpy_cpu_features", lambda: dict(table))
    assert not engine_choice.cpu_has_bf16()
    before = engine_choice.cpu_signature()
    assert before.startswith("Some CPU [")
    table["AVX512BF16"] = True
    assert engine_choice.cpu_has_bf16()
    assert engine_choice.cpu_signature() != before  # another machine's measurement
    table.update(AVX512BF16=False, AVX512_SPR=True)
    assert engine_choice.cpu_has_bf16()
    # an ARM Linux /proc/cpuinfo says "Features", not "flags": NumPy answers there too
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    monkeypatch.setattr(engine_choice, "_CPUINFO", info)
    assert engine_choice.cpu_has_bf16()
    # where /proc/cpuinfo lists flags, they win (a VM may hide what CPUID shows)
    info.write_text("model name\t: Some CPU\nflags\t\t: fpu avx512f\n")
    assert not engine_choice.cpu_has_bf16()


def test_numpy_cpu_features_reads_this_numpy():
    features = engine_choice.numpy_cpu_features()
    assert features, "NumPy's CPU table was not found"
    assert all(isinstance(v, bool) for v in features.values())
    import platform
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert features.get("SSE2") is True  # every x86-64 CPU has it


def test_choice_is_measured_once_and_remembered(own_cache, bf16_cpu):
    calls = []
    measure = _fake_measure("bf16", calls)
    assert engine_choice.cpu_engine(_plan(), None, measure_fn=measure)[0] == "bf16"
    engine, why = engine_choice.cpu_engine(_plan(), None, measure_fn=measure)
    assert engine == "bf16" and "measured 2026-12-01" in why and "0.50 s bf16" in why
    assert calls == [(DEFAULT_MODEL, None)]
    stored = json.loads((own_cache / "engines.json").read_text())
    assert list(stored) == [engine_choice.choice_key(_plan(), None)]
    # another thread count is another measurement, kept beside the first
    _choose(1, "int8", calls)
    assert len(calls) == 2 and len(json.loads((own_cache / "engines.json").read_text())) == 2


def test_a_run_waits_for_another_that_is_timing_the_engines(own_cache, bf16_cpu):
    """Two runs started together both timed their engines on the same cores and remembered
    skewed times (audit); the second now waits and takes the first one's result."""
    import fcntl
    import threading

    calls = []
    measure = _fake_measure("bf16", calls)
    own_cache.mkdir(parents=True)
    fd = os.open(own_cache / "engines.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # "another run" is timing
    got = []
    waiter = threading.Thread(target=lambda: got.append(
        engine_choice.cpu_engine(_plan(), None, measure_fn=measure)))
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive()  # waiting, not timing
    engine_choice.remember(engine_choice.choice_key(_plan(), None), {
        "engine": "int8", "seconds": {"int8": 0.4, "bf16": 0.5}, "measured": "2026-12-05"})
    os.close(fd)
    waiter.join(30)
    assert calls == [] and got[0][0] == "int8" and "measured 2026-12-05" in got[0][1]
    # a lock never released: measured anyway after the wait
    fd = os.open(own_cache / "engines.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with engine_choice.one_measurer(wait_s=0.2):
            pass
    finally:
        os.close(fd)


def test_small_jobs_stay_on_int8_unless_pytorch_is_loaded():
    """bf16 must repay importing PyTorch: 1 s int8 / 0.5 s bf16 a 512 px image (0.26 MP),
    3 s to import: break-even where 1.91 W + 3 = 0.9 * 3.81 W, W = 2.0 MP."""
    entry = {"engine": "bf16", "seconds": {"int8": 1.0, "bf16": 0.5}, "torch_import_s": 3.0}
    engine, why = engine_choice.decide(entry, 0.3, torch_loaded=False)
    assert engine == "int8" and "0.3 MP is too little" in why and "(3.0 s)" in why
    assert "0.048 MP is too little" in engine_choice.decide(entry, 0.048, False)[1]  # not 0.0
    assert engine_choice.decide(entry, 0.3, torch_loaded=True) == ("bf16", "")
    assert engine_choice.decide(entry, None, torch_loaded=False) == ("bf16", "")
    assert engine_choice.decide(entry, 12.0, torch_loaded=False) == ("bf16", "")
    assert engine_choice.decide(entry, 1.9, torch_loaded=False)[0] == "int8"
    assert engine_choice.decide(entry, 2.1, torch_loaded=False)[0] == "bf16"
    # per-pixel int8 wins: int8 whatever the workload
    slow = dict(entry, seconds={"int8": 1.0, "bf16": 0.95})
    # (bf16 a little faster, not enough: the note says the rule; an audit read the pick of
    # the slower engine as a mistake)
    assert engine_choice.decide(slow, 50.0, False) == (
        "int8", "bf16 is taken only where it is at least 10% faster in its tiles")
    slower = dict(entry, seconds={"int8": 1.0, "bf16": 1.2})
    assert engine_choice.decide(slower, 50.0, False) == ("int8", "")
    # the stored engine counts only where the two times are not both there
    assert engine_choice.decide({"engine": "bf16", "seconds": {"int8": 1.0}}, 0.1, False) == (
        "bf16", "")


def test_each_engine_is_costed_in_its_own_tiles():
    """The int8 graph runs in 512 px tiles, bf16 in 1024 px ones: on a 12 MP photo 512 px
    tiles repeat more overlap; a 1 MP photo is one 1024 px tile and six 512 px ones."""
    plan = _plan()
    big = engine_choice.tiling_work(plan)
    assert big == engine_choice.tiling_work(plan, None, 50.0)  # capped at the 12 MP photo
    assert 1.0 < big["bf16"] < big["int8"] < 1.6
    small = engine_choice.tiling_work(plan, None, 1.0)
    assert small["bf16"] == pytest.approx(1.0, abs=0.01) and small["int8"] > 1.5
    assert engine_choice.tiling_work(plan, 0) == {"int8": 1.0, "bf16": 1.0}
    same = engine_choice.tiling_work(plan, 512)
    assert same["int8"] == same["bf16"] == big["int8"]
    # a near tie on the 512 px probe goes to the engine whose tiles cost less
    entry = {"engine": "int8", "seconds": {"int8": 1.0, "bf16": 0.95}}
    assert engine_choice.decide(entry, None, False)[0] == "int8"
    assert engine_choice.decide(entry, None, False, small) == ("bf16", "")
    assert engine_choice.decide(entry, None, False, big) == ("bf16", "")
    entry = {"engine": "bf16", "seconds": {"int8": 1.0, "bf16": 0.85}}
    assert engine_choice.decide(entry, None, False, {"int8": 1.0, "bf16": 1.3})[0] == "int8"


def test_no_bf16_means_int8_unmeasured(own_cache, monkeypatch):
    monkeypatch.setattr(engine_choice, "cpu_has_bf16", lambda: False)
    calls = []
    assert _choose(None, "bf16", calls) == (
        "int8", "no bf16 instructions")
    assert calls == [] and not (own_cache / "engines.json").exists()


def test_environment_pins_the_engine(own_cache, bf16_cpu, monkeypatch):
    calls = []
    monkeypatch.setenv(engine_choice.ENV, "BF16")
    assert _choose(None, "int8", calls)[0] == "bf16"
    monkeypatch.setenv(engine_choice.ENV, "int8")
    assert _choose(None, "bf16", calls)[0] == "int8"
    assert calls == []
    # bf16 pinned on a CPU without it: the variable is named ("use --precision fp32" was
    # said of an option never given: an audit)
    from derain_cli.errors import OptionError

    monkeypatch.setattr(engine_choice, "cpu_has_bf16", lambda: False)
    monkeypatch.setenv(engine_choice.ENV, "bf16")
    with pytest.raises(OptionError, match=f"{engine_choice.ENV}=bf16, but this CPU has no"):
        _choose(None, "int8", calls)


def test_unreadable_choices_are_measured_again(own_cache, bf16_cpu):
    own_cache.mkdir(parents=True)
    (own_cache / "engines.json").write_text("{not json")
    calls = []
    assert _choose(None, "bf16", calls)[0] == "bf16"
    assert len(calls) == 1 and json.loads((own_cache / "engines.json").read_text())
    # an entry naming no engine derain has (another version's, a hand edit) is measured
    # again, not taken (a mutation audit)
    key = engine_choice.choice_key(_plan(), None)
    engine_choice.remember(key, {"engine": "fp8", "measured": "2026-12-01"})
    assert _choose(None, "int8", calls)[0] == "int8" and len(calls) == 2


@pytest.mark.usefixtures("one_thread")
def test_real_measurement_times_both_engines(monkeypatch):
    """The probe runs the shipped int8 graph and the bf16 network (emulated on CPUs without
    bf16 instructions, so the choice itself is not asserted here, only its consistency)."""
    monkeypatch.setattr(engine_choice, "PROBE_SIDE", 96)
    monkeypatch.setattr(engine_choice, "PROBE_REPEATS", 1)
    entry = engine_choice.measure(_plan(), 1)
    s = entry["seconds"]
    assert set(s) == {"int8", "bf16"} and all(v > 0 for v in s.values())
    assert entry["engine"] == engine_choice.pick(s)
    assert entry["probe"] == "96x96, best of 1"


def test_the_remembered_choice_agrees_with_the_remembered_figures(monkeypatch):
    """It picked from unrounded times and stored rounded ones: on a near tie the entry
    said int8 beside figures that say bf16 (the flake of the test above)."""
    int8 = 0.01
    bf16 = engine_choice.MARGIN * int8 + 0.00004  # above the margin by less than rounding
    assert engine_choice.pick({"int8": int8, "bf16": bf16}) == "int8"
    assert engine_choice.pick({"int8": int8, "bf16": round(bf16, 4)}) == "bf16"
    monkeypatch.setattr(engine_choice, "time_runners",
                        lambda runners, image: ({"int8": int8, "bf16": bf16}, 1))
    entry = engine_choice.measure(_plan(), 1)
    assert entry["engine"] == engine_choice.pick(entry["seconds"])


@pytest.mark.usefixtures("one_thread")
def test_a_choice_that_cannot_be_written_leaves_no_temporary_file(own_cache, monkeypatch,
                                                                   caplog):
    """On a full disk each run left an empty .engines-*.json behind (audit)."""
    real = Path.write_text

    def full(self, text, *args, **kwargs):
        real(self, text[:10], *args, **kwargs)  # part written, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    engine_choice.remember("k", {"engine": "bf16"})
    assert "could not remember the engine choice" in caplog.text
    assert list(own_cache.iterdir()) == []


def test_an_entry_that_is_no_object_is_left_out(own_cache):
    """"key": "bf16" in engines.json (a hand edit) stopped every default run with
    "AttributeError: 'str' object has no attribute 'get'" (an upgrade audit)."""
    own_cache.mkdir(parents=True)
    engine_choice.choices_path().write_text('{"a": "bf16", "b": {"engine": "int8"}, "c": 3}')
    assert engine_choice.load_choices() == {"b": {"engine": "int8"}}


def test_a_read_only_cache_remembers_the_choice_in_the_temporary_folder(own_cache,
                                                                        monkeypatch, caplog):
    """The graphs of a read-only cache go to the user's temporary folder, but the choice
    did not: every run timed the engines again (seconds) and warned (an audit)."""
    real = engine_choice.atomic_write_text

    def refuse(path, text):
        if own_cache in Path(path).parents:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, text)

    monkeypatch.setattr(engine_choice, "atomic_write_text", refuse)
    engine_choice.remember("k", {"engine": "int8"})
    assert "; remembered in " in caplog.text and "/engines-" in caplog.text
    assert engine_choice.load_choices()["k"] == {"engine": "int8"}
    measured: list[int] = []
    entry, fresh = engine_choice._known_or_measured(
        lambda: engine_choice.load_choices().get("k"), lambda: measured.append(1))
    assert entry == {"engine": "int8"} and not fresh and not measured
    # the cache writable again: its own choices come first
    monkeypatch.setattr(engine_choice, "atomic_write_text", real)
    engine_choice.remember("k", {"engine": "bf16"})
    assert engine_choice.load_choices()["k"] == {"engine": "bf16"}
    # a file in the way of the cache (its permissions fine): the choice is read back too
    # (a permission check passed it, and it was timed again on every run: a review)
    caplog.clear()
    monkeypatch.setenv("DERAIN_CACHE", str(own_cache / "engines.json" / "x"))
    engine_choice.remember("j", {"engine": "int8"})
    assert "; remembered in " in caplog.text
    assert engine_choice.load_choices()["j"] == {"engine": "int8"}
    with engine_choice.one_measurer(wait_s=0):  # its lock is the temporary folder's
        assert list(Path(tempfile.gettempdir()).glob("derain-onnx-*/engines-*.lock"))
    # another cache does not read this one's choices
    monkeypatch.setenv("DERAIN_CACHE", str(own_cache.parent / "other"))
    assert "j" not in engine_choice.load_choices()


def test_derainer_follows_the_remembered_choice(own_cache, bf16_cpu):
    key = engine_choice.choice_key(_plan(), 1)
    engine_choice.remember(key, {"engine": "bf16", "measured": "2026-12-01"})
    d = Derainer(device="cpu", threads=1)
    assert (d.backend, d.precision) == ("torch", "bf16")
    assert d.engine_note == "measured 2026-12-01"
    assert d.derain(np.zeros((40, 50, 3), np.uint8)).shape == (40, 50, 3)
    # an explicit precision or backend is obeyed without looking at the choice
    assert Derainer(device="cpu", threads=1, precision="int8").precision == "int8"
    assert Derainer(device="cpu", threads=1, backend="onnx").precision == "int8"
    engine_choice.remember(key, {"engine": "int8", "measured": "2026-12-01"})
    d = Derainer(device="cpu", threads=1)
    assert (d.backend, d.precision) == ("onnx", "int8")
    # timed in a near tie on the 512 px probe: each engine's own tiles decide (bf16's
    # 1024 px tiles repeat less overlap); one tile size for both, the probe alone does
    engine_choice.remember(key, {"engine": "int8", "seconds": {"int8": 1.0, "bf16": 0.95},
                                 "measured": "2026-12-03"})
    d = Derainer(device="cpu", threads=1)
    assert (d.backend, d.precision) == ("torch", "bf16")
    assert "x1.28 vs x1.39 in their tiles" in d.engine_note, d.engine_note
    d = Derainer(device="cpu", threads=1, tile=512)
    assert (d.backend, d.precision) == ("onnx", "int8")


def test_remembered_int8_keeps_the_torch_free_start(own_cache):
    """On a bf16 CPU whose choice is int8, the default still never imports PyTorch."""
    script = textwrap.dedent(f"""
        import importlib.abc, sys

        class BlockTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] == "torch":
                    raise ImportError("the test forbids importing torch")
                return None

        sys.meta_path.insert(0, BlockTorch())
        from derain_cli import engine_choice, fast_path
        from derain_cli.enhancer import Derainer
        engine_choice.cpu_has_bf16 = lambda: True
        plan = fast_path.plan({DEFAULT_MODEL!r}, None, "cpu", "auto", "auto")
        engine_choice.remember(engine_choice.choice_key(plan, 1),
                               {{"engine": "int8", "measured": "2026-12-01"}})
        d = Derainer(device="cpu", threads=1)
        assert (d.backend, d.precision, d.engine_note) == (
            "onnx", "int8", "measured 2026-12-01"), vars(d)
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.mark.usefixtures("one_thread")
def test_cli_counts_the_work_before_choosing(own_cache, bf16_cpu, tmp_path, monkeypatch):
    """bf16 measured 2x faster, PyTorch's import 30 s: one 0.1 MP photo stays on int8 (the
    banner says why); the same measurement with a 0.01 s import takes bf16."""
    monkeypatch.setattr(engine_choice, "torch_imported", lambda: False)  # as in `derain`
    key = engine_choice.choice_key(_plan(), 1)
    entry = {"engine": "bf16", "seconds": {"int8": 1.0, "bf16": 0.5}, "torch_import_s": 30.0,
             "measured": "2026-12-01"}
    engine_choice.remember(key, entry)
    src = tmp_path / "in.png"
    Image.fromarray(np.full((250, 400, 3), 120, np.uint8)).save(src)
    args = [str(src), "--threads", "1", "--overwrite"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "(ONNX Runtime), int8 (measured 2026-12-01" in r.output
    assert "0.1 MP is too little to repay loading PyTorch (30.0 s)" in r.output
    engine_choice.remember(key, dict(entry, torch_import_s=0.01))
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "(PyTorch), bf16 (measured 2026-12-01: 0.50 s bf16 vs 1.00 s int8" in r.output


def test_a_folder_of_small_photos_is_costed_on_their_size(own_cache, bf16_cpu, monkeypatch):
    """8 MP as eight 1 MP photos: each is one 1024 px tile for bf16 but six 512 px tiles
    (and a statistics pass) for int8, so bf16, 1.2x slower on the untiled probe, wins;
    the same 8 MP as one photo stays on int8."""
    monkeypatch.setattr(engine_choice, "torch_imported", lambda: False)
    engine_choice.remember(engine_choice.choice_key(_plan(), 1), {
        "engine": "int8", "seconds": {"int8": 1.0, "bf16": 1.2}, "torch_import_s": 3.0,
        "measured": "2026-12-03"})
    assert engine_choice.cpu_engine(_plan(), 1, 8.0, workload_images=8)[0] == "bf16"
    assert engine_choice.cpu_engine(_plan(), 1, 8.0, workload_images=1)[0] == "int8"
    assert engine_choice.cpu_engine(_plan(), 1, 8.0)[0] == "int8"


def test_a_choice_is_measured_again_for_another_pytorch_path(monkeypatch):
    """The CPU fusions (``models.cpu_fusion``) made PyTorch's bf16 up to 1.4x faster, so a
    choice measured by an older derain, or with them turned off, is measured again."""
    monkeypatch.delenv("DERAIN_CPU_FUSION", raising=False)
    fused = engine_choice.choice_key(_plan(), 1)
    assert fused.endswith(f"|torch_path={engine_choice.TORCH_CPU_PATH}")
    assert engine_choice.TORCH_CPU_PATH >= 2
    monkeypatch.setenv("DERAIN_CPU_FUSION", "off")
    assert engine_choice.choice_key(_plan(), 1) == fused + "-unfused"


def test_a_choice_is_measured_again_under_the_other_allocator(monkeypatch):
    """bf16's time depends on whether freed memory is kept (``cpu_memory``: 2x on some
    photos), so a choice measured under one setting is not reused under the other; the key
    says what the process does once it has decided, whatever the environment says later."""
    from derain_cli import cpu_memory

    monkeypatch.setattr(cpu_memory, "_glibc", lambda: True)
    monkeypatch.setattr(cpu_memory, "_applied", None)
    monkeypatch.delenv("DERAIN_MALLOC", raising=False)
    kept = engine_choice.choice_key(_plan(), 1)
    monkeypatch.setenv("DERAIN_MALLOC", "system")
    system = engine_choice.choice_key(_plan(), 1)
    assert kept != system and "|malloc=keep|" in kept and "|malloc=system|" in system
    monkeypatch.setattr(cpu_memory, "_applied", True)  # decided before the variable was set
    assert engine_choice.choice_key(_plan(), 1) == kept
    monkeypatch.setattr(cpu_memory, "_applied", False)
    monkeypatch.delenv("DERAIN_MALLOC")
    assert engine_choice.choice_key(_plan(), 1) == system


# --- fp32 on a CPU: ONNX Runtime or PyTorch (engine_choice.fp32_backend) -------------------


@pytest.fixture
def fp32_cache(tmp_path, monkeypatch):
    """A fresh cache folder and no fp32 engine pinned by the environment."""
    monkeypatch.setenv("DERAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(engine_choice.FP32_ENV, raising=False)
    return tmp_path / "cache"


def _tiny_net(width=8, seed=0):
    import torch

    from derain_cli.models import SemiDRDNet, SemiDRDNetConfig

    torch.manual_seed(seed)
    return SemiDRDNet(SemiDRDNetConfig(width=width, rain_blocks=1, detail_blocks=1,
                                       se_reduction=4)).eval()


def _fp32_measure(torch_s, onnx_s, calls):
    def measure(net, threads):
        calls.append(engine_choice.network_signature(net))
        return {"engine": "?", "seconds": {"torch": torch_s, "onnx": onnx_s},
                "measured": "2026-12-03"}
    return measure


def test_fp32_choice_is_measured_once_per_network_shape(fp32_cache):
    calls = []
    net = _tiny_net()
    measure = _fp32_measure(0.5, 1.0, calls)
    assert engine_choice.fp32_backend(net, 1, measure_fn=measure)[0] == "torch"
    engine, why = engine_choice.fp32_backend(net, 1, measure_fn=measure)
    assert engine == "torch" and why.startswith("measured 2026-12-03: 0.50 s PyTorch vs 1.00")
    assert len(calls) == 1
    # other values, same shapes: the same measurement; another width: measured again
    assert engine_choice.fp32_backend(_tiny_net(seed=1), 1, measure_fn=measure)[0] == "torch"
    assert len(calls) == 1
    engine_choice.fp32_backend(_tiny_net(12), 1, measure_fn=measure)
    engine_choice.fp32_backend(net, 2, measure_fn=measure)  # another thread count
    assert len(calls) == 3 and calls[0] != calls[1]
    # PyTorch a little faster, not enough: the note says the rule (an audit)
    close = _tiny_net(16)
    engine, why = engine_choice.fp32_backend(close, 1, 0,  # one tile size: times alone
                                             measure_fn=_fp32_measure(0.95, 1.0, []))
    assert engine == "onnx" and why.endswith(
        "; PyTorch is taken only where it is at least 10% faster in its tiles")
    # kept beside the int8/bf16 choices, under keys of their own
    keys = json.loads((fp32_cache / "engines.json").read_text())
    assert all(k.startswith("fp32|") for k in keys) and len(keys) == 4


def test_fp32_choice_weighs_each_engine_in_its_own_tiles(fp32_cache):
    """A Semi-DRDNet in ONNX Runtime's 512 px tiles repeats more overlap (and adds a
    statistics pass) than in PyTorch's 1024 px ones: PyTorch just inside ``MARGIN`` once
    the tiles are counted wins on a 12 MP photo, and loses when one tile size is given
    for both (then only the probe times count)."""
    net = _tiny_net()
    work = engine_choice.fp32_work(net)
    assert work["onnx"] > 1.06 * work["torch"] > 1.0
    torch_s = 0.95 * engine_choice.MARGIN * work["onnx"] / work["torch"]
    measure = _fp32_measure(torch_s, 1.0, [])
    engine, why = engine_choice.fp32_backend(net, 1, measure_fn=measure)
    assert engine == "torch"
    assert f"x{work['torch']:.2f} vs x{work['onnx']:.2f} in their tiles" in why
    same = engine_choice.fp32_work(net, tile=512)
    assert same["onnx"] == pytest.approx(same["torch"])
    assert engine_choice.fp32_backend(net, 1, tile=512)[0] == "onnx"


def test_fp32_environment_pins_the_backend(fp32_cache, monkeypatch, caplog):
    def never(net, threads):
        raise AssertionError("a pinned backend is not measured")

    net = _tiny_net()
    monkeypatch.setenv(engine_choice.FP32_ENV, "Torch")
    assert engine_choice.fp32_backend(net, 1, measure_fn=never) == (
        "torch", "DERAIN_CPU_FP32=torch")
    monkeypatch.setenv(engine_choice.FP32_ENV, "onnx")
    assert engine_choice.fp32_backend(net, 1, measure_fn=never)[0] == "onnx"
    monkeypatch.setenv(engine_choice.FP32_ENV, "gpu")
    assert engine_choice.fp32_backend(net, 1, measure_fn=_fp32_measure(2.0, 1.0, []))[0] == (
        "onnx")
    assert "DERAIN_CPU_FP32=gpu is not one of auto, onnx, torch" in caplog.text


@pytest.mark.usefixtures("one_thread")
def test_fp32_real_measurement_times_both_engines(fp32_cache, monkeypatch):
    monkeypatch.setattr(engine_choice, "PROBE_SIDE", 96)
    entry = engine_choice.measure_fp32(_tiny_net(), 1)
    s = entry["seconds"]
    assert set(s) == {"onnx", "torch"} and all(v > 0 for v in s.values())
    # no stored verdict: the engine is decided per job from the times and the tiles
    assert "engine" not in entry and entry["probe"] == "96x96, best of 2"
    assert list((fp32_cache / "onnx").iterdir()), "the fp32 graph was exported and cached"


@pytest.mark.usefixtures("one_thread")
def _fp32_with_export_failing(monkeypatch, tiny_weights, error: BaseException) -> Derainer:
    """A Derainer in fp32 whose ONNX export raises ``error`` (the engines timed on a small
    probe)."""
    from derain_cli import onnx_backend

    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(onnx_backend, "make_onnx_runner", failing)
    monkeypatch.setattr(engine_choice, "PROBE_SIDE", 96)
    d = Derainer(weights=tiny_weights, device="cpu", precision="fp32", threads=1)
    assert (d.backend, d.precision) == ("torch", "fp32")
    return d


def test_a_network_onnx_runtime_cannot_run_goes_to_pytorch(fp32_cache, tiny_weights,
                                                           monkeypatch, caplog):
    """An export or session failure is not fatal where PyTorch can run the network: it is
    timed alone, remembered with the reason, and said in the note."""
    d = _fp32_with_export_failing(monkeypatch, tiny_weights, RuntimeError(
        "ONNX export failed: an operator without a symbolic\nmore"))
    assert d.engine_note == ("measured now: ONNX Runtime cannot run it (RuntimeError: ONNX "
                             "export failed: an operator without a symbolic)")
    assert "fp32 runs in PyTorch" in caplog.text
    assert d.derain(np.zeros((20, 30, 3), np.uint8)).shape == (20, 30, 3)
    entry, = json.loads((fp32_cache / "engines.json").read_text()).values()
    assert set(entry["seconds"]) == {"torch"} and entry["onnx_failed"].startswith("Runtime")
    # remembered: the next run does not try the export again
    d = Derainer(weights=tiny_weights, device="cpu", precision="fp32", threads=1)
    assert d.backend == "torch" and d.engine_note.startswith("measured 20")


@pytest.mark.parametrize("error", [
    OSError(28, "No space left on device"),
    # PyTorch's CPU out-of-memory is a RuntimeError, not a MemoryError (review)
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate "
                 "memory: you tried to allocate 70368744177664 bytes."),
])
def test_an_export_that_fails_for_want_of_disk_or_memory_is_not_remembered(
        fp32_cache, tiny_weights, monkeypatch, caplog, error):
    """A full disk while exporting once pinned fp32 to PyTorch for good (and for every
    weights file of the same shapes): such a failure is used for this run only."""
    from derain_cli import onnx_backend

    real = onnx_backend.make_onnx_runner
    d = _fp32_with_export_failing(monkeypatch, tiny_weights, error)
    assert d.engine_note.startswith("ONNX Runtime's graph could not be made this time (")
    assert "fp32 runs in PyTorch this time" in caplog.text
    assert not (fp32_cache / "engines.json").exists()
    monkeypatch.setattr(onnx_backend, "make_onnx_runner", real)  # space again: both timed
    d = Derainer(weights=tiny_weights, device="cpu", precision="fp32", threads=1)
    entry, = json.loads((fp32_cache / "engines.json").read_text()).values()
    assert set(entry["seconds"]) == {"torch", "onnx"} and "onnx_failed" not in entry


def test_the_signature_covers_settings_that_keep_shapes(monkeypatch):
    """RDMC's stages reuse one stage's weights: more stages, same tensors, more time."""
    from derain_cli.models import RDMC, RDMCConfig

    two, three = (engine_choice.network_signature(RDMC(RDMCConfig(stages=n))) for n in (2, 3))
    assert two != three and two.startswith("RDMC[")


@pytest.mark.usefixtures("one_thread")
def test_fp32_is_not_timed_where_it_does_not_run(fp32_cache, tiny_weights, bf16_cpu,
                                                 monkeypatch):
    """bf16 (asked for, or auto on a bf16 CPU), the bundled int8 graph and an explicit
    backend never start the fp32 measurement."""
    def never(net, threads):
        raise AssertionError("fp32 timed where it does not run")

    monkeypatch.setattr(engine_choice, "measure_fp32", never)
    for kw in ({"precision": "bf16"}, {"precision": "auto"}):
        d = Derainer(weights=tiny_weights, device="cpu", threads=1, **kw)
        assert (d.backend, d.precision) == ("torch", "bf16")
    assert Derainer(device="cpu", threads=1).precision == "int8"  # conftest pins int8
    assert Derainer(device="cpu", threads=1, precision="int8").precision == "int8"
    d = Derainer(weights=tiny_weights, device="cpu", threads=1, precision="fp32",
                 backend="onnx")
    assert (d.backend, d.precision) == ("onnx", "fp32")
    assert not (fp32_cache / "engines.json").exists()


def test_a_long_warm_up_leaves_one_timed_pass(monkeypatch):
    passes = []

    class Slow:  # what tiling.run_tiled calls: one forward of the whole image
        size_multiple, global_stats_shape = 1, None

        def __call__(self, x, pooled=None):
            passes.append(x.shape)
            return x

    clock = iter(range(0, 1000, 5))  # every pass "takes" 5 s
    monkeypatch.setattr(engine_choice.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(engine_choice.tiling, "run_tiled", lambda img, r, *a: r(img))
    seconds, timed = engine_choice.time_runners({"a": Slow(), "b": Slow()},
                                                np.zeros((3, 8, 8)))
    assert seconds == {"a": 5, "b": 5} and timed == 1
    assert len(passes) == 4  # warm-up + one pass each


@pytest.mark.usefixtures("one_thread")
def test_derainer_runs_fp32_on_the_remembered_engine(fp32_cache, tiny_weights):
    """The remembered choice decides where auto would run fp32 on a CPU; the two engines
    give the same image; an explicit backend is obeyed without measuring."""
    from derain_cli.weights import model_from_file

    net = model_from_file(tiny_weights, None).eval()
    key = engine_choice.fp32_key(net, 1)
    img = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    out = {}
    for engine in ("torch", "onnx"):
        fast, slow = (0.4, 1.0) if engine == "torch" else (1.0, 0.4)
        engine_choice.remember(key, {"engine": engine, "measured": "2026-12-03",
                                     "seconds": {"torch": fast, "onnx": slow}})
        d = Derainer(weights=tiny_weights, device="cpu", precision="fp32", threads=1)
        assert (d.backend, d.precision) == (engine, "fp32")
        assert d.engine_note.startswith("measured 2026-12-03: ")
        out[engine] = d.derain(img).astype(int)
        # --backend decides by hand: no note, no measurement
        other = "onnx" if engine == "torch" else "torch"
        d = Derainer(weights=tiny_weights, device="cpu", precision="fp32", threads=1,
                     backend=other)
        assert (d.backend, d.engine_note) == (other, "")
    assert np.abs(out["torch"] - out["onnx"]).max() <= 1


@pytest.mark.usefixtures("one_thread")
def test_cli_banner_names_the_fp32_engine_and_why(fp32_cache, tiny_weights, tmp_path):
    from derain_cli.weights import model_from_file

    net = model_from_file(tiny_weights, None).eval()
    engine_choice.remember(engine_choice.fp32_key(net, 1), {
        "engine": "torch", "measured": "2026-12-03", "seconds": {"torch": 0.4, "onnx": 1.0}})
    src = tmp_path / "in.png"
    Image.fromarray(np.full((60, 80, 3), 120, np.uint8)).save(src)
    r = CliRunner().invoke(app, [str(src), "--weights", str(tiny_weights), "--threads", "1",
                                 "--precision", "fp32", "--device", "cpu", "--overwrite"])
    assert r.exit_code == 0, r.output
    assert "(PyTorch), fp32 (measured 2026-12-03: 0.40 s PyTorch vs 1.00 s ONNX Runtime" in (
        r.output)


def test_strength_0_times_no_engine_for_the_network_it_never_runs(own_cache, bf16_cpu,
                                                                   fp32_cache, tiny_weights,
                                                                   monkeypatch):
    """A first `derain --strength 0` timed int8 against bf16 for 10 s to write the photos
    as they were; a choice remembered already is still taken."""
    calls = []
    assert engine_choice.cpu_engine(_plan(), 1, measure_fn=_fake_measure("bf16", calls),
                                    timed=False) == ("int8", engine_choice.UNTIMED)
    assert calls == [] and engine_choice.load_choices() == {}  # nothing remembered
    assert _choose(1, "bf16", calls)[0] == "bf16" and len(calls) == 1
    assert engine_choice.cpu_engine(_plan(), 1, measure_fn=_fake_measure("int8", calls),
                                    timed=False)[0] == "bf16" and len(calls) == 1

    def never(*args, **kwargs):
        raise AssertionError("timed")

    monkeypatch.setattr(engine_choice, "measure_fp32", never)
    d = Derainer(weights=tiny_weights, device="cpu", precision="fp32", threads=1,
                 strength=0.0)
    assert (d.backend, d.engine_note) == ("torch", engine_choice.UNTIMED)
    img = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    assert np.array_equal(d.derain(img), img)
    with pytest.raises(AssertionError, match="timed"):  # any other strength times
        Derainer(weights=tiny_weights, device="cpu", precision="fp32", threads=1,
                 strength=0.5)



def test_bf16_weights_out_of_reach_leave_int8_without_a_measurement(own_cache, bf16_cpu):
    """Timing bf16 loads the full weights; where they are not bundled and cannot be
    fetched (offline), the run failed although the int8 graph needs no download (an
    audit). It now runs int8, says why, and remembers nothing, so a later run times."""
    from derain_cli.hub import WeightsUnavailable

    def offline(plan, threads):
        raise WeightsUnavailable("could not reach the hub", kind="network")

    engine, why = engine_choice.cpu_engine(_plan(), None, measure_fn=offline)
    assert engine == "int8" and "bf16 not timed" in why
    assert not (own_cache / "engines.json").exists()


def test_the_run_that_measures_chooses_as_the_runs_after_it(own_cache, bf16_cpu, monkeypatch):
    """The measurement imports PyTorch, and the run that measured then took bf16 for a photo
    the same command later ran in int8 (bf16 not worth PyTorch's import there): the first
    run's pixels differed from every later run's (a determinism audit)."""
    imported = {"now": False}
    monkeypatch.setattr(engine_choice, "torch_imported", lambda: imported["now"])

    def measure(plan, threads):  # as the real one: PyTorch is loaded afterwards
        imported["now"] = True
        return {"engine": "bf16", "seconds": {"int8": 1.0, "bf16": 0.5},
                "measured": "2026-12-05"}

    import itertools
    clock = itertools.count(0.0, 30.0)  # PyTorch's import, as timed there: 30 s
    with monkeypatch.context() as m:
        m.setattr(engine_choice.time, "perf_counter", lambda: next(clock))
        first = engine_choice.cpu_engine(_plan(), 1, 0.1, measure_fn=measure)
    assert "measured now" in first[1]
    imported["now"] = False  # the next process
    later = engine_choice.cpu_engine(_plan(), 1, 0.1, measure_fn=measure)
    assert first[0] == later[0] == "int8"
    imported["now"] = True  # a process that had imported PyTorch for its own reasons
    assert engine_choice.cpu_engine(_plan(), 1, 0.1, measure_fn=measure)[0] == "bf16"


@pytest.mark.usefixtures("one_thread")
def test_a_rerun_costs_the_whole_folder_as_the_first_run_did(own_cache, tmp_path,
                                                              monkeypatch):
    """A folder rerun to redo a few deleted results costed only those, so it could pick the
    other engine and leave a folder of mixed engines, whose pixels differ (a determinism
    audit); it now costs the whole job as the first run did."""
    seen = []

    def engine(plan, threads, workload_megapixels=None, measure_fn=None, tile=None,
               workload_images=None, timed=True):
        seen.append((round(workload_megapixels, 3), workload_images))
        return "int8", "stand-in"

    monkeypatch.setattr(engine_choice, "cpu_engine", engine)
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(2):
        Image.fromarray(np.full((250, 400, 3), 100 + i, np.uint8)).save(src / f"p{i}.png")
    args = [str(src), "-o", str(out), "--threads", "1", "-q"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    (out / "p0.png").unlink()
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert seen == [(0.2, 2), (0.2, 2)]


def test_a_process_with_pytorch_loaded_records_no_import_time(own_cache, bf16_cpu,
                                                              monkeypatch):
    """The run that times the engines remembers what importing PyTorch cost it, for later
    runs without PyTorch to weigh. A process that had PyTorch loaded already (a Python
    caller, a benchmark) imports it in no time: recorded, later runs took PyTorch as free
    to load and ran a small photo in bf16 where the default cost keeps int8 (a mutation
    audit found nothing failing)."""
    imported = {"now": True}  # loaded already, before the measurement
    monkeypatch.setattr(engine_choice, "torch_imported", lambda: imported["now"])

    def measure(plan, threads):
        return {"engine": "bf16", "seconds": {"int8": 1.0, "bf16": 0.5},
                "measured": "2026-12-05"}

    import itertools
    clock = itertools.count(0.0, 0.001)  # the import: a lookup in sys.modules
    with monkeypatch.context() as m:
        m.setattr(engine_choice.time, "perf_counter", lambda: next(clock))
        assert engine_choice.cpu_engine(_plan(), 1, 0.1, measure_fn=measure)[0] == "bf16"
    imported["now"] = False  # the next process, without PyTorch
    engine, why = engine_choice.cpu_engine(_plan(), 1, 0.1, measure_fn=measure)
    assert engine == "int8", why
    assert f"loading PyTorch ({engine_choice.TORCH_IMPORT_S:.1f} s)" in why
