"""Evaluation (identity figures vs an independent computation), reports, synthetic pairs, CLI."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import typer
from helpers import interrupted_at_call, smooth_photo
from PIL import Image
from typer.testing import CliRunner

from derain_cli import evaluate as E
from derain_cli.commands_train import eval_cmd, synth_cmd
from derain_cli.models import SemiDRDNet, SemiDRDNetConfig
from derain_cli.pairs import PairsError, find_pairs


@pytest.fixture
def clean_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    d = tmp_path / "photos"
    d.mkdir()
    for i in range(4):
        Image.fromarray(smooth_photo(rng, 40, 52)).save(d / f"p{i}.jpg", quality=95)
    return d


@pytest.fixture
def pairs(tmp_path: Path, clean_dir: Path) -> Path:
    E.synth_pairs(clean_dir, tmp_path / "pairs", preset="heavy", count=4, seed=0)
    return tmp_path / "pairs"


def _y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma, MATLAB rgb2ycbcr convention (written out here, independently)."""
    rgb = img.astype(np.float64)
    return 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0


def test_identity_matches_independent_skimage(pairs):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    res = E.evaluate("identity", pairs)
    assert res.model == "identity" and res.count == 4
    ps, ss, prgb = [], [], []
    for p in sorted((pairs / "rainy").iterdir()):
        r = np.asarray(Image.open(p).convert("RGB"))
        c = np.asarray(Image.open(pairs / "clean" / p.name).convert("RGB"))
        yr, yc = _y(r), _y(c)
        ps.append(peak_signal_noise_ratio(yc, yr, data_range=255))
        ss.append(structural_similarity(yc, yr, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, data_range=255))
        prgb.append(peak_signal_noise_ratio(c, r, data_range=255))
    assert res.psnr_y == pytest.approx(np.mean(ps), abs=1e-6)
    assert res.ssim_y == pytest.approx(np.mean(ss), abs=1e-6)
    assert res.psnr_rgb == pytest.approx(np.mean(prgb), abs=1e-6)
    assert [s.name for s in res.images] == ["p0.png", "p1.png", "p2.png", "p3.png"]


def test_per_image_seconds_are_the_models_alone(pairs, monkeypatch):
    """The seconds column held the PSNR/SSIM computation too (6.5 s for the identity on a
    4000x2700 pair: an audit)."""
    import time

    real = E.metrics.ssim_y
    monkeypatch.setattr(E.metrics, "ssim_y", lambda *a: (time.sleep(0.2), real(*a))[1])
    res = E.evaluate("identity", pairs, limit=1)
    assert res.images[0].seconds < 0.1


def test_progress_starts_before_the_first_pair_is_derained(pairs):
    """The bar was made at the first pair's score, so it stood unseen through the first
    pair (minutes with --ensemble 4 on large photos: an audit): ``on_start`` comes first."""
    calls: list[tuple] = []
    E.evaluate("identity", pairs, limit=3, on_start=lambda n: calls.append(("start", n)),
               on_image=lambda k, n, s: calls.append(("pair", k, n)))
    assert calls == [("start", 3), ("pair", 1, 3), ("pair", 2, 3), ("pair", 3, 3)]


def test_a_model_output_of_nan_is_refused_not_scored(pairs):
    """NaN was scored as black (11 dB for a half-NaN output): an overflow passed for a
    poor score (an audit)."""
    import torch

    class Diverged(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = torch.nn.Parameter(torch.tensor(float("nan")))

        def forward(self, x):
            return x * self.gain

    with pytest.raises(ValueError, match=r": the model's output holds NaN or infinite "
                                         r"values .*not scored"):
        E.evaluate(Diverged(), pairs, limit=1)


def test_module_eval_saves_outputs_csv_and_report(pairs, tmp_path, tiny_weights):
    torch.manual_seed(0)
    net = SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=1, detail_blocks=1, se_reduction=4))
    report = tmp_path / "rep" / "report.html"
    res = E.evaluate(net, pairs, save_dir=tmp_path / "out", report=report)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [
        "p0.png", "p1.png", "p2.png", "p3.png"]
    # scores are those of the saved 8-bit files
    from derain_cli import metrics

    saved = np.asarray(Image.open(tmp_path / "out" / "p0.png").convert("RGB"))
    clean = np.asarray(Image.open(pairs / "clean" / "p0.png").convert("RGB"))
    assert res.images[0].psnr_y == pytest.approx(metrics.psnr_y(saved, clean))
    rows = list(csv.reader(open(res.csv_path)))
    assert rows[0][:3] == ["name", "psnr_y", "ssim_y"] and len(rows) == 6 and rows[-1][0] == "mean"
    for row, s in zip(rows[1:5], res.images, strict=True):  # each image's, as the mean's:
        # 4 decimals of dB, 6 of SSIM (a mutation audit: 4 of SSIM passed)
        assert row[1:3] == [f"{s.psnr_y:.4f}", f"{s.ssim_y:.6f}"]
    page = report.read_text()
    assert page.count("<img") == 12 and "p3.png" in page
    assert len(list((tmp_path / "rep" / "report_files").glob("*.jpg"))) == 12
    summary = json.loads(page.split('id="summary">')[1].split("</script>")[0])  # raw JSON
    assert summary["count"] == 4 and summary["report_path"] == str(report)
    assert 'Per-image CSV: <a href="../out/scores.csv">' in page  # relative: moves along
    named = E.evaluate(str(tiny_weights), pairs, report=tmp_path / "r2.html", device="cpu")
    assert f"Run on {named.engine}." in (tmp_path / "r2.html").read_text()  # not only in JSON
    assert 'href="r2.csv"' in (tmp_path / "r2.html").read_text()
    # rewritten over fewer pairs: the thumbnails of the pairs left out go too
    E.evaluate(net, pairs, report=report, limit=2, overwrite=True)
    assert len(list((tmp_path / "rep" / "report_files").glob("*.jpg"))) == 6


def test_a_gray_pair_is_scored_on_the_gray_image_derain_writes(pairs, tmp_path, tiny_weights):
    """A grayscale pair's output was scored (and saved) in colour, where derain writes the
    grayscale photo's result as its luma: 0.1 dB apart (an audit)."""
    from derain_cli import metrics
    from derain_cli.enhancer import Derainer
    from derain_cli.images import read_image, write_image

    for side in ("rainy", "clean"):
        for p in (pairs / side).iterdir():
            Image.open(p).convert("L").save(p)
    res = E.evaluate(str(tiny_weights), pairs, save_dir=tmp_path / "out", device="cpu",
                     precision="fp32")
    loaded = read_image(pairs / "rainy" / "p0.png")
    d = Derainer(weights=tiny_weights, device="cpu", precision="fp32")
    write_image(tmp_path / "derain.png", d.derain_array(loaded.pixels), like=loaded)
    own = np.asarray(Image.open(tmp_path / "derain.png").convert("RGB"))
    saved = np.asarray(Image.open(tmp_path / "out" / "p0.png").convert("RGB"))
    np.testing.assert_array_equal(saved, own)
    clean = np.asarray(Image.open(pairs / "clean" / "p0.png").convert("RGB"))
    assert res.images[0].psnr_rgb == pytest.approx(metrics.psnr_rgb(own, clean))
    # a gray photo stored as RGB is written in colour by derain: scored so (a review)
    for side in ("rainy", "clean"):
        for p in (pairs / side).iterdir():
            Image.open(p).convert("RGB").save(p)
    E.evaluate(str(tiny_weights), pairs, save_dir=tmp_path / "rgb", device="cpu",
               precision="fp32")
    loaded = read_image(pairs / "rainy" / "p0.png")
    write_image(tmp_path / "derain_rgb.png", d.derain_array(loaded.pixels), like=loaded)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "rgb" / "p0.png")),
                                  np.asarray(Image.open(tmp_path / "derain_rgb.png")))


def test_overwrite_over_fewer_pairs_names_the_saved_images_it_left(pairs, tmp_path, caplog):
    """--save's images of an earlier run over more pairs stay (they may be the user's), but
    were left unmarked beside the new ones: a warning counts them."""
    net = SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=1, detail_blocks=1, se_reduction=4))
    out = tmp_path / "out"
    E.evaluate(net, pairs, save_dir=out)
    with caplog.at_level("WARNING", logger="derain_cli"):
        E.evaluate(net, pairs, save_dir=out, limit=4, overwrite=True)
        assert caplog.records == []  # every image rewritten: nothing to say
        E.evaluate(net, pairs, save_dir=out, limit=1, overwrite=True)
    assert [r.getMessage() for r in caplog.records] == [
        f"{out} also holds 3 PNG image(s) this run did not write (p1.png, p2.png, p3.png): an "
        "earlier run's over other pairs? They are left as they are."]
    assert len(list(out.glob("*.png"))) == 4
    caplog.clear()
    with caplog.at_level("WARNING", logger="derain_cli"):  # this run's scores elsewhere
        E.evaluate(net, pairs, save_dir=out, csv_path=tmp_path / "s.csv", overwrite=True)
        assert [r.getMessage() for r in caplog.records] == [
            f"{out / 'scores.csv'} is an earlier run's: this run's scores are in "
            f"{tmp_path / 's.csv'}"]
        caplog.clear()
        E.evaluate(net, pairs, save_dir=out, csv_path=out / "scores.csv", overwrite=True)
        assert caplog.records == []


def test_eval_names_identity_and_refuses_a_folder_for_a_file(pairs, tmp_path, monkeypatch):
    """`eval -m identiy` listed the registry without identity; `--report out/` wrote a file
    named out, with out.csv and out_files/ beside it (an audit)."""
    from derain_cli.models import UnknownModelError

    with pytest.raises(UnknownModelError, match=r"rdmc-lite, identity$"):
        E.evaluate("identiy", pairs)
    monkeypatch.chdir(tmp_path)
    for flag, example in (("--report", "ry/report.html"), ("--csv", "ry/scores.csv")):
        r = CliRunner().invoke(_app(), ["eval", str(pairs), "-m", "identity", flag, "ry/"])
        assert r.exit_code == 2 and f"e.g. {example}" in r.stderr
    assert not any((tmp_path / n).exists() for n in ("ry", "ry.csv", "ry_files"))


def test_engine_settings_for_the_identity_are_said_to_do_nothing(pairs, caplog):
    """`-m identity --precision fp64` passed in silence (an audit)."""
    import logging

    with caplog.at_level(logging.WARNING):
        E.evaluate("identity", pairs, limit=1)
        E.evaluate("identity", pairs, limit=1, precision="fp32")  # README's own command
        E.evaluate("identity", pairs, limit=1, precision="FP32")  # (in any case: a review)
    assert "engine" not in caplog.text  # (warned of fp32: an audit)
    with caplog.at_level(logging.WARNING):
        E.evaluate("identity", pairs, precision="fp64", limit=1)
    assert "precision='fp64': no engine runs for the identity" in caplog.text


