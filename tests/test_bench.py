"""Benchmark helpers and a tiny end-to-end run (the real measurement is run by hand)."""

from __future__ import annotations

import errno
import json
import math
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

from derain_cli import bench, commands_tools, tiling
from derain_cli.models import SemiDRDNet, SemiDRDNetConfig, build_model
from derain_cli.onnx_backend import ORT_CPU_TILE

pytestmark = pytest.mark.usefixtures("private_onnx_cache", "one_thread")


class _Conv(nn.Module):
    size_multiple = 1
    global_stats_shape = None

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_flops_are_per_pixel_and_exact_for_a_conv():
    fwd, stats = bench.count_flops(_Conv(), 32)
    assert fwd == 2 * 9 * 3 * 3 and stats == 0
    net = SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=2, detail_blocks=1, se_reduction=4))
    a, sa = bench.count_flops(net, 32)
    b, sb = bench.count_flops(net, 64)
    assert a == pytest.approx(b, rel=1e-3) and sa == pytest.approx(sb, rel=1e-3)
    assert 0 < sa < a  # the statistics pass runs the rain network only


def test_tiling_work_counts_overlap_and_statistics_passes():
    assert bench.tiling_work(500, 400, 0, 48, 1, True, 10.0, 3.0) == 1.0
    plain = bench.tiling_work(1000, 1000, 512, 48, 1, False, 10.0, 3.0)
    tiles = tiling.plan_tiles(1000, 1000, 512, 48)
    px = sum((t.y1 - t.y0) * (t.x1 - t.x0) for t in tiles)
    assert len(tiles) == 6 and plain == pytest.approx(px / 1e6)  # 2 x 3 tiles of 524x366
    with_stats = bench.tiling_work(1000, 1000, 512, 48, 1, True, 10.0, 3.0)
    # The statistics pass has its own tiles (half the overlap: fewer pixels)...
    stats_px = sum((t.y1 - t.y0) * (t.x1 - t.x0)
                   for t in tiling.statistics_tiles(1000, 1000, 512, 48))
    assert stats_px < px
    assert with_stats == pytest.approx(plain + tiling.STATS_PASSES * 0.3 * stats_px / 1e6)
    # ...and samples smaller ones on large images: a third of a 12 MP photo.
    big = bench.tiling_work(3000, 4000, 512, 32, 1, True, 10.0, 3.0)
    small = tiling.plan_tiles(3000, 4000, tiling.STATS_SAMPLE_TILE, 16)
    sample = tiling.statistics_tiles(3000, 4000, 512, 32)
    assert sample == [small[i] for i in tiling.sample_tiles(small, tiling.STATS_MEGAPIXELS)]
    assert len(small) / 3 <= len(sample) < len(small) / 2
    big_px = sum((t.y1 - t.y0) * (t.x1 - t.x0) for t in tiling.plan_tiles(3000, 4000, 512, 32))
    assert big == pytest.approx(
        (big_px + 0.3 * sum((t.y1 - t.y0) * (t.x1 - t.x0) for t in sample)) / 12e6)


def test_reference_convs_and_peak():
    semi = SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=1, detail_blocks=1, se_reduction=4))
    assert bench.reference_convs(semi, 64) == [(8, 64, 1.0)]
    rdmc = bench.random_model("rdmc-lite")
    parts = bench.reference_convs(rdmc, 256)
    assert [p[:2] for p in parts] == [(12, 256), (24, 128), (48, 64), (96, 32), (96, 16)]
    cache: dict = {}
    peak, desc = bench.mixed_peak(semi, 32, torch.device("cpu"), cache)
    assert peak > 0 and desc.startswith("8->8") and len(cache) == 1
    assert "fastest: " in desc


def test_conv_peak_is_the_fastest_engine(monkeypatch):
    """The reference is the best engine for that conv, so no path scores over it by proxy."""
    gflops, engine = bench.conv_peak(8, 32, torch.device("cpu"), repeats=1)
    assert gflops > 0 and engine in {"torch", "torch channels_last", "onnxruntime"}
    flops = 2 * 9 * 8 * 8 * 32 * 32
    monkeypatch.setattr(bench, "_ort_conv_seconds", lambda conv, x, repeats: 1e-9)
    gflops, engine = bench.conv_peak(8, 32, torch.device("cpu"), repeats=1)
    assert engine == "onnxruntime" and gflops == pytest.approx(flops / 1e-9 / 1e9)
    monkeypatch.setattr(bench, "_ort_conv_seconds", lambda conv, x, repeats: 1e9)
    gflops, engine = bench.conv_peak(8, 32, torch.device("cpu"), repeats=1)
    assert engine.startswith("torch") and gflops > flops / 1e9 / 1e9


