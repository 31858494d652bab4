"""derain grow: a trained net grown into a bigger one of its architecture keeps its output."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from derain_cli.grow import GrowError, agreement, grow_file, grow_network
from derain_cli.models import RDMC, SemiDRDNet
from derain_cli.models.rdmc import RDMCConfig
from derain_cli.models.semi_drdnet import SemiDRDNetConfig
from derain_cli.weights import WeightsError, model_from_file, save_weights


def _trained_like(net: nn.Module, seed: int = 1) -> nn.Module:
    """``net`` with every parameter and BatchNorm statistic moved off its initialisation
    (a trained net's zeros, ones and BN statistics are not the defaults; growth must copy
    them all, not only the conv weights)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if not t.is_floating_point():
                continue
            noise = torch.rand(t.shape, generator=g)
            if name.endswith("running_var"):
                t.copy_(0.5 + noise)
            elif name.endswith(("running_mean", "bias")):
                t.copy_(0.2 * (noise - 0.5))
            elif t.dim() == 1:  # BN and PReLU weights
                t.copy_(0.5 + 0.5 * noise)
            else:
                t.mul_(0.5 + noise)
    return net.eval()


def _image(size: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("small", "big"), [
    (SemiDRDNetConfig(width=8, rain_blocks=2, detail_blocks=1),
     SemiDRDNetConfig(width=16, rain_blocks=5, detail_blocks=3)),
    (SemiDRDNetConfig(width=16, rain_blocks=3, detail_blocks=2, se_reduction=8),
     SemiDRDNetConfig(width=24, rain_blocks=3, detail_blocks=4, se_reduction=4)),
    (SemiDRDNetConfig(width=8, rain_blocks=1, detail_blocks=1),  # depth only
     SemiDRDNetConfig(width=8, rain_blocks=4, detail_blocks=2)),
], ids=["wider-deeper", "more-se-units", "deeper"])
def test_a_grown_semi_drdnet_gives_its_source_output(small: SemiDRDNetConfig,
                                                      big: SemiDRDNetConfig) -> None:
    src = _trained_like(SemiDRDNet(small))
    grown = grow_network(src, big, seed=3)
    assert grown.cfg == big
    x = _image()
    with torch.inference_mode():
        torch.testing.assert_close(grown(x), src(x), atol=1e-5, rtol=0)
        # the tiler's whole-image statistics: the source's blocks sit at their new places
        # and their old channels pool what the source pooled
        spots = [round(j * (big.rain_blocks - 1) / max(1, small.rain_blocks - 1))
                 for j in range(small.rain_blocks)]
        sums = grown.se_sums(x)[:, spots, :small.width]
        torch.testing.assert_close(sums, src.se_sums(x), atol=1e-4, rtol=1e-5)


def test_a_widened_rdmc_gives_its_source_output() -> None:
    src = _trained_like(RDMC(RDMCConfig(channels=(4, 8, 8), stages=2)))
    grown = grow_network(src, RDMCConfig(channels=(6, 8, 16), stages=2), seed=2)
    x = _image(40)
    with torch.inference_mode():
        torch.testing.assert_close(grown(x), src(x), atol=1e-5, rtol=0)


def test_an_added_rdmc_recursion_is_allowed_but_not_exact(tmp_path: Path) -> None:
    # the recursions share their weights: a third cannot start as the identity
    src = _trained_like(RDMC(RDMCConfig(channels=(4, 8, 8), stages=2)))
    grown = grow_network(src, RDMCConfig(channels=(4, 8, 8), stages=3))
    diff, db = agreement(src, grown)
    assert diff > 1e-3 and db < 80


def test_the_new_weights_learn() -> None:
    # the zero weights from new channels into old ones, and the added blocks' zeroed last
    # BatchNorm, must get gradients (zeros both ways would stay zero for ever)
    src = _trained_like(SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=1, detail_blocks=1)))
    grown = grow_network(src, SemiDRDNetConfig(width=16, rain_blocks=3, detail_blocks=2))
    grown.train()
    loss = grown(_image(32)).square().mean()
    loss.backward()
    tail = grown.rain_net.tail.weight
    assert torch.all(tail.detach()[:, 8:] == 0)
    assert tail.grad[:, 8:].abs().sum() > 0
    added = grown.rain_net.blocks[1].body[4].weight  # the source's one block went first;
    assert torch.all(added.detach() == 0)           # blocks 1 and 2 are added
    assert added.grad.abs().sum() > 0