def test_an_eval_stopped_before_its_first_pair_takes_back_its_folders(pairs, tmp_path,
                                                                       monkeypatch):
    """A Ctrl-C before the first pair was scored left the --save and report folders it made,
    empty (an audit); folders that were there are kept."""
    from derain_cli import metrics

    monkeypatch.setattr(metrics, "ssim_y", interrupted_at_call(metrics.ssim_y, 1))
    (tmp_path / "kept").mkdir()
    with pytest.raises(KeyboardInterrupt):
        E.evaluate("identity", pairs, save_dir=tmp_path / "a" / "sv",
                   report=tmp_path / "kept" / "b" / "r.html")
    assert not (tmp_path / "a").exists() and list((tmp_path / "kept").iterdir()) == []


def test_an_interrupted_eval_keeps_the_scores_it_took(pairs, tmp_path, monkeypatch):
    """Ctrl-C on a long set printed "interrupted" and kept nothing, while --save's images
    then refused the same command (an audit): the pairs scored are written to the CSV and
    report, and the message says so and how to score them all."""
    from derain_cli import metrics

    real = metrics.ssim_y
    monkeypatch.setattr(metrics, "ssim_y", interrupted_at_call(real, 3))
    r = CliRunner().invoke(_app(), ["eval", str(pairs), "-m", "identity", "--save",
                                    str(tmp_path / "s"), "--report", str(tmp_path / "r.html")])
    assert r.exit_code == 130
    err = " ".join(r.stderr.split())
    assert "interrupted after 2 of 4 pairs; their scores (mean PSNR-Y" in err
    assert "--overwrite scores them all" in err
    rows = list(csv.reader(open(tmp_path / "s" / "scores.csv")))
    # the files said nothing of the stop, and passed for the whole set's (an audit)
    assert [row[0] for row in rows[1:]] == ["p0.png", "p1.png",
                                            "mean (2 of 4 pairs: interrupted)"]
    assert (tmp_path / "r.html").read_text().count("<img") == 6
    assert "<b>2 of 4 pairs: interrupted</b>" in (tmp_path / "r.html").read_text()

    def embedded() -> dict:  # the report's JSON lacked "interrupted", --json's had it (audit)
        page = (tmp_path / "r.html").read_text()
        return json.loads(page.split('id="summary">')[1].split("</script>")[0])

    assert embedded()["interrupted"] is True and embedded()["count"] == 2
    monkeypatch.setattr(metrics, "ssim_y", real)
    r = CliRunner().invoke(_app(), ["eval", str(pairs), "-m", "identity", "--save",
                                    str(tmp_path / "s"), "--report", str(tmp_path / "r.html"),
                                    "--overwrite"])
    assert r.exit_code == 0 and len(list(csv.reader(open(tmp_path / "s" / "scores.csv")))) == 6
    assert list(csv.reader(open(tmp_path / "s" / "scores.csv")))[-1][0] == "mean"
    assert "pairs: interrupted" not in (tmp_path / "r.html").read_text()
    assert embedded()["interrupted"] is False
    assert r.stderr.startswith("pairs 4/4 elapsed ")  # progress (a long set was silent)

    # stopped while the third pair's image was saved: the CSV lists the two saved (review)
    from derain_cli import images

    monkeypatch.setattr(images, "write_image", interrupted_at_call(images.write_image, 3))
    r = CliRunner().invoke(_app(), ["eval", str(pairs), "-m", "identity", "--save",
                                    str(tmp_path / "t")])
    assert r.exit_code == 130 and "interrupted after 2 of 4 pairs" in " ".join(r.stderr.split())
    # --json alone printed nothing (an audit): the pairs scored, said interrupted
    monkeypatch.setattr(metrics, "ssim_y", interrupted_at_call(real, 3))
    r = CliRunner().invoke(_app(), ["eval", str(pairs), "-m", "identity", "--json"])
    got = json.loads(r.stdout)
    assert r.exit_code == 130 and got["interrupted"] and (got["count"], got["total"]) == (2, 4)
    assert "are in the JSON" in " ".join(r.stderr.split())
    rows = list(csv.reader(open(tmp_path / "t" / "scores.csv")))
    assert [row[0] for row in rows[1:]] == ["p0.png", "p1.png",
                                            "mean (2 of 4 pairs: interrupted)"]
    assert sorted(p.name for p in (tmp_path / "t").glob("*.png")) == ["p0.png", "p1.png"]


def test_a_grayscale_image_paired_with_a_colour_one_is_said(pairs, caplog):
    """A gray rainy image against a colour clean one was scored in silence (an audit):
    PSNR-RGB then compares unlike images."""
    import logging

    rainy = pairs / "rainy" / "p1.png"
    Image.open(rainy).convert("L").save(rainy)
    with caplog.at_level(logging.WARNING):
        E.evaluate("identity", pairs)
    assert "1 pair has one grayscale and one colour image (p1.png)" in caplog.text


def test_a_16_bit_pair_is_said_to_be_scored_at_8_bits(pairs, caplog):
    """A 16-bit pair a few levels apart scored 100 dB, "identical", in silence (an audit):
    every image is scored at 8 bits, which is said."""
    import logging

    rgb = np.asarray(Image.open(pairs / "rainy" / "p1.png").convert("RGB")).astype(np.int32)
    for side, shift in (("rainy", 0), ("clean", 40)):  # 40 of 65535: a sixth of a level
        deep = np.minimum(rgb * 257 + shift, 65535).astype(np.uint16)
        cv2.imwrite(str(pairs / side / "p1.png"), cv2.cvtColor(deep, cv2.COLOR_RGB2BGR))
    with caplog.at_level(logging.WARNING):
        res = E.evaluate("identity", pairs)
    assert ("1 pair holds 16-bit images (p1.png): scored at 8 bits, as every image here "
            "is") in caplog.text
    got = {s.name: s.psnr_y for s in res.images}
    assert got["p1.png"] == 100.0, got  # what it says: the 8-bit images are alike


def test_a_pair_with_transparent_pixels_is_said_to_be_scored_without_alpha(pairs, caplog):
    """The alpha channel was dropped in silence: hidden pixels' colours are scored. An alpha
    channel that is opaque everywhere changes nothing and is not mentioned."""
    import logging

    for name, hole in (("p1.png", True), ("p2.png", False)):
        path = pairs / "clean" / name
        rgba = np.asarray(Image.open(path).convert("RGBA")).copy()
        if hole:
            rgba[:4, :4, 3] = 0
        Image.fromarray(rgba).save(path)
    with caplog.at_level(logging.WARNING):
        res = E.evaluate("identity", pairs)
    assert ("1 pair holds transparent pixels (p1.png): the alpha channel is ignored"
            in caplog.text), caplog.text
    assert "p2.png" not in caplog.text
    assert res.count == len(list((pairs / "rainy").iterdir()))


def test_synth_pairs(clean_dir, tmp_path):
    n = E.synth_pairs(clean_dir, tmp_path / "s", preset="light", count=6, seed=3)
    assert n == 6
    found = find_pairs(tmp_path / "s")
    assert len(found) == 6
    names = sorted(p.name for p in found)
    assert names[:2] == ["p0.png", "p0_1.png"]
    E.synth_pairs(clean_dir, tmp_path / "t", preset="light", count=6, seed=3)
    for p in found:  # same seed, same pairs
        a = np.asarray(Image.open(p.rainy))
        b = np.asarray(Image.open(tmp_path / "t" / "rainy" / p.name))
        assert np.array_equal(a, b)
    r = np.asarray(Image.open(found[0].rainy)).astype(int)
    c = np.asarray(Image.open(found[0].clean)).astype(int)
    assert (r - c).max() > 20  # there is rain


def test_synth_skips_an_unreadable_photo(clean_dir, tmp_path):
    """One damaged file among the photos is reported and skipped, not fatal."""
    (clean_dir / "a_broken.jpg").write_text("not an image")  # sorted first
    skipped: list[tuple[Path, str]] = []
    n = E.synth_pairs(clean_dir, tmp_path / "s", seed=1, on_skip=lambda p, why: skipped.append(
        (p, why)))
    assert n == 4  # one pair per readable photo
    assert [p.name for p, _ in skipped] == ["a_broken.jpg"] and "cannot read" in skipped[0][1]
    assert sorted(p.name for p in find_pairs(tmp_path / "s")) == [f"p{i}.png" for i in range(4)]
    n = E.synth_pairs(clean_dir, tmp_path / "c", count=6, on_skip=lambda p, why: None)
    assert n == 6 and len(find_pairs(tmp_path / "c")) == 6  # reuse cycles over readable ones
    # the same command with overwrite was refused: the names were planned as if every photo
    # read, and the skipped one's moved the rest on (p0_1, p1_1 unplanned; an audit)
    before = sorted(p.name for p in (tmp_path / "c" / "rainy").iterdir())
    assert E.synth_pairs(clean_dir, tmp_path / "c", count=6, on_skip=lambda p, why: None,
                         overwrite=True) == 6
    assert sorted(p.name for p in (tmp_path / "c" / "rainy").iterdir()) == before
    with pytest.raises(ValueError, match=r"holds 1 image name\(s\)"):
        E.synth_pairs(clean_dir, tmp_path / "c", count=5, on_skip=lambda p, why: None,
                      overwrite=True)  # a smaller set is still refused
    # a photo that read before and no longer does: its old pairs would stay (a review)
    (clean_dir / "p1.png").write_text("damaged since")
    with pytest.raises(ValueError, match=r"would not replace \(p1.png, p1_1.png\)"):
        E.synth_pairs(clean_dir, tmp_path / "c", count=6, on_skip=lambda p, why: None,
                      overwrite=True)
    for p in clean_dir.iterdir():  # none reads now: said so, not "would not replace"
        p.write_text("damaged since")
    with pytest.raises(E.DataError, match=r"none of the \d+ images could be read"):
        E.synth_pairs(clean_dir, tmp_path / "c", count=6, on_skip=lambda p, why: None,
                      overwrite=True)


