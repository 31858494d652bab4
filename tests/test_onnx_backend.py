"""ONNX Runtime backend: parity with PyTorch for every registered model, tiling, caching."""

from __future__ import annotations

import errno
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from derain_cli import export, onnx_backend, tiling
from derain_cli.bench import perturb_bn, psnr, random_model, test_scene
from derain_cli.enhancer import TorchRunner
from derain_cli.models import MODELS, RDMC, RDMCConfig, SemiDRDNet, SemiDRDNetConfig
from derain_cli.onnx_backend import OnnxRunner, make_onnx_runner

TOL = 1e-3
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "astronaut_rain.jpg"


pytestmark = pytest.mark.usefixtures("private_onnx_cache", "one_thread")


def _real(h: int, w: int) -> np.ndarray:
    if not EXAMPLE.exists():
        pytest.skip("examples/astronaut_rain.jpg is not in this checkout")
    img = Image.open(EXAMPLE).convert("RGB").resize((w, h), Image.Resampling.BOX)
    return np.transpose(np.asarray(img, np.float32) / 255, (2, 0, 1))[None].copy()


def _inputs(name: str) -> list[tuple[str, np.ndarray]]:
    g = np.random.default_rng(1)
    if name.endswith("-lite"):
        return [("rand 1x3x40x56", g.random((1, 3, 40, 56), np.float32)),
                ("rand 2x3x64x64", g.random((2, 3, 64, 64), np.float32)),
                ("photo 1x3x48x72", _real(48, 72))]
    # paper-size models: small inputs keep the test short
    return [("rand 1x3x32x32", g.random((1, 3, 32, 32), np.float32)),
            ("photo 1x3x40x48", _real(40, 48))]


@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_matches_torch_for_every_registered_model(name):
    net = random_model(name)
    runner = make_onnx_runner(net, "cpu", "fp32")
    assert runner.size_multiple == getattr(net, "size_multiple", 1)
    assert runner.global_stats_shape == net.global_stats_shape
    report = []
    for label, x in _inputs(name):
        with torch.no_grad():
            ref = net(torch.from_numpy(x)).numpy()
        out = runner.forward(x, None)
        assert out.shape == x.shape
        diff = float(np.abs(out - ref).max())
        report.append(f"{label}: {diff:.1e}")
        assert diff <= TOL, (label, diff)
        if runner.global_stats_shape is not None:  # the tiler's path: given means, sums
            t = torch.from_numpy(x)
            mask = np.random.default_rng(2).random((x.shape[0], 1, *x.shape[2:]), np.float32)
            with torch.no_grad():
                pooled = net.se_sums(t) / (x.shape[2] * x.shape[3]) + 0.05
                ref_p = net(t, pooled).numpy()
                ref_s = net.se_sums(t, pooled, torch.from_numpy(mask)).numpy()
            assert np.abs(runner.forward(x, pooled.numpy()) - ref_p).max() <= TOL
            sums = runner.stat_sums(x, pooled.numpy(), mask)
            assert sums.dtype == np.float64
            assert np.abs(sums - ref_s).max() / (x.shape[2] * x.shape[3]) <= TOL
    print(f"\n{name}: max |onnx - torch| " + ", ".join(report))


def _small(kind: str):
    torch.manual_seed(0)
    if kind == "semi":
        net = SemiDRDNet(SemiDRDNetConfig(width=16, rain_blocks=4, detail_blocks=2,
                                          se_reduction=4))
    else:
        net = RDMC(RDMCConfig(channels=(8, 16, 16, 32, 32), stages=2))
    return perturb_bn(net).eval()


@pytest.mark.parametrize("kind", ["semi", "rdmc"])
def test_tiled_onnx_matches_untiled_torch(kind):
    net = _small(kind)
    img = test_scene(200, 232)  # not multiples of 16: RDMC tiles are padded
    full = tiling.run_tiled(img, TorchRunner(net, torch.device("cpu"), "fp32"), 0, 0)
    runner = make_onnx_runner(net, "cpu", "fp32")
    untiled = tiling.run_tiled(img, runner, 0, 0)
    assert np.abs(untiled - full).max() <= TOL
    tiled = tiling.run_tiled(img, runner, 96, 32)
    value = psnr(tiled, full)
    print(f"\n{kind}: tiled ONNX vs untiled torch {value:.1f} dB")
    assert value >= 45