def test_the_new_channels_get_statistics_of_their_own() -> None:
    # train --weights keeps a file's BatchNorm statistics: left at (0, 1) the new channels
    # would run under-scaled for good, so grow estimates them (and only them)
    small = SemiDRDNetConfig(width=8, rain_blocks=1, detail_blocks=1)
    src = _trained_like(SemiDRDNet(small))
    grown = grow_network(src, SemiDRDNetConfig(width=16, rain_blocks=2, detail_blocks=2))
    bn_old, bn_new = src.rain_net.blocks[0].body[1], grown.rain_net.blocks[0].body[1]
    assert torch.equal(bn_new.running_mean[:8], bn_old.running_mean)
    assert torch.equal(bn_new.running_var[:8], bn_old.running_var)
    assert not torch.allclose(bn_new.running_var[8:], torch.ones(8))
    added = grown.rain_net.blocks[1].body[1]  # an added block's statistics too
    assert not torch.allclose(added.running_var, torch.ones(16))
    plain = grow_network(src, SemiDRDNetConfig(width=16, rain_blocks=2, detail_blocks=2),
                         calibrate=False)  # as grow did before 2026-12-04 (recipes)
    assert torch.equal(plain.rain_net.blocks[1].body[1].running_var, torch.ones(16))
    # as a from-scratch network's: the new channels come out of their batch norm with
    # about unit spread on rainy images
    grown.eval()
    seen = {}
    hook = bn_new.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    with torch.inference_mode():
        grown(_image(64, seed=5))
    hook.remove()
    gamma = bn_new.weight.detach()[8:].abs().clamp_min(1e-3)
    spread = seen["out"][:, 8:].std(dim=(0, 2, 3)) / gamma
    assert 0.3 < float(spread.median()) < 3


def test_grow_refuses_what_it_cannot_grow() -> None:
    src = SemiDRDNet(SemiDRDNetConfig(width=16, rain_blocks=3, detail_blocks=2))
    with pytest.raises(GrowError, match="smaller than the source in width"):
        grow_network(src, SemiDRDNetConfig(width=8, rain_blocks=3, detail_blocks=2))
    with pytest.raises(GrowError, match="dilations"):
        grow_network(src, SemiDRDNetConfig(width=16, rain_blocks=3, detail_blocks=2,
                                           dilations=(1, 2, 4)))
    with pytest.raises(GrowError, match="another architecture"):
        grow_network(src, RDMCConfig())
    # fewer SE hidden units: said, not an IndexError (a mutation audit)
    se4 = SemiDRDNet(SemiDRDNetConfig(width=16, rain_blocks=3, detail_blocks=2, se_reduction=4))
    with pytest.raises(GrowError, match="se_reduction"):
        grow_network(se4, SemiDRDNetConfig(width=16, rain_blocks=3, detail_blocks=2,
                                           se_reduction=8))
    rdmc = RDMC(RDMCConfig(channels=(4, 8, 8), stages=2))
    with pytest.raises(GrowError, match="levels"):
        grow_network(rdmc, RDMCConfig(channels=(4, 8, 8, 8), stages=2))


def test_grow_file_writes_weights_derain_loads(tmp_path: Path) -> None:
    small = SemiDRDNet(SemiDRDNetConfig(width=32, rain_blocks=3, detail_blocks=1))
    src_file = tmp_path / "tiny.safetensors"
    save_weights(_trained_like(small), src_file, name="semi-drdnet-tiny", arch="semi-drdnet",
                 config=small.cfg, dtype=torch.float32)
    out = tmp_path / "lite.safetensors"
    r = grow_file(str(src_file), "semi-drdnet-lite", out)
    assert r.exact and r.max_abs_diff < 1e-5
    assert r.target_params > r.source_params
    import hashlib

    from derain_cli.weights import read_state

    meta = read_state(out)[1]  # where it came from, in the file (a mutation audit)
    assert meta["grown_from_sha256"] == hashlib.sha256(src_file.read_bytes()).hexdigest()
    assert meta["exact"] == "true" and meta["grown_from"].endswith("tiny.safetensors")
    loaded = model_from_file(out).eval()
    assert loaded.cfg == SemiDRDNetConfig(width=32, rain_blocks=6, detail_blocks=6)
    x = _image()
    with torch.inference_mode():  # fp16 storage rounds the copied weights a little
        torch.testing.assert_close(loaded(x), small(x), atol=2e-2, rtol=0)
    with pytest.raises(GrowError, match="exists"):
        grow_file(str(src_file), "semi-drdnet-lite", out)
    with pytest.raises(GrowError, match=f"^{re.escape(str(src_file))} holds semi-drdnet "
                                        "weights and rdmc is rdmc"):  # the path as given
        grow_file(str(src_file), "rdmc", tmp_path / "r.safetensors")


