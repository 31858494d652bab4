"""The CLI wrappers of commands_train.py and commands_tools.py: every flag of each command
set to a distinct value, the library call captured (a stand-in records what it receives),
each value compared with the field it should reach; and with no flags, the library's own
defaults. A mutation audit found 21 flags that could be dropped, swapped or given another
default with every test passing (no test captured an every-flag command line)."""
from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from derain_cli.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _captured(monkeypatch, module, name: str) -> dict:
    """``module.name`` replaced by a stand-in that keeps the config it is called with, under
    "cfg" of the returned dict."""
    seen: dict = {}
    monkeypatch.setattr(module, name, lambda cfg, *a, **k: seen.setdefault("cfg", cfg))
    return seen


def _unlike(got, want: dict) -> dict:
    """Each field of ``want`` that ``got`` (a config, or a dict of captured arguments) holds
    otherwise, as (got, wanted): empty when every flag reached its field."""
    get = got.get if isinstance(got, dict) else lambda k: getattr(got, k)
    return {k: (get(k), v) for k, v in want.items() if get(k) != v}


def _off_defaults(cfg, default, skip: set[str] = frozenset()) -> dict:
    """Each dataclass field of ``cfg`` other than ``default``'s (the library's own), as
    (cfg's, default's), ``skip`` left out."""
    return _unlike(cfg, {f.name: getattr(default, f.name) for f in dataclasses.fields(default)
                         if f.name not in skip})


class Stop(Exception):
    pass


# ---------------------------------------------------------------- train
def test_train_every_flag(tmp_path, monkeypatch):
    import derain_cli.train as T
    seen = _captured(monkeypatch, T, "train")
    w = tmp_path / "w.safetensors"
    w.write_bytes(b"x")
    r = run("train", "-m", "semi-drdnet-tiny", "--pairs", "P1", "--pairs", "P2",
            "--synthetic", "S1", "--preset", "heavy", "--clean-fraction", "0.3",
            "--unlabeled", "U1", "--rainy-dir", "rd", "--clean-dir", "cd", "--val", "V",
            "--val-rainy-dir", "vr", "--val-clean-dir", "vc", "--val-limit", "7",
            "--val-crop", "64", "-o", "O", "--steps", "11", "--epochs", "3", "--batch", "5",
            "--patch", "72", "--lr", "0.003", "--warmup", "13", "--clip", "2.5",
            "--ema", "0.95", "--amp", "bf16", "--seed", "17", "--device", "cpu",
            "--threads", "2", "--workers", "3", "--val-every", "19", "--ckpt-every", "23",
            "--log-every", "29", "--resume", "--time-budget", "31.5",
            "--contrast-features", "self", "--contrast-weight", "0.37",
            "--contrast-terms", "bg", "--l1-weight", "0.41", "--psnr-weight", "0.43",
            "--weights", w, "--name", "nm", "--export-dtype", "bfloat16",
            "--bn-recalib", "3", "--batchnorm", "refresh", "--quiet")
    assert r.exit_code == 0, r.output
    c = seen["cfg"]
    want = dict(model="semi-drdnet-tiny", pairs=["P1", "P2"], synthetic=["S1"], preset="heavy",
                clean_fraction=0.3, unlabeled=["U1"], rainy_dir="rd", clean_dir="cd", val="V",
                val_rainy_dir="vr", val_clean_dir="vc", val_limit=7, val_crop=64, out="O",
                steps=11, epochs=3, batch=5, patch=72, lr=0.003, warmup=13, clip=2.5,
                ema=0.95, amp="bf16", seed=17, device="cpu", threads=2, workers=3,
                val_every=19, ckpt_every=23, log_every=29, resume=True, time_budget=31.5,
                contrast_features="self", contrast_weight=0.37, contrast_terms="bg",
                l1_weight=0.41, psnr_weight=0.43, init_weights=str(w), name="nm",
                export_dtype="bfloat16", bn_recalib=3, freeze_bn=False, quiet=True)
    assert not _unlike(c, want)
    assert set(c.given) == set(want)


