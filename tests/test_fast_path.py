"""The torch-free start of the default CPU path (derain_cli.fast_path)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from derain_cli import fast_path
from derain_cli.enhancer import DEFAULT_MODEL, Derainer, tiling_record
from derain_cli.manifest import WeightRecord, load_manifest

ROOT = Path(__file__).resolve().parents[1]
INT8 = [name for name, rec in load_manifest().items() if rec.extra.get("int8")]


def _photo(path: Path, h: int = 300, w: int = 420) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_default_cpu_run_never_imports_torch(tmp_path):
    """`derain photo.jpg` (and the library default) with torch made unimportable, on a CPU
    without bf16 instructions and no engine pinned: the choice a user's run makes."""
    src = _photo(tmp_path / "in.png")
    script = textwrap.dedent(f"""
        import importlib.abc, importlib.machinery, sys

        class Refuse(importlib.abc.Loader):
            def create_module(self, spec):
                return None

            def exec_module(self, module):
                raise ImportError("the test forbids importing torch")

        class BlockTorch(importlib.abc.MetaPathFinder):
            # torch can be found (its version.py read) but not imported
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] != "torch":
                    return None
                spec = importlib.machinery.PathFinder.find_spec(name, path)
                if spec is not None:
                    spec.loader = Refuse()
                return spec

        sys.meta_path.insert(0, BlockTorch())
        import numpy as np
        from derain_cli import engine_choice
        from derain_cli.enhancer import Derainer
        engine_choice.cpu_has_bf16 = lambda: False  # the same run on every CI machine
        d = Derainer(device="auto", threads=1)
        assert (d.model_name, d.backend, d.precision, d.device_name, d.engine_note) == (
            {DEFAULT_MODEL!r}, "onnx", "int8", "cpu", "no bf16 instructions"), vars(d)
        assert d.derain(np.zeros((40, 50, 3), np.uint8)).shape == (40, 50, 3)
        # nor the Hub client (0.1 s), which it imported only for its sha256_file
        assert "huggingface_hub" not in sys.modules, "huggingface_hub imported"
        from derain_cli.cli import main
        for extra in ([], ["-m", {DEFAULT_MODEL!r}]):  # naming the default changes nothing
            sys.argv = ["derain", {str(src)!r}, "-o", {str(tmp_path / "out.png")!r},
                        "--threads", "1", "--overwrite", *extra]
            try:
                main()
            except SystemExit as e:
                assert not e.code, e.code
    """)
    env = {k: v for k, v in os.environ.items() if k != "DERAIN_CPU_ENGINE"}  # conftest pins it
    env["DERAIN_CACHE"] = str(tmp_path / "cache")
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("on cpu (ONNX Runtime), int8") == 2
    assert Image.open(tmp_path / "out.png").size == (420, 300)


def test_fast_and_torch_starts_agree(monkeypatch):
    """Same graph, same tiling: the torch-free start changes nothing but the start."""
    img = np.asarray(Image.open(ROOT / "examples" / "astronaut_rain.jpg"))
    fast = Derainer(device="cpu", threads=2, tile=256)
    assert fast._network is None  # not loaded
    monkeypatch.setattr(fast_path, "plan", lambda *a, **k: None)
    slow = Derainer(device="cpu", threads=2, tile=256)
    keys = ("model_name", "weights_label", "device_name", "backend", "precision", "tile",
            "tile_overlap")
    assert {k: getattr(fast, k) for k in keys} == {k: getattr(slow, k) for k in keys}
    np.testing.assert_allclose(fast.derain_array(img), slow.derain_array(img), atol=1e-5)
    assert fast.tile_overlap == tiling_record(fast.network)["overlap"]  # loaded on request
    assert fast.device.type == "cpu"


@pytest.mark.parametrize("name", INT8)
def test_manifest_tiling_records_match_the_networks(name):
    """What the fast start reads from the manifest is what the network would say."""
    from derain_cli.onnx_backend import state_sha256
    from derain_cli.weights import load_pretrained

    rec = load_manifest()[name]
    info = rec.extra["int8"]
    net = load_pretrained(name, quiet=True)
    assert info["weights_sha256"] == rec.sha256
    assert state_sha256(net) == info["source_sha256"]
    assert info["tiling"] == tiling_record(net)


def _with(rec: WeightRecord, **int8) -> WeightRecord:
    out = WeightRecord.from_dict(rec.to_dict())
    out.extra["int8"] = dict(rec.extra["int8"], **int8)
    return out


def test_plan_takes_only_what_is_surely_the_int8_cpu_path(monkeypatch):
    ok = fast_path.plan(DEFAULT_MODEL, None, "cpu", "auto", "auto")
    assert ok is not None and ok.graphs[0].name.endswith(".int8.onnx")
    assert fast_path.plan(DEFAULT_MODEL, None, "cpu", "int8", "onnx") is not None
    for args in [(DEFAULT_MODEL, "my.safetensors", "cpu", "auto", "auto"),
                 (DEFAULT_MODEL, None, "cpu", "auto", "torch"),
                 (DEFAULT_MODEL, None, "cpu", "fp32", "auto"),
                 (DEFAULT_MODEL, None, "cuda", "auto", "auto"),
                 (DEFAULT_MODEL, None, "mps", "auto", "auto"),
                 ("no-such-model", None, "cpu", "auto", "auto"),
                 ("rdmc-lite", None, "cpu", "auto", "auto")]:  # no int8 graph
        assert fast_path.plan(*args) is None, args
    rec = load_manifest()[DEFAULT_MODEL]
    for bad in (_with(rec, weights_sha256="0" * 64),  # the graph is of other weights
                _with(rec, sha256="0" * 64),  # the file was altered
                _with(rec, tiling=None)):  # bundled before the fast start existed
        monkeypatch.setattr(fast_path, "load_manifest", lambda b=bad: {DEFAULT_MODEL: b})
        assert fast_path.plan(DEFAULT_MODEL, None, "cpu", "auto", "auto") is None