def test_conv_peak_in_reduced_precision_runs_autocast(monkeypatch):
    """A bf16 reference runs the PyTorch engines under bf16 autocast, never fp32 ORT."""
    monkeypatch.setattr(bench, "_ort_conv_seconds", lambda conv, x, repeats: 1e-9)
    seen: list[torch.dtype] = []
    real_conv = nn.Conv2d.forward

    def spy(self, x):
        out = real_conv(self, x)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(nn.Conv2d, "forward", spy)
    gflops, engine = bench.conv_peak(8, 16, torch.device("cpu"), repeats=1,
                                     dtype=torch.bfloat16)
    assert gflops > 0 and engine in {"torch bf16", "torch channels_last bf16"}
    assert seen and set(seen) == {torch.bfloat16}
    cache: dict = {}
    semi = SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=1, detail_blocks=1, se_reduction=4))
    bench.mixed_peak(semi, 16, torch.device("cpu"), cache)
    bench.mixed_peak(semi, 16, torch.device("cpu"), cache, torch.bfloat16)
    assert len(cache) == 2  # fp32 and bf16 references are kept apart


def test_ort_conv_timing_runs_the_real_graph():
    conv = torch.nn.Conv2d(4, 4, 3, padding=1).eval()
    t = bench._ort_conv_seconds(conv, torch.rand(1, 4, 16, 16), repeats=1)
    assert t is not None and 0 < t < 10


def test_scene_is_rainy_and_varied():
    img = bench.test_scene(96, 128)
    assert img.shape == (3, 96, 128) and img.dtype == np.float32
    assert 0 <= img.min() and img.max() <= 1
    assert img[:, :, :40].mean() < img[:, :, 50:].mean() - 0.1  # the dark band


def test_bench_main_tiny(tmp_path):
    out = tmp_path / "b.json"
    lines: list[str] = []
    said: list[str] = []  # the default run measured for many minutes in silence (an audit)
    res = bench.bench_main(
        ["semi-drdnet-tiny"], size=(48, 64), tile=32, overlap=8,
        variants=["fp32", "channels_last", "bf16", "fp16", "onnx"], devices="cpu",
        flop_side=32, peak_side=32, json_path=out, echo=lines.append,
        force_bf16=True,  # emulated where the CPU has no bf16: the row is checked everywhere
        on_row=said.append,
    )
    assert said[0] == "measuring semi-drdnet-tiny on cpu, fp32 (1/5)" and len(said) == 5
    assert said[-1] == "measuring semi-drdnet-tiny on cpu, onnx (5/5)"
    rows = {r.variant: r for r in res.rows}
    assert rows["fp32"].s_per_mp > 0 and rows["fp32"].gflops > 0
    assert rows["fp32"].work > 1  # overlapping tiles + statistics passes
    assert rows["channels_last"].psnr_vs_fp32 > 60
    assert rows["onnx"].psnr_vs_fp32 > 60 and "onnxruntime" in rows["onnx"].note
    assert rows["fp16"].note.startswith("skipped")
    assert rows["bf16"].seconds is not None and 25 < rows["bf16"].psnr_vs_fp32 < 200
    from derain_cli.torch_runner import cpu_supports_bf16

    # an emulated row says so (its s/MP passed for bf16's own: an audit)
    assert ("emulated" in rows["bf16"].note) == (not cpu_supports_bf16())
    _, ref = res.models[0].reduced_peaks["bf16"]
    assert "bf16" in ref and "bf16 conv peak" in lines[0]
    for r in (rows["fp32"], rows["bf16"], rows["onnx"]):
        assert r.peak_gflops > 0 and r.peak_ratio == pytest.approx(r.gflops / r.peak_gflops)
    data = json.loads(out.read_text())
    assert data["rows"][0]["model"] == "semi-drdnet-tiny" and data["models"][0]["tile"] == 32
    assert data["overlap"] == 8 and data["models"][0]["overlap"] == 8
    text = lines[0]
    assert "| semi-drdnet-tiny | cpu | onnx |" in text and "FlopCounterMode" in text
    # what the table was measured on and how: a rerun must be able to match it
    assert data["repeats"] == 1 and data["scene"] == bench.scene_name()
    assert "best of 1 timed run after" in text and bench.scene_name() in text
    assert all(r.warmup_s > 0 for r in rows.values() if r.seconds is not None)


