"""int8 graphs: building one (tiny model, fixture photos), the shipped one, choosing it."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from derain_cli import quantize, tiling
from derain_cli.data import DataError
from derain_cli.enhancer import Derainer, default_overlap
from derain_cli.models import SemiDRDNet, SemiDRDNetConfig
from derain_cli.onnx_backend import OnnxRunner, make_onnx_runner, state_sha256
from derain_cli.weights import WeightRecord, load_manifest, load_pretrained

pytest.importorskip("onnxruntime")
# one_thread restores torch's thread count, which Derainer(threads=...) sets process-wide
pytestmark = pytest.mark.usefixtures("private_onnx_cache", "one_thread")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "astronaut_rain.jpg"
DEFAULT = "semi-drdnet-lite"


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - b) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(1.0 / mse)


def _photos(folder: Path, n: int, size: int = 48) -> Path:
    """Smooth, textured fixture 'photos' (no data set needed)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        base = np.stack([0.5 + 0.4 * np.sin((i + 2) * x), 0.3 + 0.5 * y, 0.4 + 0.3 * x * y])
        img = np.clip(base + 0.05 * rng.standard_normal(base.shape), 0, 1)
        Image.fromarray((img.transpose(1, 2, 0) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


def _example(size: int) -> np.ndarray:
    if not EXAMPLE.exists():
        pytest.skip("examples/astronaut_rain.jpg is not in this checkout")
    img = Image.open(EXAMPLE).convert("RGB").resize((size, size), Image.Resampling.BOX)
    return np.transpose(np.asarray(img, np.float32) / 255, (2, 0, 1))[None].copy()


def _weight_fed_by_dequantize(graph: onnx.GraphProto) -> dict[str, bool]:
    """Per Conv node: does its weight come through a DequantizeLinear (i.e. is it int8)?"""
    producers = {o: n.op_type for n in graph.node for o in n.output}
    return {n.name: producers.get(n.input[1]) == "DequantizeLinear"
            for n in graph.node if n.op_type == "Conv"}


def test_build_int8_quantizes_all_but_the_most_sensitive(tmp_path, monkeypatch):
    monkeypatch.setattr(quantize, "CALIB_COUNT", 3)
    monkeypatch.setattr(quantize, "HELD_OUT_COUNT", 2)
    torch.manual_seed(0)
    net = SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=1, detail_blocks=1,
                                      se_reduction=4)).eval()
    photos = _photos(tmp_path / "clean", 5)
    steps: list[tuple[int, int]] = []  # minutes passed in silence (an audit)
    seen: dict[str, list] = {"ranking": [], "inputs": [], "quantized": [], "static": []}

    def spy_on(name: str) -> None:
        real = getattr(quantize, name)

        def spy(*a, **kw):
            got = real(*a, **kw)
            if name == "conv_sensitivity":
                seen["ranking"].append(got)
            elif name == "synthetic_inputs":
                seen["inputs"].append([np.array(x) for x in a[0]])
            elif not kw.get("only"):
                seen["quantized"].append((Path(a[0]).name, kw.get("cache")))
            return got
        monkeypatch.setattr(quantize, name, spy)

    for name in ("conv_sensitivity", "synthetic_inputs", "quantize_graph"):
        spy_on(name)
    import onnxruntime.quantization as ortq

    static = ortq.quantize_static
    monkeypatch.setattr(ortq, "quantize_static", lambda *a, **kw: seen["static"].append(kw)
                        or static(*a, **kw))
    files, rec = quantize.build_int8(net, photos, tmp_path / "m.int8.onnx", keep_fp32=2,
                                     threads=1, on_step=lambda k, n: steps.append((k, n)))
    # what a mutation audit found unpinned: the record's hashes are the files' (else the
    # bundled graph is refused as damaged); the convolutions kept in fp32 are the most
    # sensitive ones, ranked on held-out photos that calibration never saw; the
    # statistics graph keeps its own calibration ranges; the calibration is the
    # percentile one the record states
    from derain_cli.fileio import sha256_file

    assert (rec["sha256"], rec["size"]) == (sha256_file(files[0]), files[0].stat().st_size)
    assert rec["stats_sha256"] == sha256_file(files[1])
    (ranking,) = seen["ranking"]
    assert ranking == sorted(ranking) and rec["fp32_convs"] == [n for _, n in ranking[:2]]
    calibration, held_out = seen["inputs"]
    assert len(calibration) == 3 and len(held_out) == 2
    assert not any(np.array_equal(h, c) for h in held_out for c in calibration)
    (_, forward_cache), (_, stats_cache) = seen["quantized"]
    assert forward_cache != stats_cache
    assert all(kw["calibrate_method"] == ortq.CalibrationMethod.Percentile
               and kw["extra_options"]["CalibPercentile"] == quantize.PERCENTILE
               for kw in seen["static"]) and "percentile 99.999" in rec["calibration"]
    total = steps[0][1]
    assert steps == [(k, total) for k in range(1, total + 1)] and total > 4
    assert [f.name for f in files] == ["m.int8.onnx", "m.int8.stats.onnx"]
    assert rec["source_sha256"] == state_sha256(net)
    assert rec["weight_bits"] == 7 and len(rec["fp32_convs"]) == 2

    proto = onnx.load(str(files[0]))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["derain.precision"] == "int8" and meta["derain.role"] == "forward"
    assert json.loads(meta["derain.int8"])["fp32_convs"] == rec["fp32_convs"]
    fed = _weight_fed_by_dequantize(proto.graph)
    assert all(not fed[n] for n in rec["fp32_convs"])
    assert sum(fed.values()) == len(fed) - 2
    # the statistics graph is quantized alike: same convolutions kept in fp32
    stats = onnx.load(str(files[1]))
    assert {p.key: p.value for p in stats.metadata_props}["derain.role"] == "stats"
    fed_stats = _weight_fed_by_dequantize(stats.graph)
    assert fed_stats and all(fed_stats[n] == fed[n] for n in fed_stats)
    assert rec["stats_file"] == files[1].name and len(rec["stats_sha256"]) == 64
    # the adds of the folded DCCLs run on uint8 data: dequantized inputs, quantized output
    producers = {o: n.op_type for n in proto.graph.node for o in n.output}
    consumers = {i: n.op_type for n in proto.graph.node for i in n.input}
    adds = [n for n in proto.graph.node if n.name.startswith("/detail_net/blocks/")
            and "/body/" in n.name and n.op_type == "Add"]
    assert len(adds) == 4  # one block: two DCCLs of three summed convs
    for n in adds:
        assert [producers[i] for i in n.input] == ["DequantizeLinear"] * 2
        assert consumers[n.output[0]] == "QuantizeLinear"

    runner = OnnxRunner(files[0], threads=1)  # finds its statistics graph beside it
    assert runner.precision == "int8"
    x = quantize.synthetic_inputs([photos / "4.png"], 48, 7)[0]
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    got = runner.forward(x, None)
    assert 30 < _psnr(got, ref) < 99  # close to fp32, and really quantized