def test_a_file_of_fp32_weights_grows_into_fp32_and_the_agreement_is_the_files(
        tmp_path: Path) -> None:
    # fp16 storage would round a user's fp32 weights: the file must compute what its source
    # computes, and the reported agreement is that of the file as written
    small = SemiDRDNet(SemiDRDNetConfig(width=32, rain_blocks=3, detail_blocks=1))
    src_file = tmp_path / "mine.safetensors"
    save_weights(_trained_like(small), src_file, name="semi-drdnet-tiny", arch="semi-drdnet",
                 config=small.cfg, dtype=torch.float32)
    steps: list[tuple[int, int]] = []  # grow was silent for its tens of seconds (an audit)
    r = grow_file(str(src_file), "semi-drdnet-lite", tmp_path / "g.safetensors",
                  on_step=lambda k, n: steps.append((k, n)))
    assert steps == [(k, 9) for k in range(10)], steps  # 8 calibration crops, the check
    assert r.max_abs_diff < 1e-5
    from safetensors import safe_open

    with safe_open(str(tmp_path / "g.safetensors"), framework="pt") as f:
        assert f.get_tensor("rain_net.head.0.weight").dtype == torch.float32


def test_grow_file_says_what_is_wrong_with_its_arguments(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    good = tmp_path / "g.safetensors"
    with pytest.raises(GrowError, match="name it"):
        grow_file("semi-drdnet-tiny", "semi-drdnet-lite", tmp_path / "g.bin")
    (tmp_path / "d.safetensors").mkdir()
    with pytest.raises(GrowError, match="is a folder"):
        grow_file("semi-drdnet-tiny", "semi-drdnet-lite", tmp_path / "d.safetensors",
                  overwrite=True)
    with pytest.raises(GrowError, match="no such weights file"):
        grow_file(str(tmp_path / "missing.safetensors"), "semi-drdnet-lite", good)
    (tmp_path / "afile").write_text("x")  # found after the work, as "File exists" (audit)
    with pytest.raises(GrowError, match=r"afile is a file, not a folder"):
        grow_file("semi-drdnet-tiny", "semi-drdnet-lite", tmp_path / "afile" / "g.safetensors")
    with pytest.raises(WeightsError, match="no published weights"):
        grow_file("semi-drdnet", "semi-drdnet", good)
    with pytest.raises(GrowError, match="is a folder; give a weights file or a model name"):
        grow_file(str(tmp_path), "semi-drdnet-lite", good)
    monkeypatch.chdir(tmp_path)  # a bare name (no /) was taken for a model (a review)
    (tmp_path / "runfolder").mkdir()
    with pytest.raises(GrowError, match="runfolder is a folder"):
        grow_file("runfolder", "semi-drdnet-lite", good)
    (tmp_path / "semi-drdnet-tiny").mkdir()  # a folder named after a model: still the model
    from derain_cli.grow import _load_source

    assert _load_source("semi-drdnet-tiny")[1] == "semi-drdnet-tiny"
    small = SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=1, detail_blocks=1))
    torch.save(small.state_dict(), tmp_path / "bare.ckpt")
    save_weights(small, tmp_path / "mymodel", name="x", arch="semi-drdnet", config=small.cfg)
    monkeypatch.chdir(tmp_path)  # names in the working folder, no suffix: still files
    with pytest.raises(GrowError, match="bare state dict"):
        grow_file("bare.ckpt", "semi-drdnet-lite", good)
    assert grow_file("mymodel", "semi-drdnet-lite", good).exact
    good.unlink()
    with pytest.raises(GrowError, match="no photos"):
        grow_file("semi-drdnet-tiny", "semi-drdnet-lite", good,
                  calibration=tmp_path / "d.safetensors")
    assert not good.exists()
    # the seed and threads as the CLI checks them (seed=-1 failed in NumPy: an audit)
    for bad in (-1, 1.5, 2**40, True):
        with pytest.raises(GrowError, match="seed"):
            grow_file("semi-drdnet-tiny", "semi-drdnet-lite", good, seed=bad)
    for bad in (0, 2.0, -3):
        with pytest.raises(GrowError, match="threads"):
            grow_file("semi-drdnet-tiny", "semi-drdnet-lite", good, threads=bad)
    assert not good.exists()