def test_synth_over_a_pair_set_says_its_rainy_images_get_more_rain(pairs, tmp_path, caplog):
    """`derain synth rain100l` rained on rain100l's rainy images without a word (audit)."""
    E.synth_pairs(pairs, tmp_path / "s", count=1)
    assert "holds a set of 4 pairs (as derain eval reads it)" in caplog.text
    caplog.clear()
    E.synth_pairs(pairs / "clean", tmp_path / "t", count=1)
    assert "holds a set" not in caplog.text
    flat = tmp_path / "flat"  # Rain100L's release layout: rain-N and norain-N side by side
    flat.mkdir()
    for p in sorted((pairs / "rainy").iterdir())[:2]:
        (flat / f"rain-{p.stem[1:]}.png").write_bytes(p.read_bytes())
        (flat / f"norain-{p.stem[1:]}.png").write_bytes((pairs / "clean" / p.name).read_bytes())
    E.synth_pairs(flat, tmp_path / "u", count=1)
    assert "holds a set of 2 pairs" in caplog.text
    sides = tmp_path / "sides"  # Rainy/ + Clean/ whose names do not pair: still rain on rain
    (sides / "Rainy").mkdir(parents=True)
    (sides / "Clean").mkdir()
    (sides / "Rainy" / "a.png").write_bytes((pairs / "rainy" / "p0.png").read_bytes())
    (sides / "Clean" / "b.png").write_bytes((pairs / "clean" / "p1.png").read_bytes())
    E.synth_pairs(sides, tmp_path / "v", count=1)
    assert "holds a set of pairs' folders" in caplog.text
    caplog.clear()  # empty side folders beside one's photos hold no pairs: nothing said
    photos = tmp_path / "photos"
    (photos / "rainy").mkdir(parents=True)
    (photos / "clean").mkdir()
    (photos / "a.png").write_bytes((pairs / "clean" / "p0.png").read_bytes())
    E.synth_pairs(photos, tmp_path / "w", count=1)
    assert "holds a set" not in caplog.text


def test_synth_skips_a_photo_too_small_to_score(tmp_path):
    """A 12x9 photo made a pair that eval then refused, and with it the whole set (audit)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)).save(photos / "a.png")
    Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(photos / "b.png")
    skipped: list[str] = []
    n = E.synth_pairs(photos, tmp_path / "s", on_skip=lambda p, why: skipped.append(why))
    assert n == 1 and len(skipped) == 1 and "12x9 is too small for a pair that eval" in skipped[0]
    assert E.evaluate("identity", tmp_path / "s").count == 1


def test_synth_fails_clearly_when_no_photo_is_readable(tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_text("not an image")
    with pytest.raises(E.DataError, match=r"none of the 1 images could be read"):
        E.synth_pairs(tmp_path / "bad", tmp_path / "out")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: ") and "x.png" in err
    with pytest.raises(E.DataError, match=r"none of the 1 images could be read"):
        E.synth_pairs(tmp_path / "bad", tmp_path / "out" / "deep", count=3)
    assert not (tmp_path / "out").exists()  # its empty rainy/ and clean/ were left (audit)


def test_synth_refuses_an_output_that_holds_pairs(clean_dir, tmp_path):
    E.synth_pairs(clean_dir, tmp_path / "s", preset="light", count=2)
    before = (tmp_path / "s" / "rainy" / "p0.png").read_bytes()
    with pytest.raises(ValueError, match=r"already holds pairs \(rainy/ 2 images and clean/ 2 "
                                         r"images\).*--overwrite"):
        E.synth_pairs(clean_dir, tmp_path / "s", preset="heavy", count=2)
    assert (tmp_path / "s" / "rainy" / "p0.png").read_bytes() == before
    assert E.synth_pairs(clean_dir, tmp_path / "s", preset="heavy", count=2, overwrite=True) == 2
    assert (tmp_path / "s" / "rainy" / "p0.png").read_bytes() != before
    (tmp_path / "e" / "rainy").mkdir(parents=True)  # empty folders are fine
    assert E.synth_pairs(clean_dir, tmp_path / "e", count=1) == 1


def test_a_synth_killed_midway_is_named_and_its_leftovers_swept(clean_dir, tmp_path):
    """kill -9 between a pair's two writes left a clean image alone and a temporary file:
    the rerun's refusal named neither, and the temporary stayed for an hour (an audit)."""
    E.synth_pairs(clean_dir, tmp_path / "s", preset="light", count=2)
    (tmp_path / "s" / "rainy" / "p1.png").unlink()
    tmp = tmp_path / "s" / "rainy" / ".derain-x1.tmp"
    tmp.write_bytes(b"part")  # seconds old, as a rerun right after the kill finds it
    with pytest.raises(ValueError, match=r"1 of them without a partner \(clean/p1: a run "
                                         r"stopped midway; the same command with --overwrite"):
        E.synth_pairs(clean_dir, tmp_path / "s", preset="light", count=2)
    assert tmp.exists()  # refused before the folder was held: nothing touched
    before = (tmp_path / "s" / "clean" / "p1.png").read_bytes()
    assert E.synth_pairs(clean_dir, tmp_path / "s", preset="light", count=2,
                         overwrite=True) == 2
    assert not tmp.exists() and (tmp_path / "s" / "rainy" / "p1.png").exists()
    assert (tmp_path / "s" / "clean" / "p1.png").read_bytes() == before  # the same pair
    # rainy/ and clean/ one folder (a link): every pair was lost (a review)
    (tmp_path / "one" / "clean").mkdir(parents=True)
    (tmp_path / "one" / "rainy").symlink_to("clean")
    with pytest.raises(ValueError, match="are one folder; the pairs need two"):
        E.synth_pairs(clean_dir, tmp_path / "one", count=1)
    # a set whose names pair by another rule is whole, not a killed run's (a review)
    for side, name in (("rainy", "rain-001.png"), ("clean", "norain-001.png")):
        (tmp_path / "r100" / side).mkdir(parents=True)
        shutil.copy(tmp_path / "s" / "clean" / "p1.png", tmp_path / "r100" / side / name)
    with pytest.raises(ValueError, match="already holds pairs") as info:
        E.synth_pairs(clean_dir, tmp_path / "r100", preset="light", count=2)
    assert "partner" not in str(info.value)
    # a derain writing into a pair folder holds it: its temporaries are not swept under it
    from derain_cli.fileio import hold_folders

    with hold_folders([tmp_path / "s" / "rainy"], shared=True):
        with pytest.raises(ValueError, match="in use by another derain process"):
            E.synth_pairs(clean_dir, tmp_path / "s", preset="light", count=2, overwrite=True)


def test_the_command_line_is_spared_the_python_asides(clean_dir, pairs, tmp_path):
    """`derain synth` told a command-line user to pass "overwrite=True in Python" (an
    audit); the library's own message keeps its words for Python callers."""
    from derain_cli.cli import command_line_words

    E.synth_pairs(clean_dir, tmp_path / "s", count=1)
    r = CliRunner().invoke(_app(), ["synth", str(clean_dir), str(tmp_path / "s")])
    err = " ".join(r.stderr.split())
    assert r.exit_code == 2 and "or pass --overwrite to replace pairs" in err, err
    assert "in Python" not in err
    (pairs / "rainy" / "extra.png").write_bytes((pairs / "rainy" / "p0.png").read_bytes())
    r = CliRunner().invoke(_app(), ["eval", str(pairs), "-m", "identity"])
    err = " ".join(r.stderr.split())
    assert "rename them to match. " in err + " " and "in Python" not in err, err
    assert command_line_words("a (b= in Python), c; in Python, d(x). e") == "a, c. e"


def test_synth_overwrite_compares_whole_file_names(clean_dir, tmp_path):
    """An older a.jpg was taken as replaced by the new a.png, and stayed unpaired: a set
    eval then refused (an audit)."""
    E.synth_pairs(clean_dir, tmp_path / "s", count=4, seed=1)
    Image.open(tmp_path / "s" / "rainy" / "p0.png").save(tmp_path / "s" / "rainy" / "p0.jpg")
    with pytest.raises(ValueError, match=r"holds 1 image name\(s\) .*\(p0\.jpg\)"):
        E.synth_pairs(clean_dir, tmp_path / "s", count=4, seed=1, overwrite=True)


def test_synth_takes_back_its_folders_when_stopped_before_a_pair(clean_dir, tmp_path,
                                                                  monkeypatch):
    """A Ctrl-C before the first pair left the output folders it made, empty (an audit)."""
    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(E, "_write_pair", stop)
    with pytest.raises(KeyboardInterrupt):
        E.synth_pairs(clean_dir, tmp_path / "a" / "b", count=2)
    assert not (tmp_path / "a").exists()


def test_a_huge_synth_count_plans_no_names_in_an_empty_folder(clean_dir, tmp_path,
                                                              monkeypatch):
    """A set of --count names was built before the first pair, even into an empty folder:
    31 s and a MemoryError for --count 100000000 (an audit)."""
    def planned(*a, **k):
        raise AssertionError("names planned")

    monkeypatch.setattr(E, "_planned_names", planned)
    assert E.synth_pairs(clean_dir, tmp_path / "s", count=2) == 2
    assert E.synth_pairs(clean_dir, tmp_path / "s2", count=1, overwrite=True) == 1


def test_synth_overwrite_never_leaves_an_older_set_mixed_in(clean_dir, tmp_path):
    """--overwrite with a smaller count replaced 3 pairs and kept 7 older ones (audit)."""
    E.synth_pairs(clean_dir, tmp_path / "s", count=4, seed=1)
    with pytest.raises(ValueError, match=r"holds 2 image name\(s\)"):
        E.synth_pairs(clean_dir, tmp_path / "s", preset="light", count=2, overwrite=True)
    assert len(list((tmp_path / "s" / "rainy").iterdir())) == 4
    assert E.synth_pairs(clean_dir, tmp_path / "s", count=4, seed=2, overwrite=True) == 4
    # beside another layout's pairs, which later reads would refuse as ambiguous
    (tmp_path / "o" / "rain").mkdir(parents=True)
    (tmp_path / "o" / "norain").mkdir()
    with pytest.raises(ValueError, match=r"holds another set of pairs \(rain/ \+ norain/\)"):
        E.synth_pairs(clean_dir, tmp_path / "o", count=1)
    # in any case, as the readers match folder names (Rain/ + NoRain/, and synth's own
    # layout as Rainy/ + Clean/, got a second set written beside: a review)
    for rainy, clean in (("Rain", "NoRain"), ("Rainy", "Clean")):
        (tmp_path / rainy / rainy).mkdir(parents=True)
        (tmp_path / rainy / clean).mkdir()
        with pytest.raises(ValueError, match=f"holds another set of pairs \\({rainy}/ \\+ "
                                             f"{clean}/\\)"):
            E.synth_pairs(clean_dir, tmp_path / rainy, count=1)
        assert not (tmp_path / rainy / "rainy").exists()


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_synth_seed_is_32_bit(clean_dir, tmp_path, seed):
    """-1 gave the same rain as 4294967295 (taken modulo 2**32)."""
    with pytest.raises(ValueError, match=r"seed must be 0 to 4294967295"):
        E.synth_pairs(clean_dir, tmp_path / "s", count=1, seed=seed)
    app = typer.Typer()
    app.command()(synth_cmd)
    r = CliRunner().invoke(app, [str(clean_dir), "-o", str(tmp_path / "s"), "--seed", str(seed)])
    assert r.exit_code == 2