def test_rdmc_quantizes_and_leaves_the_working_directory_clean(tmp_path, monkeypatch):
    """RDMC's resizes defeat ONNX Runtime's symbolic shape inference, whose failed attempt
    left a temporary graph and weights in the current directory."""
    from derain_cli.models import RDMC, RDMCConfig

    monkeypatch.setattr(quantize, "CALIB_COUNT", 3)
    monkeypatch.setattr(quantize, "HELD_OUT_COUNT", 2)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    torch.manual_seed(0)
    net = RDMC(RDMCConfig(channels=(4, 8, 8, 8, 8), stages=1)).eval()
    photos = _photos(tmp_path / "clean", 5, size=64)
    steps: list[tuple[int, int]] = []
    files, rec = quantize.build_int8(net, photos, tmp_path / "r.int8.onnx", keep_fp32=0,
                                     threads=1, on_step=lambda k, n: steps.append((k, n)))
    assert steps == [(1, 2), (2, 2)]  # the export, the quantizing: no ranking
    assert [f.name for f in files] == ["r.int8.onnx"] and rec["fp32_convs"] == []
    assert list(work.iterdir()) == []
    fed = _weight_fed_by_dequantize(onnx.load(str(files[0])).graph)
    assert fed and all(fed.values())  # every convolution is int8
    x = quantize.synthetic_inputs([photos / "4.png"], 64, 7)[0]
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert 25 < _psnr(OnnxRunner(files[0], threads=1).forward(x, None), ref) < 99