def test_grow_runs_on_the_threads_it_is_given(tmp_path: Path) -> None:
    """grow had no --threads (every other compute command has one: an audit); the caller's
    count comes back after it."""
    seen = []
    before = torch.get_num_threads()
    asked = 2 if before == 1 else 1  # another count than the caller's
    r = grow_file("semi-drdnet-tiny", "semi-drdnet-fast", tmp_path / "g.safetensors",
                  calibration="none", threads=asked,
                  on_step=lambda k, n: seen.append(torch.get_num_threads()))
    assert r.weights.is_file() and seen and set(seen) == {asked}
    assert torch.get_num_threads() == before


def test_grow_names_a_bad_target_and_says_a_copy_is_a_copy(tmp_path: Path, caplog) -> None:
    """`--to nosuch` read as a SOURCE typo does; growing into the same size said "grown
    into" alone (an audit)."""
    import logging

    with pytest.raises(GrowError, match=r"^--to: unknown model 'nosuch'"):
        grow_file("semi-drdnet-tiny", "nosuch", tmp_path / "g.safetensors")
    with caplog.at_level(logging.WARNING):
        grow_file("semi-drdnet-tiny", "semi-drdnet-fast", tmp_path / "f.safetensors",
                  calibration="none")
    assert "copy" not in caplog.text
    with caplog.at_level(logging.WARNING):
        r = grow_file("semi-drdnet-tiny", "semi-drdnet-tiny", tmp_path / "t.safetensors",
                      calibration="none")
    assert r.exact and "already is semi-drdnet-tiny's size: the file written is a copy" in (
        caplog.text)


