"""derain distill: a shallower student that keeps the teacher's rain network exactly."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import interrupted_at_call
from PIL import Image
from typer.testing import CliRunner

from derain_cli.cli import app
from derain_cli.distill import DistillConfig, DistillError, distill, student_from_teacher
from derain_cli.models import RDMC, RDMCConfig, SemiDRDNet, SemiDRDNetConfig
from derain_cli.weights import WeightsError, model_from_file, save_weights

pytestmark = pytest.mark.usefixtures("one_thread")


def _teacher() -> SemiDRDNet:
    torch.manual_seed(0)
    return SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=1, detail_blocks=3,
                                       se_reduction=4)).eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    teacher = _teacher()
    weights = root / "teacher.safetensors"
    save_weights(teacher, weights, name="t", arch="semi-drdnet", config=teacher.cfg,
                 dtype=torch.float32)
    rng = np.random.default_rng(0)
    for sub, n in (("clean", 5), ("real", 2)):
        (root / sub).mkdir()
        for i in range(n):
            img = (rng.random((40, 56, 3)) * 255).astype(np.uint8)
            Image.fromarray(img).save(root / sub / f"{i}.png")
    return root, weights


def _cfg(root: Path, weights: Path, out: str, **kw) -> DistillConfig:
    base = dict(out=str(root / out), clean=str(root / "clean"), real=str(root / "real"),
                teacher=str(weights), detail_blocks=2, steps=3, batch=2, patch=32,
                val_count=2, threads=1, progress=False)
    if kw.get("student"):  # a student of its own takes no block counts
        base["detail_blocks"] = None
    return DistillConfig(**(base | kw))


def test_student_copies_the_teacher_but_for_the_dropped_blocks():
    teacher = _teacher()
    student = student_from_teacher(teacher, 2)
    assert student.cfg.detail_blocks == 2 and student.cfg.rain_blocks == 1
    t = teacher.state_dict()
    assert all(torch.equal(v, t[k]) for k, v in student.state_dict().items())
    assert not any(k.startswith("detail_net.blocks.2.") for k in student.state_dict())
    for bad in (0, 3):
        with pytest.raises(DistillError, match="between 1 and 2"):
            student_from_teacher(teacher, bad)


def test_distill_trains_the_detail_network_only(setup):
    root, weights = setup
    r = distill(_cfg(root, weights, "run", lr=1e-2))
    assert r.steps == 3
    teacher = model_from_file(weights)
    student = model_from_file(r.weights)  # a normal weights file: derain --weights works
    assert isinstance(student, SemiDRDNet) and student.cfg.detail_blocks == 2
    s, t = student.state_dict(), teacher.state_dict()
    # fp16 file: the rain network is the teacher's to fp16 precision, the details moved
    for k, v in s.items():
        if k.startswith("rain_net.") and v.is_floating_point():
            assert torch.allclose(v, t[k], atol=1e-3, rtol=1e-3), k
    moved = [k for k in s if k.startswith("detail_net.") and "weight" in k
             and not torch.allclose(s[k], t[k], atol=1e-3)]
    assert moved
    entry = json.loads((root / "run" / "manifest_entry.json").read_text())
    assert entry["status"] == "candidate" and entry["steps"] == 3
    assert entry["config"]["detail_blocks"] == 2
    held = entry["metrics"]["distill_held_out"]
    assert held["count"] == 2 and held["student_psnr"] == r.after["student_psnr"]


def _deep_teacher_file(root: Path) -> Path:
    torch.manual_seed(1)
    net = SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=3, detail_blocks=2,
                                      se_reduction=4)).eval()
    path = root / "deep.safetensors"
    save_weights(net, path, name="d", arch="semi-drdnet", config=net.cfg, dtype=torch.float32)
    return path


def test_an_rdmc_teacher_is_pointed_at_student():
    """`distill -m rdmc-lite` said "needs a Semi-DRDNet teacher" where --help says any
    architecture works with --student (an audit)."""
    from derain_cli.distill import DistillError, _load_teacher

    with pytest.raises(DistillError, match="a pruned student needs a Semi-DRDNet teacher, "
                                           "not RDMC; .* --student NAME"):
        _load_teacher("rdmc-lite", any_arch=False)


@pytest.mark.parametrize(("teacher_blocks", "kept"), [(2, 1), (3, 2), (5, 2)])
def test_the_default_student_fits_its_teacher(teacher_blocks, kept):
    """`derain distill -m semi-drdnet-fast` (2 detail blocks) refused its own default of 2
    (an audit): the default is 2, or one fewer than the teacher's."""
    teacher = SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=1, detail_blocks=teacher_blocks,
                                          se_reduction=4)).eval()
    assert student_from_teacher(teacher, None).cfg.detail_blocks == kept


def test_student_with_fewer_rain_blocks_starts_from_the_first_ones():
    torch.manual_seed(1)
    teacher = SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=3, detail_blocks=2,
                                          se_reduction=4)).eval()
    student = student_from_teacher(teacher, 1, rain_blocks=2)
    assert (student.cfg.rain_blocks, student.cfg.detail_blocks) == (2, 1)
    assert student.global_stats_shape == (2, 8)
    t = teacher.state_dict()
    assert all(torch.equal(v, t[k]) for k, v in student.state_dict().items())
    assert not any(k.startswith("rain_net.blocks.2.") for k in student.state_dict())
    assert "rain_net.tail.weight" in student.state_dict()
    for bad in (0, 4):
        with pytest.raises(DistillError, match="--rain-blocks must be between 1 and 3"):
            student_from_teacher(teacher, 1, rain_blocks=bad)