def test_train_defaults(tmp_path, monkeypatch):
    import derain_cli.train as T
    seen = _captured(monkeypatch, T, "train")
    r = run("train", "--synthetic", "S")
    assert r.exit_code == 0, r.output
    c, d = seen["cfg"], T.TrainConfig()
    skip = {"synthetic", "given"}
    bad = _off_defaults(c, d, skip)
    assert not bad
    assert c.given == ["synthetic"]


def test_train_keep_and_arch(tmp_path, monkeypatch):
    import derain_cli.train as T
    seen = []
    monkeypatch.setattr(T, "train", lambda cfg, *a, **k: seen.append(cfg))
    r = run("train", "--synthetic", "S", "--batchnorm", "keep", "--arch", "semi-drdnet",
            "--model-config", '{"a": 1}')
    assert r.exit_code == 0, r.output
    c = seen[0]
    assert (c.freeze_bn, c.arch, c.model_config, c.model) == (True, "semi-drdnet", {"a": 1}, None)
    w = tmp_path / "w.pt"
    w.write_bytes(b"x")
    r = run("train", "--synthetic", "S", "--weights", w)
    assert r.exit_code == 0, r.output
    assert seen[1].model is None and seen[1].init_weights == str(w)
    r = run("train", "--synthetic", "S", "--weights", w, "-m", "semi-drdnet-lite")
    assert seen[2].model == "semi-drdnet-lite"


# ---------------------------------------------------------------- finetune
def test_finetune_every_flag(tmp_path, monkeypatch):
    import derain_cli.train as T
    seen = _captured(monkeypatch, T, "finetune")
    w = tmp_path / "w.safetensors"
    w.write_bytes(b"x")
    r = run("finetune", "--rainy", "R", "-m", "semi-drdnet-tiny", "--weights", w,
            "--clean", "C", "-o", "O", "--preset", "storm", "--clean-fraction", "0.2",
            "--steps", "11", "--batch", "5", "--patch", "72", "--lr", "0.003",
            "--l2sp", "0.07", "--consistency", "0.5", "--contrast-features", "self",
            "--contrast-weight", "0.37", "--contrast-terms", "bg", "--batchnorm", "refresh",
            "--val", "V", "--val-rainy-dir", "vr", "--val-clean-dir", "vc",
            "--val-every", "19", "--ckpt-every", "23", "--device", "cpu", "--threads", "2",
            "--workers", "3", "--seed", "17", "--amp", "fp32", "--resume",
            "--time-budget", "31.5", "--max-side", "333", "--name", "nm", "--quiet")
    assert r.exit_code == 0, r.output
    c = seen["cfg"]
    want = dict(rainy="R", model="semi-drdnet-tiny", weights=str(w), clean="C", out="O",
                preset="storm", clean_fraction=0.2, steps=11, batch=5, patch=72, lr=0.003,
                l2sp=0.07, consistency=0.5, contrast_features="self", contrast_weight=0.37,
                contrast_terms="bg", batchnorm="refresh", val="V", val_rainy_dir="vr",
                val_clean_dir="vc", val_every=19, ckpt_every=23, device="cpu", threads=2,
                workers=3, seed=17, amp="fp32", resume=True, time_budget=31.5, max_side=333,
                name="nm", quiet=True)
    assert not _unlike(c, want)
    assert set(c.given) == set(want)


def test_finetune_defaults(tmp_path, monkeypatch):
    import derain_cli.train as T
    seen = _captured(monkeypatch, T, "finetune")
    r = run("finetune", "--rainy", "R", "-m", "semi-drdnet-tiny")
    assert r.exit_code == 0, r.output
    c, d = seen["cfg"], T.FinetuneConfig(rainy="R", model="semi-drdnet-tiny")
    bad = _off_defaults(c, d)
    assert not bad