def test_summed_conv_adds_are_the_folded_dccl_sums_only(tmp_path):
    from derain_cli.export import export_onnx

    torch.manual_seed(0)
    net = SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=2, detail_blocks=2,
                                      se_reduction=4)).eval()
    fp32 = export_onnx(net, tmp_path / "m.onnx")[0]
    names = quantize.summed_conv_adds(fp32)
    assert len(names) == 8  # two per DCCL (three convs), two DCCLs per block, two blocks
    assert all(n.startswith("/detail_net/blocks/blocks.") and "/body/body." in n for n in names)


def test_too_few_calibration_photos_is_a_clear_error(tmp_path):
    net = SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=1, detail_blocks=1)).eval()
    with pytest.raises(DataError, match="int8 calibration needs"):
        quantize.build_int8(net, _photos(tmp_path / "few", 2), tmp_path / "x.onnx")
    # enough for --keep-fp32 0 (no ranking of convolutions): the message says so
    enough = quantize.min_photos(0)
    with pytest.raises(DataError, match=f"needs {quantize.min_photos(1)} \\({enough} with "
                                        "--keep-fp32 0"):
        quantize.build_int8(net, _photos(tmp_path / "some", enough), tmp_path / "x.onnx")


def _photo(path: Path, h: int, w: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_mixed_sizes_and_an_unreadable_photo_calibrate_rdmc(tmp_path, monkeypatch, capsys):
    """Portrait and landscape photos of several sizes share one crop (turned landscape,
    rounded down to RDMC's multiple of 16, named in the record); a broken file is skipped
    with one warning."""
    from derain_cli.models import RDMC, RDMCConfig

    monkeypatch.setattr(quantize, "CALIB_COUNT", 3)
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "0.png").write_bytes(b"not an image")
    for i, (h, w) in enumerate([(70, 50), (50, 90), (100, 100)], start=1):
        _photo(clean / f"{i}.png", h, w, seed=i)
    torch.manual_seed(0)
    net = RDMC(RDMCConfig(channels=(4, 8, 8, 8, 8), stages=1)).eval()
    files, rec = quantize.build_int8(net, clean, tmp_path / "r.int8.onnx", keep_fp32=0,
                                     threads=1)
    assert "3 crops of 48x64 px" in rec["calibration"]
    meta = {p.key: p.value for p in onnx.load(str(files[0])).metadata_props}
    assert json.loads(meta["derain.int8"])["calibration"] == rec["calibration"]
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("warning:")] == [
        f"warning: {clean / '0.png'}: cannot read image "
        "(not an image file (supported: JPEG, PNG, WebP, TIFF, BMP)); skipped"]
    (clean / "3.png").write_bytes(b"broken too")  # now 2 readable photos, 3 needed
    with pytest.raises(ValueError, match="2 usable photos .2 unreadable or too small "
                                         "skipped.; int8 calibration needs 3"):
        quantize.build_int8(net, clean, tmp_path / "x.onnx", keep_fp32=0)