def test_distill_with_fewer_rain_blocks_trains_the_rain_network(setup):
    root, _ = setup
    weights = _deep_teacher_file(root)
    r = distill(_cfg(root, weights, "rain", detail_blocks=1, rain_blocks=2, lr=1e-2))
    teacher, student = model_from_file(weights), model_from_file(r.weights)
    assert (student.cfg.rain_blocks, student.cfg.detail_blocks) == (2, 1)
    s, t = student.state_dict(), teacher.state_dict()
    for part in ("rain_net.", "detail_net."):
        moved = [k for k in s if k.startswith(part) and "weight" in k
                 and not torch.allclose(s[k], t[k], atol=1e-3)]
        assert moved, part
    entry = json.loads((root / "rain" / "manifest_entry.json").read_text())
    assert entry["config"]["rain_blocks"] == 2
    # Frozen rain network when all its blocks are kept (the default)
    r = distill(_cfg(root, weights, "rain_all", detail_blocks=1, lr=1e-2))
    s = model_from_file(r.weights).state_dict()
    assert all(torch.allclose(v, t[k], atol=1e-3, rtol=1e-3)
               for k, v in s.items() if k.startswith("rain_net.") and v.is_floating_point())


def test_a_second_round_continues_from_the_first(setup):
    root, weights = setup
    first = distill(_cfg(root, weights, "round1", lr=1e-2))
    r = distill(_cfg(root, weights, "round2", lr=0.0, steps=1, init=first.weights))  # a
    # Path: it failed writing the record after the training, half a result left (an audit)
    # lr 0: the second round starts, and stays, where the first one ended (saved in fp16)
    assert r.before == r.after
    assert r.before["student_psnr"] == pytest.approx(first.after["student_psnr"], abs=0.01)
    entry = json.loads((root / "round2" / "manifest_entry.json").read_text())
    assert entry["continued_from"] == str(first.weights)
    sha = hashlib.sha256(Path(first.weights).read_bytes()).hexdigest()
    assert entry["init_weights"]["sha256"] == sha
    from safetensors import safe_open
    with safe_open(str(r.weights), framework="pt") as f:
        assert f.metadata()["init_sha256"] == sha  # the file names its start too
    with pytest.raises(WeightsError, match=r"same shape; it differs in detail_blocks 2 "
                       r"\(student 1\)\. Give the --student or block counts"):
        distill(_cfg(root, weights, "round3", detail_blocks=1, init=str(first.weights)))


def test_fresh_rdmc_student_starts_as_the_identity():
    from derain_cli.distill import fresh_student

    net = fresh_student("rdmc-lite")
    assert isinstance(net, RDMC) and not net.training
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(net(x), x)
    with pytest.raises(DistillError, match="unknown model"):
        fresh_student("no-such-model")


def test_distill_into_another_architecture(setup):
    root, weights = setup
    r = distill(_cfg(root, weights, "cross", student="rdmc-lite", lr=1e-3))
    student = model_from_file(r.weights)  # loads as RDMC: derain --weights works
    assert isinstance(student, RDMC) and student.cfg == RDMCConfig(
        channels=(12, 24, 48, 96, 96), stages=2)
    assert student.stage.out.weight.abs().max() > 0  # the zeroed output layer trained
    assert r.after["agreement_psnr"] != r.before["agreement_psnr"]
    entry = json.loads((root / "cross" / "manifest_entry.json").read_text())
    assert entry["arch"] == "rdmc" and entry["config"]["stages"] == 2
    # A second round from it; a semi-drdnet init for an rdmc student is refused.
    r2 = distill(_cfg(root, weights, "cross2", student="rdmc-lite", steps=1,
                      init=str(r.weights)))
    assert r2.before["student_psnr"] == pytest.approx(r.after["student_psnr"], abs=0.01)
    with pytest.raises(WeightsError, match="same shape; it is a SemiDRDNet, the student a RDMC"):
        distill(_cfg(root, weights, "cross3", student="rdmc-lite", init=str(weights)))


def test_a_fresh_student_starts_from_the_same_weights_for_the_same_seed(setup):
    """An audit: the student was built before --seed took effect, so one command gave
    another student every time (held-out PSNR before training 10.67 then 11.23 dB)."""
    root, weights = setup
    torch.manual_seed(12345)  # whatever the process drew before must not matter
    a = distill(_cfg(root, weights, "seed_a", student="semi-drdnet-tiny", steps=1, seed=3))
    torch.manual_seed(999)
    b = distill(_cfg(root, weights, "seed_b", student="semi-drdnet-tiny", steps=1, seed=3))
    assert a.before == b.before


def test_distill_keeps_the_callers_random_state_and_refuses_text_numbers(setup):
    """distill() reseeded the caller's torch generator with --seed and left it so (train
    keeps it); lr="1e-4" failed in a comparison (an audit of the Python API)."""
    root, weights = setup
    torch.manual_seed(7)
    expected = torch.rand(1)
    torch.manual_seed(7)
    distill(_cfg(root, weights, "rng", student="semi-drdnet-tiny", steps=1, seed=3))
    assert torch.equal(torch.rand(1), expected)
    for bad in ({"lr": "1e-4"}, {"max_minutes": "1"}):
        with pytest.raises(DistillError, match="must be a number, not '1"):
            distill(_cfg(root, weights, "bad", steps=1, **bad))