# ---------------------------------------------------------------- distill
def _distilled(tmp_path):
    s = {"student_psnr": 20.0, "agreement_psnr": 30.0, "teacher_psnr": 25.0}
    return types.SimpleNamespace(before=s, after=s, steps=1, wall_s=1.0,
                                 weights=tmp_path / "m.safetensors")


def test_distill_every_flag(tmp_path, monkeypatch):
    import derain_cli.distill as D
    seen = {}
    monkeypatch.setattr(D, "distill", lambda cfg: seen.setdefault("cfg", cfg) and _distilled(
        tmp_path))
    i = tmp_path / "i.safetensors"
    i.write_bytes(b"x")
    r = run("distill", "--clean", "C", "-m", "semi-drdnet-fast", "--detail-blocks", "3",
            "--rain-blocks", "4", "--student", "rdmc-lite", "--init", i, "--real", "RE",
            "-o", "O", "--steps", "11", "--max-minutes", "1.5", "--batch", "5",
            "--patch", "72", "--lr", "0.003", "--val-count", "6", "--threads", "2",
            "--seed", "17", "--name", "nm", "--overwrite", "--teacher-flips", "--quiet")
    assert r.exit_code == 0, r.output
    c = seen["cfg"]
    want = dict(clean="C", teacher="semi-drdnet-fast", detail_blocks=3, rain_blocks=4,
                student="rdmc-lite", init=str(i), real="RE", out="O", steps=11,
                max_minutes=1.5, batch=5, patch=72, lr=0.003, val_count=6, threads=2, seed=17,
                name="nm", overwrite=True, teacher_flips=True, progress=False)
    bad = _unlike(c, want)
    assert not bad


def test_distill_defaults(tmp_path, monkeypatch):
    import derain_cli.distill as D
    seen = {}
    monkeypatch.setattr(D, "distill", lambda cfg: seen.setdefault("cfg", cfg) and _distilled(
        tmp_path))
    r = run("distill", "--clean", "C")
    assert r.exit_code == 0, r.output
    c, d = seen["cfg"], D.DistillConfig(out="runs/distill", clean="C")
    bad = _off_defaults(c, d)
    assert not bad


# ---------------------------------------------------------------- eval
class _Res:
    csv_path = None
    report_path = None

    def to_dict(self):
        return {"count": 1}

    def summary(self):
        return "SUMMARY"


def test_eval_every_flag(tmp_path, monkeypatch):
    import derain_cli.evaluate as E
    seen = {}

    def fake(target, data, **kw):
        seen.update(kw, target=target, data=data)
        return _Res()

    monkeypatch.setattr(E, "evaluate", fake)
    r = run("eval", "--data", "DD", "-m", "rdmc-lite", "--save", "SV", "--report", "RP.html",
            "--csv", "c.csv", "--rainy-dir", "rd", "--clean-dir", "cd", "--limit", "7",
            "--device", "cpu", "--tile", "64", "--precision", "fp16", "--backend", "onnx",
            "--threads", "2", "--ensemble", "4", "--rain-angle", "12", "--strength", "0.5",
            "--overwrite", "--quiet")
    assert r.exit_code == 0, r.output
    want = dict(target="rdmc-lite", data=Path("DD"), save_dir=Path("SV"), report="RP.html",
                csv_path="c.csv", rainy_dir="rd", clean_dir="cd", limit=7, device="cpu",
                tile=64, precision="fp16", backend="onnx", threads=2, ensemble=4,
                rain_angle=12.0, strength=0.5, overwrite=True)
    bad = _unlike(seen, want)
    assert not bad
    assert r.stdout.strip() == "SUMMARY"