def test_rss_that_cannot_be_measured_keeps_the_rows(tmp_path, monkeypatch, caplog):
    """Where the memory measurement fails (Windows has no getrusage), every row measured
    was thrown away, no Markdown nor JSON written (an audit): it is a note."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "resource" else real(name, *a))
    res = bench.bench_main(["semi-drdnet-tiny"], size=(32, 40), tile=0, variants=["fp32"],
                           devices="cpu", flop_side=32, peak_side=16, rss=True,
                           json_path=tmp_path / "b.json", echo=None)
    assert res.rows[0].seconds is not None and res.rss is None
    assert json.loads((tmp_path / "b.json").read_text())["rows"]
    assert "peak memory (--rss) not measured: this system has no getrusage" in caplog.text


def test_bench_reports_the_overlap_tiling_really_uses():
    # run_tiled clamps the overlap to half a tile: the notes and the work must say so
    res = bench.bench_main(["semi-drdnet-tiny"], size=(40, 56), tile=24, overlap=100,
                           variants=["fp32"], devices="cpu", flop_side=32, peak_side=16,
                           echo=None)
    info, row = res.models[0], res.rows[0]
    assert info.overlap == 12
    assert row.work == pytest.approx(bench.tiling_work(
        40, 56, 24, 12, 1, True, info.flops_per_px, info.stats_flops_per_px))
    # the header said "overlap 100" beside notes that say 12 (an audit)
    res.threads = 1
    head = bench.render_markdown(res).splitlines()[0]
    assert "overlap 100 asked (capped: see the model notes), 1 thread," in head, head
    assert "(0.00224 MP)" in head  # was "0.00 MP"


def test_ctrl_c_keeps_the_rows_measured(tmp_path, monkeypatch):
    """Ctrl-C in a bench of many rows printed nothing and kept nothing (an audit): the rows
    finished are printed and written, marked as interrupted; the row cut short is not."""
    real, calls = bench._timed_passes, []

    def second_is_interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(bench, "_timed_passes", second_is_interrupted)
    lines: list[str] = []
    with pytest.raises(bench.BenchInterrupted) as got:
        bench.bench_main(["semi-drdnet-tiny"], size=(32, 40), tile=0, variants=[
            "fp32", "channels_last", "onnx"], devices="cpu", flop_side=16, peak_side=16,
            json_path=tmp_path / "b.json", echo=lines.append)
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["interrupted"] and [r["variant"] for r in data["rows"]] == ["fp32"]
    assert got.value.result.rows[0].seconds is not None
    assert "Interrupted: the rows measured before Ctrl-C." in lines[0]
    assert "| channels_last |" not in lines[0]
    # nothing measured: an earlier run's JSON is not replaced by an empty one (review)
    calls.clear()
    monkeypatch.setattr(bench, "_timed_passes", lambda *a, **k: (_ for _ in ()).throw(
        KeyboardInterrupt()))
    with pytest.raises(bench.BenchInterrupted) as got:
        bench.bench_main(["semi-drdnet-tiny"], size=(32, 40), tile=0, variants=["fp32"],
                         devices="cpu", flop_side=16, peak_side=16,
                         json_path=tmp_path / "b.json", echo=lines.append)
    assert got.value.result.rows == [] and got.value.result.models == []
    assert json.loads((tmp_path / "b.json").read_text())["rows"] == data["rows"]
    assert bench._checked_request(["semi-drdnet-tiny"] * 2, ["fp32"])[0] == [
        "semi-drdnet-tiny"]  # -m X -m X measured twice
    assert bench._devices("cpu,cpu") == [torch.device("cpu")]


def test_bench_tile_below_the_networks_minimum_is_raised_as_derain_does(capsys):
    # rdmc-lite's tiles agree with the whole image from 512 px; derain warns and runs those
    res = bench.bench_main(["rdmc-lite"], size=(48, 64), tile=32, variants=["fp32", "onnx"],
                           devices="cpu", flop_side=32, peak_side=16, echo=None)
    assert res.models[0].tile == 512 and {r.tile for r in res.rows} == {512}
    assert "--tile 32 is below rdmc-lite's minimum of 512 px" in capsys.readouterr().err


def test_bench_ratio_is_against_the_reference_measured_beside_each_row(monkeypatch):
    # a machine whose speed drifts: the run's first reference measurement reads 1 GFLOP/s,
    # every later one 1000; each row's ratio must use the one measured with its runs
    calls: list[torch.dtype] = []

    def drifting(net, side, device, cache, dtype=torch.float32, repeats=5):
        if repeats == 5:  # the run's first measurement (cached for the model notes)
            return 1.0, "first"
        calls.append(dtype)
        return 1000.0, "beside"

    monkeypatch.setattr(bench, "mixed_peak", drifting)
    res = bench.bench_main(["semi-drdnet-tiny"], size=(32, 32), tile=0,
                           variants=["fp32", "channels_last"], devices="cpu", flop_side=32,
                           peak_side=16, repeats=2)
    for r in res.rows:
        assert r.peak_gflops == 1000.0
        assert r.peak_ratio == pytest.approx(r.gflops / 1000.0)
    assert calls == [torch.float32] * 4  # after each of the 2 timed runs of the 2 rows
    assert res.repeats == 2 and "best of 2 timed runs" in bench.render_markdown(res)


def test_bench_skips_bf16_on_a_cpu_without_it(monkeypatch):
    monkeypatch.setattr(bench, "cpu_supports_bf16", lambda: False)
    net = SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=1, detail_blocks=1)).eval()
    why = bench.make_variant_runner(net, "bf16", torch.device("cpu"))
    assert isinstance(why, str) and why.startswith("skipped") and "--force-bf16" in why
    assert not isinstance(bench.make_variant_runner(net, "bf16", torch.device("cpu"),
                                                    force_bf16=True), str)


def test_bench_cmd_json_and_errors():
    app = typer.Typer()
    app.command()(commands_tools.bench_cmd)
    res = CliRunner().invoke(app, [
        "-m", "rdmc-lite", "--size", "40x32", "--tile", "0", "--variants", "fp32",
        "--device", "cpu", "--peak-side", "16", "--flop-side", "16", "--json", "-",
    ])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)  # what is measured is said on stderr, as it starts
    assert res.stderr.strip() == "measuring rdmc-lite on cpu, fp32 (1/1) ..."
    assert data["width"] == 40 and data["height"] == 32 and data["rows"][0]["work"] > 1
    # without --tile-overlap each model gets the overlap derain itself would use (RDMC: 96)
    assert data["overlap"] is None and data["models"][0]["overlap"] == 96
    bad = CliRunner().invoke(app, ["--variants", "fp64", "--size", "32x32"])
    assert bad.exit_code == 2 and "unknown variant" in bad.output
    # fp32 named last (and twice) still runs once, first: the other rows get their PSNR
    res = CliRunner().invoke(app, [
        "-m", "semi-drdnet-tiny", "--size", "40x32", "--tile", "0", "--variants",
        "onnx,fp32,fp32", "--device", "cpu", "--peak-side", "16", "--flop-side", "16",
        "--repeats", "1", "--json", "-"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["rows"]
    assert [r["variant"] for r in rows] == ["fp32", "onnx"]
    assert rows[1]["psnr_vs_fp32"] is not None and rows[1]["psnr_vs_fp32"] > 40


@pytest.mark.parametrize("args, text", [
    (["--device", "cuda"], "--device cuda was asked for but PyTorch sees no CUDA GPU"),
    (["--device", "cpu,cuda:1"], "--device cuda:1 was asked for but PyTorch sees no CUDA"),
    (["--device", "gpu"], "unknown device 'gpu'; use auto, cpu, cuda, cuda:N or mps"),
    (["--device", "cpu cuda"], "use auto, cpu, cuda, cuda:N or mps (comma-separated for "
                               "several)"),
    (["--json", "/proc/b.json"], "--json cannot write /proc/b.json"),  # lost after measuring
    (["--device", "meta"], "unsupported device 'meta'"),
    (["--variants", "fp64"], "unknown variant 'fp64'; choose from fp32,"),
    (["--variants", ","], "no variant given"),
    (["-m", "nosuch"], "unknown model 'nosuch'; choose one of: semi-drdnet,"),
    (["--json", "/"], "--json / is a folder; name a file in it"),  # was found after measuring
    (["--json", __file__], "exists; pass --overwrite to replace it"),  # replaced in silence
])
def test_bench_cmd_bad_values_are_one_line_usage_errors(monkeypatch, args, text):
    """Bad values exit 2 with one line, before any measuring (no AssertionError from torch)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bench, "model_for_bench", lambda name: pytest.fail("measured"))
    app = typer.Typer()
    app.command()(commands_tools.bench_cmd)
    res = CliRunner().invoke(app, [*args, "--size", "32x32"])
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: ") and text in res.output
    assert len(res.output.strip().splitlines()) == 1 and "Error" not in res.output