def test_any_architecture_teaches_a_continued_student(setup, tmp_path):
    """With --student, the teacher may be an RDMC (its output is all that is learnt); a
    student continued from --init keeps its batch-norm statistics while it trains."""
    from derain_cli.distill import fresh_student

    root, _ = setup
    torch.manual_seed(0)
    rdmc = RDMC(RDMCConfig(channels=(4, 8, 8, 16, 16), stages=1)).eval()
    teacher = tmp_path / "rdmc.safetensors"
    save_weights(rdmc, teacher, name="r", arch="rdmc", config=rdmc.cfg, dtype=torch.float32)
    init = fresh_student("semi-drdnet-tiny")
    for m in init.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.fill_(0.1)
            m.running_var.fill_(2.0)
    init_path = tmp_path / "tiny.safetensors"
    save_weights(init, init_path, name="t", arch="semi-drdnet", config=init.cfg,
                 dtype=torch.float32)
    r = distill(_cfg(root, teacher, "from_rdmc", student="semi-drdnet-tiny",
                     init=str(init_path), steps=2, lr=1e-3))
    student = model_from_file(r.weights)
    assert isinstance(student, SemiDRDNet) and student.cfg == init.cfg
    bns = [m for m in student.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(  # (saved in fp16)
        torch.allclose(m.running_mean, torch.full_like(m.running_mean, 0.1), rtol=1e-3)
        and torch.allclose(m.running_var, torch.full_like(m.running_var, 2.0), rtol=1e-3)
        for m in bns)
    w0 = dict(init.named_parameters())
    assert any(not torch.allclose(p, w0[n], atol=1e-4) for n, p in student.named_parameters())
    assert r.after["agreement_psnr"] != r.before["agreement_psnr"]


def test_zero_learning_rate_leaves_the_pruned_student(setup):
    root, weights = setup
    r = distill(_cfg(root, weights, "lr0", lr=0.0, steps=2))
    assert r.after == r.before


def test_a_teacher_without_detail_network_is_refused(tmp_path):
    torch.manual_seed(0)
    net = RDMC(RDMCConfig(channels=(4, 8, 8, 16, 16), stages=2))
    path = tmp_path / "rdmc.safetensors"
    save_weights(net, path, name="r", arch="rdmc", config=net.cfg)
    with pytest.raises(DistillError, match="Semi-DRDNet teacher"):
        distill(DistillConfig(out=str(tmp_path / "o"), clean=str(tmp_path), teacher=str(path)))


def test_distill_cli(setup):
    root, weights = setup
    runner = CliRunner()
    args = ["distill", "--clean", root / "clean", "-m", weights, "--detail-blocks", "1",
            "--steps", "2", "--batch", "2", "--patch", "32", "--val-count", "2",
            "--threads", "1", "-q", "-o", root / "cli"]
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    assert "held-out PSNR" in r.output and (root / "cli" / "model.safetensors").exists()
    bad = runner.invoke(app, [str(a) for a in args[:-2] + ["--detail-blocks", "3",
                                                            "-o", root / "bad"]])
    assert bad.exit_code == 2 and "between 1 and 2" in bad.output
    few = runner.invoke(app, [str(a) for a in args[:-2] + ["--val-count", "9",
                                                            "-o", root / "few"]])
    assert few.exit_code == 2 and "held out" in few.output
    rain = runner.invoke(app, [str(a) for a in args[:-2] + ["--rain-blocks", "2",
                                                             "-o", root / "rb"]])
    assert rain.exit_code == 2 and "--rain-blocks must be between 1 and 1" in rain.output


def test_a_one_detail_block_teacher_says_what_is_possible():
    """Not 'between 1 and 0 for a teacher with 1': pruning cannot go below one block."""
    torch.manual_seed(0)
    teacher = SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=2, detail_blocks=1,
                                          se_reduction=4)).eval()
    for asked in (1, 2):
        with pytest.raises(DistillError) as info:
            student_from_teacher(teacher, asked)
        msg = str(info.value)
        assert "between 1 and 0" not in msg
        assert "only 1 detail block, so there is nothing to prune" in msg and "--student" in msg


def test_an_existing_run_is_not_overwritten(setup, tmp_path):
    root, weights = setup
    out = tmp_path / "done"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"earlier model")
    with pytest.raises(DistillError, match=r"already holds a run \(model\.safetensors\)"):
        distill(dataclasses.replace(_cfg(root, weights, "unused"), out=str(out)))
    assert (out / "model.safetensors").read_bytes() == b"earlier model"
    r = distill(dataclasses.replace(_cfg(root, weights, "unused", steps=1), out=str(out),
                                    overwrite=True))
    assert r.weights == out / "model.safetensors"
    assert isinstance(model_from_file(r.weights), SemiDRDNet)
    (out / "best.pt").write_bytes(b"a train run's checkpoint")  # --overwrite or not:
    for overwrite in (False, True):  # its checkpoints would stay beside another model
        with pytest.raises(DistillError, match=r"holds a derain train run \(best\.pt\)"):
            distill(dataclasses.replace(_cfg(root, weights, "unused", steps=1), out=str(out),
                                        overwrite=overwrite))