def test_eval_defaults(tmp_path, monkeypatch):
    import inspect

    import derain_cli.evaluate as E
    from derain_cli.enhancer import DEFAULT_MODEL
    seen = {}
    sig = inspect.signature(E.evaluate)

    def fake(target, data, **kw):
        seen.update(kw, target=target)
        return _Res()

    monkeypatch.setattr(E, "evaluate", fake)
    r = run("eval", "DD")
    assert r.exit_code == 0, r.output
    assert seen["target"] == DEFAULT_MODEL
    bad = {k: (v, sig.parameters[k].default) for k, v in seen.items()
           if k in sig.parameters and k not in ("on_image", "on_start")
           and v != sig.parameters[k].default}
    assert not bad


def test_eval_weights_reach_derainer(tmp_path, monkeypatch):
    import derain_cli.enhancer as En
    import derain_cli.evaluate as E
    seen = {}

    class FakeD:
        def __init__(self, model=None, **kw):
            seen.update(kw, model=model)

    monkeypatch.setattr(En, "Derainer", FakeD)
    monkeypatch.setattr(E, "evaluate", lambda target, data, **kw: seen.update(
        target=target, evkw=kw) or _Res())
    w = tmp_path / "w.safetensors"
    w.write_bytes(b"x")
    r = run("eval", "DD", "-m", "rdmc-lite", "--weights", w, "--device", "cpu", "--tile", "64",
            "--precision", "fp16", "--backend", "onnx", "--threads", "2", "--ensemble", "4",
            "--rain-angle", "12", "--strength", "0.5")
    assert r.exit_code == 0, r.output
    want = dict(model="rdmc-lite", weights=w, device="cpu", tile=64, precision="fp16",
                backend="onnx", threads=2, ensemble=4, rain_angle=12.0, strength=0.5)
    bad = _unlike(seen, want)
    assert not bad
    assert isinstance(seen["target"], FakeD)


def test_eval_json(tmp_path, monkeypatch):
    import derain_cli.evaluate as E
    monkeypatch.setattr(E, "evaluate", lambda target, data, **kw: _Res())
    r = run("eval", "DD", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"count": 1, "interrupted": False, "error": None}


# ---------------------------------------------------------------- synth
def test_synth_every_flag(tmp_path, monkeypatch):
    import derain_cli.evaluate as E
    seen = {}

    def fake(clean, out, **kw):
        seen.update(kw, clean=clean, out=out)
        return 3

    monkeypatch.setattr(E, "synth_pairs", fake)
    r = run("synth", "CL", "-o", "OU", "--preset", "light", "--count", "9", "--seed", "17",
            "--overwrite", "-q")
    assert r.exit_code == 0, r.output
    want = dict(clean=Path("CL"), out=Path("OU"), preset="light", count=9, seed=17,
                overwrite=True)
    bad = _unlike(seen, want)
    assert not bad
    assert r.stdout.strip() == "wrote 3 pairs to OU/rainy and OU/clean"
    seen.clear()
    r = run("synth", "CL", "OU")
    assert (seen["preset"], seen["count"], seen["seed"], seen["overwrite"]) == (
        "mixed", None, 0, False)


# ---------------------------------------------------------------- grow
def test_grow_every_flag(tmp_path, monkeypatch):
    import derain_cli.grow as G
    seen = {}

    def fake(source, to, out, **kw):
        seen.update(kw, source=source, to=to, out=out)
        return types.SimpleNamespace(exact=True, source="a", source_params=1e6, target="b",
                                     target_params=2e6, weights=out, max_abs_diff=0.0,
                                     agreement_db=99.0)

    monkeypatch.setattr(G, "grow_file", fake)
    r = run("grow", "SRC", "--to", "semi-drdnet", "-o", "W.safetensors", "--seed", "17",
            "--calib", "CAL", "--overwrite", "--threads", "2", "-q")
    assert r.exit_code == 0, r.output
    want = dict(source="SRC", to="semi-drdnet", out=Path("W.safetensors"), seed=17,
                calibration="CAL", overwrite=True, threads=2)
    bad = _unlike(seen, want)
    assert not bad
    seen.clear()
    r = run("grow", "SRC", "--to", "semi-drdnet", "-o", "W.safetensors")
    assert (seen["seed"], seen["calibration"], seen["overwrite"], seen["threads"]) == (
        0, None, False, None)