def test_surely_cpu(monkeypatch, tmp_path):
    driver = tmp_path / "nvidia-version"
    monkeypatch.setattr(fast_path, "NVIDIA_DRIVER", driver)
    monkeypatch.setattr(fast_path, "ROCM_DEVICE", tmp_path / "kfd")
    monkeypatch.setattr(fast_path.sys, "platform", "linux")
    assert fast_path.surely_cpu("cpu") and not fast_path.surely_cpu("cuda:0")
    # spelt as resolve_device takes it: "CPU" took int8 without the engine choice (audit)
    assert all(fast_path.surely_cpu(d) for d in ("CPU", " cpu", "cpu:0", "cpu:1"))
    builds = {"cpu-only": {"cuda": None, "hip": None}, "cuda": {"cuda": "12.8", "hip": None},
              "rocm": {"cuda": None, "hip": "6.4"}, "unknown": None}
    monkeypatch.setattr(fast_path, "_torch_build", lambda: builds[kind])
    for kind, expected in [("cpu-only", True), ("cuda", True), ("rocm", True),
                           ("unknown", False)]:
        assert fast_path.surely_cpu("auto") is expected, kind
    driver.write_text("NVRM version: 570")
    (tmp_path / "kfd").write_text("")
    for kind, expected in [("cpu-only", True), ("cuda", False), ("rocm", False)]:
        assert fast_path.surely_cpu("auto") is expected, kind
    kind = "cpu-only"
    monkeypatch.setattr(fast_path.sys, "platform", "darwin")  # MPS may be there
    assert not fast_path.surely_cpu("auto")
    # Windows has no /proc: a CUDA build may have its GPU (it was left idle: review)
    driver.unlink()
    monkeypatch.setattr(fast_path.sys, "platform", "win32")
    kind = "cuda"
    assert not fast_path.surely_cpu("auto")
    kind = "cpu-only"
    assert fast_path.surely_cpu("auto")


def test_torch_build_is_read_without_importing_torch():
    import torch

    build = fast_path._torch_build()
    assert build == {"cuda": torch.version.cuda, "hip": torch.version.hip}


def test_int8_request_problem_takes_auto_as_a_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rerun over a finished folder with `--precision int8` and the default --device auto
    was refused with "int8 runs on CPUs only" (exit 2), where the first run had worked
    (a mutation audit); a GPU named outright is still refused."""
    monkeypatch.setattr(fast_path, "onnxruntime_installed", lambda: True)
    rec = load_manifest()[DEFAULT_MODEL]
    for device in ("auto", "cpu", "cpu:0"):
        assert fast_path.int8_request_problem("auto", rec, device) is None, device
    assert "CPUs only" in fast_path.int8_request_problem("auto", rec, "cuda")


def test_int8_without_onnxruntime_is_refused_with_the_install_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """--precision int8 where onnxruntime is not installed must be refused up front saying
    how to get it, not fail later on an import (a mutation audit)."""
    monkeypatch.setattr(fast_path, "onnxruntime_installed", lambda: False)
    rec = load_manifest()[DEFAULT_MODEL]
    for device in ("auto", "cpu"):
        assert fast_path.int8_request_problem("auto", rec, device) == (
            "int8 needs onnxruntime (pip install onnxruntime)")


def test_int8_problem_is_none_for_weights_without_an_int8_graph() -> None:
    """`derain models` and `download` ask about every model: one that never had an int8
    graph (rdmc-lite) has no problem with it, rather than an exception (a mutation audit)."""
    manifest = load_manifest()
    assert not manifest["rdmc-lite"].extra.get("int8")
    assert fast_path.int8_problem(manifest["rdmc-lite"]) is None
    assert fast_path.int8_problem(manifest[DEFAULT_MODEL]) is None  # whole


def test_an_altered_int8_statistics_graph_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    """The statistics graph (*.int8.stats.onnx) is checked against its manifest sha256 as
    the forward graph is: an altered one would have run unnoticed on the torch-free start
    and been listed as usable (a mutation audit)."""
    import shutil

    rec = load_manifest()[DEFAULT_MODEL]
    info = rec.extra["int8"]
    for name in (info["file"], info["stats_file"]):
        shutil.copy(fast_path.bundled_dir() / name, tmp_path / name)
    monkeypatch.setattr(fast_path, "bundled_dir", lambda: tmp_path)
    assert fast_path.plan(DEFAULT_MODEL, None, "cpu", "auto", "auto") is not None  # whole
    stats = tmp_path / info["stats_file"]
    data = bytearray(stats.read_bytes())
    data[len(data) // 2] ^= 1
    stats.write_bytes(bytes(data))
    problem = f"{stats} is missing or does not match its manifest sha256"
    with pytest.raises(fast_path.Int8Damaged) as caught:
        fast_path.bundled_int8_files(rec)
    assert str(caught.value) == problem
    assert fast_path.int8_problem(rec) == problem
    assert fast_path.plan(DEFAULT_MODEL, None, "cpu", "auto", "auto") is None