def test_calibration_crops_are_capped_and_each_gets_its_own_rain(tmp_path) -> None:
    """Large photos are calibrated on crops of at most CALIB_SIZE px each way (ONNX Runtime
    stacks every output: 1080 px crops cost minutes and memory), a photo of exactly the
    least side is usable, and every crop gets other rain (one seed each). Survivors of a
    mutation audit."""
    big = [(Path(f"{i}.png"), np.zeros((1080, 1920, 3), np.uint8)) for i in range(2)]
    assert quantize.calibration_crop(big) == (quantize.CALIB_SIZE, quantize.CALIB_SIZE)
    assert quantize.calibration_crop([(Path("p.png"), np.zeros((1920, 1080, 3)))]) == (
        quantize.CALIB_SIZE, quantize.CALIB_SIZE)
    least = quantize.MIN_CALIB_SIZE
    _photo(tmp_path / "edge.png", least, least)
    ((_, img),) = quantize.read_photos([tmp_path / "edge.png"], 1, least)
    assert img.shape[:2] == (least, least)
    flat = np.full((64, 64, 3), 128, np.uint8)
    a, b = quantize.synthetic_inputs([flat, flat], 64, 0)
    assert not np.array_equal(a, b)
    assert np.array_equal(quantize.synthetic_inputs([flat], 64, 1)[0], b)


def test_keeping_exactly_every_convolution_ranks_none(tmp_path, monkeypatch, caplog):
    """--keep-fp32 equal to the number of convolutions keeps them all: nothing to rank
    (minutes of it) and the warning that the graph is no faster than fp32 (a mutation
    audit: only a count far above it was tested)."""
    monkeypatch.setattr(quantize, "CALIB_COUNT", 2)
    monkeypatch.setattr(quantize, "HELD_OUT_COUNT", 1)
    net = SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=1, detail_blocks=1)).eval()
    photos = _photos(tmp_path / "clean", 3)
    _, rec = quantize.build_int8(net, photos, tmp_path / "a.onnx", keep_fp32=1000)
    count = len(rec["fp32_convs"])
    ranked: list = []
    monkeypatch.setattr(quantize, "conv_sensitivity", lambda *a, **k: ranked.append(a) or [])
    with caplog.at_level(logging.WARNING, logger="derain_cli"):
        _, rec = quantize.build_int8(net, photos, tmp_path / "b.onnx", keep_fp32=count)
    assert len(rec["fp32_convs"]) == count and not ranked
    assert f"keeping {count} convolutions in fp32 keeps all {count}" in caplog.text


def test_calibration_photo_too_small_is_skipped_by_name(tmp_path, monkeypatch, capsys):
    """One small photo among the first ones ended the export (an audit): it is skipped with
    a warning, as an unreadable one is, and the export fails only without enough others."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # nothing left in /tmp, ever
    monkeypatch.setattr(quantize, "CALIB_COUNT", 2)
    clean = tmp_path / "clean"
    clean.mkdir()
    _photo(clean / "a.png", 48, 48)
    _photo(clean / "b.png", 20, 40)
    net = SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=1, detail_blocks=1)).eval()
    with pytest.raises(ValueError, match=r"1 usable photo .1 unreadable or too small "
                                         r"skipped.; int8 calibration needs 2"):
        quantize.build_int8(net, clean, tmp_path / "x.onnx", keep_fp32=0)
    assert capsys.readouterr().err.strip() == (
        f"warning: {clean / 'b.png'}: 40x20 px is too small for int8 calibration (both sides "
        "must be at least 32 px); skipped")
    _photo(clean / "c.png", 40, 56)
    files, rec = quantize.build_int8(net, clean, tmp_path / "x.onnx", keep_fp32=0)
    assert "2 crops of 40x48 px" in rec["calibration"] and rec["calibration"].endswith(
        "on clean")
    assert quantize.calibration_crop([(Path("a"), np.zeros((60, 500, 3)))], 16) == (48, 320)


def test_failed_build_removes_its_scratch_folder(tmp_path, monkeypatch):
    """The scratch folder (fp32 graphs, calibration cache) goes on failure too."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(quantize, "CALIB_COUNT", 2)

    def fail(*args: object, **kwargs: object) -> Path:
        assert list(scratch.glob("derain-int8-*/fp32.onnx"))  # really made, then failed
        raise RuntimeError("quantizer failed")

    monkeypatch.setattr(quantize, "quantize_graph", fail)
    net = SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=1, detail_blocks=1)).eval()
    with pytest.raises(RuntimeError, match="quantizer failed"):
        quantize.build_int8(net, _photos(tmp_path / "clean", 2), tmp_path / "x.onnx",
                            keep_fp32=0)
    assert list(scratch.iterdir()) == []