@pytest.mark.parametrize("count", [0, -3])
def test_synth_count_must_be_at_least_one(clean_dir, tmp_path, count):
    with pytest.raises(ValueError, match=r"^count must be at least 1$"):
        E.synth_pairs(clean_dir, tmp_path / "s", count=count)
    assert not (tmp_path / "s").exists()


def test_synth_unknown_preset_is_refused_before_any_work(clean_dir, tmp_path):
    with pytest.raises(ValueError,
                       match=r"'bogus'.*light, medium, heavy, storm, veiled, slanted, mixed"):
        E.synth_pairs(clean_dir, tmp_path / "s", preset="bogus")
    assert not (tmp_path / "s").exists()


def test_synth_takes_a_preset_mixture(clean_dir, tmp_path):
    assert E.synth_pairs(clean_dir, tmp_path / "s", preset="light,heavy", count=3, seed=1) == 3
    with pytest.raises(ValueError, match=r"'bogus' in 'light,bogus'"):
        E.synth_pairs(clean_dir, tmp_path / "t", preset="light,bogus")
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("limit", [0, -2])
def test_evaluate_limit_must_be_at_least_one(pairs, limit):
    """0 used to score every pair and -2 all but the last two."""
    with pytest.raises(ValueError, match=r"limit must be at least 1"):
        E.evaluate("identity", pairs, limit=limit)
    assert E.evaluate("identity", pairs, limit=1).count == 1


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("eval")(eval_cmd)
    app.command("synth")(synth_cmd)
    return app