def test_a_teacher_file_is_a_file_however_it_is_named(setup, tmp_path, monkeypatch):
    """A teacher given as a suffix-less file or a training checkpoint (.ckpt) in the
    working folder was looked up as a model name ("unknown model"), while grow and eval
    took the same argument as the file it is."""
    import json

    from derain_cli.distill import _load_teacher
    from derain_cli.models import config_to_dict

    _, weights = setup
    monkeypatch.chdir(tmp_path)
    Path("teacher").write_bytes(weights.read_bytes())
    t = _teacher()
    torch.save({"arch": "semi-drdnet", "model_config": json.dumps(config_to_dict(t.cfg)),
                "model": t.state_dict()}, "last.ckpt")
    for spec in ("teacher", "last.ckpt"):
        net, label = _load_teacher(spec)
        assert isinstance(net, SemiDRDNet) and label == spec
        for a, b in zip(net.state_dict().values(), t.state_dict().values(), strict=True):
            torch.testing.assert_close(a.float(), b.float())


def test_distill_cli_refuses_an_existing_run_and_unknown_teachers(setup, tmp_path):
    root, weights = setup
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "model.safetensors").write_bytes(b"earlier model")
    args = ["distill", "--clean", root / "clean", "-m", weights, "--steps", "1",
            "--val-count", "2", "-q", "-o", tmp_path / "done"]
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 2 and "already holds a run" in r.output, r.output
    args[4:5] = ["nosuch"]
    r = CliRunner().invoke(app, [str(a) for a in args[:-1] + [tmp_path / "new"]])
    assert r.exit_code == 2, r.output
    assert "unknown model 'nosuch'" in r.output and "semi-drdnet-lite" in r.output
    assert "no pretrained weights" not in r.output


def test_flip_ensemble_is_the_mean_of_the_four_flipped_back_passes():
    from derain_cli.distill import FlipEnsemble

    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 3, 3, padding=1)  # not flip-equivariant: a random kernel
    ens = FlipEnsemble(net)
    x = torch.rand(1, 3, 9, 12)
    want = (net(x) + net(x.flip(3)).flip(3) + net(x.flip(2)).flip(2)
            + net(x.flip(2, 3)).flip(2, 3)) / 4
    assert torch.allclose(ens(x), want, atol=1e-6)
    assert not torch.allclose(ens(x), net(x), atol=1e-3)
    # The mean is equivariant to the flips, as a flipped-back ensemble must be.
    assert torch.allclose(ens(x.flip(3)), ens(x).flip(3), atol=1e-6)
    assert torch.allclose(ens(x.flip(2)), ens(x).flip(2), atol=1e-6)


def test_a_student_learns_the_teachers_flip_ensemble(setup):
    root, weights = setup
    plain = distill(_cfg(root, weights, "noflip", student="semi-drdnet-tiny", steps=1))
    r = distill(_cfg(root, weights, "flips", student="semi-drdnet-tiny", steps=1,
                     teacher_flips=True))
    # The held-out teacher is the ensemble, not the single pass.
    assert r.before["teacher_psnr"] != plain.before["teacher_psnr"]
    entry = json.loads((root / "flips" / "manifest_entry.json").read_text())
    assert entry["teacher"].endswith("(flip self-ensemble)")
    assert "flip self-ensemble" in entry["training_data"]
    with pytest.raises(DistillError, match="needs a student"):
        distill(_cfg(root, weights, "flips2", teacher_flips=True))


def test_distill_cli_passes_teacher_flips(setup):
    root, weights = setup
    args = ["distill", "--clean", root / "clean", "-m", weights, "--student",
            "semi-drdnet-tiny", "--teacher-flips", "--steps", "1", "--batch", "2", "--patch",
            "32", "--val-count", "2", "--threads", "1", "-q", "-o", root / "cliflip"]
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    entry = json.loads((root / "cliflip" / "manifest_entry.json").read_text())
    assert entry["teacher"].endswith("(flip self-ensemble)")


def test_a_time_limit_must_be_positive(tmp_path):
    """--max-minutes -1 wrote an untrained model and exited 0 (audit)."""
    with pytest.raises(DistillError, match="max_minutes must be positive"):
        distill(DistillConfig(out=str(tmp_path / "o"), clean=str(tmp_path), max_minutes=-1))
    assert not (tmp_path / "o").exists()


def test_an_interrupted_distillation_writes_the_student_it_has(setup, monkeypatch):
    """distill has no checkpoints, and a Ctrl-C or SIGTERM lost every step (an audit): the
    student is written as it is, then the command still stops as interrupted."""
    import derain_cli.distill as D

    root, weights = setup
    monkeypatch.setattr(D, "_batch", interrupted_at_call(D._batch, 3))
    with pytest.raises(KeyboardInterrupt) as e:
        distill(_cfg(root, weights, "cut", steps=10))
    entry = json.loads((root / "cut" / "manifest_entry.json").read_text())
    assert entry["steps"] == 2 and entry["interrupted"] is True
    model_from_file(root / "cut" / "model.safetensors")
    # where it went is said (it printed a bare "interrupted": an audit)
    assert e.value.result.weights == root / "cut" / "model.safetensors"