def _shipped(name: str = DEFAULT) -> tuple[WeightRecord, torch.nn.Module, Path]:
    rec = load_manifest()[name]
    if "int8" not in rec.extra:
        pytest.skip(f"{name} ships no int8 graph")
    net = load_pretrained(name, quiet=True).eval()
    return rec, net, quantize.shipped_int8_graph(rec, net)


#: Every bundled model that ships an int8 graph.
WITH_INT8 = sorted(n for n, r in load_manifest().items() if "int8" in r.extra)


@pytest.mark.parametrize("name", WITH_INT8)
def test_shipped_int8_graph_is_close_to_fp32(name):
    """Parity of the quantized path: the shipped graph against the fp32 graph, on a photo."""
    _, net, path = _shipped(name)
    x = _example(256)
    fp32 = make_onnx_runner(net, "cpu", "fp32", threads=2).forward(x, None)
    int8 = make_onnx_runner(net, "cpu", "int8", threads=2, int8_graph=path).forward(x, None)
    assert 38 <= _psnr(np.clip(int8, 0, 1), np.clip(fp32, 0, 1)) < 99


@pytest.mark.parametrize("name", WITH_INT8)
def test_shipped_int8_tiled_matches_untiled_1024(name):
    """Issue 3's tiling criterion on the int8 path: 1024x1024, tile 256, >= 45 dB."""
    _, net, path = _shipped(name)
    runner = make_onnx_runner(net, "cpu", "int8", threads=2, int8_graph=path)
    img = np.ascontiguousarray(_example(1024)[0].transpose(1, 2, 0))
    full = np.clip(tiling.run_tiled(img, runner, 0, 0, hwc=True), 0, 1)
    # At the overlap and smallest tile the product uses (RDMC: 96 px, 512 px tiles).
    tile = max(256, getattr(net, "min_tile", 0))
    tiled = np.clip(tiling.run_tiled(img, runner, tile, default_overlap(net), hwc=True), 0, 1)
    assert _psnr(tiled, full) >= 45


def test_int8_graph_of_other_weights_is_refused():
    rec, net, _ = _shipped()
    stale = WeightRecord.from_dict(rec.to_dict())
    stale.extra["int8"] = dict(rec.extra["int8"], source_sha256="0" * 64)
    with pytest.raises(quantize.Int8Unavailable, match="other weights"):
        quantize.shipped_int8_graph(stale, net)
    corrupt = WeightRecord.from_dict(rec.to_dict())
    corrupt.extra["int8"] = dict(rec.extra["int8"], sha256="0" * 64)
    with pytest.raises(quantize.Int8Unavailable, match="sha256"):
        quantize.shipped_int8_graph(corrupt, net)


def test_auto_precision_picks_int8_on_cpu_and_explicit_choices_hold(tmp_path, monkeypatch):
    from derain_cli import engine_choice

    _shipped()
    monkeypatch.delenv(engine_choice.ENV, raising=False)  # conftest pins int8: the real choice
    monkeypatch.setenv("DERAIN_CACHE", str(tmp_path))
    monkeypatch.setattr(engine_choice, "cpu_has_bf16", lambda: False)
    d = Derainer(device="cpu", threads=1)
    assert (d.backend, d.precision, d.engine_note) == ("onnx", "int8", "no bf16 instructions")
    assert (Derainer(device="cpu", precision="fp32", threads=1).precision) == "fp32"
    torch_run = Derainer(device="cpu", backend="torch", threads=1)
    assert torch_run.backend == "torch" and torch_run.precision != "int8"
    with pytest.raises(ValueError, match="ONNX Runtime"):
        Derainer(device="cpu", backend="torch", precision="int8")


def test_int8_for_a_weights_file_is_refused_with_a_way_out(tiny_weights):
    with pytest.raises(ValueError, match="--precision auto, fp32 or bf16"):
        Derainer(weights=tiny_weights, device="cpu", precision="int8")
    assert Derainer(weights=tiny_weights, device="cpu", threads=1).precision != "int8"