def test_a_bad_size_names_its_option():
    app = typer.Typer()
    app.command()(commands_tools.bench_cmd)
    res = CliRunner().invoke(app, ["--size", "100"], terminal_width=200)
    assert res.exit_code == 2 and "Invalid value for '--size'" in res.output, res.output


@pytest.mark.parametrize(("args", "said"), [
    (["--tile", "5"], "--tile must be 0 (untiled) or at least 16 px"),
    (["--megapixels", "inf"], "--megapixels must be a positive number, not inf"),
    (["--megapixels", "1e300"], "over derain's default --max-pixels"),
    (["--size", "16x16000000"], "a 16x16000000 test image is over"),
])
def test_bench_refuses_what_derain_would_not_run(args, said):
    """--tile 5 ran minutes a tile (derain refuses it); --megapixels inf crashed deep inside
    with an OverflowError, 1e300 in OpenCV (an audit): usage errors before any work."""
    app = typer.Typer()
    app.command()(commands_tools.bench_cmd)
    res = CliRunner().invoke(app, ["-m", "semi-drdnet-tiny", "--variants", "fp32", *args],
                             terminal_width=200)
    assert res.exit_code == 2 and said in res.output, res.output


def test_rss_subprocess_small():
    r = bench.measure_rss(size=(64, 96), threads=1)
    assert 50 < r["maxrss_mb"] < bench.RSS_BUDGET_MB
    assert r["model"] == bench.DEFAULT_MODEL and r["width"] == 96


def test_bench_refuses_a_device_derain_runs_but_bench_does_not_measure(monkeypatch):
    """An available MPS device passes derain's own device check; bench measures CPU and CUDA
    only and says so."""
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    with pytest.raises(bench.BenchError, match="--device mps: only cpu and cuda"):
        bench._devices("cpu,mps")


def test_each_engine_runs_with_the_tile_derain_gives_it():
    # derain runs ONNX Runtime in its own 512 px CPU tiles, PyTorch in CPU_TILE: a bench
    # that timed the ONNX rows in PyTorch's tile measured a run derain never makes
    lines: list[str] = []
    res = bench.bench_main(
        ["semi-drdnet-lite"], size=(48, 64), variants=["channels_last", "onnx"],
        devices="cpu", flop_side=32, peak_side=32, echo=lines.append,
    )
    rows = {r.variant: r for r in res.rows}
    assert rows["channels_last"].tile == bench.CPU_TILE == res.models[0].tile
    assert rows["onnx"].tile == ORT_CPU_TILE == res.models[0].ort_tile != bench.CPU_TILE
    assert f"(ONNX Runtime rows: {ORT_CPU_TILE}, its own default)" in lines[0]