def test_the_distill_command_says_where_an_interrupted_student_went(setup, monkeypatch):
    import derain_cli.distill as D

    root, weights = setup
    batch = D._batch
    monkeypatch.setattr(D, "_batch", interrupted_at_call(batch, 3))
    args = [str(a) for a in (
        "distill", "--clean", root / "clean", "-m", weights, "--detail-blocks", "2",
        "--steps", "9", "--batch", "2", "--patch", "32", "--val-count", "2", "--threads",
        "1", "-q", "-o", root / "cut-cli")]
    r = CliRunner().invoke(app, args)
    flat = " ".join(r.output.split())
    assert r.exit_code == 130 and "interrupted: 2 steps in" in flat, r.output
    student = root / "cut-cli" / "model.safetensors"
    assert str(student) in flat and "held-out PSNR" in flat
    # and how to go on from it, which works as said (it was said nowhere: an audit)
    assert f"the same command with --init {student}" in flat and "--overwrite" in flat
    monkeypatch.setattr(D, "_batch", batch)
    r = CliRunner().invoke(app, [*args, "--init", str(student), "--overwrite"])
    assert r.exit_code == 0, r.output
    entry = json.loads((root / "cut-cli" / "manifest_entry.json").read_text())
    assert entry["steps"] == 9 and not entry.get("interrupted")


def test_a_diverged_student_is_not_written(setup):
    """--lr 1e6 wrote a student of NaN weights, exit 0, which turned photos black (an
    audit): exit 1, nothing written."""
    root, weights = setup
    r = CliRunner().invoke(app, [str(a) for a in (
        "distill", "--clean", root / "clean", "-m", weights, "--detail-blocks", "2",
        "--steps", "3", "--batch", "2", "--patch", "32", "--val-count", "2", "--threads",
        "1", "-q", "--lr", "1e12", "-o", root / "nan")])
    assert r.exit_code == 1 and "diverged" in r.output and "lower --lr" in r.output, r.output
    assert not (root / "nan" / "model.safetensors").exists()


def test_a_time_budget_drives_the_learning_rate_schedule(setup, monkeypatch):
    """With --max-minutes far short of --steps the run stopped inside the warm-up, at under
    1 % of the peak rate (an audit): the schedule follows the budget where it is further."""
    import derain_cli.distill as D

    root, weights = setup
    rates: list[float] = []
    monkeypatch.setattr(D.time, "monotonic", lambda: 15.0 * len(rates))  # 15 s a step
    real_adam = torch.optim.Adam

    class Spy(real_adam):
        def step(self, *a, **k):
            rates.append(self.param_groups[0]["lr"])
            return super().step(*a, **k)

    monkeypatch.setattr(torch.optim, "Adam", Spy)
    distill(_cfg(root, weights, "budget", steps=100_000, max_minutes=1.0, lr=1e-3))
    assert len(rates) == 5 and max(rates) > 0.5e-3, rates  # past the warm-up: near the peak
    assert rates[-1] == pytest.approx(1e-4)  # and decayed to its floor at the budget's end


def test_block_counts_with_a_student_of_its_own_are_refused(setup):
    """--detail-blocks/--rain-blocks with --student were ignored in silence (an audit)."""
    root, weights = setup
    with pytest.raises(DistillError, match="shape a pruned copy of the teacher"):
        distill(_cfg(root, weights, "st", student="rdmc-lite", detail_blocks=1))