def test_a_precision_the_onnx_backend_does_not_run_is_said_ignored(caplog):
    """--backend onnx --precision bf16 runs the fp32 graphs, said; the warning said the
    backend runs fp32 graphs alone, where it runs int8 ones too (an audit)."""
    net = _small("semi")
    with caplog.at_level("WARNING", logger="derain_cli"):
        make_onnx_runner(net, "cpu", "bf16")
    assert ("the ONNX backend runs fp32 graphs (or int8 ones, --precision int8); --precision "
            "bf16 is ignored") in caplog.text, caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="derain_cli"):
        make_onnx_runner(net, "cpu", "fp32")
    assert "ignored" not in caplog.text


def test_second_runner_hits_the_cache(caplog):
    net = _small("semi")
    make_onnx_runner(net, "cpu", "fp32")
    count = export.EXPORT_COUNT
    paths = onnx_backend.cached_graphs(net)
    mtimes = [p.stat().st_mtime_ns for p in paths]
    assert paths[0].parent.name == onnx_backend.state_sha256(net)
    runner = make_onnx_runner(net, "cpu", "fp32")
    assert export.EXPORT_COUNT == count  # no re-export
    assert [p.stat().st_mtime_ns for p in paths] == mtimes
    assert runner.paths == paths
    # other weights, other graphs
    with torch.no_grad():
        next(net.parameters()).add_(0.01)
    make_onnx_runner(net, "cpu", "fp32")
    assert export.EXPORT_COUNT == count + 2


def test_a_killed_exports_temporary_is_swept_from_the_cache():
    """A SIGKILL during the first export left a graph-sized .derain-*.tmp in the cache
    folder that no later run removed (an audit): an old one goes when the folder is used."""
    import os
    import time

    from derain_cli.fileio import STALE_TEMPORARY_S

    net = _small("semi")
    folder = onnx_backend.cached_graphs(net)[0].parent
    old, young = folder / ".derain-killed.tmp", folder / ".derain-atwork.tmp"
    older = folder / ".model.v3.opset17.onnx.32241.tmp"  # as versions before 2026-12-04
    for tmp in (old, young, older):  # named them (never swept: an upgrade audit)
        tmp.write_bytes(b"half a graph")
    then = time.time() - STALE_TEMPORARY_S - 60
    os.utime(old, (then, then))
    os.utime(older, (then, then))
    onnx_backend.cached_graphs(net)  # a cache hit
    assert not old.exists() and young.exists()  # (a young one may be a running export's)
    assert not older.exists()
    young.unlink()


def test_corrupt_cache_entry_is_exported_again(caplog):
    net = _small("rdmc")
    path = onnx_backend.cached_graphs(net)[0]
    path.write_bytes(b"not an onnx file")
    count = export.EXPORT_COUNT
    with caplog.at_level(logging.WARNING):
        runner = make_onnx_runner(net, "cpu", "fp32")
    assert export.EXPORT_COUNT == count + 1
    assert "exporting again" in caplog.text
    x = np.random.default_rng(0).random((1, 3, 10, 20), np.float32)  # < 16: edge-padded
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert np.abs(runner.forward(x, None) - ref).max() <= TOL
    # a graph its digest vouches for that ONNX Runtime still cannot load (a digest written
    # beside a bad file): exported afresh, not the same file loaded again on every run (a
    # mutation audit)
    path.write_bytes(b"not an onnx file either")
    (path.parent / (path.name + ".sha256")).write_text(onnx_backend.sha256_file(path) + "\n")
    runner = make_onnx_runner(net, "cpu", "fp32")
    assert export.EXPORT_COUNT == count + 2
    assert np.abs(runner.forward(x, None) - ref).max() <= TOL