def test_variant_tile_follows_the_engine_and_the_networks_minimum():
    class Ort:
        def suggest_tile(self) -> int:
            return 512

    assert bench.variant_tile(Ort(), None, 1024) == 512
    assert bench.variant_tile(object(), None, 1024) == 1024
    assert bench.variant_tile(Ort(), None, 1024, min_tile=384) == 768  # as Derainer
    assert bench.variant_tile(Ort(), 400, 1024, min_tile=384) == 400  # asked for: kept
    assert bench.variant_tile(Ort(), 96, 1024, min_tile=384) == 384  # raised, as Derainer
    assert bench.variant_tile(Ort(), 0, 1024, min_tile=384) == 0  # whole image


def test_help_lists_every_variant_whole_at_80_columns():
    """Typer's default column cut the list at 80 columns ("bf16,f…") and never named the
    on-request variant (audit)."""
    app = typer.Typer()
    app.command()(commands_tools.bench_cmd)
    res = CliRunner().invoke(app, ["--help"], terminal_width=80)
    words = " ".join(res.output.replace("│", " ").split())
    for v in (*bench.DEFAULT_VARIANTS, *bench.EXTRA_VARIANTS):
        assert v in words
    assert "…" not in words


def test_json_refuses_an_option_as_its_file_name():
    """`--json --rss` took '--rss' as the file, ran without --rss and wrote './--rss'."""
    app = typer.Typer()
    app.command()(commands_tools.bench_cmd)
    res = CliRunner().invoke(app, ["--json", "--rss"])
    assert res.exit_code == 2 and "--json takes a file name" in res.output


def test_overlapping_autotuning_blocks_of_two_threads_restore_the_setting_once():
    """Two threads' blocks overlap (A opens, B opens, A closes, B closes): autotuning stays on
    until B closes, then the setting from before A comes back, not the True B saw."""
    import threading

    import torch

    from derain_cli.torch_runner import cudnn_benchmark

    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    b_open, a_closed, seen = threading.Event(), threading.Event(), {}

    def b() -> None:
        with cudnn_benchmark():
            b_open.set()
            a_closed.wait(10)
            seen["b after a closed"] = torch.backends.cudnn.benchmark

    try:
        with cudnn_benchmark():
            thread = threading.Thread(target=b)
            thread.start()
            assert b_open.wait(10)
        a_closed.set()
        thread.join(10)
        assert seen == {"b after a closed": True}
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = before


def test_cudnn_autotuning_is_a_variant_of_its_own_and_leaves_the_setting_as_it_was():
    """cuDNN autotuning (issue 6's GPU list) is timed as bf16_autotune, not turned on for
    every run unmeasured; on a CPU it is skipped, and the block restores the global flag."""
    import torch

    from derain_cli.bench import EXTRA_VARIANTS, make_variant_runner
    from derain_cli.models import build_model
    from derain_cli.torch_runner import TorchRunner, cudnn_benchmark

    assert "bf16_autotune" in EXTRA_VARIANTS
    net = build_model("semi-drdnet-tiny")
    got = make_variant_runner(net, "bf16_autotune", torch.device("cpu"))
    assert got == "skipped: cuDNN autotuning is for CUDA GPUs"
    assert TorchRunner(net, torch.device("cpu"), "fp32", autotune=True).autotune is False
    before = torch.backends.cudnn.benchmark
    try:
        with cudnn_benchmark():
            assert torch.backends.cudnn.benchmark is True
            raise RuntimeError("a tile failed")
    except RuntimeError:
        pass
    assert torch.backends.cudnn.benchmark is before


def test_warm_up_runs_the_shape_the_timed_passes_run():
    """A small bench size runs mirrored out to 256 px (as derain runs it); the warm-up ran
    the 64 px image and left the 256 px shape's first-run cost in the timed pass."""
    import numpy as np

    from derain_cli import bench, tiling

    class Recording:
        size_multiple, global_stats_shape = 1, None

        def __init__(self) -> None:
            self.shapes: list[tuple[int, ...]] = []

        def forward(self, x, pooled):
            self.shapes.append(x.shape)
            return x

    img = np.zeros((3, 64, 64), np.float32)
    warm, timed = Recording(), Recording()
    bench._warm_up(warm, img, 1024)
    padded, crop = tiling.pad_small(img, hwc=False)
    assert tiling.run_tiled(padded, timed, 1024, 48)[crop].shape == img.shape
    assert warm.shapes == timed.shapes == [(1, 3, 256, 256)]


# --------------------------------------------------------------------------- mutation audit
# What a mutation audit found no test pinned: a row's arithmetic, the best-of loop, RDMC's
# reference mix, what is written where, and the options' edges. Most run bench_main with
# the measuring replaced (``_fixed_timing``): they check what bench makes of the times.