def test_names_folders_and_out(setup, tmp_path):
    """An RDMC student was named semi-drdnet-distilled; --clean with photos in subfolders
    only found none; -o model.safetensors made a folder so named (audits)."""
    from derain_cli.distill import DistillConfig, default_name

    assert default_name(DistillConfig(out="o", clean="c", student="rdmc-lite")) == \
        "rdmc-lite-distilled"
    assert default_name(DistillConfig(out="o", clean="c")) == "semi-drdnet-distilled"
    root, weights = setup
    with pytest.raises(DistillError, match="names a weights file"):
        distill(_cfg(root, weights, "m.safetensors"))
    assert not (root / "m.safetensors").exists()
    with pytest.raises(DistillError, match="name .--name. is empty"):
        distill(_cfg(root, weights, "noname", name=" "))
    nested = tmp_path / "nested"
    for i, f in enumerate(sorted((root / "clean").iterdir())):
        (nested / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        (nested / f"d{i % 2}" / f.name).write_bytes(f.read_bytes())
    r = distill(_cfg(root, weights, "nested", clean=str(nested), steps=1))
    assert r.entry["name"] == "semi-drdnet-distilled" and r.steps == 1


def test_the_entry_records_the_threads_the_distillation_ran_on(setup):
    """The split of distill() read the thread count after it was set back (a review): the
    manifest said 2 threads for a --threads 1 run in a 2-thread process."""
    root, weights = setup
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        r = distill(_cfg(root, weights, "threads", steps=1, threads=1))
    finally:
        torch.set_num_threads(before)
    assert "1 thread," in r.entry["hardware"], r.entry["hardware"]


def test_the_held_out_photos_follow_the_folder_size(setup):
    """25 held out by default: 8 photos were refused ("need more than 25") without naming
    --val-count, and 27 left 2 to learn from (audit). Now a fifth, 1 to 25."""
    from derain_cli.distill import held_count

    assert [held_count(None, n) for n in (2, 8, 27, 200, 1000)] == [1, 1, 5, 25, 25]
    assert held_count(3, 8) == 3
    root, weights = setup
    res = distill(_cfg(root, weights, "auto", val_count=None, steps=1))  # 5 photos: 1 held
    assert res.after["count"] == 1
    assert res.entry["metrics"]["distill_held_out"]["set"].startswith("last 1 photos of")
    with pytest.raises(DistillError, match=r"need at least 6 \(5 held out, --val-count\)"):
        distill(_cfg(root, weights, "many", val_count=5))


def test_a_bad_learning_rate_or_a_file_as_out_is_refused_before_any_work(setup, tmp_path):
    """--lr -1 ended in torch's "Invalid learning rate" (exit 1, no flag named), and -o on a
    file trained to the end, then failed on mkdir (an audit)."""
    root, weights = setup
    for lr in (-1.0, float("nan")):
        with pytest.raises(DistillError, match="--lr must be a positive number"):
            distill(_cfg(root, weights, "bad", lr=lr, steps=1))
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        with pytest.raises(DistillError, match=r"afile is a file, not a folder"):
            distill(dataclasses.replace(_cfg(root, weights, "x", steps=1), out=str(out)))


def test_an_untrained_teacher_points_at_m_file(tmp_path):
    """distill has no --weights, yet an untrained teacher's error said to pass one (an
    audit)."""
    from derain_cli.weights import WeightsError

    with pytest.raises(WeightsError, match=r"pass the result with -m FILE"):
        distill(DistillConfig(out=str(tmp_path / "o"), clean=str(tmp_path),
                              teacher="semi-drdnet"))


def test_a_folder_another_distill_writes_is_refused_at_the_write(setup):
    """Two distills into one -o both wrote, one model silently replacing the other (or its
    weights beside the other's manifest: an audit): the folder is held while written."""
    from derain_cli.fileio import hold_folders

    root, weights = setup
    out = root / "held"
    out.mkdir()
    with hold_folders([out]):
        with pytest.raises(DistillError, match="in use by another derain process"):
            distill(_cfg(root, weights, "held", steps=1))
    assert list(out.iterdir()) == []
    distill(_cfg(root, weights, "held", steps=1))
    assert (out / "model.safetensors").is_file()


def test_a_second_distill_into_a_running_ones_folder_is_refused_at_once(setup, monkeypatch):
    """Held only at the start and at the write, the folder let a second distill write its
    model while the first trained; the first then refused its own write and threw its
    training away (exit 2, an audit). Now the second is refused while the first runs."""
    import derain_cli.distill as D

    root, weights = setup
    learn, refused = D._learn, []

    def learn_beside_another(*args, **kwargs):
        with pytest.raises(DistillError, match="in use by another derain process"):
            distill(_cfg(root, weights, "busy", steps=1))
        refused.append(True)
        return learn(*args, **kwargs)

    monkeypatch.setattr(D, "_learn", learn_beside_another)
    result = distill(_cfg(root, weights, "busy", steps=1))
    assert refused and result.weights == root / "busy" / "model.safetensors"
    assert result.weights.is_file()


def test_a_bare_state_dict_is_said_without_the_main_commands_advice(setup):
    """distill said "pass --model NAME too", an option it does not have (an audit)."""
    from safetensors.torch import save_file

    from derain_cli.weights import WeightsError

    root, weights = setup
    bare = root / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in _teacher().state_dict().items()}, str(bare))
    for kw in ({"teacher": str(bare)}, {"init": str(bare)}):
        with pytest.raises(WeightsError) as e:
            distill(_cfg(root, weights, "bare-run", steps=1, **kw))
        assert "--model" not in str(e.value) and "a file derain wrote" in str(e.value)


def test_a_missing_teacher_file_is_a_usage_error(setup):
    root, _ = setup
    r = CliRunner().invoke(app, ["distill", "-m", str(root / "nofile.safetensors"),
                                 "--clean", str(root / "clean"), "-o", str(root / "nt")])
    assert r.exit_code == 2 and "no such weights file" in " ".join(r.output.split())
    assert not (root / "nt").exists()


def test_an_empty_real_folder_is_named_by_its_option(setup):
    root, weights = setup
    (root / "no-real").mkdir(exist_ok=True)
    with pytest.raises(DistillError, match=r"real \(--real\): .*no images found"):
        distill(_cfg(root, weights, "no-real-run", steps=1, real=str(root / "no-real")))
    assert not (root / "no-real-run").exists()


def test_a_run_that_fails_early_leaves_no_folder(setup):
    """The folder is made when the run starts (so it can be held) and removed again where
    nothing was written: a teacher that cannot be read leaves no empty run folder."""
    root, weights = setup
    bad = root / "not-weights.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(Exception):  # noqa: B017, PT011 - whatever the loader raises
        distill(_cfg(root, bad, "deep/er/run", steps=1))
    assert not (root / "deep").exists()


def test_a_python_callers_settings_are_checked_before_any_work(setup):
    """The CLI's limits held for the CLI only: a Python caller's steps=-1 wrote an untrained
    model, val_count=0 wrote NaN into the manifest, batch=0 and patch=0 failed in numpy
    and OpenCV (an audit). Refused, naming the setting, before the run folder is made."""
    root, weights = setup
    for bad, said in (({"steps": -1}, "steps"), ({"steps": 0}, "steps"),
                      ({"val_count": 0}, "val_count"), ({"batch": 0}, "batch"),
                      ({"patch": 0}, "patch"), ({"threads": -1}, "threads"),
                      ({"steps": 2.5}, "steps"), ({"real_fraction": 2.0}, "real_fraction"),
                      ({"seed": -1}, "seed"), ({"clean": "/no/such"}, "clean .--clean.: no"),
                      ({"real": root / "clean" / "0.png"}, "real .--real.: .* not a folder")):
        with pytest.raises(DistillError, match=said):
            distill(_cfg(root, weights, "bad", **bad))
        assert not (root / "bad").exists()