# ---------------------------------------------------------------- export
def test_export_every_flag(tmp_path, monkeypatch):
    import torch

    import derain_cli.export as X
    import derain_cli.quantize as Q
    import derain_cli.weights as W
    seen = {}
    net = torch.nn.Conv2d(3, 3, 1)
    monkeypatch.setattr(W, "model_from_file", lambda w, m: seen.update(w=w, m=m) or net)
    monkeypatch.setattr(X, "export_onnx", lambda n, p, **kw: seen.update(
        fp=p, fkw=kw) or [Path(p)])
    monkeypatch.setattr(Q, "build_int8", lambda n, c, p, **kw: seen.update(
        c=c, p=p, kw=kw) or ([Path(p)], {"r": 1}))
    w = tmp_path / "w.safetensors"
    w.write_bytes(b"x")
    cal = tmp_path / "cal"
    cal.mkdir()
    out = tmp_path / "g.onnx"
    r = run("export", "-o", out, "-m", "rdmc-lite", "--weights", w, "--opset", "18",
            "--int8", cal, "--keep-fp32", "3", "--overwrite", "--threads", "1", "-q")
    assert r.exit_code == 0, r.output
    assert (seen["w"], seen["m"], seen["c"], seen["p"]) == (w, "rdmc-lite", cal, out)
    assert seen["kw"]["opset"] == 18 and seen["kw"]["keep_fp32"] == 3
    assert seen["kw"]["threads"] == 1
    r = run("export", "-o", tmp_path / "f.onnx", "-m", "rdmc-lite", "--weights", w,
            "--opset", "18")
    assert r.exit_code == 0, r.output
    assert seen["fp"] == tmp_path / "f.onnx" and seen["fkw"] == {"opset": 18}
    assert r.stdout.strip() == str(tmp_path / "f.onnx")
    r = run("export", "-o", tmp_path / "d.onnx", "--weights", w, "--int8", cal)
    assert seen["kw"]["keep_fp32"] == 8 and seen["kw"]["opset"] == 17
    assert seen["kw"]["threads"] is None


def test_export_random_init_and_pretrained(tmp_path, monkeypatch):
    import torch

    import derain_cli.export as X
    import derain_cli.models as M
    import derain_cli.weights as W
    seen = {}
    net = torch.nn.Conv2d(3, 3, 1)
    monkeypatch.setattr(M, "build_model", lambda m: seen.update(built=m) or net)
    monkeypatch.setattr(W, "load_pretrained", lambda m, quiet: seen.update(loaded=m) or net)
    monkeypatch.setattr(X, "export_onnx", lambda n, p, **kw: [Path(p)])
    r = run("export", "-o", tmp_path / "a.onnx", "-m", "rdmc-lite", "--random-init")
    assert r.exit_code == 0, r.output
    assert seen == {"built": "rdmc-lite"}
    r = run("export", "-o", tmp_path / "b.onnx", "-m", "rdmc-lite")
    assert r.exit_code == 0, r.output
    assert seen["loaded"] == "rdmc-lite"