def _fixed_timing(monkeypatch: pytest.MonkeyPatch, seconds: float, peak: float = 100.0,
                  interrupt_at: int | None = None) -> None:
    """Every timed pass of a row takes ``seconds`` and the reference conv runs at ``peak``
    GFLOP/s, without measuring either (nor warming up); the ``interrupt_at``-th row's
    passes are cut short by Ctrl-C."""
    calls: list[int] = []

    def passes(net, runner, img, *args):
        calls.append(1)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return seconds, img, peak

    monkeypatch.setattr(bench, "mixed_peak", lambda *a, **k: (peak, "8->8 @ 16px, fastest: x"))
    monkeypatch.setattr(bench, "_timed_passes", passes)
    monkeypatch.setattr(bench, "_warm_up", lambda runner, img, tile: None)


def _result(**kw) -> bench.BenchResult:
    return bench.BenchResult(**{"height": 32, "width": 40, "overlap": None, "threads": 1,
                                "machine": "a CPU", "torch": "2", "flop_side": 16,
                                "peak_side": 16, **kw})


def _info(model: str, tile: int, overlap: int) -> bench.ModelInfo:
    return bench.ModelInfo(model, "cpu", "random init", 1e4, 0.0, 10.0, "8->8 @ 16px", tile,
                           overlap)


def test_a_rows_s_per_mp_and_gflops_are_per_megapixel_and_useful_flops(monkeypatch):
    """s/MP is the time over the image's megapixels, GFLOP/s the useful FLOPs over the
    time: a mutation audit found s/MP multiplied by the megapixels (right at 1 MP only) and
    GFLOP/s 1000x too big passing every test."""
    _fixed_timing(monkeypatch, 0.5)
    lines: list[str] = []
    res = bench.bench_main(["semi-drdnet-tiny"], size=(200, 250), tile=0, variants=["fp32"],
                           devices="cpu", flop_side=16, peak_side=16, echo=lines.append)
    row, info = res.rows[0], res.models[0]
    assert row.seconds == 0.5 and row.s_per_mp == pytest.approx(10.0)  # 0.5 s for 0.05 MP
    assert row.gflops == pytest.approx(info.flops_per_px * 50_000 / 0.5 / 1e9)
    assert row.peak_ratio == pytest.approx(row.gflops / 100.0)
    assert f"| semi-drdnet-tiny | cpu | fp32 | 10.00 | {row.gflops:.1f} |" in lines[0]


def test_an_onnx_rows_work_is_for_its_own_tiles(monkeypatch):
    """ONNX Runtime runs in its own 512 px tiles on CPUs, PyTorch in CPU_TILE: the work
    column of the ONNX rows must count the overlap of the tiles they ran in (a mutation
    audit: the PyTorch tile's passed every test)."""
    class Ort:  # ONNX Runtime's runner, as bench sees it
        size_multiple, global_stats_shape = 1, None
        providers = ["CPUExecutionProvider"]

        def suggest_tile(self) -> int:
            return ORT_CPU_TILE

    _fixed_timing(monkeypatch, 0.5)
    real = bench.make_variant_runner
    monkeypatch.setattr(bench, "make_variant_runner", lambda net, variant, *a: (
        Ort() if variant == "onnx" else real(net, variant, *a)))
    res = bench.bench_main(["semi-drdnet-tiny"], size=(64, 1200), overlap=16,
                           variants=["fp32", "onnx"], devices="cpu", flop_side=16,
                           peak_side=16, echo=None)
    info, rows = res.models[0], {r.variant: r for r in res.rows}
    assert rows["fp32"].tile == bench.CPU_TILE and rows["onnx"].tile == ORT_CPU_TILE
    for r in rows.values():
        assert r.work == pytest.approx(bench.tiling_work(
            64, 1200, r.tile, 16, 1, True, info.flops_per_px, info.stats_flops_per_px))
    assert rows["onnx"].work > rows["fp32"].work  # three tiles across, not two


def test_repeated_passes_report_the_fastest_and_the_highest_reference(monkeypatch):
    """--repeats 3 reports the fastest of the passes, against the highest reference peak
    measured beside them (the machine at its best): a mutation audit found the last pass's
    time and the last reference reported in their place, unnoticed."""
    class Identity:
        size_multiple, global_stats_shape = 1, None

        def forward(self, x, pooled):
            return x

    clock = iter([0.0, 3.0, 10.0, 11.0, 20.0, 22.0])  # passes of 3, 1 and 2 s
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    peaks = iter([50.0, 90.0, 70.0])
    monkeypatch.setattr(bench, "mixed_peak", lambda *a, **k: (next(peaks), "8->8"))
    img = np.random.default_rng(0).random((3, 16, 16), dtype=np.float32)
    best, out, near = bench._timed_passes(_Conv(), Identity(), img, 0, 8, torch.device("cpu"),
                                          torch.float32, 3, 16)
    assert best == 1.0 and near == 90.0
    np.testing.assert_array_equal(out, img)