def test_synth_progress_counts_to_the_readable_photos(clean_dir, tmp_path):
    """An unreadable photo after the first moved synth's total down: its bar stopped at
    4/5 and its log's closing count never came (an audit)."""
    (clean_dir / "p1_broken.jpg").write_text("not an image")  # sorted among the others
    r = CliRunner().invoke(_app(), ["synth", str(clean_dir), str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    assert "pairs 4/4 elapsed" in r.stderr and "p1_broken.jpg" in r.stderr, r.stderr


def test_cli_eval_and_synth(clean_dir, tmp_path):
    runner = CliRunner()
    r = runner.invoke(_app(), ["synth", str(clean_dir), str(tmp_path / "p"), "--count", "2"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(_app(), ["eval", str(tmp_path / "p"), "--model", "identity", "-q"])
    assert r.exit_code == 0 and "pairs 2/2" not in r.stderr, r.output  # (-q was refused)
    assert r.stdout.startswith("identity on p: 2 images, PSNR-Y"), r.stdout
    r = runner.invoke(_app(), ["eval", str(tmp_path / "p"), "--model", "identity", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["count"] == 2 and d["model"] == "identity" and len(d["images"]) == 2
    assert (d["interrupted"], d["total"], d["error"]) == (False, 2, None)  # keys as stopped
    keys = set(d)
    r = runner.invoke(_app(), ["eval", str(clean_dir), "--model", "identity"])
    assert r.exit_code == 2  # not a pairs folder: a usage error, one line, no traceback
    assert "Traceback" not in r.output
    damaged = sorted((tmp_path / "p" / "clean").iterdir())[0]
    damaged.write_bytes(damaged.read_bytes()[:40])
    r = runner.invoke(_app(), ["eval", str(tmp_path / "p"), "--model", "identity"])
    # the folders were right, a file in them is not: a failure (1), not a usage error (2)
    assert r.exit_code == 1 and "error:" in r.output and "Traceback" not in r.output, r.output
    # --json printed nothing on an error (an audit): its error, as the main command's
    for args, code in (([str(tmp_path / "p"), "--model", "identity"], 1),
                       ([str(clean_dir), "--model", "identity"], 2)):
        r = runner.invoke(_app(), ["eval", *args, "--json"])
        d = json.loads(r.stdout)
        assert r.exit_code == code and d["count"] == 0 and d["error"] in r.stderr, r.output
        assert set(d) == keys  # the result's keys: one parser reads both (four: an audit)


def test_cli_synth_shows_progress_unless_quiet(clean_dir, tmp_path, monkeypatch):
    """``synth --count 300`` was minutes without a word: a bar on a terminal, a line a
    minute in a log (the last one always), none with -q."""
    from derain_cli import plain_progress

    monkeypatch.setattr(plain_progress.PlainProgress, "due", lambda self: True)
    r = CliRunner().invoke(_app(), ["synth", str(clean_dir), str(tmp_path / "p"),
                                    "--count", "3"])
    assert r.exit_code == 0, r.output
    assert [ln.split(" elapsed")[0] for ln in r.stderr.splitlines()] == [
        "pairs 1/3", "pairs 2/3", "pairs 3/3"]
    r = CliRunner().invoke(_app(), ["synth", str(clean_dir), str(tmp_path / "q"),
                                    "--count", "3", "-q"])
    assert r.exit_code == 0 and r.stderr == "" and r.stdout.startswith("wrote 3 pairs")


def test_synth_interrupted_between_a_pairs_images_leaves_whole_pairs(clean_dir, tmp_path,
                                                                     monkeypatch):
    """Ctrl-C between the clean and the rainy write left a clean image alone, and eval then
    refused the set ("without a rainy partner"; an audit, 3 interrupts in 15)."""
    from derain_cli import images

    real = images.write_image  # stopped at the second pair's rainy image
    monkeypatch.setattr(images, "write_image", interrupted_at_call(real, 4))
    r = CliRunner().invoke(_app(), ["synth", str(clean_dir), str(tmp_path / "p"),
                                    "--count", "3", "-q"])
    assert r.exit_code == 130
    assert "interrupted after 1 pair, each whole" in r.stderr and "--overwrite" in r.stderr
    for side in ("rainy", "clean"):
        assert len(list((tmp_path / "p" / side).iterdir())) == 1, side
    monkeypatch.setattr(images, "write_image", real)
    assert E.evaluate("identity", tmp_path / "p").count == 1


def test_cli_synth_output_option(clean_dir, tmp_path):
    """``derain synth CLEAN -o PAIRS`` as issue 4 spells it; no output or two different
    outputs are usage errors."""
    runner = CliRunner()
    r = runner.invoke(_app(), ["synth", str(clean_dir), "-o", str(tmp_path / "q"),
                               "--count", "1", "--preset", "heavy"])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "q" / "rainy").iterdir())) == 1
    assert len(list((tmp_path / "q" / "clean").iterdir())) == 1
    r = runner.invoke(_app(), ["synth", str(clean_dir)])
    assert r.exit_code == 2 and "derain synth CLEAN PAIRS_DIR, or -o PAIRS_DIR" in r.output
    r = runner.invoke(_app(), ["synth", str(clean_dir), str(tmp_path / "a"), "-o",
                               str(tmp_path / "b")])
    assert r.exit_code == 2 and "two outputs" in r.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_synth_errors_are_one_line_usage_errors(clean_dir, tmp_path):
    """A damaged photo is a warning; an occupied output, a bad count or preset exit 2."""
    runner = CliRunner()
    (clean_dir / "a_broken.jpg").write_text("not an image")
    r = runner.invoke(_app(), ["synth", str(clean_dir), "-o", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    warnings = [ln for ln in r.output.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "a_broken.jpg" in warnings[0], r.output
    assert "wrote 4 pairs" in r.output
    # (the count check may move to typer's min=1: either wording is fine)
    for extra, texts in (([], ["already holds pairs"]),
                         (["--count", "0"], ["at least 1", "x>=1", "greater than or equal to 1"]),
                         (["--preset", "bogus"], ["unknown rain preset"])):
        r = runner.invoke(_app(), ["synth", str(clean_dir), "-o", str(tmp_path / "p"), *extra])
        assert r.exit_code == 2 and any(t in r.output for t in texts), (extra, r.output)
        assert "Traceback" not in r.output


def test_cli_eval_precision_is_used_and_reported(pairs, tiny_weights):
    """--precision reaches the Derainer, and the JSON says which engine ran."""
    runner = CliRunner()
    r = runner.invoke(_app(), ["eval", str(pairs), "--weights", str(tiny_weights), "--json",
                               "--precision", "fp32", "--backend", "torch", "--limit", "1"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["engine"] == "torch/fp32"
    r = runner.invoke(_app(), ["eval", str(pairs), "--weights", str(tiny_weights),
                               "--precision", "int8"])
    assert r.exit_code != 0 and "bundled weights only" in r.output
    assert "Traceback" not in r.output


def test_synth_gives_every_photo_its_own_pair(clean_dir, tmp_path):
    """x.png beside x.jpg, and sub/p0.jpg beside p0.jpg, used to share one output name: the
    second pair overwrote the first while the count said both were written (audit)."""
    rng = np.random.default_rng(3)
    Image.fromarray(smooth_photo(rng, 40, 52)).save(clean_dir / "p0.png")
    (clean_dir / "sub").mkdir()
    Image.fromarray(smooth_photo(rng, 40, 52)).save(clean_dir / "sub" / "p0.jpg")
    n = E.synth_pairs(clean_dir, tmp_path / "o", preset="light")
    assert n == 6
    for side in ("rainy", "clean"):
        names = sorted(p.name for p in (tmp_path / "o" / side).iterdir())
        assert len(names) == 6, names
    assert {"p0_jpg.png", "p0_png.png", "sub_p0.png"} <= set(names)
    n = E.synth_pairs(clean_dir, tmp_path / "o2", preset="light", count=13)
    assert len(list((tmp_path / "o2" / "rainy").iterdir())) == 13


def test_synth_refuses_an_output_inside_its_photo_folder(clean_dir):
    """Its pairs would be read as photos by the next synth or train --synthetic (audit)."""
    for out in (clean_dir, clean_dir / "pairs"):
        with pytest.raises(E.SynthError, match="inside the photo folder"):
            E.synth_pairs(clean_dir, out)
    assert not (clean_dir / "rainy").exists() and not (clean_dir / "pairs").exists()


def test_synth_refuses_an_output_a_link_in_its_photo_folder_reaches(clean_dir, tmp_path):
    """The photos are read through links to folders: a link in them to the output's
    folder had the second synth take the first one's pairs for photos (review)."""
    (tmp_path / "work").mkdir()
    (clean_dir / "work").symlink_to(tmp_path / "work", target_is_directory=True)
    with pytest.raises(E.SynthError, match=r"inside the photo folder .*through"):
        E.synth_pairs(clean_dir, tmp_path / "work" / "pairs")
    assert not (tmp_path / "work" / "pairs").exists()
    E.synth_pairs(clean_dir, tmp_path / "elsewhere", count=1)  # other outputs still work


@pytest.mark.parametrize("extra", [["--precision", "bogus"], ["--backend", "bogus"],
                                   ["--tile", "8"], ["--device", "bogus"],
                                   ["--ensemble", "3"]])
def test_cli_eval_bad_settings_are_usage_errors(pairs, tiny_weights, extra):
    """Exit 2 like the main command (they were exit 1 in eval, train and finetune)."""
    r = CliRunner().invoke(_app(), ["eval", str(pairs), "--weights", str(tiny_weights),
                                    "--limit", "1", *extra])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and "Traceback" not in r.output


def test_eval_scores_an_ensemble_and_names_it(pairs, tiny_weights):
    from derain_cli import Derainer
    from derain_cli.errors import OptionError

    one = E.evaluate(str(tiny_weights), pairs, device="cpu")
    four = E.evaluate(str(tiny_weights), pairs, device="cpu", ensemble=4)
    assert four.model.endswith(", ensemble of 4") and "ensemble" not in one.model
    assert four.psnr_y != one.psnr_y  # the passes were averaged, not one of them scored
    d = Derainer(weights=tiny_weights, device="cpu", ensemble=4)
    assert E.evaluate(d, pairs).psnr_y == pytest.approx(four.psnr_y, abs=1e-9)
    r = CliRunner().invoke(_app(), ["eval", str(pairs), "--weights", str(tiny_weights),
                                    "--ensemble", "4", "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert got["model"].endswith(", ensemble of 4")
    assert got["psnr_y"] == pytest.approx(four.psnr_y, abs=1e-6)
    with pytest.raises(OptionError, match="identity"):
        E.evaluate("identity", pairs, ensemble=2)
    with pytest.raises(OptionError, match="Derainer"):
        E.evaluate(d, pairs, ensemble=2)
    # engine settings beside a Derainer were ignored in silence (an audit)
    for given in ({"device": "cuda"}, {"tile": 64}, {"precision": "fp16"},
                  {"backend": "onnx"}, {"threads": 1}):
        with pytest.raises(OptionError, match=f"{next(iter(given))}=.*give them to Derainer"):
            E.evaluate(d, pairs, **given)


def test_eval_scores_part_of_the_rain_removal(pairs, tiny_weights):
    """``--strength`` as derain applies it (eval had none: which strength scores best could
    not be measured): 0 scores the rainy photos themselves, and the label says it."""
    from derain_cli import Derainer
    from derain_cli.errors import OptionError

    rainy = E.evaluate("identity", pairs, limit=2)
    none = E.evaluate(str(tiny_weights), pairs, device="cpu", strength=0.0, limit=2)
    half = E.evaluate(str(tiny_weights), pairs, device="cpu", strength=0.5, limit=2)
    full = E.evaluate(str(tiny_weights), pairs, device="cpu", limit=2)
    assert none.psnr_y == pytest.approx(rainy.psnr_y, abs=1e-9)
    assert half.psnr_y not in (pytest.approx(rainy.psnr_y), pytest.approx(full.psnr_y))
    assert half.model.endswith(", strength 0.5") and "strength" not in full.model
    d = Derainer(weights=tiny_weights, device="cpu", strength=0.5)
    assert E.evaluate(d, pairs, limit=2).psnr_y == pytest.approx(half.psnr_y, abs=1e-9)
    r = CliRunner().invoke(_app(), ["eval", str(pairs), "--weights", str(tiny_weights),
                                    "--strength", "0.5", "--device", "cpu", "--json",
                                    "--limit", "2"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["psnr_y"] == pytest.approx(half.psnr_y, abs=1e-6)
    for model, s in (("identity", 0.5), (d, 0.7), (str(tiny_weights), 1.5),
                     (str(tiny_weights), float("nan")), (str(tiny_weights), "0.5")):
        with pytest.raises(OptionError, match="strength"):
            E.evaluate(model, pairs, strength=s)
    r = CliRunner().invoke(_app(), ["eval", str(pairs), "-m", "identity", "--strength", "2"])
    assert r.exit_code == 2 and "from 0" in r.output


def test_eval_refuses_a_pass_count_before_decoding_the_pairs(pairs, monkeypatch):
    """A review: ``--ensemble 3`` without ``--weights`` and ``-m identity --ensemble 2``
    were refused only after every pair was decoded."""
    from derain_cli.errors import OptionError

    def no(*a, **k):
        raise AssertionError("pairs decoded before the options were checked")

    monkeypatch.setattr(E, "check_pairs_read", no)
    for model, n in (("semi-drdnet-tiny", 3), ("identity", 2), ("semi-drdnet-tiny", True)):
        with pytest.raises(OptionError, match="ensemble|identity"):
            E.evaluate(model, pairs, ensemble=n)
    for model, a in (("semi-drdnet-tiny", 100), ("identity", 30), ("semi-drdnet-tiny", "up"),
                     ("semi-drdnet-tiny", float("nan"))):
        with pytest.raises(OptionError, match="rain.angle"):
            E.evaluate(model, pairs, rain_angle=a)
    r = CliRunner().invoke(_app(), ["eval", str(pairs), "-m", "identity", "--ensemble", "2"])
    assert r.exit_code == 2 and r.output.startswith("error: ") and "identity" in r.output


def test_eval_names_a_pair_too_small_to_score(tmp_path):
    for side in ("rainy", "clean"):
        (tmp_path / "p" / side).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 30, 3), np.uint8)).save(tmp_path / "p" / side / "tiny.png")
    with pytest.raises(PairsError, match=r"tiny\.png: 30x8 is too small to score"):
        E.evaluate("identity", tmp_path / "p")
    for side in ("rainy", "clean"):  # 11 px, SSIM's window: scored (a mutation audit)
        Image.fromarray(np.full((11, 30, 3), 90 if side == "rainy" else 80, np.uint8)).save(
            tmp_path / "p" / side / "tiny.png")
    assert E.evaluate("identity", tmp_path / "p").images[0].psnr_y < 40


def test_synth_never_writes_over_its_photos_or_its_own_pairs(tmp_path):
    """`derain synth rainy .` put the pairs' rainy/ onto the photo folder and --overwrite
    replaced the photos; a photo named x_1 shared its name with x's second pair (audit)."""
    rng = np.random.default_rng(4)
    photos = tmp_path / "rainy"
    photos.mkdir()
    for stem in ("x", "x_1"):
        Image.fromarray(smooth_photo(rng, 40, 52)).save(photos / f"{stem}.png")
    for out in (tmp_path, tmp_path / "rainy" / ".."):
        with pytest.raises(E.SynthError, match="the photos would be overwritten"):
            E.synth_pairs(photos, out, overwrite=True)
    linked = tmp_path / "linked"  # rainy/ a link to the photo folder (audit)
    linked.mkdir()
    (linked / "rainy").symlink_to(photos)
    with pytest.raises(E.SynthError, match="the photos would be overwritten"):
        E.synth_pairs(photos, linked, overwrite=True)
    n = E.synth_pairs(photos, tmp_path / "o", count=4)
    assert n == 4 and len(list((tmp_path / "o" / "rainy").iterdir())) == 4


def test_identity_save_writes_the_inputs_as_scored(tmp_path):
    """`eval --model identity --save DIR` wrote only scores.csv (audit); one image: 'image'."""
    from derain_cli.evaluate import evaluate

    pairs = tmp_path / "pairs"
    for sub in ("rainy", "clean"):
        (pairs / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    Image.fromarray(img).save(pairs / "rainy" / "a.png")
    Image.fromarray(255 - img).save(pairs / "clean" / "a.png")
    res = evaluate("identity", pairs, save_dir=tmp_path / "out")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "a.png")), img)
    assert ": 1 image, " in res.summary()


def _one_identical_pair(pairs: Path) -> Path:
    """A pairs folder of one 32x40 noise image that is its own ground truth."""
    for sub in ("rainy", "clean"):
        (pairs / sub).mkdir(parents=True)
    img = np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    Image.fromarray(img).save(pairs / "rainy" / "a.png")
    Image.fromarray(img).save(pairs / "clean" / "a.png")
    return pairs


def test_scores_of_a_weights_file_name_the_file(tmp_path, tiny_weights):
    """The summary, JSON and report said only 'model.safetensors' or the architecture's
    name, so every run's scores looked alike (audit)."""
    from derain_cli.enhancer import Derainer
    from derain_cli.evaluate import evaluate

    pairs = _one_identical_pair(tmp_path / "pairs")
    d = Derainer(weights=tiny_weights, device="cpu")
    res = evaluate(d, pairs, report=tmp_path / "r.html")
    assert res.model == f"{tiny_weights} [{d.model_name}]"
    assert str(tiny_weights) in (tmp_path / "r.html").read_text()
    assert evaluate(str(tiny_weights), pairs).model == res.model  # a path given as such
    assert evaluate(Derainer(model="semi-drdnet-tiny", threads=1), pairs).model == (
        "semi-drdnet-tiny")


def test_a_model_argument_with_a_path_separator_is_a_file(tmp_path, tiny_weights,
                                                          monkeypatch):
    """`eval -m runs/x/model.ckpt` was taken for a model name ("unknown model"), and a
    folder named like a model for a weights file; grow and distill decided otherwise."""
    import shutil

    from derain_cli.evaluate import evaluate
    from derain_cli.weights import WeightsError

    pairs = _one_identical_pair(tmp_path / "pairs")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsError, match="no such weights file"):
        evaluate("runs/missing", pairs)
    (tmp_path / "semi-drdnet-tiny").mkdir()  # not a weights file: the model of that name
    assert evaluate("semi-drdnet-tiny", pairs).model == "semi-drdnet-tiny"
    shutil.copy(tiny_weights, "tiny")  # a suffix-less file is still the file
    assert evaluate("tiny", pairs).model.startswith("tiny [")


def test_eval_never_writes_over_the_pairs_and_asks_before_replacing(pairs, tmp_path):
    """`eval --save PAIRS/clean` replaced the ground truth with the model's outputs, with
    exit 0 (audit): every output is checked before any work."""
    from derain_cli.errors import OptionError

    before = {p: p.read_bytes() for p in sorted((pairs / "clean").iterdir())}
    with pytest.raises(OptionError, match="inside a folder of the pairs being scored"):
        E.evaluate("identity", pairs, save_dir=pairs / "clean", overwrite=True)
    with pytest.raises(OptionError, match="one of the pairs being scored"):
        E.evaluate("identity", pairs, csv_path=pairs / "rainy" / "p0.png", overwrite=True)
    with pytest.raises(OptionError, match="inside a folder of the pairs"):  # JPEG pairs'
        E.evaluate("identity", pairs, save_dir=pairs / "clean" / "out")  # .png: no clash
    assert {p: p.read_bytes() for p in sorted((pairs / "clean").iterdir())} == before
    out = tmp_path / "out"
    E.evaluate("identity", pairs, save_dir=out)
    with pytest.raises(OptionError, match=r"p0.png, .*p1.png, .*p2.png and 2 more exist; "
                                          r"pass --overwrite to replace them"):
        E.evaluate("identity", pairs, save_dir=out)  # (all at once: one at a time before)
    assert E.evaluate("identity", pairs, save_dir=out, overwrite=True).count == 4
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(OptionError, match="is a folder"):  # was an errno after the work
        E.evaluate("identity", pairs, csv_path=tmp_path / "d.csv")
    with pytest.raises(OptionError, match="would both be written"):
        E.evaluate("identity", pairs, report=tmp_path / "r.html", csv_path=tmp_path / "r.html")
    r = CliRunner().invoke(_app(), ["eval", str(pairs), "-m", "identity", "--save",
                                 str(pairs / "clean")])
    assert r.exit_code == 2 and "of the pairs being scored" in r.output


def test_synth_into_a_file_says_so_before_any_work(clean_dir, tmp_path):
    """`synth PHOTOS afile` said "[Errno 20] Not a directory: 'afile/rainy'" (audit)."""
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(E.SynthError, match=r"cannot write the pairs to .*afile.rainy"):
        E.synth_pairs(clean_dir, f, count=1)
    r = CliRunner().invoke(_app(), ["synth", str(clean_dir), "-o", str(tmp_path / "one"),
                                    "--count", "1"])
    assert r.exit_code == 0 and "wrote 1 pair to" in r.output, r.output


def test_pairs_of_different_sizes_are_found_before_any_work(tmp_path, monkeypatch):
    """A size mismatch was found only when the loop reached the pair (audit); an EXIF
    rotation that makes the sides agree is not a mismatch."""
    pairs = tmp_path / "pairs"
    for sub in ("rainy", "clean"):
        (pairs / sub).mkdir(parents=True)
    for i, size in enumerate([(40, 30), (40, 30), (30, 40)]):
        Image.new("RGB", (40, 30)).save(pairs / "rainy" / f"p{i}.png")
        Image.new("RGB", size).save(pairs / "clean" / f"p{i}.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: stored 30x40, upright 40x30
    Image.new("RGB", (30, 40)).save(pairs / "rainy" / "p3.jpg", exif=exif)
    Image.new("RGB", (40, 30)).save(pairs / "clean" / "p3.png")
    scored = []
    monkeypatch.setattr(E, "_runner", lambda *a: scored.append(1) or (None, "x", None))
    with pytest.raises(PairsError, match=r"1 pair of different sizes: p2.png \(40x30 rainy, "
                                         r"30x40 clean\)"):
        E.evaluate("identity", pairs)
    assert scored == []
    (pairs / "clean" / "p2.png").unlink()
    (pairs / "rainy" / "p2.png").unlink()
    monkeypatch.undo()
    assert E.evaluate("identity", pairs).count == 3


def test_a_bad_model_leaves_no_output_folders(pairs, tmp_path):
    """check_outputs made --save's folder before the model was looked up (review)."""
    with pytest.raises(KeyError):
        E.evaluate("no-such-model", pairs, save_dir=tmp_path / "out", report=tmp_path / "r"
                   / "r.html")
    assert not (tmp_path / "out").exists() and not (tmp_path / "r").exists()
    f = tmp_path / "file"
    f.write_text("x")
    from derain_cli.errors import OptionError

    with pytest.raises(OptionError, match="cannot write to .*not a folder"):
        E.evaluate("identity", pairs, save_dir=f / "out")


@pytest.mark.parametrize("suffix", [".tif", ".jpg", ".png"])
def test_upright_size_reads_a_turned_header_once(tmp_path, suffix):
    """A photo stored 56x40 with EXIF orientation 6 is 40 wide and 56 high upright, in
    every format (Pillow 13 already swaps a TIFF's size; a second swap made TIFF pairs
    fail the size check against the same photo saved upright)."""
    im = Image.fromarray(np.zeros((40, 56, 3), np.uint8))
    exif = im.getexif()
    exif[274] = 6
    im.save(tmp_path / f"turned{suffix}", exif=exif.tobytes())
    assert E._upright_size(tmp_path / f"turned{suffix}") == (40, 56)


def test_report_json_cannot_end_its_script_block():
    """A name holding ``</script>`` must not end the summary block early; the JSON stays
    valid and says the same."""
    value = {"name": "a</script><b>&\"x"}
    text = E._script_json(value)
    assert "</" not in text and json.loads(text) == value


def test_cli_identity_with_weights_is_refused_as_such(pairs, tiny_weights):
    """It said "unknown model 'identity'", though -m identity works without --weights."""
    from derain_cli.cli import app

    r = CliRunner().invoke(app, ["eval", "-m", "identity", "--weights", str(tiny_weights),
                                 str(pairs)])
    assert r.exit_code == 2, r.output
    assert "takes no --weights" in " ".join(r.output.replace("│", " ").split()), r.output


def _pair_set(root: Path, names: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    for name, (rainy, clean) in names.items():
        for side, img in (("rainy", rainy), ("clean", clean)):
            (root / side).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / side / name)
    return root


def test_an_identical_pair_keeps_the_mean_finite_and_the_json_valid(tmp_path, monkeypatch):
    """One rain-free pair made the set's PSNR inf and --json print "Infinity" (audit)."""
    rng = np.random.default_rng(3)
    a, b = smooth_photo(rng, 40, 52), smooth_photo(rng, 40, 52)
    root = _pair_set(tmp_path / "p", {"1.png": (a, a), "2.png": (b, 255 - b)})
    res = E.evaluate("identity", root)
    assert res.images[0].psnr_y == E.PSNR_CAP == res.images[0].psnr_rgb
    assert np.isfinite(res.psnr_y)
    app = typer.Typer()
    app.command()(eval_cmd)
    monkeypatch.chdir(root)  # "eval ." named the set ""
    r = CliRunner().invoke(app, [".", "-m", "identity", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout, parse_constant=pytest.fail)["psnr_y"] == res.psnr_y
    assert res.summary().startswith("identity on p: 2 images")


def test_save_names_pairs_that_share_a_stem_apart(tmp_path):
    rng = np.random.default_rng(4)
    a, b = smooth_photo(rng, 40, 52), smooth_photo(rng, 40, 52)
    root = _pair_set(tmp_path / "p", {"1.png": (a, b), "1.bmp": (b, a)})
    res = E.evaluate("identity", root, save_dir=tmp_path / "out")
    assert res.count == 2
    assert sorted(f.name for f in (tmp_path / "out").glob("*.png")) == ["1_bmp.png", "1_png.png"]
    rows = list(csv.reader((tmp_path / "out" / "scores.csv").open()))
    assert rows[-1][0] == "mean"
    assert float(rows[-1][4]) == pytest.approx(np.mean([float(r[4]) for r in rows[1:-1]]),
                                               abs=2e-3)  # a mean, not the total


def test_a_damaged_pair_is_refused_before_the_model_runs(tmp_path, pairs):
    (pairs / "rainy" / "p3.png").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="p3.png"):
        E.evaluate(SemiDRDNet(SemiDRDNetConfig(width=8, rain_blocks=1, detail_blocks=1,
                                               se_reduction=4)), pairs,
                   save_dir=tmp_path / "out")
    assert not any((tmp_path / "out").glob("*.png"))  # nothing saved to block the rerun


def test_report_links_survive_odd_file_names(tmp_path, pairs):
    report = tmp_path / "run#1 50%.html"
    E.evaluate("identity", pairs, report=report)
    page = report.read_text()
    assert 'src="run%231%2050%25_files/0000_rainy.jpg"' in page
    assert (tmp_path / "run#1 50%_files" / "0000_rainy.jpg").is_file()


def test_the_report_keeps_what_its_files_folder_held_and_writes_through_no_link(tmp_path,
                                                                                pairs):
    """Security audit: without --overwrite a report replaced the user's files in an existing
    <stem>_files/ folder, deleted others named like thumbnails, and wrote through links."""
    from derain_cli.errors import OptionError

    report = tmp_path / "r.html"
    thumbs = tmp_path / "r_files"
    thumbs.mkdir()
    (thumbs / "0000_out.jpg").write_text("my notes")
    (thumbs / "0007_clean.jpg").write_text("keep me")
    with pytest.raises(OptionError, match="0000_out.jpg exists; pass --overwrite"):
        E.evaluate("identity", pairs, report=report)
    assert (thumbs / "0000_out.jpg").read_text() == "my notes" and not report.exists()
    (thumbs / "0000_out.jpg").unlink()
    E.evaluate("identity", pairs, report=report)  # nothing of ours there: not dropped
    assert (thumbs / "0007_clean.jpg").read_text() == "keep me"
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    (thumbs / "0001_rainy.jpg").unlink()
    (thumbs / "0001_rainy.jpg").symlink_to(victim)
    E.evaluate("identity", pairs, report=report, overwrite=True)
    assert victim.read_text() == "mine" and not (thumbs / "0001_rainy.jpg").is_symlink()
    assert not (thumbs / "0007_clean.jpg").exists()  # --overwrite: the stale one goes


def test_csv_names_cannot_become_spreadsheet_formulas():
    assert E._csv_text('=HYPERLINK("http://x","y").png') == '\'=HYPERLINK("http://x","y").png'
    assert E._csv_text("@a.png") == "'@a.png" and E._csv_text("rain-1.png") == "rain-1.png"


def test_pairs_are_decoded_once_when_they_fit_and_score_alike_when_not(pairs, monkeypatch):
    """eval decoded every pair twice (the check before the model runs, then the scoring);
    a set of ordinary size is now kept from the check. Past KEEP_DECODED_BYTES the pairs
    are decoded again, with the same scores."""
    calls = []
    real = E.load_rgb_u8

    def counting(path, depths=None, transparent=None):
        calls.append(path)
        return real(path, depths, transparent)

    monkeypatch.setattr(E, "load_rgb_u8", counting)
    kept = E.evaluate("identity", pairs)
    assert len(calls) == 2 * kept.count
    calls.clear()
    monkeypatch.setattr(E, "KEEP_DECODED_BYTES", 0)
    again = E.evaluate("identity", pairs)
    assert len(calls) == 4 * again.count
    assert [s.psnr_y for s in again.images] == [s.psnr_y for s in kept.images]


def test_names_that_are_not_utf8_reach_the_csv_and_the_report(tmp_path):
    """An audit: one file name whose bytes are not UTF-8 made eval fail after scoring every
    pair (the CSV and the page could not encode it), leaving thumbnails that blocked the
    rerun; a report whose own name was such failed at its links."""
    import os
    from urllib.parse import unquote_to_bytes

    for side in ("rainy", "clean"):
        folder = tmp_path / "pairs" / side
        folder.mkdir(parents=True)
        Image.fromarray(smooth_photo(np.random.default_rng(1), 24, 24)).save(
            folder / os.fsdecode(b"caf\xe9.png"))
    report = tmp_path / os.fsdecode(b"r\xe9.html")
    res = E.evaluate("identity", tmp_path / "pairs", report=report,
                     csv_path=tmp_path / "s.csv")
    assert res.count == 1
    assert (tmp_path / "s.csv").read_text(encoding="utf-8").splitlines()[1].startswith(
        "caf\\xe9.png,")
    # control characters escaped: an escape sequence in a name ran in the terminal of
    # whoever printed the CSV (an audit)
    for side in ("rainy", "clean"):
        (tmp_path / "pairs" / side / os.fsdecode(b"caf\xe9.png")).rename(
            tmp_path / "pairs" / side / "a\x1b]0;X\x07b.png")
    E.evaluate("identity", tmp_path / "pairs", csv_path=tmp_path / "t.csv")
    text = (tmp_path / "t.csv").read_text(encoding="utf-8")
    assert "\x1b" not in text and "a\\x1b]0;X\\x07b.png," in text
    for side in ("rainy", "clean"):  # other characters are kept (a review)
        (tmp_path / "pairs" / side / "a\x1b]0;X\x07b.png").rename(
            tmp_path / "pairs" / side / "写真\u3000001.png")
    E.evaluate("identity", tmp_path / "pairs", csv_path=tmp_path / "u.csv", overwrite=True)
    assert "写真\u3000001.png," in (tmp_path / "u.csv").read_text(encoding="utf-8")
    page = report.read_text(encoding="utf-8")
    assert "<td>caf\\xe9.png<br>" in page
    src = page.split('<img src="')[1].split('"')[0]
    assert (tmp_path / os.fsdecode(unquote_to_bytes(src))).is_file()  # the link works


def test_eval_turns_the_rain_and_says_each_turn(pairs, tiny_weights, tmp_path):
    """``rain_angle`` reaches the Derainer (the scores are those of the turned outputs) and
    each image's score, the CSV and the report say the turn; without it nothing changes."""
    from derain_cli import Derainer
    from derain_cli.errors import OptionError

    plain = E.evaluate(str(tiny_weights), pairs, device="cpu", csv_path=tmp_path / "p.csv")
    got = E.evaluate(str(tiny_weights), pairs, device="cpu", rain_angle=90,
                     report=tmp_path / "r.html")
    assert got.model.endswith(", rain turned from 90 degrees") and "turned" not in plain.model
    assert got.psnr_y != plain.psnr_y
    assert [s.rain_angle for s in got.images] == [90.0] * 4
    assert [s.rain_angle for s in plain.images] == [None] * 4
    d = Derainer(weights=tiny_weights, device="cpu", rain_angle=90)
    assert E.evaluate(d, pairs).psnr_y == pytest.approx(got.psnr_y, abs=1e-9)
    rows = list(csv.reader(open(tmp_path / "r.csv", encoding="utf-8")))
    assert rows[0][-1] == "rain_angle" and [r[-1] for r in rows[1:]] == ["90"] * 4 + [""]
    assert "rain_angle" not in open(tmp_path / "p.csv", encoding="utf-8").readline()
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert page.count("<br>rain turned from 90 degrees") == 4  # each image's turn
    r = CliRunner().invoke(_app(), ["eval", str(pairs), "--weights", str(tiny_weights),
                                    "--rain-angle", "90", "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    js = json.loads(r.stdout)
    assert js["psnr_y"] == pytest.approx(got.psnr_y, abs=1e-6) and js["rain_angle"] == 90
    assert [i["rain_angle"] for i in js["images"]] == [90] * 4
    with pytest.raises(OptionError, match="Derainer"):
        E.evaluate(d, pairs, rain_angle=45)
    bad = CliRunner().invoke(_app(), ["eval", str(pairs), "--rain-angle", "sideways"])
    assert bad.exit_code == 2 and "--rain-angle" in bad.output and "sideways" in bad.output


def test_eval_auto_records_the_turn_each_image_got(pairs, tiny_weights, monkeypatch):
    """Under ``"auto"`` each score holds the Derainer's own choice for that image (a stand-in
    choice here: turn the first image by 60 degrees, leave the rest), and the summary
    names the turned ones."""
    from derain_cli import slant

    first = E.load_rgb_u8(find_pairs(pairs)[0].rainy)

    def choose(rgb, derain):
        return (60.0 if np.array_equal(rgb, first) else 0.0), 0.0, None  # uint8, as derain

    monkeypatch.setattr(slant, "choose_angle", choose)
    got = E.evaluate(str(tiny_weights), pairs, device="cpu", rain_angle="auto")
    assert [s.rain_angle for s in got.images] == [60.0, 0.0, 0.0, 0.0]
    assert got.rain_angle == "auto" and got.model.endswith(", rain angle auto")
    fixed = E.evaluate(str(tiny_weights), pairs, device="cpu", rain_angle=60, limit=1)
    plain = E.evaluate(str(tiny_weights), pairs, device="cpu")
    assert got.images[0].psnr_y == pytest.approx(fixed.images[0].psnr_y, abs=1e-9)
    assert [s.psnr_y for s in got.images[1:]] == pytest.approx(
        [s.psnr_y for s in plain.images[1:]], abs=1e-9)
    assert got.summary().endswith(f"; rain turned on 1 of 4 ({got.images[0].name} +60)")


def test_eval_gives_the_derainer_the_samples_as_decoded(pairs, tiny_weights, monkeypatch):
    """As `derain` does: divided by 255 first, a few pixels an image came out a level apart
    from derain's own files (an audit: 1-5 of a 320 x 240 rain100l crop)."""
    from derain_cli.enhancer import Derainer

    seen = []
    real = Derainer.derain_array

    def spy(self, rgb, on_tile=None):
        seen.append(rgb.dtype)
        return real(self, rgb, on_tile)

    monkeypatch.setattr(Derainer, "derain_array", spy)
    E.evaluate(str(tiny_weights), pairs, device="cpu", limit=2)
    assert seen == [np.uint8, np.uint8]


def test_eval_summary_names_at_most_five_turns():
    images = [E.ImageScore(f"{i}.png", 30.0, 0.9, 29.0, 0.1, float(i % 2) * -50)
              for i in range(12)]
    res = E.EvalResult("m", "d", 12, 30.0, 0.9, 29.0, images, rain_angle="auto")
    assert res.turns() == ("; rain turned on 6 of 12 (1.png -50, 3.png -50, 5.png -50, "
                           "7.png -50, 9.png -50, ...)")
    assert E.EvalResult("m", "d", 12, 30.0, 0.9, 29.0, images, rain_angle=45).turns() == ""


def test_eval_names_images_too_long_to_turn_before_any_work(tmp_path, tiny_weights,
                                                            monkeypatch):
    """A fixed rain angle that one rainy image cannot take (its canvas past 4x) ended the
    evaluation at that image, without naming it (audit); now said before decoding, naming
    it. auto leaves such an image unturned: scored."""
    from derain_cli.errors import OptionError

    d = tmp_path / "photos"
    d.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(smooth_photo(rng, 20, 200)).save(d / "strip.png")
    Image.fromarray(smooth_photo(rng, 40, 52)).save(d / "square.png")
    pairs = tmp_path / "pairs"
    E.synth_pairs(d, pairs, preset="heavy", seed=0)
    real = E.check_pairs_read
    monkeypatch.setattr(E, "check_pairs_read", lambda p: pytest.fail("decoded first"))
    with pytest.raises(OptionError, match=r"turned 45 degrees, 1 rainy image would need a "
                                          r"canvas past 4 times its pixels: strip\.png "
                                          r"\(200x20: 6\.1x\)"):
        E.evaluate(str(tiny_weights), pairs, device="cpu", rain_angle=45)
    monkeypatch.setattr(E, "check_pairs_read", real)
    E.evaluate(str(tiny_weights), pairs, device="cpu", rain_angle=10)  # 1.4x: fine
    got = E.evaluate(str(tiny_weights), pairs, device="cpu", rain_angle="auto")
    assert got.count == 2


def test_eval_says_the_librarys_warnings_as_derain_does(pairs, tiny_weights):
    """A small rain angle's warning came out bare in eval (the main command writes
    "warning: ..."; audit): the subcommands route the library's log as it does."""
    r = CliRunner().invoke(_app(), ["eval", str(pairs), "--weights", str(tiny_weights),
                                    "--rain-angle", "10", "--device", "cpu", "--limit", "1"])
    assert r.exit_code == 0, r.output
    assert "warning: rain 10 degrees from vertical" in r.output


def test_the_python_api_refuses_what_it_cannot_use_up_front(clean_dir, pairs, tmp_path):
    """evaluate(None, ...) failed with an AttributeError once every pair was decoded; a
    module without parameters with a bare StopIteration, and a module in training mode was
    left in eval mode; synth_pairs(count=2.5) wrote 3 pairs, count="2" failed in a
    comparison (an audit of the Python API)."""
    import torch

    for bad in (None, 3):
        with pytest.raises(TypeError, match="model must be a model name, 'identity', a "
                                            "weights file, a Derainer or a torch module"):
            E.evaluate(bad, pairs)
    assert E.evaluate(torch.nn.Identity(), pairs, limit=1).count == 1
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.BatchNorm2d(3)).train()
    E.evaluate(net, pairs, limit=1)
    assert net.training  # put back as it was
    E.evaluate(net.eval(), pairs, limit=1)
    assert not net.training
    for bad in ({"count": 2.5}, {"count": "2"}, {"seed": "1"}, {"seed": None},
                {"count": True}):
        with pytest.raises(E.SynthError, match="must be a whole number, not "):
            E.synth_pairs(clean_dir, tmp_path / "s", preset="light", **bad)
    assert not (tmp_path / "s").exists()


def test_synth_and_eval_refuse_a_folder_another_run_writes(clean_dir, pairs, tmp_path):
    """Two synth runs into one folder both passed the "already holds pairs" check and
    interleaved their pairs (a rainy image of one photo beside another's clean one); two
    eval --save runs replaced each other's outputs in silence (an audit). The folder is
    held while written; another run's hold (here: taken through another descriptor, as
    another process's is) refuses it."""
    from derain_cli.errors import OptionError
    from derain_cli.fileio import hold_folders

    out = tmp_path / "syn"
    out.mkdir()
    with hold_folders([out]):
        with pytest.raises(E.SynthError, match="in use by another derain process"):
            E.synth_pairs(clean_dir, out, preset="light", count=2)
    assert list(out.iterdir()) == []  # no pair, and the folders it made taken back
    assert E.synth_pairs(clean_dir, out, preset="light", count=2) == 2  # held no more
    with hold_folders([out]):  # holding pairs, and at work: said as in use, not as "already
        # holds pairs; pass --overwrite", which then met the hold (a README audit)
        with pytest.raises(E.SynthError, match="in use by another derain process"):
            E.synth_pairs(clean_dir, out, preset="light", count=1)
    save = tmp_path / "sv"
    save.mkdir()
    with hold_folders([save]):
        with pytest.raises(OptionError, match="in use by another derain process"):
            E.evaluate("identity", pairs, save_dir=save)
    assert list(save.iterdir()) == []
    from derain_cli.fileio import hold_files

    with hold_files([tmp_path / "a.csv"]):  # a CSV is held by its name, not its folder
        with pytest.raises(OptionError, match="a.csv is in use by another derain process"):
            E.evaluate("identity", pairs, csv_path=tmp_path / "a.csv")
        assert E.evaluate("identity", pairs, csv_path=tmp_path / "b.csv").count == 4
    import os
    import time

    for folder in (save, out / "rainy"):  # a killed run's temporary files were never swept
        old = folder / ".derain-x1.tmp"
        old.write_bytes(b"part")
        os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert E.evaluate("identity", pairs, save_dir=save).count == 4
    E.synth_pairs(clean_dir, out, preset="light", count=2, overwrite=True)
    assert not (save / ".derain-x1.tmp").exists() and not (out / "rainy" / ".derain-x1.tmp"
                                                          ).exists()


def test_scores_cut_short_leave_the_earlier_csv_whole(pairs, tmp_path, monkeypatch):
    """The CSV goes through an atomic write: a run stopped (or a disk full) while writing
    it leaves the earlier file, not half of the new one (a mutation audit)."""
    out = tmp_path / "s.csv"
    res = E.evaluate("identity", pairs, csv_path=out)
    before = out.read_bytes()

    def half_then_fail(res, path):
        Path(path).write_text("name,psnr_y\n")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(E, "_write_csv_to", half_then_fail)
    with pytest.raises(OSError):
        E.write_csv(res, out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# --- pinned by a mutation audit (2026-12-07): each test below failed under a one-line change
# that every earlier test let through --------------------------------------------------------


def test_synth_reused_photo_gets_new_rain(tmp_path):
    """`derain synth` reusing a photo gives it new rain: no duplicate pairs (a mutation
    audit: rain seeded by the photo, not the pair, went unseen)."""
    (tmp_path / "c").mkdir()
    Image.fromarray(np.full((32, 32, 3), 60, np.uint8)).save(tmp_path / "c" / "a.png")
    E.synth_pairs(tmp_path / "c", tmp_path / "o", preset="heavy", count=2, seed=0,
                  on_image=None)
    files = sorted((tmp_path / "o" / "rainy").iterdir())
    assert len(files) == 2
    a, b = (np.asarray(Image.open(f)) for f in files)
    assert not np.array_equal(a, b)


# --- what the user reads: every number in its place (a mutation audit of evaluate.py found
# --- the CSV's PSNR-RGB, the report's numbers and derained thumbnails, the summary's
# --- PSNR-RGB and the CLI's file lines unchecked)

class _Gray(torch.nn.Module):
    """A 'model' whose output is mid-gray: unlike its input, so each number differs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0 + 0.5


def test_every_number_of_the_csv_report_and_summary_is_its_own(pairs, tmp_path):
    report = tmp_path / "r.html"
    res = E.evaluate(_Gray(), pairs, report=report)
    assert all(f"{s.psnr_y:.2f}" != f"{s.psnr_rgb:.2f}" for s in res.images)  # apart
    assert f"{res.psnr_y:.2f}" != f"{res.psnr_rgb:.2f}"
    rows = list(csv.reader(open(res.csv_path, encoding="utf-8")))
    for row, s in zip(rows[1:5], res.images, strict=True):
        assert row[1:5] == [f"{s.psnr_y:.4f}", f"{s.ssim_y:.6f}", f"{s.psnr_rgb:.4f}",
                            f"{s.seconds:.3f}"]
    assert rows[-1][:4] == ["mean", f"{res.psnr_y:.4f}", f"{res.ssim_y:.6f}",
                            f"{res.psnr_rgb:.4f}"]
    page = report.read_text()
    assert f"Mean PSNR-Y <b>{res.psnr_y:.2f} dB</b>" in page
    assert f"SSIM-Y <b>{res.ssim_y:.4f}</b>" in page and f"PSNR-RGB {res.psnr_rgb:.2f} dB" in page
    for s in res.images:
        assert (f"PSNR-Y {s.psnr_y:.2f} dB<br>SSIM-Y {s.ssim_y:.4f}<br>PSNR-RGB "
                f"{s.psnr_rgb:.2f} dB") in page
    assert f"PSNR-RGB {res.psnr_rgb:.2f} dB" in res.summary()
    assert f"PSNR-Y {res.psnr_y:.2f} dB, SSIM-Y {res.ssim_y:.4f}" in res.summary()
    # the derained column shows the output (mid-gray), not the rainy photo
    thumbs = tmp_path / "r_files"
    out = np.asarray(Image.open(thumbs / "0000_out.jpg").convert("RGB"), np.float64)
    rainy = np.asarray(Image.open(thumbs / "0000_rainy.jpg").convert("RGB"), np.float64)
    assert abs(out.mean() - 128) < 2 and out.std() < 2 and rainy.std() > 10


def test_the_cli_names_the_files_it_wrote(pairs, tmp_path):
    r = CliRunner().invoke(_app(), ["eval", str(pairs), "-m", "identity", "--report",
                                    str(tmp_path / "r.html")])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert f"per-image scores: {tmp_path / 'r.csv'}" in lines
    assert f"report: {tmp_path / 'r.html'}" in lines


def test_an_interrupted_eval_says_the_mean_of_the_pairs_it_scored(pairs, tmp_path,
                                                                    monkeypatch):
    from derain_cli import metrics

    monkeypatch.setattr(metrics, "ssim_y", interrupted_at_call(metrics.ssim_y, 3))
    r = CliRunner().invoke(_app(), ["eval", str(pairs), "-m", "identity", "--csv",
                                    str(tmp_path / "s.csv")])
    assert r.exit_code == 130
    rows = list(csv.reader(open(tmp_path / "s.csv", encoding="utf-8")))
    want = np.mean([float(rows[1][1]), float(rows[2][1])])
    assert f"mean PSNR-Y {want:.2f} dB over those" in " ".join(r.stderr.split())


def test_auto_turns_are_written_per_image_in_the_csv_and_report(pairs, tiny_weights, tmp_path,
                                                               monkeypatch):
    """Under auto an image left unturned is a 0 in the CSV and "not turned" in the report
    (an empty cell, or "turned from 0 degrees", were each possible unseen)."""
    from derain_cli import slant

    first = E.load_rgb_u8(find_pairs(pairs)[0].rainy)
    monkeypatch.setattr(slant, "choose_angle", lambda rgb, derain: (
        (60.0 if np.array_equal(rgb, first) else 0.0), 0.0, None))
    E.evaluate(str(tiny_weights), pairs, device="cpu", rain_angle="auto",
               report=tmp_path / "r.html")
    rows = list(csv.reader(open(tmp_path / "r.csv", encoding="utf-8")))
    assert rows[0][-1] == "rain_angle" and [r[-1] for r in rows[1:5]] == ["60", "0", "0", "0"]
    page = (tmp_path / "r.html").read_text()
    assert page.count("<br>not turned") == 3 and page.count("rain turned from 60 degrees") == 1


def test_a_given_derainers_rain_angle_is_checked_before_any_work(tmp_path, tiny_weights):
    """eval --weights W --rain-angle 45 hands evaluate a Derainer holding the angle: a strip
    it cannot turn is named before any output is written, as for a weights path."""
    from derain_cli.enhancer import Derainer
    from derain_cli.errors import OptionError

    d = tmp_path / "photos"
    d.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(smooth_photo(rng, 40, 52)).save(d / "a_square.png")
    Image.fromarray(smooth_photo(rng, 20, 200)).save(d / "b_strip.png")
    E.synth_pairs(d, tmp_path / "pairs", preset="heavy", seed=0)
    derainer = Derainer(weights=tiny_weights, device="cpu", rain_angle=45)
    with pytest.raises(OptionError, match=r"b_strip\.png \(200x20: 6\.1x\)"):
        E.evaluate(derainer, tmp_path / "pairs", save_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_report_refuses_to_replace_the_last_pairs_thumbnail(pairs, tmp_path):
    thumbs = tmp_path / "r_files"
    thumbs.mkdir()
    (thumbs / "0003_clean.jpg").write_text("mine")
    with pytest.raises(E.OptionError, match="0003_clean.jpg"):
        E.evaluate("identity", pairs, report=tmp_path / "r.html")
    assert (thumbs / "0003_clean.jpg").read_text() == "mine"


def test_a_colour_rainy_image_with_a_gray_clean_one_is_said(pairs, caplog):
    import logging

    clean = pairs / "clean" / "p2.png"
    Image.open(clean).convert("L").save(clean)
    with caplog.at_level(logging.WARNING):
        E.evaluate("identity", pairs)
    assert "1 pair has one grayscale and one colour image (p2.png)" in caplog.text


def test_pairs_differing_in_height_alone_are_all_named_up_front(tmp_path):
    from derain_cli.pairs import PairDataError

    rng = np.random.default_rng(0)
    for side, h in (("rainy", 40), ("clean", 44)):
        (tmp_path / "p" / side).mkdir(parents=True)
        for i in range(7):
            Image.fromarray(smooth_photo(rng, h, 52)).save(tmp_path / "p" / side / f"{i}.png")
    with pytest.raises(PairDataError, match=r"7 pairs of different sizes: 0\.png \(52x40 "
                                            r"rainy, 52x44 clean\), .* and 2 more"):
        E.evaluate("identity", tmp_path / "p")


def test_csv_names_that_a_spreadsheet_would_run_as_formulas_are_quoted():
    for name in ("=1+2.png", "+a.png", "-1.png", "@x.png"):
        assert E._csv_text(name) == "'" + name
    assert E._csv_text("rain-1.png") == "rain-1.png"
