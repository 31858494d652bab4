"""ONNX export: checked graphs, metadata, dynamic shapes, and parity of every graph input mode."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from derain_cli import commands_tools, export
from derain_cli.bench import perturb_bn
from derain_cli.models import RDMC, RDMCConfig, SemiDRDNet, SemiDRDNetConfig

TOL = 1e-3


pytestmark = pytest.mark.usefixtures("one_thread")


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def semi(tmp_path_factory):
    torch.manual_seed(0)
    net = perturb_bn(SemiDRDNet(SemiDRDNetConfig(width=16, rain_blocks=3, detail_blocks=2,
                                                 se_reduction=4))).eval()
    paths = export.export_onnx(net, tmp_path_factory.mktemp("semi") / "semi.onnx")
    return net, paths


@pytest.fixture(scope="module")
def rdmc(tmp_path_factory):
    torch.manual_seed(0)
    net = perturb_bn(RDMC(RDMCConfig(channels=(4, 8, 8, 16, 16), stages=2))).eval()
    paths = export.export_onnx(net, tmp_path_factory.mktemp("rdmc") / "rdmc")  # no suffix
    return net, paths


def _dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_semi_exports_two_checked_graphs_with_metadata(semi):
    net, paths = semi
    assert [p.name for p in paths] == ["semi.onnx", "semi.stats.onnx"]
    roles = []
    for p in paths:
        proto = onnx.load(str(p))
        onnx.checker.check_model(proto)
        meta = {e.key: e.value for e in proto.metadata_props}
        roles.append(meta["derain.role"])
        assert meta["derain.arch"] == "semi-drdnet"
        assert meta["derain.global_stats_shape"] == "[3, 16]"
        assert meta["derain.size_multiple"] == "1"
        inputs = {i.name: _dims(i) for i in proto.graph.input}
        assert inputs["image"] == ["batch", 3, "height", "width"]
        assert inputs["pooled"] == ["batch", 3, 16]
        assert inputs["local"] == [1]
    assert roles == ["forward", "stats"]
    stats_inputs = [i.name for i in onnx.load(str(paths[1])).graph.input]
    assert stats_inputs == ["image", "pooled", "local", "mask"]


def test_semi_graphs_are_made_from_the_folded_network(semi):
    """Batch norms folded, DCCLs as summed convs, PReLU as Max (models.deploy)."""
    net, paths = semi
    ops = [n.op_type for n in onnx.load(str(paths[0])).graph.node]
    for gone in ("BatchNormalization", "Concat", "PRelu"):
        assert gone not in ops
    convs = sum(isinstance(m, nn.Conv2d) for m in net.modules())
    assert ops.count("Conv") == convs - 2 * net.cfg.detail_blocks  # no 1x1 fusions
    assert ops.count("Max") == 2 + net.cfg.rain_blocks + net.cfg.detail_blocks


@pytest.mark.parametrize("shape", [(1, 3, 40, 56), (2, 3, 64, 64)])
def test_semi_graphs_match_torch_in_every_mode(semi, shape):
    """One export, two sizes; local=1 is pooled=None, local=0 uses the given means."""
    net, (fwd_path, stats_path) = semi
    fwd, stats = _session(fwd_path), _session(stats_path)
    g = torch.Generator().manual_seed(shape[0])
    x = torch.rand(shape, generator=g)
    mask = torch.rand(shape[0], 1, *shape[2:], generator=g)
    with torch.no_grad():
        pooled = net.se_sums(x) / (shape[2] * shape[3]) * 1.5 + 0.1  # not the tile's own
        ref_local, ref_pooled = net(x), net(x, pooled)
        sums_local, sums_pooled = net.se_sums(x, None, mask), net.se_sums(x, pooled, mask)
    one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)
    feed = {"image": x.numpy(), "pooled": pooled.numpy()}
    junk = {"image": x.numpy(), "pooled": np.full_like(pooled.numpy(), 7.0)}
    out_local = fwd.run(None, {**junk, "local": one})[0]  # pooled ignored
    out_pooled = fwd.run(None, {**feed, "local": zero})[0]
    assert out_local.shape == tuple(shape)
    assert np.abs(out_local - ref_local.numpy()).max() <= TOL
    assert np.abs(out_pooled - ref_pooled.numpy()).max() <= TOL
    assert np.abs(out_local - out_pooled).max() > 1e-3  # the two modes really differ
    area = shape[2] * shape[3]
    s_local = stats.run(None, {**junk, "local": one, "mask": mask.numpy()})[0]
    s_pooled = stats.run(None, {**feed, "local": zero, "mask": mask.numpy()})[0]
    assert np.abs(s_local - sums_local.numpy()).max() / area <= TOL
    assert np.abs(s_pooled - sums_pooled.numpy()).max() / area <= TOL


def test_rdmc_exports_one_graph_with_dynamic_shapes(rdmc):
    net, paths = rdmc
    assert [p.name for p in paths] == ["rdmc.onnx"]
    proto = onnx.load(str(paths[0]))
    onnx.checker.check_model(proto)
    meta = {e.key: e.value for e in proto.metadata_props}
    assert meta["derain.size_multiple"] == "16"
    assert meta["derain.global_stats_shape"] == "null"
    assert [i.name for i in proto.graph.input] == ["image"]
    sess = _session(paths[0])
    for shape in [(1, 3, 48, 80), (2, 3, 64, 32)]:  # multiples of 16; the runner pads others
        x = torch.rand(shape)
        with torch.no_grad():
            ref = net(x).numpy()
        out = sess.run(None, {"image": x.numpy()})[0]
        assert out.shape == shape
        assert np.abs(out - ref).max() <= TOL


def test_export_leaves_model_and_threads_as_they_were(tmp_path):
    net = SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=1, detail_blocks=1, se_reduction=4))
    net.train()
    torch.set_num_threads(2)
    before = export.EXPORT_COUNT
    try:
        export.export_onnx(net, tmp_path / "m.onnx")
        assert net.training and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert export.EXPORT_COUNT == before + 2
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left over


def test_export_writes_through_no_link_planted_at_a_guessable_name(tmp_path):
    """Security audit: the temporary graphs were named after the process id, so a link
    planted under that name in a shared folder made the export overwrite the link's target,
    and the result itself became that link."""
    import os

    net = SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=1, detail_blocks=1, se_reduction=4))
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    shared = tmp_path / "shared"
    shared.mkdir()
    for name in ("m.onnx", "m.stats.onnx"):
        (shared / f".{name}.{os.getpid()}.tmp").symlink_to(victim)
    paths = export.export_onnx(net, shared / "m.onnx")
    assert victim.read_text() == "mine"
    assert paths and all(p.is_file() and not p.is_symlink() for p in paths)


def test_a_failed_export_leaves_the_old_set_whole_and_a_lone_graph_no_stale_partner(
        tmp_path, monkeypatch):
    """Ctrl-C while the statistics graph was made left the new forward graph beside the old
    statistics graph, another network's (an audit): the set is put in place only when both
    are written. A network without statistics graph exported over a Semi-DRDNet's removes
    the old one (the runner pairs a graph with the .stats.onnx beside it)."""
    semi = SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=1, detail_blocks=1,
                                       se_reduction=4))
    out = tmp_path / "m.onnx"
    export.export_onnx(semi, out)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real = export._graph_writer

    def second_fails(module, *a, **k):
        write = real(module, *a, **k)
        if isinstance(module, export._SemiStats):
            def write(tmp):  # noqa: F811 - the statistics graph's write is interrupted
                raise KeyboardInterrupt
        return write

    monkeypatch.setattr(export, "_graph_writer", second_fails)
    torch.manual_seed(1)
    other = SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=1, detail_blocks=1,
                                        se_reduction=4))
    with pytest.raises(KeyboardInterrupt):
        export.export_onnx(other, out)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temporaries
    monkeypatch.undo()
    assert export.export_onnx(_Plain(), out) == [out]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    # a file of the user's under that name is no statistics graph: never deleted (review)
    notes = tmp_path / "n.stats.onnx"
    notes.write_text("my notes")
    with pytest.raises(OSError, match="n.stats.onnx is in the way: .*not one derain wrote"):
        export.export_onnx(_Plain(), tmp_path / "n.onnx")
    assert notes.read_text() == "my notes" and not (tmp_path / "n.onnx").exists()


class _Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return x - self.conv(x)


def test_plain_network_single_graph_and_unsupported_statistics(tmp_path):
    paths = export.export_onnx(_Plain(), tmp_path / "plain.onnx")
    assert len(paths) == 1
    meta = {e.key: e.value for e in onnx.load(str(paths[0])).metadata_props}
    assert meta["derain.arch"] == "_Plain"

    class _Stats(_Plain):
        global_stats_shape = (1, 3)

    with pytest.raises(NotImplementedError, match="Semi-DRDNet"):
        export.export_onnx(_Stats(), tmp_path / "stats.onnx")


def test_export_cmd(tiny_weights, tmp_path):
    import typer

    app = typer.Typer()
    app.command()(commands_tools.export_cmd)
    out = tmp_path / "tiny.onnx"
    res = CliRunner().invoke(app, [str(out), "--weights", str(tiny_weights)])
    assert res.exit_code == 0, res.output
    assert res.output.split() == [str(out), str(tmp_path / "tiny.stats.onnx")]
    bad = CliRunner().invoke(app, [str(out), "--model", "nope", "--random-init"])
    assert bad.exit_code == 2 and "unknown model" in bad.output
    # an existing graph is not replaced in silence (every run's weights are
    # model.safetensors, so every default export of a run was model.onnx: an audit)
    before = out.read_bytes()
    again = CliRunner().invoke(app, [str(out), "--random-init", "-m", "semi-drdnet-tiny"])
    assert again.exit_code == 2 and "exists; pass --overwrite" in again.output
    assert out.read_bytes() == before
    (tmp_path / "tiny.onnx").unlink()  # the statistics graph alone is protected too
    again = CliRunner().invoke(app, [str(out), "--random-init", "-m", "semi-drdnet-tiny"])
    assert again.exit_code == 2 and "tiny.stats.onnx exists" in again.output
    again = CliRunner().invoke(app, [str(out), "--weights", str(tiny_weights), "--overwrite"])
    assert again.exit_code == 0, again.output
    assert out.read_bytes() == before  # the same weights give the same graph
    # a network without statistics graph over it: the old one would be paired with it
    single = CliRunner().invoke(app, [str(out), "--random-init", "-m", "rdmc-lite"])
    assert single.exit_code == 2 and "tiny.onnx exists" in single.output
    out.unlink()
    single = CliRunner().invoke(app, [str(out), "--random-init", "-m", "rdmc-lite"])
    assert single.exit_code == 2 and "a statistics graph derain would pair" in single.output
    single = CliRunner().invoke(app, [str(out), "--random-init", "-m", "rdmc-lite",
                                      "--overwrite"])
    assert single.exit_code == 0 and single.stdout.split() == [str(out)]
    assert not (tmp_path / "tiny.stats.onnx").exists()
    assert f"warning: removed {tmp_path / 'tiny.stats.onnx'}, an earlier export's" in \
        " ".join(single.stderr.split())
    (tmp_path / "tiny.stats.onnx").write_text("my notes")  # not a graph derain wrote
    kept = CliRunner().invoke(app, [str(out), "--random-init", "-m", "rdmc-lite",
                                    "--overwrite"])
    assert kept.exit_code == 2 and "is in the way" in kept.output
    assert (tmp_path / "tiny.stats.onnx").read_text() == "my notes"
    # a folder in a graph's place is named before any work, not after a hidden rename
    (tmp_path / "f.stats.onnx").mkdir()
    res = CliRunner().invoke(app, [str(tmp_path / "f.onnx"), "--weights", str(tiny_weights),
                                   "--overwrite"])
    assert res.exit_code == 2 and res.stderr.strip() == (
        f"error: {tmp_path / 'f.stats.onnx'} is a folder; choose another output")
    assert not (tmp_path / "f.onnx").exists()


def test_export_cmd_unknown_model_is_a_usage_error(tmp_path, monkeypatch):
    """A typo in -m is an unknown model (exit 2, the models listed), not a model that
    merely lacks weights; a registered model without weights keeps that advice (exit 1)."""
    import typer

    app = typer.Typer()
    app.command()(commands_tools.export_cmd)
    bad = CliRunner().invoke(app, ["-m", "nosuch", "-o", str(tmp_path / "x.onnx")])
    assert bad.exit_code == 2, bad.output
    assert "unknown model 'nosuch'" in bad.output and "semi-drdnet-lite" in bad.output
    assert "no pretrained weights" not in bad.output
    untrained = CliRunner().invoke(app, ["-m", "rdmc", "-o", str(tmp_path / "x.onnx")])
    assert untrained.exit_code == 1 and "no pretrained weights yet" in untrained.output
    assert "`derain export --random-init` exports the untrained network" in untrained.output
    assert not (tmp_path / "x.onnx").exists()
    # the folders made for the output are taken back when nothing is written (an audit)
    gone = CliRunner().invoke(app, ["-m", "rdmc", "-o", str(tmp_path / "new" / "deep" / "x")])
    assert gone.exit_code == 1 and not (tmp_path / "new").exists()
    monkeypatch.chdir(tmp_path)  # `-o ""` wrote rdmc-lite.onnx into the current folder
    empty = CliRunner().invoke(app, ["-m", "rdmc-lite", "--random-init", "-o", ""])
    assert empty.exit_code == 2 and "the output name is empty" in empty.output
    assert not (tmp_path / "rdmc-lite.onnx").exists()
    stats = CliRunner().invoke(app, ["-m", "rdmc-lite", "--random-init", "-o", "b.stats.onnx"])
    assert stats.exit_code == 2 and "name the graph without it" in stats.output
    same = CliRunner().invoke(app, ["a.onnx", "-o", "a", "-m", "rdmc-lite", "--random-init"])
    assert same.exit_code == 0 and same.stdout.split() == ["a.onnx"]  # one output, twice


def test_export_cmd_output_option_and_default(tiny_weights, tmp_path, monkeypatch):
    """``-o FILE`` as the issue spells it; without an output, NAME.onnx in the current folder;
    two different outputs are a usage error that writes nothing."""
    import typer

    app = typer.Typer()
    app.command()(commands_tools.export_cmd)
    out = tmp_path / "o" / "model.onnx"
    out.parent.mkdir()
    res = CliRunner().invoke(app, ["-o", str(out), "--weights", str(tiny_weights)])
    assert res.exit_code == 0, res.output
    assert res.output.split()[0] == str(out) and out.is_file()
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["--weights", str(tiny_weights)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / f"{tiny_weights.stem}.onnx").is_file()
    res = CliRunner().invoke(app, ["--random-init", "-m", "rdmc-lite"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "rdmc-lite.onnx").is_file()
    res = CliRunner().invoke(app, [str(tmp_path / "a.onnx"), "-o", str(tmp_path / "b.onnx"),
                                   "--random-init"])
    assert res.exit_code == 2 and "two outputs" in res.output
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "b.onnx").exists()


def test_export_cmd_int8(tiny_weights, tmp_path, monkeypatch, caplog):
    """--int8 CLEAN_DIR writes a quantized graph (and its fp32 statistics graph) and prints
    its manifest record; too few photos is a one-line error."""
    from PIL import Image

    from derain_cli import quantize

    monkeypatch.setattr(quantize, "CALIB_COUNT", 2)
    monkeypatch.setattr(quantize, "HELD_OUT_COUNT", 1)
    clean = tmp_path / "clean"
    clean.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(clean / f"{i}.png")
    import typer

    app = typer.Typer()
    app.command()(commands_tools.export_cmd)
    out = tmp_path / "tiny.int8.onnx"
    res = CliRunner().invoke(app, [str(out), "--weights", str(tiny_weights), "--int8",
                                   str(clean), "--keep-fp32", "1"])
    assert res.exit_code == 0, res.output
    assert str(out) in res.output and str(tmp_path / "tiny.int8.stats.onnx") in res.output
    record = json.loads(next(line for line in res.output.splitlines() if line.startswith("{")))
    assert len(record["fp32_convs"]) == 1 and record["file"] == out.name
    ranked = []
    monkeypatch.setattr(quantize, "conv_sensitivity", lambda *a, **k: ranked.append(1) or [])
    res = CliRunner().invoke(app, [str(out), "--weights", str(tiny_weights), "--int8",
                                   str(clean), "--keep-fp32", "1000", "--overwrite",
                                   "--opset", "16"])
    assert res.exit_code == 0, res.output  # allowed, but said: nothing is quantized
    assert ranked == []  # and nothing ranked: minutes spent, then it was said (an audit)
    record = json.loads(next(line for line in res.output.splitlines() if line.startswith("{")))
    assert len(record["fp32_convs"]) == len(set(record["fp32_convs"])) > 1
    assert max(o.version for o in onnx.load(str(out)).opset_import if o.domain in ("",
               "ai.onnx")) == 16  # --opset was left at the default with --int8 (an audit)
    said = [line for line in res.stderr.splitlines() if "keeps all" in line]
    assert len(said) == 1 and said[0].startswith("warning: keeping 1000 convolutions")
    assert "no faster than an fp32 one" in said[0]  # said as a warning (it came out bare)
    few = tmp_path / "few"
    few.mkdir()
    (clean / "0.png").rename(few / "0.png")
    res = CliRunner().invoke(app, [str(out), "--weights", str(tiny_weights), "--int8", str(few),
                                   "--overwrite"])
    assert res.exit_code == 2 and "int8 calibration needs" in res.output  # usage, as distill


def _app():
    import typer

    app = typer.Typer()
    app.command()(commands_tools.export_cmd)
    return app


def _help_text() -> str:
    """``derain export --help`` as plain words (rich's boxes and line wrapping removed)."""
    res = CliRunner().invoke(_app(), ["--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    return " ".join(res.output.replace("│", " ").split())


def test_rdmc_graph_needs_its_size_multiple_and_the_help_says_so(rdmc):
    """The graph does not pad: H and W must be multiples of ``derain.size_multiple``, and a
    caller that reflect-pads and crops (as documented) gets the network's output."""
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    net, paths = rdmc
    meta = {e.key: e.value for e in onnx.load(str(paths[0])).metadata_props}
    mult = int(meta["derain.size_multiple"])
    assert mult == 16
    sess = _session(paths[0])
    x = torch.rand(1, 3, 61, 77, generator=torch.Generator().manual_seed(3))
    with pytest.raises(Fail, match="broadcast"):
        sess.run(None, {"image": x.numpy()})
    pad = ((0, 0), (0, 0), (0, -61 % mult), (0, -77 % mult))
    out = sess.run(None, {"image": np.pad(x.numpy(), pad, mode="reflect")})[0]
    with torch.no_grad():
        ref = net(x).numpy()
    assert np.abs(out[..., :61, :77] - ref).max() <= TOL
    assert "accepts other sizes" not in (export.__doc__ or "")
    text = _help_text()
    assert "multiples of the graph's derain.size_multiple metadata" in text
    assert "16 for RDMC, 1 for Semi-DRDNet" in text and "pad (reflect)" in text


def test_unsupported_opset_is_one_line_exit_2_before_tracing(tmp_path):
    """torch's TorchScript exporter supports opsets up to ``max_opset()``; above it older
    torch printed pages of IR on stdout before failing."""
    res = CliRunner().invoke(_app(), ["--random-init", "-m", "rdmc-lite", "--opset", "99",
                                      "-o", str(tmp_path / "x.onnx")])
    assert res.exit_code == 2, res.output
    assert res.stdout == ""
    assert res.stderr.strip().splitlines() == [
        f"error: ONNX opset 99 is not supported: use 13 to {export.max_opset()} (default 17)"]
    assert 17 <= export.max_opset() < 99
    before = export.EXPORT_COUNT
    with pytest.raises(ValueError, match="opset 12"):
        export.export_onnx(_Plain(), tmp_path / "y.onnx", opset=12)
    assert export.EXPORT_COUNT == before and not list(tmp_path.iterdir())


def test_export_cmd_output_folder_and_suffix_in_any_case(tiny_weights, tmp_path):
    """``-o FOLDER`` writes NAME.onnx inside it, ``-o m.ONNX`` keeps that name (and its
    statistics graph is m.stats.onnx); other names get .onnx appended."""
    folder = tmp_path / "out"
    folder.mkdir()
    res = CliRunner().invoke(_app(), ["-o", str(folder), "--weights", str(tiny_weights)])
    assert res.exit_code == 0, res.output
    assert res.stdout.split() == [str(folder / "tiny.onnx"), str(folder / "tiny.stats.onnx")]
    assert not (tmp_path / "out.onnx").exists()
    upper = tmp_path / "m.ONNX"
    res = CliRunner().invoke(_app(), ["-o", str(upper), "--weights", str(tiny_weights)])
    assert res.exit_code == 0, res.output
    assert res.stdout.split() == [str(upper), str(tmp_path / "m.stats.onnx")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ONNX", "m.stats.onnx", "out"]
    assert export.resolve_output(tmp_path / "plain", None, None, True) == tmp_path / "plain.onnx"
    assert (export.resolve_output(folder, "rdmc-lite", None, True)
            == folder / "rdmc-lite.int8.onnx")
    assert export.resolve_output(None, "rdmc-lite", None, False) == export.Path("rdmc-lite.onnx")
    # weights named x.stats.safetensors made x.stats.onnx, read as a statistics graph
    stats_named = export.Path("run/x.Stats.safetensors")
    assert export.resolve_output(folder, None, stats_named, False) == folder / "x_stats.onnx"
    assert export.resolve_output(None, None, stats_named, True) == export.Path(
        "x.Stats.int8.onnx")
    # a new folder said with a trailing slash, as for the main command (was new.onnx; audit)
    res = CliRunner().invoke(_app(), ["-o", f"{tmp_path / 'new'}/", "--weights",
                                      str(tiny_weights)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "new" / "tiny.onnx").is_file() and not (tmp_path / "new.onnx").exists()


def test_int8_help_states_the_photos_the_code_requires(tiny_weights, tmp_path, monkeypatch):
    """--keep-fp32 0 needs no held-out photos: the help says both minimums."""
    from derain_cli import quantize

    text = _help_text()
    full = quantize.CALIB_COUNT + quantize.HELD_OUT_COUNT
    assert f"({full} or more readable ones, {quantize.CALIB_COUNT} with --keep-fp32 0" in text
    assert quantize.min_photos(0) == quantize.CALIB_COUNT and quantize.min_photos(3) == full


def test_export_cmd_int8_stdout_is_only_the_paths(tiny_weights, tmp_path):
    """Mixed photo sizes calibrate (one common crop, named in the record), an unreadable
    photo is one warning line, and ONNX Runtime's quantizer chatter stays off stdout."""
    from PIL import Image

    clean = tmp_path / "clean"
    clean.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        shape = (56, 40, 3) if i % 2 else (40, 48, 3)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(clean / f"{i}.png")
    (clean / "00_broken.png").write_bytes(b"not a png")
    out = tmp_path / "t.int8.onnx"
    res = CliRunner().invoke(_app(), ["-o", str(out), "--weights", str(tiny_weights),
                                      "--int8", str(clean), "--keep-fp32", "0"])
    assert res.exit_code == 0, res.output
    assert res.stdout.split() == [str(out), str(tmp_path / "t.int8.stats.onnx")]
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "00_broken.png" in warnings[0]
    assert "int8 steps 3/3" in res.stderr  # progress: minutes passed in silence (an audit)
    record = json.loads(next(line for line in res.stderr.splitlines() if line.startswith("{")))
    assert "8 crops of 40x48 px" in record["calibration"]


def test_export_refuses_contradicting_or_idle_flags(tiny_weights, tmp_path):
    """Flags that would be silently ignored are usage errors: --keep-fp32 without --int8,
    --random-init with --weights (the graph had the file's weights)."""
    out = tmp_path / "x.onnx"
    res = CliRunner().invoke(_app(), ["-o", str(out), "--random-init", "-m", "rdmc-lite",
                                      "--keep-fp32", "3"])
    assert res.exit_code == 2 and "--keep-fp32 is for int8 graphs" in res.stderr
    res = CliRunner().invoke(_app(), ["-o", str(out), "--weights", str(tiny_weights),
                                      "--random-init"])
    assert res.exit_code == 2 and "contradict" in res.stderr
    assert not out.exists()


def test_export_unwritable_output_names_it_before_any_work(tiny_weights, tmp_path, monkeypatch):
    """The error names the path given (not a hidden scratch file) and comes before the
    network is loaded or traced."""
    blocker = tmp_path / "X.onnx"
    blocker.write_text("a file")
    traced = []
    monkeypatch.setattr(export, "export_onnx", lambda *a, **k: traced.append(a) or [])
    res = CliRunner().invoke(_app(), ["-o", str(blocker / "Z.onnx"), "--weights",
                                      str(tiny_weights)])
    assert res.exit_code == 2 and not traced  # checked up front, as the other commands
    assert res.stderr.strip() == (f"error: cannot write {blocker / 'Z.onnx'}: {blocker} is a "
                                  "file, not a folder")
    with pytest.raises(OSError, match=r"cannot write .*: it is a folder"):
        export.check_writable(tmp_path)
    export.check_writable(tmp_path / "new" / "deeper" / "m.onnx")  # parents are made
    assert (tmp_path / "new" / "deeper").is_dir()
    assert list((tmp_path / "new" / "deeper").iterdir()) == []  # the probe is gone


def test_weights_name_the_graph_even_with_their_architecture(tmp_path, monkeypatch):
    """``--weights mine.safetensors -m ARCH`` writes mine.onnx: ARCH.onnx would overwrite an
    export of the published weights."""
    from derain_cli.models import build_model
    from derain_cli.weights import save_weights

    net = build_model("semi-drdnet-tiny")
    mine = tmp_path / "mine.safetensors"
    save_weights(net, mine, name="mine", arch="semi-drdnet", config=net.cfg)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(_app(), ["--weights", str(mine), "-m", "semi-drdnet-tiny"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "mine.onnx").is_file()
    assert not (tmp_path / "semi-drdnet-tiny.onnx").exists()


def test_an_export_does_not_undo_a_thread_count_set_meanwhile(tmp_path, monkeypatch):
    """An audit: the export saved the thread count, ran on one thread and put the saved
    count back, undoing a Derainer(threads=N) made in another thread meanwhile."""
    net = SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=1, detail_blocks=1, se_reduction=4))
    real = torch.onnx.export

    def another_thread_sets_three(*a, **kw):
        torch.set_num_threads(3)
        return real(*a, **kw)

    monkeypatch.setattr(torch.onnx, "export", another_thread_sets_three)
    torch.set_num_threads(2)
    try:
        export.export_onnx(net, tmp_path / "m.onnx")
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(1)


def test_export_debug_shows_the_traceback_wherever_the_flag_is(tmp_path):
    """`derain export ... --debug` printed only the error line, `derain --debug export` the
    traceback; the README says --debug works anywhere after the subcommand (audit)."""
    from PIL import Image
    from typer.testing import CliRunner

    from derain_cli.cli import app
    from derain_cli.weights import WeightsError

    photo = tmp_path / "w.safetensors"
    Image.new("RGB", (8, 8)).save(photo, format="JPEG")
    args = ["export", "--weights", str(photo), "-o", str(tmp_path / "x.onnx")]
    for argv in ([*args, "--debug"], ["--debug", *args]):
        r = CliRunner().invoke(app, argv)
        assert isinstance(r.exception, WeightsError), (argv, r.output)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1 and "a JPEG image, not a weights file" in r.output


def test_an_export_failing_for_want_of_disk_names_its_output(tiny_weights, tmp_path,
                                                             monkeypatch):
    """A full disk said "[Errno 28] No space left on device" and no file (an audit)."""
    import errno

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    from derain_cli import export

    monkeypatch.setattr(export, "export_onnx", full)  # (imported by the command as it runs)
    out = tmp_path / "x.onnx"
    res = CliRunner().invoke(_app(), ["-o", str(out), "--weights", str(tiny_weights)])
    assert res.exit_code == 1 and f"{out}: [Errno 28] No space left" in " ".join(
        res.stderr.split()), res.stderr


def test_an_export_into_a_folder_another_export_writes_is_refused(tiny_weights, tmp_path):
    """Two exports to one name at once both succeeded, one graph set replacing or mixing
    with the other's (an audit): the name is held while written; another name in the same
    folder is not held up (holding the folder refused it: a review)."""
    from derain_cli.fileio import hold_files

    out = tmp_path / "exp" / "m.onnx"
    out.parent.mkdir()
    with hold_files([out]):
        res = CliRunner().invoke(_app(), ["-o", str(out), "--weights", str(tiny_weights)])
        assert res.exit_code == 2 and "m.onnx is in use by another derain process" in \
            " ".join(res.stderr.split()), res.stderr
        assert list(out.parent.iterdir()) == []
        other = out.parent / "n.onnx"
        res = CliRunner().invoke(_app(), ["-o", str(other), "--weights", str(tiny_weights)])
        assert res.exit_code == 0 and other.is_file(), res.stderr
    res = CliRunner().invoke(_app(), ["-o", str(out), "--weights", str(tiny_weights)])
    assert res.exit_code == 0 and out.is_file(), res.stderr