def test_rdmcs_reference_convs_are_never_under_8_px(monkeypatch):
    """--peak-side 64: RDMC's deepest levels would time their reference conv on 4 px maps,
    which time nothing; they run on 8 px at least (a mutation audit found it unpinned)."""
    timed: list[tuple[int, int]] = []

    def conv_peak(width, side, device, repeats=5, dtype=torch.float32):
        timed.append((width, side))
        return 100.0, "torch"

    monkeypatch.setattr(bench, "conv_peak", conv_peak)
    bench.mixed_peak(build_model("rdmc-lite"), 64, torch.device("cpu"), {})
    assert timed == [(12, 64), (24, 32), (48, 16), (96, 8)]  # the last two levels: one conv


def test_rdmcs_peak_is_the_flop_weighted_mix_of_its_levels(monkeypatch):
    """RDMC's "% peak" is against total FLOPs / total time of its pyramid's reference convs,
    each level weighted by its share of the encoder's FLOPs (c_l^2 at a quarter of the
    pixels per level down): a mutation audit found other weights, or weights not summing
    to one, changing every RDMC row's "% peak" in silence."""
    sides = (256, 128, 64, 32, 16)  # the levels of rdmc-lite (12, 24, 48, 96, 96 wide)
    speed = dict(zip(sides, (100.0, 400.0, 400.0, 400.0, 400.0), strict=True))  # GFLOP/s
    monkeypatch.setattr(bench, "conv_peak", lambda width, side, *a, **k: (speed[side], "t"))
    rdmc = build_model("rdmc-lite")
    flops = [12**2, 24**2 / 4, 48**2 / 16, 96**2 / 64, 96**2 / 256]  # 144 x 4, then 36
    expected = sum(flops) / sum(f / speed[s] for f, s in zip(flops, sides, strict=True))
    peak, desc = bench.mixed_peak(rdmc, 256, torch.device("cpu"), {})
    assert peak == pytest.approx(expected) and desc.startswith("mix 12@256, 24@128")
    speed.update(dict.fromkeys(sides, 400.0))  # every conv as fast: the mix is that speed
    assert bench.mixed_peak(rdmc, 256, torch.device("cpu"), {})[0] == pytest.approx(400.0)


def test_psnr_vs_fp32_compares_what_derain_would_write():
    """derain clips its output to [0, 1]: values past white that both sides clip alike are
    no difference in the "PSNR vs fp32" column (a mutation audit found them counted)."""
    ref = np.full((3, 8, 8), 0.5, np.float32)
    ref[:, :4] = 1.0
    out = ref.copy()
    out[:, :4] = 1.3  # over white: written white, as the reference is
    assert bench.psnr(out, ref) == math.inf
    out[:, 4:] = 0.6  # half the pixels 0.1 off
    assert bench.psnr(out, ref) == pytest.approx(10 * math.log10(1 / 0.005))


def test_flops_of_a_network_that_pads_are_counted_on_an_aligned_side():
    """RDMC pads its input to a multiple of 16: counted on a 40 px side it ran 48 px and
    every pixel seemed 1.44x the work. --flop-side 40 counts as 32 does (a mutation
    audit)."""
    rdmc = build_model("rdmc-lite")
    assert bench.count_flops(rdmc, 40) == pytest.approx(bench.count_flops(rdmc, 32))