# ---------------------------------------------------------------- bench
def test_bench_every_flag(tmp_path, monkeypatch):
    import derain_cli.bench as B
    seen = {}
    import inspect
    sig = inspect.signature(B.bench_main)
    monkeypatch.setattr(B, "bench_main", lambda models, **kw: seen.update(kw, models=models))
    j = tmp_path / "b.json"
    r = run("bench", "-m", "rdmc-lite", "-m", "semi-drdnet-tiny", "--megapixels", "0.5",
            "--size", "40x30", "--tile", "64", "--tile-overlap", "9", "--variants",
            "fp32, onnx", "--device", "cpu", "--repeats", "3", "--threads", "2",
            "--force-bf16", "--rss", "--peak-side", "99", "--flop-side", "77", "--json", j)
    assert r.exit_code == 0, r.output
    want = dict(models=["rdmc-lite", "semi-drdnet-tiny"], megapixels=0.5, size=(30, 40),
                tile=64, overlap=9, variants=["fp32", "onnx"], devices="cpu", repeats=3,
                threads=2, force_bf16=True, rss=True, peak_side=99, flop_side=77, json_path=j)
    bad = _unlike(seen, want)
    assert not bad
    seen.clear()
    r = run("bench")
    assert r.exit_code == 0, r.output
    bad = {k: (v, sig.parameters[k].default) for k, v in seen.items()
           if k not in ("models", "echo", "on_row", "variants", "devices")
           and v != sig.parameters[k].default}
    assert not bad and seen["models"] is None
    assert tuple(seen["variants"]) == tuple(sig.parameters["variants"].default)


# ---------------------------------------------------------------- Ctrl-C, resume, usage
def test_export_and_bench_interrupted_exit_130_saying_what_is_kept(tmp_path, monkeypatch):
    import torch

    import derain_cli.bench as B
    import derain_cli.export as X
    import derain_cli.weights as W

    monkeypatch.setattr(W, "model_from_file", lambda w, m: torch.nn.Conv2d(3, 3, 1))

    def cut(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(X, "export_onnx", cut)
    w = tmp_path / "w.safetensors"
    w.write_bytes(b"x")
    r = run("export", "-o", tmp_path / "g.onnx", "--weights", w)
    assert r.exit_code == 130 and "no graph was left half-written" in r.stderr, r.output
    result = B.BenchResult(height=30, width=40, overlap=None, threads=1, machine="m",
                           torch="t", flop_side=64, peak_side=64)
    result.rows.append(object())

    def cut_bench(models, **kw):
        raise B.BenchInterrupted(result)

    monkeypatch.setattr(B, "bench_main", cut_bench)
    r = run("bench")
    assert r.exit_code == 130 and "the 1 row measured before is above" in r.stderr, r.output


def test_train_resume_takes_flags_that_name_the_runs_validation(tmp_path, monkeypatch):
    """On --resume, --val-every without --val is the run's own validation (refused as idle
    before), and --batchnorm keep is a given flag (it reached the run as its default)."""
    import derain_cli.train as T

    seen = _captured(monkeypatch, T, "train")
    r = run("train", "--synthetic", "S", "-o", "O", "--resume", "--val-every", "2",
            "--batchnorm", "keep")
    assert r.exit_code == 0, r.output
    assert {"val_every", "freeze_bn"} <= set(seen["cfg"].given)
    assert seen["cfg"].freeze_bn is True


def test_bench_refuses_a_size_under_16_px_on_either_side(monkeypatch):
    import derain_cli.bench as B

    monkeypatch.setattr(B, "bench_main", lambda models, **kw: pytest.fail("ran"))
    for size in ("8x100", "100x8", "8x8"):
        r = run("bench", "--size", size)
        assert r.exit_code == 2 and "at least 16x16" in r.output, (size, r.output)


@pytest.mark.parametrize("error", [MemoryError("Unable to allocate 27.9 GiB"),
                                   RuntimeError("DefaultCPUAllocator: not enough memory")])
def test_train_out_of_memory_says_a_smaller_batch_or_patch_needs_less(monkeypatch, error):
    import derain_cli.train as T

    def short(cfg, *a, **k):
        raise error

    monkeypatch.setattr(T, "train", short)
    r = run("train", "--synthetic", "S")
    assert r.exit_code == 1, r.output
    assert "a smaller --batch or --patch needs less" in r.stderr, r.stderr