def test_a_cached_graph_damaged_in_place_is_exported_again(caplog):
    """A flipped byte in a weight still loads in ONNX Runtime and ran wrong on every later
    run (audit: 16.6 dB against the right result); each graph's digest is checked."""
    net = _small("semi")
    with torch.no_grad():
        next(net.parameters()).add_(0.04)  # weights no other test has exported
    paths = onnx_backend.cached_graphs(net)
    for p in paths:
        assert (p.parent / (p.name + ".sha256")).read_text().strip() == \
            onnx_backend.sha256_file(p)
    data = bytearray(paths[0].read_bytes())
    data[len(data) // 2] ^= 0x40
    paths[0].write_bytes(bytes(data))
    count = export.EXPORT_COUNT
    with caplog.at_level(logging.WARNING):
        runner = make_onnx_runner(net, "cpu", "fp32")
    # exported again once (its two graphs, forward and statistics)
    assert export.EXPORT_COUNT == count + 2 and caplog.text.count("does not match its digest") == 1
    x = np.random.default_rng(0).random((1, 3, 16, 16), np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert np.abs(runner.forward(x, None) - ref).max() <= TOL


def test_a_full_cache_disk_falls_back_to_the_temporary_folder(monkeypatch, tmp_path, caplog):
    """ENOSPC while writing the cache failed the photo with a bare "No space left on
    device" (audit); the temporary folder is tried as for an unwritable cache."""
    import tempfile

    real = export.export_onnx
    cache = onnx_backend.cache_root()

    def full(model, path, **kwargs):
        if cache in Path(path).parents:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(model, path, **kwargs)

    monkeypatch.setattr(export, "export_onnx", full)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    net = _small("rdmc")
    with torch.no_grad():
        next(net.parameters()).add_(0.05)  # weights no other test has exported
    with caplog.at_level(logging.WARNING):
        graphs = onnx_backend.cached_graphs(net)
    assert "cannot write the ONNX cache" in caplog.text and "No space" in caplog.text
    assert tmp_path in graphs[0].parents and graphs[0].is_file()


def test_runner_options_and_files(caplog):
    net = _small("semi")
    paths = onnx_backend.cached_graphs(net)
    runner = OnnxRunner(paths[0], threads=1)  # finds the statistics graph next to it
    assert runner.paths == paths and runner.threads == 1
    assert runner.providers == ["CPUExecutionProvider"]
    assert runner.device_name == "cpu" and runner.suggest_tile() == onnx_backend.ORT_CPU_TILE
    with pytest.raises(ValueError, match="statistics graph"):
        OnnxRunner([paths[0]])
    with caplog.at_level(logging.WARNING):
        r = make_onnx_runner(net, torch.device("cpu"), "bf16", threads=1)
    assert "runs fp32" in caplog.text and r.threads == 1
    if "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers():
        assert onnx_backend._providers("cuda") == ["CPUExecutionProvider"]
    # no per-shape memory plans anywhere: they piled up with every photo size (2.0 against
    # 1.3 GB over 20 sizes, benchmarks/memory_sizes.py)
    for graph in (runner._fwd, runner._stats):
        assert graph.dynamic.get_session_options().enable_mem_pattern is False
    # ... on CPUs: with a GPU provider asked for, ONNX Runtime's own default (unmeasured
    # there without them)
    with warnings.catch_warnings():  # "not in available provider names" on CPU builds
        warnings.simplefilter("ignore", UserWarning)
        gpu = OnnxRunner(paths[0], threads=1,
                         providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert gpu._fwd.dynamic.get_session_options().enable_mem_pattern is True


def test_sessions_are_specialised_to_large_input_shapes(monkeypatch):
    """CPU sessions fix the graph's dynamic dims for large inputs; results do not change."""
    import onnxruntime as ort

    net = _small("rdmc")
    path = onnx_backend.cached_graphs(net)[0]
    runner = OnnxRunner(path, threads=1)
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    graph = runner._fwd
    monkeypatch.setattr(onnx_backend, "SPECIALISE_MIN_PIXELS", 32 * 32)
    g = np.random.default_rng(5)
    a, b, small = (1, 3, 32, 48), (2, 3, 48, 32), (1, 3, 16, 16)
    # (input, the specialised session's shape afterwards): small inputs run on the
    # dynamic session and leave the specialised one alone
    for shape, special in [(a, a), (a, a), (b, b), (a, a), (small, a), (small, a)]:
        x = g.random(shape, np.float32)
        session = graph.get(shape)
        assert (session is graph.dynamic) == (shape == small)
        out = runner.forward(x, None)
        assert graph._shape == (special[0], special[2], special[3])
        assert graph._session.get_inputs()[0].shape == list(special)  # no symbolic dims
        assert np.abs(out - plain.run(None, {"image": x})[0]).max() <= 1e-5


def test_an_out_of_memory_releases_the_sessions_memory(monkeypatch):
    """The session of the shape that ran out of memory kept its arena: the smaller tile's
    retry began at the limit and failed too, down to 100 px (an audit, under ulimit -v). An
    out-of-memory drops both graphs' sessions; they are made again and give the same
    output."""
    from derain_cli.tiling import TileOutOfMemory

    net = _small("semi")
    runner = OnnxRunner(onnx_backend.cached_graphs(net)[0], threads=1)
    monkeypatch.setattr(onnx_backend, "SPECIALISE_MIN_PIXELS", 32 * 32)
    x = np.random.default_rng(6).random((1, 3, 48, 48), np.float32)
    before = runner.forward(x, None)
    fwd, stats = runner._fwd, runner._stats
    old = fwd._session, fwd.dynamic, stats.dynamic
    assert old[0] is not None

    class Failing:
        def run(self, *a, **k):
            raise RuntimeError("Failed to allocate memory for requested buffer of size 9")

    monkeypatch.setattr(fwd, "get", lambda shape: Failing())
    with pytest.raises(TileOutOfMemory):
        runner.forward(x, None)
    assert fwd._session is None and fwd.dynamic is None and stats.dynamic is None
    monkeypatch.undo()
    monkeypatch.setattr(onnx_backend, "SPECIALISE_MIN_PIXELS", 32 * 32)
    assert np.array_equal(runner.forward(x[..., :16, :16], None),
                          runner.forward(x[..., :16, :16], None))
    assert fwd.dynamic is not None and fwd.dynamic is not old[1]
    assert np.abs(runner.forward(x, None) - before).max() == 0


def test_graphs_deleted_during_a_run_do_not_stop_it(monkeypatch, tmp_path):
    """The README calls the cache safe to delete, but sessions for a new tile shape and
    after an out-of-memory were made from the graph's file again: a cache cleaned during a
    folder run failed every photo after (an audit). The graph is read once."""
    import shutil

    net = _small("semi")
    for p in onnx_backend.cached_graphs(net):
        shutil.copy(p, tmp_path / p.name)
    runner = OnnxRunner(tmp_path / onnx_backend.cached_graphs(net)[0].name, threads=1)
    monkeypatch.setattr(onnx_backend, "SPECIALISE_MIN_PIXELS", 32 * 32)
    g = np.random.default_rng(7)
    x, y = g.random((1, 3, 48, 48), np.float32), g.random((1, 3, 32, 64), np.float32)
    before = runner.forward(x, None)
    for p in list(tmp_path.iterdir()):
        p.unlink()
    assert runner.forward(y, None).shape == y.shape  # a new shape: a new session
    runner._fwd.release()
    runner._stats.release()
    assert np.abs(runner.forward(x, None) - before).max() == 0  # made again after a release


def test_an_unwritable_cache_falls_back_to_a_private_folder_reused_next_time(
    monkeypatch, tmp_path, caplog
):
    """A read-only file system (EROFS) stopped the run (only PermissionError fell back), and
    the fallback made a new temporary folder each run, never reused (audit)."""
    import errno
    import tempfile

    cache = onnx_backend.cache_root()
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self == cache or cache in self.parents:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    net = _small("rdmc")
    with torch.no_grad():
        next(net.parameters()).add_(0.02)  # weights no other test has exported
    count = export.EXPORT_COUNT
    with caplog.at_level(logging.WARNING):
        first = onnx_backend.cached_graphs(net)
    assert "cannot write the ONNX cache" in caplog.text
    assert tmp_path in first[0].parents and export.EXPORT_COUNT == count + 1
    assert oct((first[0].parents[1]).stat().st_mode & 0o777) == oct(0o700)
    again = onnx_backend.cached_graphs(net)
    assert again == first and export.EXPORT_COUNT == count + 1  # found again, not re-made
    x = np.random.default_rng(0).random((1, 3, 24, 24), np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert np.abs(OnnxRunner(again, device="cpu").forward(x, None) - ref).max() <= TOL


def test_a_file_where_the_cache_folder_should_be_falls_back_too(monkeypatch, tmp_path,
                                                                 caplog):
    """XDG_CACHE_HOME naming a file failed the photo with "Not a directory" (audit); it is as
    unwritable as a read-only cache, so it falls back the same way."""
    import tempfile

    (tmp_path / "afile").write_text("not a folder")
    monkeypatch.delenv("DERAIN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "afile"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    net = _small("semi")
    with torch.no_grad():
        next(net.parameters()).add_(0.03)  # weights no other test has exported
    with caplog.at_level(logging.WARNING):
        graphs = onnx_backend.cached_graphs(net)
    assert "cannot write the ONNX cache" in caplog.text
    assert (tmp_path / "tmp") in graphs[0].parents and graphs[0].is_file()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="Linux's /proc")
def test_a_cache_folder_that_cannot_be_made_falls_back_too(monkeypatch, tmp_path, caplog):
    """DERAIN_CACHE under /proc failed the photo "No such file or directory (/proc/foo)",
    exit 1 (an audit): the folder cannot be made at all; it falls back as the others."""
    import tempfile

    monkeypatch.setenv("DERAIN_CACHE", "/proc/derain-no-such-folder")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    net = _small("semi")
    with torch.no_grad():
        next(net.parameters()).add_(0.05)  # weights no other test has exported
    with caplog.at_level(logging.WARNING):
        graphs = onnx_backend.cached_graphs(net)
    assert "cannot write the ONNX cache" in caplog.text
    assert (tmp_path / "tmp") in graphs[0].parents and graphs[0].is_file()


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DERAIN_CACHE", str(tmp_path / "c"))
    assert onnx_backend.cache_root() == tmp_path / "c" / "onnx"
    monkeypatch.delenv("DERAIN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert onnx_backend.cache_root() == tmp_path / "x" / "derain" / "onnx"


def test_session_threads_follow_torch_when_it_is_loaded():
    """--threads sets PyTorch's count; ONNX sessions follow it (benchmarks compare both)."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert onnx_backend.session_options().intra_op_num_threads == 1
        assert onnx_backend.session_options(3).intra_op_num_threads == 3
    finally:
        torch.set_num_threads(before)


def test_a_private_temp_folder_others_can_write_is_not_trusted(monkeypatch, tmp_path):
    """The fallback cache in the temporary folder is this user's, mode 0700: one that
    others may write into (graphs planted there would run) or a link is passed over (a
    mutation audit: dropping the mode check passed)."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    own = onnx_backend._private_temp_folder()
    assert own is not None and oct(own.stat().st_mode & 0o777) == oct(0o700)
    for mode in (0o770, 0o707, 0o777):
        own.chmod(mode)
        assert onnx_backend._private_temp_folder() is None, oct(mode)
    own.chmod(0o700)
    assert onnx_backend._private_temp_folder() == own
    own.rmdir()
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    own.symlink_to(tmp_path / "elsewhere")
    assert onnx_backend._private_temp_folder() is None


def test_a_throwaway_fallback_folder_is_removed_at_exit(monkeypatch, tmp_path, caplog):
    """With neither the cache nor the private temporary folder writable, the graphs go to a
    throwaway folder for this run, removed when the process exits: left behind, every such
    run would leave its graphs (megabytes each) in the temporary folder (a mutation audit
    found nothing failing)."""
    import atexit
    import tempfile

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    uid = os.getuid() if hasattr(os, "getuid") else None
    planted = tmp / (f"derain-onnx-{uid}" if uid is not None else "derain-onnx")
    planted.write_text("a file where the private folder would go")
    (tmp_path / "afile").write_text("not a folder")
    monkeypatch.setenv("DERAIN_CACHE", str(tmp_path / "afile" / "cache"))

    def fake_export(model, path, **kwargs):  # what is exported is not the point here
        Path(path).write_bytes(b"graph")
        return [Path(path)]

    monkeypatch.setattr(export, "export_onnx", fake_export)
    at_exit: list = []
    monkeypatch.setattr(atexit, "register", lambda f, *a, **k: at_exit.append((f, a, k)))
    torch.manual_seed(0)
    net = SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=1, detail_blocks=1)).eval()
    with caplog.at_level(logging.WARNING):
        graphs = onnx_backend.cached_graphs(net)
    assert "for this run" in caplog.text
    folder = graphs[0].parent
    assert folder.parent == tmp and folder.name.startswith("derain-onnx-")
    assert graphs[0].read_bytes() == b"graph"
    for f, a, k in at_exit:  # the process exits
        f(*a, **k)
    assert sorted(tmp.iterdir()) == [planted]