def test_json_to_stdout_writes_no_file(tmp_path, monkeypatch):
    """`derain bench --json -` prints the JSON; it must not also leave a file named "-"
    in the current folder (a mutation audit found that unpinned)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench, "_measure", lambda *a, **k: None)
    printed: list[str] = []
    bench.bench_main(["semi-drdnet-tiny"], size=(32, 40), variants=["fp32"], devices="cpu",
                     json_path="-", echo=printed.append)
    assert json.loads(printed[0])["width"] == 40
    assert list(tmp_path.iterdir()) == []


def test_a_json_write_that_fails_leaves_the_earlier_file_whole(tmp_path, monkeypatch):
    """A disk that fills while --json is written leaves the earlier run's file as it was
    (and no temporary file), not half of the new one (a mutation audit found a plain
    write passing every test)."""
    out = tmp_path / "b.json"
    out.write_text('{"rows": ["earlier"]}\n')
    monkeypatch.setattr(bench, "_measure", lambda *a, **k: None)
    real = Path.write_text

    def disk_full(self, text, *a, **k):
        real(self, text[: len(text) // 2], *a, **k)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError, match="No space left"):
        bench.bench_main(["semi-drdnet-tiny"], size=(32, 40), variants=["fp32"],
                         devices="cpu", json_path=out, echo=None)
    assert out.read_text() == '{"rows": ["earlier"]}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["b.json"]


def test_threads_sets_the_threads_the_rows_are_measured_on(monkeypatch):
    """`bench --threads 3` measures on 3 threads and says so (a mutation audit found the
    option ignored unnoticed: the tests run on one thread)."""
    seen: list[int] = []
    monkeypatch.setattr(bench, "_measure", lambda *a, **k: seen.append(torch.get_num_threads()))
    res = bench.bench_main(["semi-drdnet-tiny"], size=(32, 40), variants=["fp32"],
                           devices="cpu", threads=3, echo=None)
    assert seen == [3] and res.threads == 3


def test_the_least_tile_derain_takes_is_measured(monkeypatch):
    """--tile 16 is what the message asks for ("at least 16 px"): it is measured, not
    refused (a mutation audit)."""
    monkeypatch.setattr(bench, "_measure", lambda *a, **k: None)
    res = bench.bench_main(["semi-drdnet-tiny"], size=(32, 40), tile=bench.SMALLEST_TILE,
                           variants=["fp32"], devices="cpu", echo=None)
    assert (res.height, res.width) == (32, 40)
    with pytest.raises(bench.BenchError, match="not -5"):  # the CLI refuses it itself
        bench.bench_main(["semi-drdnet-tiny"], size=(32, 40), tile=-5, variants=["fp32"],
                         devices="cpu", echo=None)


def test_zero_megapixels_is_refused(monkeypatch):
    """--megapixels 0 is a usage error, not a bench of a 16x16 image (a mutation audit)."""
    monkeypatch.setattr(bench, "_measure", lambda *a, **k: pytest.fail("measured"))
    with pytest.raises(bench.BenchError, match="--megapixels must be a positive number"):
        bench.bench_main(["semi-drdnet-tiny"], megapixels=0.0, variants=["fp32"],
                         devices="cpu", echo=None)


@pytest.mark.parametrize(("mb", "verdict"), [(2999.0, "OK"), (3000.0, "OK"), (3001.0, "OVER")])
def test_the_memory_verdict_is_ok_within_the_budget(mb, verdict):
    """The Markdown's peak memory line says OK within the 3 GB budget and OVER past it (a
    mutation audit found it reversed passing every test)."""
    res = _result(rss={"maxrss_mb": mb, "seconds": 60.0, "weights": "published",
                       "model": bench.DEFAULT_MODEL, "height": 4000, "width": 6000})
    text = bench.render_markdown(res)
    assert f"(budget 3000 MB: {verdict})" in text, text


def test_the_rss_child_runs_on_the_threads_asked(monkeypatch):
    """`bench --rss --threads 3`: the memory is measured in a child on 3 threads, as the
    rows were, not on the default's (a mutation audit)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    envs: list[dict[str, str]] = []

    def run(cmd, **kw):
        envs.append(kw["env"])
        return subprocess.CompletedProcess(cmd, 0, stderr="", stdout=json.dumps(
            {"maxrss_mb": 500.0, "seconds": 1.0, "weights": "random init", "tile": 1024}))

    monkeypatch.setattr(bench, "subprocess", SimpleNamespace(run=run))
    r = bench.measure_rss(size=(8, 8), threads=3)
    assert r["maxrss_mb"] == 500.0 and envs[0]["OMP_NUM_THREADS"] == "3"


def test_ctrl_c_keeps_the_rows_skipped_before_it(tmp_path, monkeypatch):
    """A row skipped with a reason (fp16 on a CPU) before Ctrl-C is kept with that reason,
    as the rows measured are (a mutation audit found it dropped unnoticed)."""
    _fixed_timing(monkeypatch, 0.5, interrupt_at=2)
    lines: list[str] = []
    with pytest.raises(bench.BenchInterrupted):
        bench.bench_main(["semi-drdnet-tiny"], size=(32, 40), tile=0,
                         variants=["fp32", "fp16", "channels_last"], devices="cpu",
                         flop_side=16, peak_side=16, json_path=tmp_path / "b.json",
                         echo=lines.append)
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [(r["variant"], r["note"]) for r in rows] == [
        ("fp32", ""), ("fp16", "skipped: fp16 is for GPUs")]
    assert "| fp16 |" in lines[0] and "| channels_last |" not in lines[0]


def test_warm_up_runs_the_statistics_pass_a_tiled_run_times():
    """Semi-DRDNet's tiled run starts with a statistics pass: the warm-up runs it too, or
    its first-run cost is timed (a mutation audit). An untiled run has none."""
    class Recording:
        size_multiple, global_stats_shape = 1, (1, 1)

        def __init__(self) -> None:
            self.calls: list[tuple[str, tuple[int, ...]]] = []

        def forward(self, x, pooled):
            self.calls.append(("forward", x.shape))
            return x

        def stat_sums(self, x, pooled, mask):
            self.calls.append(("statistics", x.shape))

    img = np.zeros((3, 300, 400), np.float32)
    tiled, whole = Recording(), Recording()
    bench._warm_up(tiled, img, 128)
    bench._warm_up(whole, img, 0)
    assert tiled.calls == [("forward", (1, 3, 128, 128)), ("statistics", (1, 3, 128, 128))]
    assert whole.calls == [("forward", (1, 3, 300, 400))]


def test_the_header_says_capped_when_any_models_overlap_was():
    """With several models and one's overlap capped to half its tile, the header says the
    asked overlap was capped (a mutation audit: only all capped said so, unnoticed)."""
    res = _result(overlap=48, models=[_info("semi-drdnet-tiny", 1024, 48),
                                      _info("rdmc-lite", 64, 32)])
    head = bench.render_markdown(res).splitlines()[0]
    assert "overlap 48 asked (capped: see the model notes)," in head, head