def test_held_out_photos_are_not_trained_on(tmp_path):
    """The held-out photos score the student; trained on as well, the held-out PSNR in
    the result and the manifest would flatter it (a mutation audit)."""
    from derain_cli import distill as Dm

    rng = np.random.default_rng(0)
    for i in range(7):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), np.uint8)).save(
            tmp_path / f"{i}.png")
    train, held, real = Dm._photos(DistillConfig(out=str(tmp_path / "o"), clean=str(tmp_path),
                                                 val_count=2))
    assert len(held) == 2 and len(train) == 5 and real == []
    seen = {a.tobytes() for a in train}
    assert not any(a.tobytes() in seen for a in held)


def test_a_batch_takes_real_crops_at_the_real_fraction(tmp_path):
    """--real-fraction 0.3 is the share of real crops (a mutation audit: a flipped test
    made it 70 % in silence); real crops come as they are, others with added rain."""
    from derain_cli import distill as Dm

    clean = [np.full((40, 40, 3), 0.0, np.uint8)]
    real = [np.full((40, 40, 3), 200, np.uint8)]
    cfg = DistillConfig(out=str(tmp_path), clean=str(tmp_path), batch=400, patch=16,
                        real_fraction=0.3)
    x = Dm._batch(clean, real, cfg, np.random.default_rng(0)).numpy()
    is_real = np.isclose(x.mean(axis=(1, 2, 3)), 200 / 255, atol=1e-6)
    assert 0.22 < is_real.mean() < 0.38, is_real.mean()
    t = Dm._batch(clean, real, dataclasses.replace(cfg, batch=3), np.random.default_rng(0))
    assert t.shape == (3, 3, 16, 16) and t.dtype == torch.float32
    assert t.is_contiguous(memory_format=torch.channels_last)


def _overcommit_refuses_the_impossible() -> bool:
    """Linux's heuristic (0) or strict (2) overcommit refuses an allocation past RAM and
    swap at once; under 1 it is granted and only touching it fails."""
    try:
        return Path("/proc/sys/vm/overcommit_memory").read_text().strip() in ("0", "2")
    except OSError:
        return False


@pytest.mark.skipif(not _overcommit_refuses_the_impossible(),
                    reason="needs Linux overcommit 0 or 2")
def test_a_batch_too_large_for_memory_fails_at_once_with_a_way_out(setup):
    """--batch 1000000 synthesized crops for minutes before NumPy ran out of memory, and
    the error ("Unable to allocate ...") said nothing of --batch or --patch."""
    root, weights = setup
    args = ["distill", "--clean", root / "clean", "-m", weights, "--detail-blocks", "1",
            "--steps", "1", "--batch", "1000000", "--patch", "96", "--val-count", "2",
            "--threads", "1", "-q", "-o", root / "huge"]
    t0 = time.monotonic()
    r = CliRunner().invoke(app, [str(a) for a in args])
    out = " ".join(r.output.split())
    assert r.exit_code == 1 and "Unable to allocate" in out, r.output
    assert "a smaller --batch or --patch needs less" in out
    assert time.monotonic() - t0 < 60
    assert not (root / "huge").exists()


def test_a_run_another_distill_finished_meanwhile_is_not_replaced(setup, monkeypatch):
    """The folder is checked before the work and again, held, at the write: another
    distill into the same -o that finished while this one trained kept its model (a
    mutation audit found nothing failing when the second check was dropped: the other
    run's model was replaced in silence)."""
    import derain_cli.distill as D

    root, weights = setup
    out = root / "raced"
    real = D._batch

    def other_finishes(*args, **kwargs):  # while this run takes its first batch
        if not (out / "model.safetensors").exists():
            out.mkdir(exist_ok=True)
            (out / "model.safetensors").write_bytes(b"the other run's model")
        return real(*args, **kwargs)

    monkeypatch.setattr(D, "_batch", other_finishes)
    with pytest.raises(DistillError, match=r"already holds a run \(model\.safetensors\)"):
        distill(_cfg(root, weights, "raced", steps=2))
    assert (out / "model.safetensors").read_bytes() == b"the other run's model"
    assert not (out / "manifest_entry.json").exists()


def test_a_student_past_fp16_range_is_written_in_fp32(setup, tmp_path, capsys):
    """Students are written in fp16 like the bundles, unless a value is beyond fp16's
    range: a teacher's BatchNorm variance of 1e5 (which the student keeps) was infinity
    in an fp16 file, so the student's photos went wrong (a mutation audit found nothing
    failing when fp16 was always used)."""
    root, _ = setup
    teacher = SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=1, detail_blocks=3,
                                          se_reduction=4)).eval()
    with torch.no_grad():
        teacher.rain_net.body[1].running_var[0] = 1e5  # > 65504, fp16's largest
    big = tmp_path / "big.safetensors"
    save_weights(teacher, big, name="t", arch="semi-drdnet", config=teacher.cfg,
                 dtype=torch.float32)
    r = distill(_cfg(root, big, str(tmp_path / "out"), steps=1))
    assert "exported in float32" in " ".join(capsys.readouterr().err.split())
    var = model_from_file(r.weights).state_dict()["rain_net.body.1.running_var"]
    assert var.dtype == torch.float32 and float(var[0]) == 1e5
    plain = distill(_cfg(root, setup[1], str(tmp_path / "plain"), steps=1))
    from safetensors import safe_open

    with safe_open(str(plain.weights), framework="pt") as f:  # else fp16, as the bundles
        assert f.get_tensor("rain_net.head.0.weight").dtype == torch.float16