def test_a_failed_write_names_the_output_not_a_temporary(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Writing under /proc failed after the work as "No such file or directory:
    '/proc/.derain-1jsn1h8h.tmp'", a usage error (exit 2: an audit)."""
    from derain_cli import weights
    from derain_cli.weights import WeightsError

    def refused(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError(2, "No such file or directory",
                                str(tmp_path / ".derain-x.tmp"))

    monkeypatch.setattr(weights, "save_weights", refused)
    with pytest.raises(WeightsError) as e:
        grow_file("semi-drdnet-tiny", "semi-drdnet-fast", tmp_path / "g.safetensors",
                  calibration="none")
    assert str(e.value) == (f"cannot write {tmp_path / 'g.safetensors'}: No such file or "
                            "directory")


def test_grow_cli_grows_the_bundled_default_and_its_result_derains(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from derain_cli.cli import app
    from derain_cli.enhancer import Derainer
    from derain_cli.weights import load_pretrained

    out = tmp_path / "lite.safetensors"
    r = CliRunner().invoke(app, ["grow", "semi-drdnet-tiny", "--to", "semi-drdnet-lite",
                                 "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "the same output" in r.output and "-> " in r.output
    img = (_image(64)[0].permute(1, 2, 0).numpy() * 255).astype("uint8")
    mine = Derainer(weights=out, device="cpu", precision="fp32", backend="torch", tile=0)
    base = Derainer(model="semi-drdnet-tiny", device="cpu", precision="fp32",
                    backend="torch", tile=0)
    assert abs(mine.derain_array(img).astype(int) - base.derain_array(img).astype(int)).max() <= 1
    assert isinstance(load_pretrained("semi-drdnet-tiny"), SemiDRDNet)

    again = CliRunner().invoke(app, ["grow", "semi-drdnet-tiny", "--to", "semi-drdnet-lite",
                                     "-o", str(out)])
    assert again.exit_code == 2 and "exists" in again.output

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (90, 140, 3), dtype=np.uint8)).save(
            photos / f"p{i}.png")
    calib = CliRunner().invoke(app, ["grow", "semi-drdnet-tiny", "--to", "semi-drdnet-lite",
                                     "-o", str(out), "--overwrite", "--calib", str(photos)])
    assert calib.exit_code == 0 and "the same output" in calib.output
    gone = CliRunner().invoke(app, ["grow", "semi-drdnet-tiny", "--to", "semi-drdnet-lite",
                                    "-o", str(out), "--overwrite", "--calib",
                                    str(tmp_path / "nosuch")])
    assert gone.exit_code == 2 and "nosuch: no such folder" in gone.output, gone.output
    a_file = CliRunner().invoke(app, ["grow", "semi-drdnet-tiny", "--to", "semi-drdnet-lite",
                                      "-o", str(out), "--overwrite", "--calib", str(out)])
    assert a_file.exit_code == 2 and "is a file; give a folder of photos" in a_file.output
    untrained = CliRunner().invoke(app, ["grow", "semi-drdnet", "--to", "semi-drdnet",
                                         "-o", str(out), "--overwrite"])
    assert untrained.exit_code == 1 and "no published weights" in untrained.output



@pytest.mark.usefixtures("one_thread")
def test_an_rdmc_file_is_said_to_grow_exactly_only_without_a_new_recursion(
        tmp_path: Path) -> None:
    """``grow_file`` says whether the grown file computes what its source computes
    (``GrowResult.exact``, and ``exact`` in the file): an RDMC widened with its recursions
    kept does; one given a recursion more does not, the recursions sharing their weights
    (a mutation audit found nothing failing with the two answers swapped)."""
    from derain_cli.weights import read_state

    said = {}
    for stages in (2, 1):  # rdmc-lite has 2
        torch.manual_seed(stages)
        src = _trained_like(RDMC(RDMCConfig(channels=(4, 8, 8, 8, 8), stages=stages)))
        src_file = tmp_path / f"src{stages}.safetensors"
        save_weights(src, src_file, name="mine", arch="rdmc", config=src.cfg,
                     dtype=torch.float32)
        out = tmp_path / f"grown{stages}.safetensors"
        r = grow_file(str(src_file), "rdmc-lite", out, calibration="none")
        said[stages] = (r.exact, read_state(out)[1]["exact"])
        if stages == 2:
            assert r.max_abs_diff < 1e-5
    assert said == {2: (True, "true"), 1: (False, "false")}


def test_grow_follows_its_seed_not_the_callers_random_state(tmp_path: Path) -> None:
    """The same command gives the same file whatever torch's global state (a mutation
    audit: dropping the seeding changed no test); an fp16 source grows into fp16."""
    from safetensors.torch import load_file

    for k in (1, 2):
        torch.manual_seed(k)
        grow_file("semi-drdnet-tiny", "semi-drdnet-fast", tmp_path / f"{k}.safetensors",
                  calibration="none")
    a, b = load_file(tmp_path / "1.safetensors"), load_file(tmp_path / "2.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(v.dtype == torch.float16 for v in a.values() if v.is_floating_point())


def test_an_rdmc_of_fewer_recursions_is_refused() -> None:
    src = RDMC(RDMCConfig(channels=(4, 8, 8, 16, 16), stages=3))
    with pytest.raises(GrowError, match="stages"):
        grow_network(src, RDMCConfig(channels=(4, 8, 8, 16, 16), stages=2))


def test_agreement_is_the_max_difference_and_the_psnr() -> None:
    """Only the exact cases (0 and inf) were pinned (a mutation audit)."""
    import math

    from derain_cli.grow import _probe

    torch.manual_seed(0)
    a = RDMC(RDMCConfig(channels=(4, 8, 8, 16, 16), stages=1)).eval()
    b = RDMC(RDMCConfig(channels=(4, 8, 8, 16, 16), stages=1)).eval()
    with torch.no_grad():
        d = (a(_probe(0)) - b(_probe(0))).abs()
    mx, db = agreement(a, b)
    assert mx == pytest.approx(float(d.max()))
    assert db == pytest.approx(10 * math.log10(1 / float((d ** 2).mean())), abs=1e-4)


def test_calibration_is_rainy_crops_of_every_photo(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Calibration runs on rain added to the photos, all of them, and a --calibration
    folder's photos are the ones used (clean crops, the first photo alone, or procedural
    scenes in place of the folder went unseen: a mutation audit)."""
    import derain_cli.grow as G

    flat = [np.full((128, 128, 3), v, np.uint8) for v in (40, 200)]
    imgs = G.calibration_images(flat, count=4)
    assert all(np.ptp(i) > 0.05 for i in imgs)  # rain on a flat photo
    means = sorted(float(i.mean()) for i in imgs)
    assert means[0] < 0.5 < means[-1]  # both photos
    (tmp_path / "c").mkdir()
    Image.fromarray(np.full((130, 130, 3), 90, np.uint8)).save(tmp_path / "c" / "a.png")
    got = []
    real = G.calibration_images
    monkeypatch.setattr(G, "calibration_images",
                        lambda p, *a, **k: (got.append(p), real(p, *a, **k))[1])
    G.grow_file("semi-drdnet-tiny", "semi-drdnet-fast", tmp_path / "g.safetensors",
                calibration=tmp_path / "c")
    assert len(got) == 1 and got[0] is not None and len(got[0]) == 1


def test_an_fp32_source_with_one_fp16_exact_tensor_stays_fp32() -> None:
    """A zero bias is fp16-exact; the file must still be fp32 where any tensor is not."""
    from derain_cli.grow import _storage_dtype

    lin = nn.Linear(3, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.1, 0.2, 0.3]] * 3))
        lin.bias.zero_()
    assert _storage_dtype(lin) == torch.float32