def test_a_manifest_cut_short_is_not_left_half_written(setup, tmp_path, monkeypatch):
    """The manifest goes through an atomic write: a disk that fills while it is written
    leaves no half of it beside the model (a half JSON file that the model's readers then
    fail on); a mutation audit found nothing failing when it was written in place."""
    root, weights = setup
    out = tmp_path / "full"
    real = Path.write_text

    def disk_fills(self, text, *args, **kwargs):
        if self.parent == out and text.lstrip().startswith("{"):
            real(self, text[:len(text) // 2], *args, **kwargs)
            raise OSError(28, "No space left on device")
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", disk_fills)
    with pytest.raises(OSError, match="No space left"):
        distill(_cfg(root, weights, str(out), steps=1))
    manifest = out / "manifest_entry.json"
    assert not manifest.exists() or json.loads(manifest.read_text())
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporaries


def test_agreement_is_with_the_teacher_and_capped_where_outputs_are_the_same(setup, tmp_path):
    """The reported agreement could have been the student's PSNR against the clean photos,
    or Infinity in manifest_entry.json (not JSON) for a student identical to its teacher,
    unseen (a mutation audit)."""
    from derain_cli.distill import fresh_student

    root, weights = setup
    r = distill(_cfg(root, weights, "agr", steps=1))
    assert r.before["agreement_psnr"] != r.before["student_psnr"]
    torch.manual_seed(0)
    net = fresh_student("semi-drdnet-tiny")
    same = tmp_path / "tiny.safetensors"
    save_weights(net, same, name="t", arch="semi-drdnet", config=net.cfg, dtype=torch.float32)
    r = distill(_cfg(root, same, "same", student="semi-drdnet-tiny", init=str(same), lr=0.0,
                     steps=1))
    assert r.before["agreement_psnr"] == 99.0

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    json.loads((root / "same" / "manifest_entry.json").read_text(), parse_constant=refuse)


def test_a_ctrl_c_before_the_first_step_writes_nothing(setup, monkeypatch):
    """An untrained student is no result: nothing written, no folder (a mutation audit)."""
    import derain_cli.distill as Dm

    root, weights = setup
    monkeypatch.setattr(Dm, "_batch", interrupted_at_call(Dm._batch, 1))
    with pytest.raises(KeyboardInterrupt) as e:
        distill(_cfg(root, weights, "cut0", steps=5))
    assert not isinstance(e.value, Dm.DistillInterrupted)
    assert not (root / "cut0").exists()


def test_distill_keeps_the_callers_thread_count_and_trains_on_mixed_rain(setup, monkeypatch):
    """A Python caller's torch threads come back as they were; the crops get the "mixed"
    preset the docs promise (both unpinned: a mutation audit)."""
    import derain_cli.synth as S

    root, weights = setup
    seen = []
    real = S.synthesize
    monkeypatch.setattr(S, "synthesize",
                        lambda img, preset, **k: (seen.append(preset), real(img, preset, **k))[1])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        distill(_cfg(root, weights, "thr", steps=1, threads=1, real=None))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {"mixed"}


def test_rain_blocks_as_many_as_the_teachers_are_taken():
    """--rain-blocks equal to the teacher's count (the default, written out) is allowed."""
    from derain_cli.distill import student_from_teacher

    t = SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=3, detail_blocks=2,
                                    se_reduction=4)).eval()
    assert student_from_teacher(t, 1, rain_blocks=3).cfg.rain_blocks == 3


@pytest.mark.parametrize("minutes", [0, -1.0])
def test_a_python_callers_time_limit_of_zero_is_refused(setup, minutes):
    """max_minutes=0 is falsy: it must be refused, not read as no limit."""
    root, weights = setup
    with pytest.raises(DistillError, match="max_minutes must be positive"):
        distill(_cfg(root, weights, "m0", max_minutes=minutes))
    assert not (root / "m0").exists()


def test_the_learning_rate_warms_up_over_the_first_5_percent_then_follows_a_cosine(
        setup, monkeypatch):
    """The documented schedule, step by step (a mutation audit: 10 % in place of 5 % went
    unseen): lr x min(1, (step + 1) / (steps // 20)) x (0.1 + 0.45 (1 + cos(pi step/steps)))."""
    import math

    from derain_cli import train as T

    root, weights = setup
    seen = []
    real = T._Progress.update
    monkeypatch.setattr(T._Progress, "update",
                        lambda self, step, loss, lr, rate: (seen.append(lr),
                                                            real(self, step, loss, lr, rate)))
    distill(_cfg(root, weights, "warm", steps=40, lr=1e-3))
    want = [1e-3 * min(1.0, (s + 1) / 2) * (0.1 + 0.45 * (1 + math.cos(math.pi * s / 40)))
            for s in range(40)]
    assert seen == pytest.approx(want, rel=1e-9)
