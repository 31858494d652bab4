"""The ``derain`` command as a new user would try it (tiny random-weight model, CPU)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from derain_cli import __version__
from derain_cli.cli import app

runner = CliRunner()


def derain(*args: str | Path, cwd: Path | None = None):
    old = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return runner.invoke(app, [str(a) for a in args])
    finally:
        os.chdir(old)


def _img(path: Path, w: int = 12, h: int = 10, mode: str = "RGB", seed: int = 0, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    Image.fromarray(arr[..., 0] if channels == 1 else arr, mode).save(path, **save)
    return path


def _run_module(*args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None):
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "derain_cli", *map(str, args)],
        capture_output=True, text=True, env=full_env, cwd=cwd, timeout=120,
    )


# --------------------------------------------------------------------------- help, version
def test_help_shows_main_job_and_subcommands() -> None:
    r = derain("--help")
    assert r.exit_code == 0
    out = r.stdout
    for text in ("Usage: derain [OPTIONS] [IMAGE_OR_DIR]...", "--recursive", "--output",
                 "--tile", "--json", "models", "download", "./train", "Exit status"):
        assert text in out, text
    assert "run" not in out.split("Commands")[1].split()[:2]  # the default command is hidden
    # `derain PHOTO --help` and `-h` show the same page
    assert derain("photo.jpg", "-h").stdout == out


@pytest.mark.parametrize("command", [[], ["eval", "DATA"], ["export"],
                                     ["finetune", "--rainy", "DATA"]])
def test_a_model_name_given_as_weights_gets_a_hint(tmp_path: Path, command: list[str]) -> None:
    """--weights semi-drdnet-tiny said only "path ... does not exist" (an audit)."""
    (tmp_path / "DATA").mkdir()
    r = derain(*command, "--weights", "semi-drdnet-tiny", cwd=tmp_path)
    said = " ".join(r.output.replace("│", " ").split())
    assert r.exit_code == 2 and ("path 'semi-drdnet-tiny' does not exist; semi-drdnet-tiny "
                                 "is a model's name: pass it as -m semi-drdnet-tiny") in said, said
    r = derain(*command, "--weights", "nope.safetensors", cwd=tmp_path)
    assert r.exit_code == 2 and "path 'nope.safetensors' does not exist." in " ".join(
        r.output.replace("│", " ").split()), r.output


def test_choices_are_not_cut_mid_word_at_80_columns() -> None:
    """--precision showed "<auto|fp32|fp16|bf16|int" over "8>", --format broke alike (an
    audit)."""
    out = runner.invoke(app, ["--help"], env={"COLUMNS": "80"}).stdout
    assert "auto|fp32|fp16|bf16|int8" in out and "png|jpg|webp|tif|bmp" in out, out


def test_lazy_subcommands_listed_and_loaded() -> None:
    from derain_cli.cli import LAZY_COMMANDS, _function_doc

    present = [n for n, (mod, func) in LAZY_COMMANDS.items()
               if _function_doc(mod, func) is not None]
    if not present:
        pytest.skip("no lazily loaded subcommand is installed")
    commands = derain("--help").stdout.split("Commands")[1]
    for name in present:
        assert f" {name} " in commands, name
    r = derain(present[0], "--help")
    assert r.exit_code == 0 and f"Usage: derain {present[0]}" in r.stdout


@pytest.mark.parametrize("command", ["", "train", "finetune", "distill", "grow", "synth",
                                     "export"])
def test_every_command_takes_its_output_as_o_out_and_output(command: str) -> None:
    """train, finetune and distill took --out, the others --output: `derain train --output
    runs/x` was "No such option". Both names now, and -o, wherever something is written."""
    r = runner.invoke(app, [command, "--help"] if command else ["--help"],
                      env={"COLUMNS": "160"})  # the option's names on one line
    assert r.exit_code == 0, r.output
    names = re.search(r"(-o, )?(--out(put)?,--out(put)?)\s+(-o)?", r.stdout)
    assert names and set(names.group(2).split(",")) == {"--out", "--output"}, r.stdout
    assert "-o" in (names.group(1) or "") + (names.group(5) or "")


def test_help_shows_plain_argument_and_option_types() -> None:
    """Typer would print ``Usage: derain synth [OPTIONS] {CLEAN} [OUT]`` and ``--pairs
    <list[Path]>``; users read a bare CLEAN and one path per repeat of the option."""
    r = derain("synth", "--help")
    assert r.exit_code == 0 and "Usage: derain synth [OPTIONS] CLEAN [OUT]" in r.stdout
    r = derain("train", "--help")
    assert r.exit_code == 0
    assert "list[" not in r.stdout and "{" not in r.stdout
    assert re.search(r"--pairs\s+<path>", r.stdout)


def test_version() -> None:
    r = derain("--version")
    assert r.exit_code == 0 and r.stdout.startswith(f"derain {__version__}")
    p = _run_module("--version")  # python -m derain_cli (what torchrun launches)
    assert p.returncode == 0 and p.stdout.startswith(f"derain {__version__}")


# --------------------------------------------------------------------------- main job
def test_single_file_default_name(tmp_path: Path, tiny_weights: Path) -> None:
    photo = _img(tmp_path / "photo.jpg", 20, 14)
    r = derain(photo, "--weights", tiny_weights)
    assert r.exit_code == 0, r.output
    out = tmp_path / "photo_derained.jpg"
    assert Image.open(out).size == (20, 14)
    assert "processed" in r.stderr and r.stdout == ""  # feedback goes to stderr


def test_a_rerun_with_nothing_left_still_refuses_bad_settings(
    tmp_path: Path, tiny_weights: Path
) -> None:
    """Found by an audit: with every result present the model was never built, so
    --device cuda:7 or --precision fp16 on a CPU exited 0 where a first run exits 2."""
    photo = _img(tmp_path / "a.png", 20, 14)
    assert derain(photo, "--weights", tiny_weights).exit_code == 0
    for bad in (["--device", "cuda:99"], ["--precision", "fp16", "--device", "cpu"],
                # int8 where it cannot run was accepted over a finished folder (an audit)
                ["--precision", "int8"], ["--precision", "int8", "--backend", "torch"]):
        r = derain(photo, "--weights", tiny_weights, *bad)
        assert r.exit_code == 2 and "error:" in r.output, (bad, r.output)
    for bad in ("nan", "inf"):  # nan read "greater than or equal to 0"; inf passed click
        r = derain(photo, "--weights", tiny_weights, "--stats-megapixels", bad)
        assert r.exit_code == 2 and "use megapixels, 0 or more" in " ".join(
            r.output.replace("│", " ").split()), r.output
    assert derain(photo, "--weights", tiny_weights, "--device", "cpu").exit_code == 0


def test_star_into_an_output_folder_can_be_rerun(tmp_path: Path, tiny_weights: Path) -> None:
    """`derain * -o out/` twice: the second time the shell passes out/ as well, which was a
    usage error ("-o out is an input folder"); an unmarked folder still is when it holds
    photos, said truly (its results would not replace them), and an empty one made for the
    run (`mkdir out; derain * -o out/`) is left out of the inputs (audits)."""
    a = _img(tmp_path / "a.png", 20, 14)
    out = tmp_path / "out"
    assert derain(a, "-o", f"{out}/", "--weights", tiny_weights).exit_code == 0
    r = derain(a, out, "-o", f"{out}/", "--weights", tiny_weights, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["skipped"] == 1
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("mine")
    r = derain(a, plain, "-o", f"{plain}/", "--weights", tiny_weights)
    assert r.exit_code == 0 and (plain / "a.png").is_file(), r.output
    assert sorted(p.name for p in plain.iterdir()) == ["a.png", "notes.txt"]  # not marked
    mine = tmp_path / "mine"
    _img(mine / "b.png", 20, 14)
    r = derain(a, mine, "-o", f"{mine}/", "--weights", tiny_weights)
    flat = " ".join(r.output.replace("│", " ").split())  # the error panel wraps long paths
    assert r.exit_code == 2 and "is also among the inputs" in flat, r.output
    assert "replace" not in flat and not (mine / "a.png").exists()
    r = derain(mine, "-o", f"{mine}/", "--weights", tiny_weights)  # alone: as it was
    flat = " ".join(r.output.replace("│", " ").split())
    assert r.exit_code == 2 and "is an input folder" in flat, r.output


def test_o_dash_and_a_file_named_as_a_folder_are_usage_errors(
    tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`-o -` made a folder named "-" and wrote there; `-o photo.jpg/` over a file said
    "exists and is not a folder or an image file" of an image file (an audit)."""
    monkeypatch.chdir(tmp_path)
    _img(tmp_path / "a.png", 20, 14)
    a = Path("a.png")  # relative: rich wraps a long temporary path inside the message
    r = derain(a, "-o", "-", "--weights", tiny_weights)
    flat = " ".join(r.output.replace("│", " ").split())
    assert r.exit_code == 2 and "derain does not write images to standard output" in flat
    assert not (tmp_path / "-").exists()
    r = derain(a, "-o", f"{a}/", "--weights", tiny_weights)
    flat = " ".join(r.output.replace("│", " ").split())
    assert r.exit_code == 2 and f"-o {a}/ names a folder, but {a} is a file" in flat, flat
    r = derain(a, "-o", f"{tmp_path}/-", "--weights", tiny_weights)  # the way it names
    assert r.exit_code == 0 and (tmp_path / "-" / "a.png").is_file(), r.output


def test_an_output_folder_that_cannot_be_made_is_a_usage_error(
    tmp_path: Path, tiny_weights: Path
) -> None:
    """`-o notes.txt/out` and `-o LOOP` (a link to itself) failed every photo with the same
    line, exit 1 ("... is a file", "File exists": an audit): one usage error, exit 2."""
    for i in range(3):
        _img(tmp_path / "in" / f"p{i}.png", seed=i)
    (tmp_path / "notes.txt").write_text("x")
    os.symlink("loop", tmp_path / "loop")
    os.symlink(tmp_path / "gone" / "out", tmp_path / "dangling")
    for out, said in ((tmp_path / "notes.txt" / "out", "notes.txt is a file, not a folder"),
                      (tmp_path / "loop", "is a link that leads nowhere (to loop"),
                      (tmp_path / "dangling", "is a link that leads nowhere"),
                      (tmp_path / "dangling" / "sub", "dangling is a link that leads")):
        r = derain(tmp_path / "in", "-o", out, "--weights", tiny_weights, "--json")
        assert r.exit_code == 2 and said in json.loads(r.stdout)["error"], r.output
    assert not (tmp_path / "gone").exists()  # nothing made through the link


def test_folder_recursive_mirrors_tree_then_resumes(tmp_path: Path, tiny_weights: Path) -> None:
    src = tmp_path / "in"
    _img(src / "a.jpg")
    _img(src / "sub" / "b.png", seed=1)
    _img(src / "sub" / "deep" / "c.webp", seed=2)
    out = tmp_path / "out"
    r = derain(src, "-r", "-o", out, "--weights", tiny_weights, "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert (s["processed"], s["skipped"], s["failed"]) == (3, 0, [])
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        ".derain-output", "a.jpg", "sub/b.png", "sub/deep/c.webp"]  # + the output-folder marker

    mtime = (out / "a.jpg").stat().st_mtime_ns
    r = derain(src, "-r", "-o", out, "--weights", tiny_weights, "--json")
    assert r.exit_code == 0
    assert json.loads(r.stdout)["skipped"] == 3  # rerun: nothing redone
    assert (out / "a.jpg").stat().st_mtime_ns == mtime

    r = derain(src, "-r", "-o", out, "--weights", tiny_weights, "--json", "--overwrite")
    assert r.exit_code == 0 and json.loads(r.stdout)["processed"] == 3


def test_without_recursive_subfolders_are_hinted(tmp_path: Path, tiny_weights: Path) -> None:
    _img(tmp_path / "in" / "sub" / "a.png")
    r = derain(tmp_path / "in", "--weights", tiny_weights)
    assert r.exit_code == 1
    assert "no images found" in r.stderr and "-r" in r.stderr


def test_broken_files_one_line_each_batch_goes_on(tmp_path: Path, tiny_weights: Path) -> None:
    src = tmp_path / "in"
    _img(src / "a.png")
    _img(src / "b.png", seed=1)
    whole = _img(tmp_path / "whole.jpg", 64, 64).read_bytes()
    (src / "broken.jpg").write_bytes(whole[: len(whole) // 3])
    (src / "zero.png").write_bytes(b"")
    r = derain(src, "--weights", tiny_weights)
    assert r.exit_code == 1
    lines = r.stderr.splitlines()
    broken = [ln for ln in lines if "broken.jpg" in ln]
    zero = [ln for ln in lines if "zero.png" in ln]
    assert len(broken) == 1 and "truncated image: the file ends" in broken[0]
    assert len(zero) == 1 and "empty file (0 bytes)" in zero[0]
    assert "Traceback" not in r.output
    assert (src / "a_derained.png").exists() and (src / "b_derained.png").exists()
    # nothing partial: no output and no temporary file for the bad ones
    assert sorted(p.name for p in src.iterdir()) == [
        "a.png", "a_derained.png", "b.png", "b_derained.png", "broken.jpg", "zero.png"]


def test_missing_input_is_a_failure_line(tmp_path: Path, tiny_weights: Path) -> None:
    _img(tmp_path / "a.png")
    r = derain(tmp_path / "a.png", tmp_path / "nope.jpg", "--weights", tiny_weights)
    assert r.exit_code == 1
    assert f"{tmp_path / 'nope.jpg'}: no such file or folder" in r.stderr
    assert (tmp_path / "a_derained.png").exists()


def test_rgba_keeps_alpha(tmp_path: Path, tiny_weights: Path) -> None:
    src = _img(tmp_path / "logo.png", 16, 12, mode="RGBA")
    r = derain(src, "--weights", tiny_weights)
    assert r.exit_code == 0, r.output
    out = Image.open(tmp_path / "logo_derained.png")
    assert out.mode == "RGBA"
    assert np.array_equal(np.asarray(out)[..., 3], np.asarray(Image.open(src))[..., 3])


def test_alpha_to_jpeg_and_multipage_tiff_are_noted(tmp_path: Path, tiny_weights: Path) -> None:
    src = _img(tmp_path / "logo.png", 16, 12, mode="RGBA")
    r = derain(src, "--weights", tiny_weights, "--format", "jpg")
    assert r.exit_code == 0, r.output
    assert "written without transparency; transparent areas are flattened onto white" \
        in r.stderr

    pages = [Image.new("RGB", (16, 12), c) for c in ("red", "blue")]
    pages[0].save(tmp_path / "scan.tif", save_all=True, append_images=pages[1:])
    r = derain(tmp_path / "scan.tif", "--weights", tiny_weights)
    assert r.exit_code == 0, r.output
    assert "has 2 pages/frames; only the first is derained" in r.stderr


def test_16bit_png_stays_16bit(tmp_path: Path, tiny_weights: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 65536, (10, 12, 3), dtype=np.uint16)
    src = tmp_path / "deep.png"
    cv2.imwrite(str(src), arr)
    r = derain(src, "--weights", tiny_weights)
    assert r.exit_code == 0, r.output
    out = cv2.imread(str(tmp_path / "deep_derained.png"), cv2.IMREAD_UNCHANGED)
    assert out.dtype == np.uint16 and out.shape == (10, 12, 3)


def test_grayscale_stays_grayscale(tmp_path: Path, tiny_weights: Path) -> None:
    src = _img(tmp_path / "gray.jpg", 14, 10, mode="L")
    r = derain(src, "--weights", tiny_weights)
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "gray_derained.jpg").mode == "L"


def test_exif_rotated_jpeg_comes_out_upright(tmp_path: Path, tiny_weights: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate 90 degrees clockwise
    src = _img(tmp_path / "phone.jpg", 20, 12, exif=exif.tobytes())
    r = derain(src, "--weights", tiny_weights)
    assert r.exit_code == 0, r.output
    out = Image.open(tmp_path / "phone_derained.jpg")
    assert out.size == (12, 20)  # pixels upright...
    assert out.getexif()[0x0112] == 1  # ...and not rotated a second time (EXIF kept)


def test_a_photos_metadata_reaches_its_result(tmp_path: Path, tiny_weights: Path) -> None:
    """A mutation audit: the batch could drop the EXIF, colour profile, XMP and DPI it hands
    the writer and no CLI test noticed (only write_image's own tests looked)."""
    from PIL import ImageCms

    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "TestCam", "Model 7"  # Make, Model
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/'
           b'02/22-rdf-syntax-ns#"><rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"'
           b' dc:rights="(c) me"/></rdf:RDF></x:xmpmeta>')
    src = tmp_path / "cam.jpg"
    Image.new("RGB", (20, 12), (90, 120, 150)).save(src, exif=exif.tobytes(), icc_profile=icc,
                                                    xmp=xmp, dpi=(300, 300), quality=95)
    r = derain(src, "--weights", tiny_weights)
    assert r.exit_code == 0, r.output
    out = Image.open(tmp_path / "cam_derained.jpg")
    assert out.getexif()[0x010F] == "TestCam" and out.getexif()[0x0110] == "Model 7"
    assert out.info.get("icc_profile") == icc
    assert b"(c) me" in out.info.get("xmp", b"")
    assert tuple(round(v) for v in out.info["dpi"]) == (300, 300)


def test_one_pixel_image(tmp_path: Path, tiny_weights: Path) -> None:
    src = _img(tmp_path / "dot.png", 1, 1)
    r = derain(src, "--weights", tiny_weights)
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "dot_derained.png").size == (1, 1)


def test_tiles_format_and_output_file(tmp_path: Path, tiny_weights: Path) -> None:
    src = _img(tmp_path / "wide.png", 40, 24)
    r = derain(src, "--weights", tiny_weights, "--tile", "24", "--tile-overlap", "4",
               "--format", "webp", "--quality", "90")
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "wide_derained.webp").format == "WEBP"

    out = tmp_path / "result" / "clean.jpg"
    r = derain(src, "-o", out, "--weights", tiny_weights, "-q")
    assert r.exit_code == 0, r.output
    assert Image.open(out).format == "JPEG"
    assert r.stderr == ""  # -q: silence unless something fails


def _spy_on_tiler(monkeypatch: pytest.MonkeyPatch, keyword: str) -> list:
    """The values of ``keyword`` that ``tiling.run_tiled`` receives, call by call."""
    from derain_cli import tiling

    seen: list = []
    original = tiling.run_tiled

    def spy(*args, **kwargs):
        seen.append(kwargs[keyword])
        return original(*args, **kwargs)

    monkeypatch.setattr(tiling, "run_tiled", spy)
    return seen


def test_stats_megapixels_reaches_the_tiler(tmp_path: Path, tiny_weights: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from derain_cli import tiling

    seen = _spy_on_tiler(monkeypatch, "stats_megapixels")
    src = _img(tmp_path / "big.png", 96, 96)
    for mp in ("0", "0.0001"):
        r = derain(src, "-o", tmp_path / f"out-{mp}.png", "--weights", tiny_weights,
                   "--tile", "24", "--stats-megapixels", mp, "-q")
        assert r.exit_code == 0, r.output
    r = derain(src, "-o", tmp_path / "default.png", "--weights", tiny_weights, "--tile", "24")
    assert seen == [0, 0.0001, tiling.STATS_MEGAPIXELS]
    bad = derain(src, "--weights", tiny_weights, "--stats-megapixels", "-1")
    assert bad.exit_code == 2


def test_tile_batch_reaches_the_tiler(tmp_path: Path, tiny_weights: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _spy_on_tiler(monkeypatch, "batch")
    src = _img(tmp_path / "big.png", 96, 96)
    r = derain(src, "-o", tmp_path / "three.png", "--weights", tiny_weights, "--tile", "24",
               "--tile-batch", "3", "-q")
    assert r.exit_code == 0, r.output
    r = derain(src, "-o", tmp_path / "auto.png", "--weights", tiny_weights, "--tile", "24",
               "-q")
    assert r.exit_code == 0, r.output
    assert seen == [3, 1]  # automatic on a CPU: one tile per pass
    assert derain(src, "--weights", tiny_weights, "--tile-batch", "-1").exit_code == 2
    # the banner and --json say it (they said nothing: an audit)
    r = derain(src, "-o", tmp_path / "said.png", "--weights", tiny_weights, "--tile", "24",
               "--tile-batch", "3")
    assert r.exit_code == 0 and "(overlap" in r.output and ", 3 a pass" in r.output, r.output
    r = derain(src, "-o", tmp_path / "js.png", "--weights", tiny_weights, "--tile", "24",
               "--tile-batch", "3", "--json")
    assert json.loads(r.stdout)["engine"]["tile_batch"] == 3


def test_io_threads_reach_the_batch(tmp_path: Path, tiny_weights: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from derain_cli import batch

    seen = []
    original = batch.run_batch

    def spy(items, derainer, options, *args, **kwargs):
        seen.append(batch.resolve_io_workers(options, derainer))
        return original(items, derainer, options, *args, **kwargs)

    monkeypatch.setattr(batch, "run_batch", spy)
    for i in range(3):
        _img(tmp_path / "in" / f"p{i}.png", seed=i)
    r = derain(tmp_path / "in", "-o", tmp_path / "out", "--weights", tiny_weights,
               "--io-threads", "2", "-q")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [
        "p0.png", "p1.png", "p2.png"]
    r = derain(tmp_path / "in", "-o", tmp_path / "out2", "--weights", tiny_weights, "-q")
    assert r.exit_code == 0
    assert seen == [2, 0]  # the CPU's default: in turn
    assert derain(tmp_path / "in", "--weights", tiny_weights, "--io-threads", "-1").exit_code == 2


def test_json_output_is_clean(tmp_path: Path, tiny_weights: Path) -> None:
    _img(tmp_path / "a.png")
    r = derain(tmp_path / "a.png", "--weights", tiny_weights, "--json")
    assert r.exit_code == 0
    s = json.loads(r.stdout)  # stdout holds exactly one JSON document
    assert s["processed"] == 1 and s["megapixels"] > 0
    # what ran the network, as the banner would have said it
    assert s["engine"]["model"] == "tiny" and s["engine"]["device"] == "cpu"
    assert s["engine"]["backend"] in ("torch", "onnx") and s["engine"]["precision"]
    assert set(s["engine"]) == {"model", "device", "backend", "precision", "tile",
                                "tile_overlap", "tile_batch", "strength", "ensemble",
                                "rain_angle", "note"}
    assert isinstance(s["engine"]["tile_overlap"], int)
    assert s["engine"]["strength"] == 1.0 and s["engine"]["ensemble"] == 1
    # the overlap used: at most half a tile (32 px was said of 16 px tiles: an audit)
    r = derain(tmp_path / "a.png", "--weights", tiny_weights, "--json", "--tile", "16",
               "-o", tmp_path / "t16.png")
    assert r.exit_code == 0 and json.loads(r.stdout)["engine"]["tile_overlap"] == 8
    assert s["files"][0]["output"] == str(tmp_path / "a_derained.png")
    (tmp_path / "b.png").write_bytes(b"")  # fails: no output was written, so none is named
    r = derain(tmp_path / "a.png", tmp_path / "b.png", "--weights", tiny_weights, "--json")
    files = {Path(f["input"]).name: f for f in json.loads(r.stdout)["files"]}
    assert r.exit_code == 1 and files["b.png"]["status"] == "failed"
    assert files["b.png"]["output"] is None and files["a.png"]["output"] is not None


def test_json_after_ctrl_c_lists_the_files_done(tmp_path: Path, tiny_weights: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import derain_cli.batch as B

    for i in range(3):
        _img(tmp_path / f"p{i}.png", seed=i)
    real, calls = B._process, []

    def process(job, *a, **kw):  # Ctrl-C while the second photo is being derained
        calls.append(job)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(job, *a, **kw)

    monkeypatch.setattr(B, "_process", process)
    r = derain(tmp_path, "--weights", tiny_weights, "--json")
    assert r.exit_code == 130
    s = json.loads(r.stdout)
    assert s["interrupted"] and s["processed"] == 1
    assert [Path(f["input"]).name for f in s["files"]] == ["p0.png"]
    assert "interrupted; 1 photo(s) derained and kept; run the same" in r.stderr

    # Ctrl-C before the batch began (while the model loads): the summary still comes,
    # saying nothing was done (stdout was empty: an audit)
    import derain_cli.cli as C

    def loading(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(C, "_make_derainer", loading)
    r = derain(tmp_path, "--weights", tiny_weights, "--json", "--overwrite")
    assert r.exit_code == 130
    s = json.loads(r.stdout)
    assert s["interrupted"] and s["processed"] == 0 and s["files"] == []


def test_never_overwrites_the_input(tmp_path: Path, tiny_weights: Path) -> None:
    src = _img(tmp_path / "a.png")
    before = src.read_bytes()
    r = derain(src, "-o", src, "--weights", tiny_weights, "--overwrite")
    flat = " ".join(r.stderr.replace("│", " ").split())  # (the box wraps the message where
    # the temporary path's length falls: it failed at pytest-28, not at pytest-9)
    assert r.exit_code == 2 and "is the input itself" in flat, r.stderr  # before any work
    assert src.read_bytes() == before


# --------------------------------------------------------------------------- usage errors
def test_output_file_with_two_inputs_is_usage_error(tmp_path: Path) -> None:
    a, b = _img(tmp_path / "a.png"), _img(tmp_path / "b.png")
    r = derain(a, b, "-o", tmp_path / "x.png")
    assert r.exit_code == 2
    assert "exactly one input" in r.stderr
    r = derain(tmp_path / "*.png", "-o", tmp_path / "x.png")  # a pattern matching both
    assert r.exit_code == 2 and "matches 2 photo(s)" in r.stderr
    (tmp_path / "in").mkdir()  # one photo and a folder, or a folder alone (a review: an
    r = derain(tmp_path / "[ai]*", "-o", tmp_path / "x.png")  # internal error, or the folder
    assert r.exit_code == 2 and "1 photo(s) and 1 folder(s)" in " ".join(
        r.stderr.replace("│", " ").split())
    r = derain(tmp_path / "i*", "-o", tmp_path / "x.png")  # left out in silence)
    assert r.exit_code == 2 and "matches 1 folder(s)" in " ".join(
        r.stderr.replace("│", " ").split())


def test_output_file_takes_one_input_of_any_kind(tmp_path: Path, tiny_weights: Path) -> None:
    """One input given with -o FILE was refused as "takes exactly one input file" when it
    was a quoted pattern matching one photo, a missing file or a FIFO (an audit): the
    pattern is the photo, the others are said as the batch says them."""
    _img(tmp_path / "in" / "moon.png")
    r = derain(tmp_path / "in" / "mo*.png", "-o", tmp_path / "x.png", "--weights", tiny_weights)
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "x.png").size == (12, 10)
    r = derain(tmp_path / "gone.png", "-o", tmp_path / "y.png", "--weights", tiny_weights)
    assert r.exit_code == 1 and "gone.png: no such file or folder" in r.stderr, r.stderr
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.png")
        r = derain(tmp_path / "pipe.png", "-o", tmp_path / "z.png", "--weights", tiny_weights)
        assert r.exit_code == 1 and "not a regular file" in r.stderr, r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "nope"], "unknown model 'nope'"),
        (["-m", "m.pt"], "pass --weights m.pt"),  # a file: said how to use it (an audit)
        (["--device", "gpu7"], "use auto, cpu, cuda"),
        (["--precision", "fp8"], "fp8"),
        (["--format", "gif"], "gif"),
        (["--quality", "0"], "quality"),
    ],
)
def test_bad_option_values_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    photo = _img(tmp_path / "a.png")
    r = derain(photo, *args)
    assert r.exit_code == 2
    assert message in r.stderr
    assert not (tmp_path / "a_derained.png").exists()


def test_output_with_foreign_image_suffix_is_usage_error(tmp_path: Path) -> None:
    photo = _img(tmp_path / "a.png")
    r = derain(photo, "-o", tmp_path / "result.gif")
    assert r.exit_code == 2 and "cannot write .gif files" in r.stderr
    assert not (tmp_path / "result.gif").exists()
    # every photo format derain does not read is one (.raf made a folder: a second list)
    from derain_cli.images import UNREAD_PHOTO_FORMATS

    for suffix in UNREAD_PHOTO_FORMATS:
        r = derain(tmp_path, "-o", tmp_path / f"shots{suffix}")
        assert r.exit_code == 2 and f"cannot write {suffix} files" in r.stderr, suffix


def test_one_photo_to_an_unknown_suffix_is_usage_error(tmp_path: Path,
                                                        tiny_weights: Path) -> None:
    photo = _img(tmp_path / "a.png")
    r = derain(photo, "-o", tmp_path / "res.xyz", "--weights", tiny_weights)
    assert r.exit_code == 2 and "'.xyz' is not an image type" in r.stderr
    assert not (tmp_path / "res.xyz").exists()
    (tmp_path / "res.xyz").mkdir()  # an existing folder of that name is a folder
    r = derain(photo, "-o", tmp_path / "res.xyz", "--weights", tiny_weights)
    assert r.exit_code == 0 and (tmp_path / "res.xyz" / "a.png").exists()
    # a trailing slash says "folder" whatever the name, even an image suffix
    for name in ("new.v2", "album.png"):
        r = derain(photo, "-o", f"{tmp_path / name}/", "--weights", tiny_weights)
        assert r.exit_code == 0 and (tmp_path / name / "a.png").exists(), r.stderr
    r = derain(photo, "-o", tmp_path / "b.jfif", "--weights", tiny_weights, "--format", "jpeg")
    assert r.exit_code == 0 and Image.open(tmp_path / "b.jfif").format == "JPEG"


def test_no_inputs_is_usage_error() -> None:
    r = derain("-q")
    assert r.exit_code == 2 and "no input given" in r.stderr


def test_runtime_error_one_line_or_traceback_with_debug(tmp_path: Path) -> None:
    photo = _img(tmp_path / "a.png")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"this is not a weights file")
    r = derain(photo, "--weights", bad)
    assert r.exit_code == 1
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "bad.safetensors" in errors[0]
    assert "Traceback" not in r.output

    r = derain(photo, "--weights", bad, "--debug")
    assert r.exit_code != 0 and r.exception is not None  # propagates: Python shows it


def test_exit_codes_in_a_real_process(tmp_path: Path) -> None:
    a, b = _img(tmp_path / "a.png"), _img(tmp_path / "b.png")
    p = _run_module(a, b, "-o", tmp_path / "x.png")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    p = _run_module(tmp_path / "missing.jpg")  # nothing to process: no model is loaded
    assert p.returncode == 1 and "missing.jpg: no such file or folder" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_stderr_or_stdout_that_takes_nothing_does_not_lose_the_work(tmp_path: Path,
                                                           tiny_weights: Path) -> None:
    """`derain ... 2> FILE` on a full disk: the first setup line failed the whole batch
    before any photo (an audit). Messages are dropped; the photos are derained."""
    photo = _img(tmp_path / "a.png", 40, 30)
    with open("/dev/full", "w") as full:
        p = subprocess.run([sys.executable, "-m", "derain_cli", str(photo), "-o",
                            str(tmp_path / "out.png"), "--weights", str(tiny_weights),
                            "--threads", "1"], stderr=full, stdout=subprocess.PIPE,
                           timeout=120)
    assert p.returncode == 0 and (tmp_path / "out.png").is_file()
    # --json to a stdout that takes nothing: said as such, the photos done all the same (it
    # was "error: No space left on device" alone, read as the work failing: an audit)
    with open("/dev/full", "w") as full:
        p = subprocess.run([sys.executable, "-m", "derain_cli", str(photo), "-o",
                            str(tmp_path / "out2.png"), "--weights", str(tiny_weights),
                            "--threads", "1", "--json"], stdout=full, stderr=subprocess.PIPE,
                           text=True, timeout=120)
    assert p.returncode == 1 and (tmp_path / "out2.png").is_file()
    assert p.stderr.strip() == (
        "error: --json: cannot write the summary to standard output (No space left on "
        "device); the photos were done all the same: 1 derained, 0 skipped, 0 failed")


@pytest.mark.parametrize("where", ["command", "outside"])
def test_a_second_stop_while_the_process_ends_is_ignored(monkeypatch: pytest.MonkeyPatch,
                                                         where: str) -> None:
    """A second Ctrl-C during the clean-up printed a traceback from PyTorch's exit handlers
    or ended the process by the signal (status -2): an audit. Once the first is handled
    further ones are ignored, in derain's own process only (not in a program calling it)."""
    import signal

    from derain_cli import cli

    calls: list[tuple[int, object]] = []
    monkeypatch.setattr(signal, "signal", lambda sig, handler: calls.append((sig, handler)))
    monkeypatch.setattr(cli, "_OWN_PROCESS", [])

    def interrupted(*args: object, **kwargs: object) -> None:
        if where == "command":  # inside a command: its handler says what was kept, 130
            try:
                with cli._friendly_errors(cli.DerainConsole(stderr=True), False, 0):
                    raise KeyboardInterrupt
            except typer.Exit as e:  # as Typer's app ends it
                sys.exit(e.exit_code)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "app", interrupted)
    with pytest.raises(SystemExit):
        cli._main(["x"])  # as a program calling the app: nothing set
    assert (signal.SIGINT, signal.SIG_IGN) not in calls
    with pytest.raises(SystemExit) as stop:
        cli.main(["x"])
    assert stop.value.code == 130
    assert (signal.SIGINT, signal.SIG_IGN) in calls  # a kill still ends it (a review)
    assert (signal.SIGTERM, signal.SIG_DFL) in calls  # not KeyboardInterrupt again


def test_out_of_memory_is_said_without_importing_anything(monkeypatch) -> None:
    """The error line's own imports needed memory too: a MemoryError at start-up chained
    three tracebacks instead of one line (an audit)."""
    import builtins

    from derain_cli import cli

    real = builtins.__import__

    def short_of_memory(name, *args, **kwargs):
        if name in ("hub", "images", "weights") and len(args) > 3 and args[3]:  # relative
            raise MemoryError
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", short_of_memory)
    assert cli._friendly_message(MemoryError("cannot allocate")) == (
        "out of memory: cannot allocate")


def test_a_ctrl_c_while_a_subcommand_loads_says_interrupted(tmp_path: Path) -> None:
    """Typer ended a Ctrl-C no command handled (one while grow's or eval's modules loaded)
    with 130 and no word (an audit)."""
    code = ("import builtins\nfrom derain_cli import cli\nreal = builtins.__import__\n"
            "def imp(name, *a, **k):\n    if name == 'grow':\n"
            "        raise KeyboardInterrupt\n    return real(name, *a, **k)\n"
            "builtins.__import__ = imp\n"
            "cli._main(['grow', 'semi-drdnet-tiny', '--to', 'semi-drdnet-fast', '-o', 'g."
            "safetensors'])\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert p.returncode == 130 and p.stderr.strip() == "interrupted", p.stderr


#: A Ctrl-C as it lands while a C extension loads (numpy, torch): the signal is delivered,
#: the extension's init swallows the KeyboardInterrupt and fails with an ImportError
_CTRL_C_IN_AN_IMPORT = """
import builtins, os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # (a job started in the background
# inherits SIGINT ignored, and Python then leaves it so: CI's nohup ... &)
real = builtins.__import__
def imp(name, globals=None, locals=None, fromlist=(), level=0):
    if name == os.environ["CUT"] and (level or name == "torch"):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(1000))  # the handler runs here
        except KeyboardInterrupt:
            raise ImportError("initialization failed") from None
    return real(name, globals, locals, fromlist, level)
builtins.__import__ = imp
from derain_cli.cli import main
sys.argv = ["derain", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("cut, args", [
    ("enhancer", ["IN", "--json"]),  # the main job, loading the network's modules
    ("batch", ["IN", "--json"]),  # its first second: before it could print anything
    ("evaluate", ["eval", "IN", "--json"])])
def test_a_ctrl_c_inside_an_import_is_an_interrupt(tmp_path: Path, tiny_weights: Path,
                                                    cut: str, args: list[str]) -> None:
    """A Ctrl-C in a run's first second or two (numpy and torch loading) ended it
    "error: ImportError: initialization failed", exit 1, its --json an error, or printed no
    --json at all (an audit): an interrupt, 130, and --json says so."""
    src = _img(tmp_path / "a.png")
    args = [str(src) if a == "IN" else a for a in args]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    p = subprocess.run([sys.executable, "-c", _CTRL_C_IN_AN_IMPORT, *args,
                        "--weights", str(tiny_weights)], capture_output=True, text=True,
                       env={**env, "CUT": cut}, timeout=120, cwd=tmp_path)
    assert p.returncode == 130, p.stderr
    assert "interrupted" in p.stderr and "ImportError" not in p.stderr, p.stderr
    assert json.loads(p.stdout)["interrupted"] is True
    assert not (tmp_path / "a_derained.png").exists()


def test_an_import_error_without_a_stop_is_still_an_error(monkeypatch) -> None:
    """Only an import a stop signal cut short is an interrupt: a broken install's stays an
    error (exit 1) with its own words."""
    from derain_cli import cli

    monkeypatch.setattr(cli, "_STOPPED", [])
    monkeypatch.setattr(cli, "_STOP_PIPE", [])
    monkeypatch.setattr(cli, "_TERMINATED_BY", [])
    assert not cli.interrupted_import(ImportError("initialization failed"))
    monkeypatch.setattr(cli, "_TERMINATED_BY", [15])
    assert cli.interrupted_import(ImportError("initialization failed"))
    assert not cli.interrupted_import(ValueError("x"))


def test_the_stop_watch_reads_other_signals_and_keeps_one_pipe() -> None:
    """The pipe holds a byte for every signal with a Python handler: one without a SIGINT
    among them (a DataLoader's SIGCHLD) raised ValueError, and each main() opened another
    pipe (a review)."""
    code = ("import os, signal\nfrom derain_cli import cli\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\ncli._watch_stops()\n"
            "signal.signal(signal.SIGUSR1, lambda *a: None)\n"
            "os.kill(os.getpid(), signal.SIGUSR1)\n"
            "print(cli.interrupted_import(ImportError('x')))\n"
            "try:\n    os.kill(os.getpid(), signal.SIGINT)\nexcept KeyboardInterrupt:\n"
            "    pass\nprint(cli.interrupted_import(ImportError('x')))\n"
            "n = len(os.listdir('/proc/self/fd'))\ncli._watch_stops()\n"
            "print(len(os.listdir('/proc/self/fd')) - n, cli._STOPPED)\n")
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("Linux's /proc")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and p.stdout.split("\n")[:3] == ["False", "True", "0 []"], (
        p.stdout, p.stderr)


def test_ignoring_further_stops_holds_in_a_real_process() -> None:
    code = ("import os, signal\nfrom derain_cli import cli\ncli._OWN_PROCESS.append(True)\n"
            "cli._ignore_further_stops()\nos.kill(os.getpid(), signal.SIGINT)\n"
            "print('still here')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "still here", p.stderr


# --------------------------------------------------------------------------- names vs paths
@pytest.mark.parametrize("name", ["train", "models"])
def test_folder_named_like_a_subcommand(tmp_path: Path, tiny_weights: Path, name: str) -> None:
    _img(tmp_path / name / "a.png")
    r = derain(f".{os.sep}{name}", "--weights", tiny_weights, cwd=tmp_path)
    assert r.exit_code == 0, r.output
    assert (tmp_path / name / "a_derained.png").exists()


def test_a_path_stdout_cannot_encode_is_escaped_not_a_failure(tmp_path: Path) -> None:
    """On Windows a pipe is cp1252: a path beyond it failed synth (and export, eval) after
    the work, exit 1 (an audit). Written with escapes, exit 0."""
    _img(tmp_path / "clean" / "a.png", 40, 32)
    r = _run_module("synth", tmp_path / "clean", tmp_path / "雨", "-q",
                    env={"PYTHONIOENCODING": "cp1252"})
    assert r.returncode == 0, r.stderr
    assert "\\u96e8" in r.stdout and (tmp_path / "雨" / "rainy" / "a.png").exists()
    # a UTF-8 stdout, strict (the default in UTF-8 locales), and a file name's Latin-1
    # byte: written back as it is (it failed after the work: a review)
    latin = os.fsencode(tmp_path) + b"/s\xe9"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    r = subprocess.run([sys.executable, "-m", "derain_cli", "synth", str(tmp_path / "clean"),
                        os.fsdecode(latin), "-q"], capture_output=True, timeout=120,
                       env={**env, "PYTHONIOENCODING": "utf-8"})  # (bytes: not UTF-8)
    assert r.returncode == 0, r.stderr
    assert b" to " + latin + b"/rainy" in r.stdout, r.stdout


def test_a_name_from_a_weights_file_reaches_the_terminal_escaped(tmp_path: Path,
                                                                tiny_weights: Path) -> None:
    """A weights file named itself "evil ESC]0;T BEL ESC[2J" in its metadata: the banner
    and eval's summary printed it raw (title set, screen cleared: a security audit)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(tiny_weights), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    evil = tmp_path / "evil.safetensors"
    save_file(tensors, str(evil), {**meta, "name": "evil\x1b]0;T\x07\x1b[2J"})
    _img(tmp_path / "pairs" / "rainy" / "a.png", 40, 32)
    _img(tmp_path / "pairs" / "clean" / "a.png", 40, 32, seed=1)
    r = derain(tmp_path / "pairs" / "rainy" / "a.png", "--weights", evil, "-o",
               tmp_path / "o.png")
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.stderr and "evil\\x1b]0;T" in r.stderr, r.stderr
    r = derain("eval", tmp_path / "pairs", "--weights", evil, "-q")
    assert r.exit_code == 0 and "\x1b" not in r.stdout and "evil\\x1b" in r.stdout, r.stdout


def test_the_first_runs_engine_timing_is_said(tmp_path: Path, tiny_weights: Path) -> None:
    """The first run on a machine times the engines for seconds without a word (an
    audit): a note says so; the next run, which reads the choice, says none."""
    src = _img(tmp_path / "a.png", 40, 32)
    env = {"DERAIN_CACHE": str(tmp_path / "cache"), "DERAIN_CPU_FP32": "auto"}  # (tests pin
    # the engine: conftest)
    fp32 = ("--precision", "fp32")  # timed on every CPU: a user's file has no int8 graph,
    # and a CPU with bf16 runs it in bf16 untimed (the test failed on the AVX-512-BF16 CPU)
    first = _run_module(src, "--weights", tiny_weights, "-o", tmp_path / "o.png", "--threads",
                        "1", *fp32, env=env)
    assert first.returncode == 0, first.stderr
    assert "measured now" in first.stderr, first.stderr  # (the case here: a user's file)
    assert first.stderr.startswith("note: timing "), first.stderr
    again = _run_module(src, "--weights", tiny_weights, "-o", tmp_path / "o.png", "--threads",
                        "1", "--overwrite", *fp32, env=env)
    assert again.returncode == 0 and "note:" not in again.stderr, again.stderr


def test_a_folder_named_run_is_a_folder(tmp_path: Path, tiny_weights: Path) -> None:
    """The hidden main job is named "run": `derain run c.png` left the folder run/ out in
    silence, and `derain run` said "no input given" (an audit). Not a listed subcommand,
    the word is a path."""
    _img(tmp_path / "run" / "a.png")
    _img(tmp_path / "c.png")
    r = derain("run", "c.png", "--weights", tiny_weights, "-o", "out", cwd=tmp_path)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "out").rglob("*.png")) == ["a.png", "c.png"]
    r = derain("run", cwd=tmp_path / "run")  # no such file there: said as a path
    assert r.exit_code != 0 and "run: no such file or folder" in r.output, r.output


def test_bare_subcommand_word_wins(tmp_path: Path) -> None:
    _img(tmp_path / "models" / "a.png")
    r = derain("models", cwd=tmp_path)
    assert r.exit_code == 0
    assert "semi-drdnet" in r.stdout
    assert not (tmp_path / "models" / "a_derained.png").exists()


# --------------------------------------------------------------------------- models
def test_models_table_and_json() -> None:
    from derain_cli.models import MODELS

    r = derain("models")
    assert r.exit_code == 0, r.output
    for name in MODELS:
        assert name in r.stdout

    r = derain("models", "--json")
    assert r.exit_code == 0
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert set(MODELS) <= set(rows)
    assert sum(row["default"] for row in rows.values()) == 1
    for row in rows.values():
        assert row["params"] > 0
        assert row["weights"] in ("bundled", "cached", "remote", "none")
        # the shipped int8 graphs
        assert row["int8"] == (row["name"] in ("semi-drdnet-lite", "semi-drdnet-fast",
                                               "semi-drdnet-tiny"))


def test_models_table_fits_80_columns(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An 80-column terminal shows every score whole (they used to fold mid-word)."""
    _fake_manifest(monkeypatch, tmp_path, bundled=True)
    monkeypatch.setenv("COLUMNS", "80")
    r = derain("models")
    assert r.exit_code == 0
    assert "rain100l 35.10/0.9610" in r.stdout and "interim" in r.stdout
    assert max(len(line) for line in r.stdout.splitlines()) <= 80
    # narrower than the table can go: names and scores stay whole (a cut name such as
    # "semi-drdnet-lit" is an unknown model), the terminal wraps the lines
    monkeypatch.setenv("COLUMNS", "40")
    r = derain("models")
    assert r.exit_code == 0
    assert "rain100l 35.10/0.9610" in r.stdout and "semi-drdnet-lite" in r.stdout
    assert "semi-drdnet-tiny" in r.stdout and "millions of" in r.stdout
    # the note is folded at the terminal's width, not the table's (every line overflowed)
    note = r.stdout[r.stdout.index("* default model"):]
    assert max(len(line) for line in note.splitlines()) <= 40


def test_models_table_of_the_real_manifest_fits_80_columns(monkeypatch) -> None:
    """With the bundled manifest's scores and licenses the table was 84 columns at 80 (the
    columns were dropped by a guess of the width, not by measure: an audit)."""
    monkeypatch.setenv("COLUMNS", "80")
    r = derain("models")
    assert r.exit_code == 0 and max(len(line) for line in r.stdout.splitlines()) <= 80
    assert "rain100l" in r.stdout and "semi-drdnet-fast *" in r.stdout


def test_models_table_is_whole_when_piped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No terminal and no COLUMNS: nothing to fit, so the arch column stays."""
    _fake_manifest(monkeypatch, tmp_path, bundled=True)
    monkeypatch.delenv("COLUMNS", raising=False)
    r = derain("models")
    assert r.exit_code == 0 and " arch " in r.stdout.splitlines()[0] + " "


def _fake_manifest(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *, bundled: bool):
    """Point derain_cli.weights at a manifest with one record, bundled or remote-only."""
    import hashlib

    from derain_cli import weights

    data = b"pretend weights"
    (tmp_path / "bundle").mkdir()
    if bundled:
        (tmp_path / "bundle" / "demo.safetensors").write_bytes(data)
    rec = weights.WeightRecord(
        name="semi-drdnet-lite", arch="semi-drdnet", config={"width": 32}, file="demo.safetensors",
        sha256=hashlib.sha256(data).hexdigest(), size=len(data), dtype="float16",
        license="MIT", metrics={"rain100l": {"psnr_y": 35.1, "ssim_y": 0.961}}, status="interim",
        hub={"repo_id": "derain-test/demo", "filename": "demo.safetensors",
             "revision": "0123456789abcdef0123456789abcdef01234567"},
    )
    monkeypatch.setattr(weights, "load_manifest", lambda path=None: {rec.name: rec})
    monkeypatch.setattr(weights, "bundled_dir", lambda: tmp_path / "bundle")
    return rec


def test_models_shows_manifest_details(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_manifest(monkeypatch, tmp_path, bundled=True)
    r = derain("models", "--json")
    row = next(x for x in json.loads(r.stdout) if x["name"] == "semi-drdnet-lite")
    assert (row["weights"], row["status"], row["license"]) == ("bundled", "interim", "MIT")
    r = runner.invoke(app, ["models"], env={"COLUMNS": "160"})
    assert "rain100l 35.10/0.9610" in r.stdout and "interim" in r.stdout


def test_models_says_damaged_bundled_and_unpublished_weights(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A bundled file whose sha256 no longer matched was listed "bundled" (every run refused
    it); weights the Hub does not have were "remote = downloaded on first use", which could
    only fail; the size of weights not bundled was "-" (an audit)."""
    from derain_cli import weights

    rec = _fake_manifest(monkeypatch, tmp_path, bundled=True)
    (tmp_path / "bundle" / "demo.safetensors").write_bytes(b"pretend weightz")
    row = next(x for x in json.loads(derain("models", "--json").stdout)
               if x["name"] == "semi-drdnet-lite")
    assert row["weights"] == "bundled"
    assert row["weights_problem"] == "its sha256 does not match the manifest"
    r = runner.invoke(app, ["models"], env={"COLUMNS": "200"})
    assert "bundled: damaged, reinstall derain" in r.stdout
    (tmp_path / "bundle" / "demo.safetensors").unlink()
    rec.size = 2_500_000  # (the manifest's size, shown though not bundled)
    r = runner.invoke(app, ["models"], env={"COLUMNS": "200"})
    line = next(x for x in r.stdout.splitlines() if x.startswith("semi-drdnet-lite "))
    assert " 2.5 MB  remote " in line, line
    rec.hub["published"] = False  # nothing can fetch it: installed with derain, its file
    # gone (it said "none = not published yet, train your own": an audit)
    monkeypatch.setattr(weights, "load_manifest", lambda path=None: {rec.name: rec})
    row = next(x for x in json.loads(derain("models", "--json").stdout)
               if x["name"] == "semi-drdnet-lite")
    assert row["weights"] == "bundled"
    assert row["weights_problem"] == "its file demo.safetensors is missing"


def test_a_damaged_bundled_int8_graph_is_said_everywhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A damaged int8 graph was listed as "+ int8 (CPU)", `download` said "nothing to do
    (sha256 verified)" and the default path ran PyTorch with no word (an audit)."""
    import shutil

    from derain_cli import fast_path, weights
    from derain_cli.enhancer import Derainer

    bundle = tmp_path / "bundle"
    shutil.copytree(weights.bundled_dir(), bundle)
    graph = bundle / "semi-drdnet-fast.int8.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 1
    graph.write_bytes(bytes(data))
    monkeypatch.setattr(fast_path, "bundled_dir", lambda: bundle)
    rows = {r["name"]: r for r in json.loads(derain("models", "--json").stdout)}
    assert rows["semi-drdnet-fast"]["int8_problem"] == (
        f"{graph} does not match its manifest sha256")
    assert rows["semi-drdnet-tiny"]["int8_problem"] is None
    r = runner.invoke(app, ["models"], env={"COLUMNS": "200"})
    assert r.stdout.count("+ int8 (CPU): damaged, not used") == 1
    r = derain("download", "semi-drdnet-fast", "semi-drdnet-tiny")
    assert r.exit_code == 1 and "semi-drdnet-tiny: bundled, nothing to do" in r.stdout
    assert "semi-drdnet-fast: bundled weights verified, but its int8 graph is not usable" \
        in " ".join(r.stderr.split())
    with caplog.at_level("WARNING", logger="derain_cli"):
        d = Derainer("semi-drdnet-fast", device="cpu", threads=1)
    assert d.precision != "int8"
    assert [m.getMessage() for m in caplog.records] == [
        f"the bundled int8 graph is not used: {graph} does not match its manifest sha256 "
        "(reinstalling derain restores it); another engine runs instead"]
    # asked for by name: the installation's fault, exit 1 as other damaged weights (it was
    # a usage error, exit 2, without the way out: an audit)
    r = derain(_img(tmp_path / "p.png", 40, 30), "-m", "semi-drdnet-fast", "--precision",
               "int8", "-o", tmp_path / "out", "--threads", "1")
    assert r.exit_code == 1 and "reinstalling derain restores it" in r.stderr, r.stderr


# --------------------------------------------------------------------------- download
def test_an_interrupted_download_does_not_promise_to_resume(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C'd download said "run the same command again to resume (finished files are
    skipped)"; the file cut short starts over (an audit)."""
    from derain_cli import weights

    def cut(name: str, **kw: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(weights, "resolve", cut)
    r = derain("download", "semi-drdnet-tiny")
    assert r.exit_code == 130 and "one cut short may start over" in " ".join(
        r.stderr.split()) and "to resume" not in r.stderr


def test_download_bundled_is_verified(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_manifest(monkeypatch, tmp_path, bundled=True)
    r = derain("download", "semi-drdnet-lite")
    assert r.exit_code == 0 and "bundled, nothing to do" in r.stdout
    (tmp_path / "bundle" / "demo.safetensors").write_bytes(b"corrupted")
    r = derain("download", "--all")
    assert r.exit_code == 1 and "does not match the manifest's" in r.stderr
    assert "reinstall derain" in r.stderr


def test_download_usage_errors(tmp_path: Path) -> None:
    assert derain("download").exit_code == 2
    r = derain("download", "no-such-model")
    assert r.exit_code == 2 and "no-such-model" in r.stderr
    r = derain("download", "rdmc")  # registered, never trained: say so, and what to do
    assert r.exit_code == 1 and "'rdmc' has no pretrained weights yet" in r.stderr
    assert "derain train --model rdmc" in r.stderr
    assert "with derain --weights" in r.stderr  # download has no --weights (an audit)
    # the same exit as the main command gives for that model (not a usage error: the name
    # is right, the weights are missing)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    r = derain(str(tmp_path / "x.png"), "-m", "rdmc", "-o", str(tmp_path / "out"))
    assert r.exit_code == 1 and "'rdmc' has no pretrained weights yet" in r.stderr
    assert derain("download", "rdmc", "--all").exit_code == 2


def test_a_folder_given_as_weights_is_named_for_its_model(tmp_path: Path) -> None:
    """A run folder given as --weights got Click's "is a directory" (an audit): its model is
    named, in every command that takes a weights file."""
    src = _img(tmp_path / "a.png")
    run = tmp_path / "run"
    run.mkdir()
    for args in ((src,), ("eval", tmp_path), ("export", "-o", tmp_path / "x.onnx"),
                 ("finetune", "--rainy", tmp_path, "-o", tmp_path / "ft")):
        r = derain(*args, "--weights", run)
        said = " ".join(r.stderr.replace("│", " ").split())
        assert r.exit_code == 2 and "is a folder; give a weights file" in said, r.stderr
    (run / "model.safetensors").write_bytes(b"x")
    r = derain(src, "--weights", run)
    assert r.exit_code == 2 and "its run's model is" in " ".join(
        r.stderr.replace("│", " ").split())


def test_json_names_the_error_a_run_stopped_on(tmp_path: Path, tiny_weights: Path) -> None:
    """A run refused for its weights or device printed nothing on stdout with --json: a
    script reading it learnt only the exit status (session 66's note)."""
    import torch

    src = _img(tmp_path / "a.png")
    cases = [(("-m", "rdmc"), 1, "'rdmc' has no pretrained weights yet"),
             (("--weights", tmp_path / "a.png"), 1, "not a weights file"),
             (("--weights", tiny_weights, "--tile", "8"), 2, "at least 16 px")]
    if not torch.cuda.is_available():
        cases.append((("--weights", tiny_weights, "--device", "cuda"), 2, "no CUDA GPU"))
    for args, code, text in cases:
        r = derain(src, *args, "--json", "-o", tmp_path / "out")
        summary = json.loads(r.stdout)
        assert r.exit_code == code and text in summary["error"], (args, r.stdout)
        assert text in r.stderr and summary["processed"] == 0
    r = derain(src, "--weights", tiny_weights, "--json", "-o", tmp_path / "out")
    assert r.exit_code == 0 and json.loads(r.stdout)["error"] is None
    # the output's refusals too, before the model (a review)
    r = derain(src, src, "--weights", tiny_weights, "--json", "-o", tmp_path / "one.jpg")
    assert r.exit_code == 2 and "takes exactly one input file" in json.loads(r.stdout)["error"]


_SIGTERM_MIDWAY = """
import os, signal, sys
from derain_cli import images
real = images._atomic_write
def atomic(dest, save, replace=True):
    def save_then_terminated(fp):
        save(fp)
        if not os.environ.get("NO_SIGNAL"):
            os.kill(os.getpid(), getattr(signal, os.environ["SIG"]))  # as `timeout` sends it
    real(dest, save_then_terminated, replace=replace)
images._atomic_write = atomic
# as in a terminal session (the test may run under nohup, which ignores SIGHUP), or nohup's
signal.signal(signal.SIGHUP, signal.SIG_IGN if os.environ.get("NOHUP") else signal.SIG_DFL)
from derain_cli.cli import main
sys.argv = ["derain", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("sig, status", [("SIGTERM", 143), ("SIGHUP", 129)])
def test_termination_signals_stop_like_ctrl_c(tmp_path: Path, tiny_weights: Path,
                                              sig: str, status: int) -> None:
    """SIGTERM (timeout, docker stop, Slurm) killed the process mid-write: a .derain-*.tmp
    stayed beside the photos and --json printed nothing (audit)."""
    for i in range(3):
        _img(tmp_path / "in" / f"p{i}.png", seed=i)
    args = [str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--json",
            "--weights", str(tiny_weights), "--threads", "1"]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    p = subprocess.run([sys.executable, "-c", _SIGTERM_MIDWAY, *args], capture_output=True,
                       text=True, env={**env, "SIG": sig}, timeout=120)
    assert p.returncode == status, p.stderr
    summary = json.loads(p.stdout)
    assert summary["interrupted"] is True and summary["processed"] == 0
    # no temporary left: the folder it made, with only its marker, was taken back (a
    # leftover .tmp would have kept it)
    assert not (tmp_path / "out").exists()
    p = subprocess.run([sys.executable, "-c", _SIGTERM_MIDWAY, *args], capture_output=True,
                       text=True, env={**env, "SIG": sig, "NO_SIGNAL": "1"}, timeout=120)
    assert p.returncode == 0 and json.loads(p.stdout)["processed"] == 3  # resumed


def test_a_sighup_that_nohup_ignores_stays_ignored(tmp_path: Path, tiny_weights: Path) -> None:
    for i in range(2):
        _img(tmp_path / "in" / f"p{i}.png", seed=i)
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    p = subprocess.run([sys.executable, "-c", _SIGTERM_MIDWAY, str(tmp_path / "in"), "--json",
                        "--weights", str(tiny_weights), "--threads", "1"], capture_output=True,
                       text=True, env={**env, "SIG": "SIGHUP", "NOHUP": "1"}, timeout=120)
    assert p.returncode == 0 and json.loads(p.stdout)["processed"] == 2, p.stderr


def test_fp16_refusal_with_the_onnx_backend_advises_what_it_runs(tmp_path: Path) -> None:
    src = _img(tmp_path / "a.png")
    r = derain(src, "--backend", "onnx", "--precision", "fp16")
    assert r.exit_code == 2 and "use --precision fp32" in r.stderr
    assert "bf16" not in r.stderr


def test_download_names_every_problem_and_fetches_the_rest(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    """It stopped at the first untrained name: a typo after it went unreported and the
    good names were not fetched (audit)."""
    _fake_manifest(monkeypatch, tmp_path, bundled=True)
    r = derain("download", "semi-drdnet-lite", "nosuch", "semi-drdnet", "typo2")
    assert r.exit_code == 2 and "'nosuch', 'typo2'" in r.stderr
    assert "bundled, nothing to do" not in r.stdout  # usage errors before any work
    r = derain("download", "semi-drdnet-lite", "semi-drdnet", "rdmc")
    assert r.exit_code == 1
    assert "'semi-drdnet' has no pretrained weights" in r.stderr
    assert "'rdmc' has no pretrained weights" in r.stderr
    assert "semi-drdnet-lite: bundled, nothing to do" in r.stdout
    assert r.stderr.rstrip().endswith("2 of 3 models not fetched (reasons above); 1 ready")
    r = derain("download", "semi-drdnet-lite", "rdmc")  # two: the tally too (an audit)
    assert r.exit_code == 1
    assert r.stderr.rstrip().endswith("1 of 2 models not fetched (reasons above); 1 ready")


def test_download_takes_m_like_the_other_commands(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    _fake_manifest(monkeypatch, tmp_path, bundled=True)
    r = derain("download", "-m", "semi-drdnet-lite")
    assert r.exit_code == 0 and "semi-drdnet-lite: bundled, nothing to do" in r.stdout
    assert derain("download", "-m", "nope").exit_code == 2


_MANIFEST_SCRIPT = """
import sys
from pathlib import Path
import derain_cli.weights as w
bundle, sha, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
rec = w.WeightRecord(name="semi-drdnet-lite", arch="semi-drdnet", config={},
                     file="demo.safetensors", sha256=sha, size=size, dtype="float16",
                     hub={"repo_id": "derain-test/demo", "filename": "demo.safetensors",
                          "revision": "0123456789abcdef0123456789abcdef01234567"})
w.load_manifest = lambda path=None: {rec.name: rec}
w.bundled_dir = lambda: Path(bundle)
sys.argv[1:] = sys.argv[4:]
from derain_cli.cli import main
main()
"""
_DEMO = b"pretend these are weights"


def _cli_with_remote_manifest(tmp_path: Path, *args: str, size: int = len(_DEMO), **env: str):
    """Run the CLI in a fresh process (huggingface_hub reads HF_* at import) with a manifest
    holding one remote-only record for derain-test/demo (of ``size`` bytes, it says)."""
    import hashlib

    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("HF_", "HUGGINGFACE_")) and k not in ("WORLD_SIZE", "RANK")}
    clean.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_CACHE=str(tmp_path / "cache"),
                 HF_HUB_DISABLE_TELEMETRY="1", **env)
    sha = hashlib.sha256(_DEMO).hexdigest()
    return subprocess.run(
        [sys.executable, "-c", _MANIFEST_SCRIPT, str(tmp_path / "bundle"), sha, str(size),
         *args],
        capture_output=True, text=True, env=clean, timeout=120,
    )


def test_models_lists_the_bundled_int8_graph_beside_cached_weights(monkeypatch) -> None:
    """With the weights from the Hub cache (a bundled file removed) the row hid the bundled
    int8 graph that the run still used (an audit)."""
    from derain_cli import cli

    monkeypatch.setattr(cli, "_weights_location", lambda rec: "cached")
    row = next(r for r in cli.model_rows() if r["name"] == "semi-drdnet-tiny")
    assert row["weights"] == "cached" and row["int8"] and row["int8_problem"] is None
    monkeypatch.setattr(cli, "_weights_location", lambda rec: "remote")
    row = next(r for r in cli.model_rows() if r["name"] == "semi-drdnet-tiny")
    assert not row["int8"]  # no weights here yet: nothing runs


def test_download_offline_is_friendly(tmp_path: Path) -> None:
    p = _cli_with_remote_manifest(tmp_path, "download", "semi-drdnet-lite", HF_HUB_OFFLINE="1")
    assert p.returncode == 1, p.stderr
    assert "error: Cannot get pretrained weights" in p.stderr
    assert "offline" in p.stderr.lower()
    assert "Traceback" not in p.stderr
    # advice for the commands that derain photos, not for download (an audit)
    assert "--weights FILE" not in p.stderr and p.stderr.rstrip().endswith(").")


def test_download_then_cached(tmp_path: Path, hub_server) -> None:
    hub_server.add("derain-test/demo", "0123456789abcdef0123456789abcdef01234567",
                   "demo.safetensors", _DEMO)
    p = _cli_with_remote_manifest(tmp_path, "download", "--all", "-q", HF_ENDPOINT=hub_server.url)
    assert p.returncode == 0, p.stderr
    assert "semi-drdnet-lite:" in p.stdout and "(sha256 verified)" in p.stdout
    path = Path(p.stdout.split("semi-drdnet-lite: ")[1].split(" (sha256")[0])
    assert path.read_bytes() == _DEMO and (tmp_path / "cache") in path.parents

    p = _cli_with_remote_manifest(tmp_path, "models", "--json", HF_HUB_OFFLINE="1")
    assert p.returncode == 0, p.stderr
    row = next(r for r in json.loads(p.stdout) if r["name"] == "semi-drdnet-lite")
    assert row["weights"] == "cached"
    blob = Path(os.path.realpath(path))  # a damaged copy was still listed as cached (an
    blob.chmod(0o644)  # audit): runs would download it again
    blob.write_bytes(b"\0" * len(_DEMO))
    p = _cli_with_remote_manifest(tmp_path, "models", "--json", HF_HUB_OFFLINE="1")
    row = next(r for r in json.loads(p.stdout) if r["name"] == "semi-drdnet-lite")
    assert row["weights"] == "remote", p.stdout


def test_download_force_fetches_again_and_a_plain_download_does_not(tmp_path: Path,
                                                                     hub_server) -> None:
    """--force reached no download (a mutation audit: resolve's force=False survived): the
    cached copy was reported as fetched."""
    hub_server.add("derain-test/demo", "0123456789abcdef0123456789abcdef01234567",
                   "demo.safetensors", _DEMO)
    for args, gets in ((), 1), ((), 1), (("--force",), 2):
        p = _cli_with_remote_manifest(tmp_path, "download", "--all", "-q", *args,
                                      HF_ENDPOINT=hub_server.url)
        assert p.returncode == 0, p.stderr
        assert len(hub_server.requests_for("GET")) == gets, (args, hub_server.requests)


def test_download_refuses_a_file_of_another_size_than_the_manifest_says(
        tmp_path: Path, hub_server) -> None:
    """The manifest's size reaches the downloader: a server announcing another size is
    refused before the body is fetched (a security audit: a hostile mirror could fill the
    disk before the checksum refused the file)."""
    hub_server.add("derain-test/demo", "0123456789abcdef0123456789abcdef01234567",
                   "demo.safetensors", _DEMO)
    p = _cli_with_remote_manifest(tmp_path, "download", "--all", "-q", size=len(_DEMO) - 1,
                                  HF_ENDPOINT=hub_server.url)
    assert p.returncode == 1 and "size mismatch" in p.stderr, p.stderr
    assert hub_server.requests_for("GET") == []


def test_progress_bars_render_on_a_terminal(tmp_path: Path, tiny_weights: Path) -> None:
    """The file bar and the tile bar (what a user sees on a TTY) run through without error,
    and failure lines are printed above them."""
    import io

    from rich.console import Console

    from derain_cli.batch import BatchOptions, collect_inputs, run_batch
    from derain_cli.cli import _RichProgress
    from derain_cli.enhancer import Derainer

    _img(tmp_path / "big.png", 40, 30)
    (tmp_path / "zero.png").write_bytes(b"")
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100, highlight=False)
    progress = _RichProgress(console, bars=True, report_failures=True, rank=0)
    derainer = Derainer(weights=tiny_weights, device="cpu", tile=16, tile_overlap=4)
    with progress:
        s = run_batch(collect_inputs([str(tmp_path)]), derainer, BatchOptions(), progress)
    assert (s.processed, len(s.failed)) == (1, 1)
    text = buf.getvalue()
    # A long temporary path wraps the failure line at 100 columns: compare the words
    # without the terminal's escape codes.
    words = " ".join(re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).split())
    assert "tiles" in text and "zero.png: empty file (0 bytes)" in words


def test_tile_bar_shows_work_done_and_no_bar_for_one_piece() -> None:
    """The tile bar follows the tiler's work units as a percentage (its time estimate then
    holds across cheap statistics tiles and final ones); an image done in one piece gets
    no bar, and the files bar counts files."""
    import io

    from rich.console import Console

    from derain_cli.cli import _RichProgress

    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    progress = _RichProgress(console, bars=True, report_failures=False, rank=0)
    with progress:
        progress.start(3)
        progress.tile(640_000, 640_000)  # untiled: one call, already complete
        assert progress.tiles is None
        progress.tile(1_000, 8_000)
        task = next(t for t in progress.bars.tasks if t.id == progress.tiles)
        assert (task.completed, task.total, task.fields["count"]) == (1_000, 8_000, " 12%")
        progress.tile(8_000, 8_000)
        assert task.fields["count"] == "100%"
        files = next(t for t in progress.bars.tasks if t.id == progress.files)
        assert files.fields["count"] == "0/3"


def test_ctrl_c_while_the_command_still_imports_is_quiet() -> None:
    """24 of 24 Ctrl-C's in the first ~150 ms printed a KeyboardInterrupt traceback from
    `import typer` (audit). The interrupt is made to land in that import here."""
    import subprocess
    import sys

    code = """
import sys
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "derain_cli.cli":
            raise KeyboardInterrupt
sys.meta_path.insert(0, Interrupt())
from derain_cli.__main__ import run
run()
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 130 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip() == "interrupted"


def test_a_file_name_with_a_newline_fails_on_one_line(tmp_path: Path, tiny_weights: Path) -> None:
    bad = tmp_path / "two\nlines.jpg"
    bad.write_text("not a photo")
    r = derain(bad, "--weights", tiny_weights)
    assert r.exit_code == 1
    failed = [ln for ln in r.stderr.splitlines() if ln.startswith("failed:")]
    assert len(failed) == 1 and "two\\nlines.jpg" in failed[0], r.stderr


def test_banner_names_the_model_once() -> None:
    """'model semi-drdnet-fast [semi-drdnet-fast (interim)]' read as two models (audit)."""
    from types import SimpleNamespace

    from derain_cli.cli import _weights_phrase

    own = SimpleNamespace(model_name="semi-drdnet-fast", weights_label="semi-drdnet-fast (interim)",
                          weights_status="interim")
    assert _weights_phrase(own) == " (interim weights)"
    mine = SimpleNamespace(model_name="semi-drdnet-tiny", weights_label="/data/my.safetensors",
                           weights_status=None)
    assert _weights_phrase(mine) == " [weights /data/my.safetensors]"


def test_models_list_metrics_in_one_order_and_download_all_names_the_untrained() -> None:
    from derain_cli.cli import _fmt_metrics

    m = {"sirr-val": {"psnr_y": 25.0}, "other": "x", "heavy-small": {"psnr_y": 24.0},
         "rain100l": {"psnr_y": 32.0, "ssim_y": 0.9}}
    assert _fmt_metrics(m) == "rain100l 32.00/0.9000; heavy-small 24.00; sirr-val 25.00; other x"
    r = CliRunner().invoke(app, ["download", "--all"])
    assert r.exit_code == 0, r.output
    assert "semi-drdnet: no weights published yet, skipped" in r.output  # not silently left out
    assert "rdmc: no weights published yet, skipped" in r.output


def test_help_says_when_a_word_is_a_subcommand() -> None:
    """The epilog said subcommands must be the very first word, but --debug may come first
    (audit); `derain --debug eval` works, and the help says so."""
    from derain_cli.cli import EPILOG, DerainGroup

    assert "after --debug at most" in EPILOG and "derain --debug eval" in EPILOG
    assert "--debug" in DerainGroup.GROUP_FLAGS


def test_debug_is_taken_after_a_subcommand_too(tmp_path: Path) -> None:
    """`derain models --debug` said "No such option: --debug": only the main job had it."""
    assert derain("models", "--debug").exit_code == 0
    for side in ("rainy", "clean"):
        _img(tmp_path / "p" / side / "a.png")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"junk")
    r = derain("eval", "--weights", bad, "--data", tmp_path / "p")
    assert r.exit_code == 1 and "error: " in r.stderr
    r = derain("eval", "--weights", bad, "--data", tmp_path / "p", "--debug")
    assert r.exception is not None and not isinstance(r.exception, SystemExit)
    # after "--" it is an argument, not the flag
    assert derain("models", "--", "--debug").exit_code == 2


def test_strength_mixes_the_photo_with_its_derained_self(tmp_path: Path,
                                                         tiny_weights: Path) -> None:
    src = _img(tmp_path / "in" / "a.png", w=40, h=30)
    full = derain(src, "--weights", tiny_weights, "-o", tmp_path / "full.png")
    half = derain(src, "--weights", tiny_weights, "-o", tmp_path / "half.png",
                  "--strength", "0.5")
    assert full.exit_code == 0 and half.exit_code == 0, half.output
    assert "strength 0.5" in half.output  # the banner says it
    x, f, h = (np.asarray(Image.open(p), dtype=np.float64)
               for p in (src, tmp_path / "full.png", tmp_path / "half.png"))
    assert np.abs(f - x).max() > 10
    assert np.abs(h - (x + f) / 2).max() <= 1  # 8-bit rounding of each result
    js = derain(src, "--weights", tiny_weights, "-o", tmp_path / "q.png", "--strength",
                "0.25", "--json")
    assert json.loads(js.stdout)["engine"]["strength"] == 0.25
    # strength 0 runs no network: the banner names no passes or turns (it did: an audit)
    zero = derain(src, "--weights", tiny_weights, "-o", tmp_path / "z.png", "--strength", "0",
                  "--ensemble", "4", "--rain-angle", "45")
    said = " ".join(zero.output.split())
    assert zero.exit_code == 0 and "strength 0: photos written as they are" in said, said
    assert "ensemble" not in said and "turned upright" not in said
    for value in ("2", "-0.1", "nan"):  # NaN was refused as "less than or equal to 1"
        bad = derain(src, "--weights", tiny_weights, "-o", tmp_path / "b.png", "--strength",
                     value)
        assert bad.exit_code == 2 and not (tmp_path / "b.png").exists()
        assert "use a number from 0" in bad.output and "equal" not in bad.output


def test_ensemble_reaches_the_library_and_its_json(tmp_path: Path, tiny_weights: Path) -> None:
    """--ensemble N gives the library's N-pass result (that the passes are the mirrored
    copies' mean is test_enhancer's test_ensemble_is_the_mean_of_the_copies_results)."""
    from derain_cli import Derainer

    src = _img(tmp_path / "in" / "a.png", w=40, h=30)
    r = derain(src, "--weights", tiny_weights, "-o", tmp_path / "e.png", "--ensemble", "4")
    assert r.exit_code == 0, r.output
    assert "ensemble of 4 passes" in r.output  # the banner says it
    want = Derainer(weights=tiny_weights, device="cpu", ensemble=4).derain(Image.open(src))
    got = np.asarray(Image.open(tmp_path / "e.png"), dtype=np.int16)
    assert np.abs(got - np.asarray(want, dtype=np.int16)).max() <= 1  # 8-bit rounding
    single = derain(src, "--weights", tiny_weights, "-o", tmp_path / "s.png")
    assert single.exit_code == 0
    assert np.abs(got - np.asarray(Image.open(tmp_path / "s.png"), dtype=np.int16)).max() > 1
    js = derain(src, "--weights", tiny_weights, "-o", tmp_path / "j.png", "--ensemble", "2",
                "--json")
    assert json.loads(js.stdout)["engine"]["ensemble"] == 2
    bad = derain(src, "--weights", tiny_weights, "-o", tmp_path / "b.png", "--ensemble", "3")
    assert bad.exit_code == 2 and "1, 2 or 4" in bad.output
    assert not (tmp_path / "b.png").exists()


def test_rain_angle_turns_the_photo_for_the_model(tmp_path: Path, tiny_weights: Path) -> None:
    from derain_cli import Derainer

    src = _img(tmp_path / "in" / "a.png", w=40, h=30)
    r = derain(src, "--weights", tiny_weights, "-o", tmp_path / "t.png", "--rain-angle", "-50")
    assert r.exit_code == 0, r.output
    assert "rain turned upright from -50 degrees" in r.output  # the banner says it
    want = Derainer(weights=tiny_weights, device="cpu", rain_angle=-50).derain(Image.open(src))
    got = np.asarray(Image.open(tmp_path / "t.png"), dtype=np.int16)
    assert np.abs(got - np.asarray(want, dtype=np.int16)).max() <= 1  # 8-bit rounding
    plain = derain(src, "--weights", tiny_weights, "-o", tmp_path / "p.png")
    assert plain.exit_code == 0 and "rain turned" not in plain.output
    assert np.abs(got - np.asarray(Image.open(tmp_path / "p.png"), dtype=np.int16)).max() > 1
    js = derain(src, "--weights", tiny_weights, "-o", tmp_path / "j.png", "--rain-angle", "30",
                "--json")
    assert json.loads(js.stdout)["engine"]["rain_angle"] == 30.0
    assert json.loads(js.stdout)["files"][0]["rain_angle"] == 30.0  # the turn it got
    for bad in ("95", "nan", "sideways"):
        r = derain(src, "--weights", tiny_weights, "-o", tmp_path / "b.png", "--rain-angle", bad)
        assert r.exit_code == 2 and "use auto or" in r.output, (bad, r.output)
        assert not (tmp_path / "b.png").exists()


def test_a_photo_too_long_to_turn_fails_alone_in_plain_words(tmp_path: Path,
                                                             tiny_weights: Path) -> None:
    """A 10:1 strip turned 45 degrees is refused (its canvas would be 6x), the folder's
    other photo derained; the failure line said "ValueError: ..." (audit)."""
    _img(tmp_path / "in" / "strip.png", w=200, h=20)
    _img(tmp_path / "in" / "square.png", w=40, h=30)
    r = derain(tmp_path / "in", "--weights", tiny_weights, "-o", tmp_path / "out",
               "--rain-angle", "45")
    assert r.exit_code == 1, r.output
    line = next(t for t in r.output.splitlines() if "strip.png" in t and "canvas" in t)
    assert "Error" not in line and "needs a canvas of 6.1 times its pixels" in line
    assert (tmp_path / "out" / "square.png").exists()
    assert not (tmp_path / "out" / "strip.png").exists()


def test_rain_angle_auto_says_each_photos_turn(tmp_path: Path, tiny_weights: Path) -> None:
    """``--rain-angle auto``: the banner says it, --json's engine record says "auto" and
    each file's record the turn that photo got (random noise: no lines to turn for)."""
    src = _img(tmp_path / "in" / "a.png", w=40, h=30)
    r = derain(src, "--weights", tiny_weights, "-o", tmp_path / "a.png", "--rain-angle", "auto")
    assert r.exit_code == 0 and "rain turned upright where it slants (auto)" in r.output
    assert "--rain-angle auto turned 0 of 1 photo(s)" in r.output  # the summary says which
    js = derain(src, "--weights", tiny_weights, "-o", tmp_path / "j.png", "--rain-angle",
                "AUTO", "--json")
    got = json.loads(js.stdout)
    assert got["engine"]["rain_angle"] == "auto"
    assert got["files"][0]["rain_angle"] == 0.0  # noise: no lines to turn for
    plain = json.loads(derain(src, "--weights", tiny_weights, "-o", tmp_path / "p.png",
                              "--json").stdout)
    assert plain["files"][0]["rain_angle"] == 0.0


def test_a_log_gets_progress_lines_instead_of_bars(tmp_path: Path, tiny_weights: Path) -> None:
    """Where stderr is not a terminal, the bars draw nothing; a folder job prints plain
    progress lines (here with no throttle: one per file and per tile update)."""
    import io

    from rich.console import Console

    from derain_cli.batch import BatchOptions, collect_inputs, run_batch
    from derain_cli.cli import _RichProgress
    from derain_cli.enhancer import Derainer

    for name in ("a.png", "b.png"):
        _img(tmp_path / name, 40, 30)
    buf = io.StringIO()
    console = Console(file=buf, width=100)
    assert not console.is_terminal
    progress = _RichProgress(console, bars=False, report_failures=True, rank=0, lines=True,
                             every_s=0)
    derainer = Derainer(weights=tiny_weights, device="cpu", tile=16, tile_overlap=4)
    with progress:
        run_batch(collect_inputs([str(tmp_path)]), derainer, BatchOptions(), progress)
    text = buf.getvalue().splitlines()
    assert [ln.split(" files")[0] for ln in text if ln.startswith("derain ")
            and "of its work" not in ln] == ["derain 1/2", "derain 2/2"]
    # one line for both: the photo's share took every slot from the files' lines (an audit)
    assert any(re.fullmatch(r"derain 0/2 files elapsed \S+ ETA \S+; a\.png: \d+% of its "
                            r"work", ln) for ln in text), text
    assert text[-1].endswith("ETA 0:00:00")
    # under torchrun rank 0's lines count its own share, and say so: "2/2 files" of a run
    # of 4 read as the whole run (an audit)
    buf = io.StringIO()
    progress = _RichProgress(Console(file=buf, width=100), bars=False, report_failures=True,
                             rank=0, lines=True, every_s=0, world=2)
    with progress:
        run_batch(collect_inputs([str(tmp_path)]), derainer,
                  BatchOptions(overwrite=True), progress)
    assert "derain 2/2 files (this process's share, 1 of 2 processes) elapsed" in buf.getvalue()


def test_the_folder_estimate_counts_photos_derained_and_the_one_at_work(tmp_path) -> None:
    """Skipped results counted as photos done made a resumed run's estimate 10 times too
    short; the estimate stood still through a large photo; names of 40 characters hid the
    count and times on a narrow terminal; TERM=dumb showed no progress (an audit)."""
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from derain_cli.batch import FileResult
    from derain_cli.cli import _RichProgress
    from derain_cli.terminal import live_display

    console = Console(file=io.StringIO(), force_terminal=True, width=60)
    progress = _RichProgress(console, bars=True, report_failures=False, rank=0)
    jobs = []  # kept alive, as run_batch's are: the progress tells them apart by id

    def job():
        jobs.append(SimpleNamespace(item=SimpleNamespace(path=Path("a_long_name_from_t.jpg"))))
        return jobs[-1]

    with progress:
        progress.start(12)
        for status in ["skipped"] * 6 + ["processed"] * 2:
            one = job()
            progress.file_start(one)
            progress.file_done(one, FileResult("x", None, status))
        progress.t0 -= 10.0  # the two photos derained took 10 s
        assert progress.eta() == pytest.approx(10 / 2 * 4, rel=0.05)
        progress.file_start(job())
        assert progress.name == "a_long_na..."  # 12 characters left at 60 columns
        progress.tile(1, 4)  # a quarter of the ninth photo: the estimate moves
        assert progress.eta() == pytest.approx(10 / 2.25 * 3.75, rel=0.05)
    assert live_display(console)
    dumb = Console(file=io.StringIO(), force_terminal=True, _environ={"TERM": "dumb"})
    assert not live_display(dumb)


def test_a_subcommand_written_after_options_is_refused_before_any_work(tmp_path: Path) -> None:
    """`derain --threads 1 eval pairs/` derained the pair folder's images into it and then
    failed on 'eval'; `derain modles` printed a results table of nothing (audit)."""
    _img(tmp_path / "pairs" / "rain-1.png")
    r = derain("--threads", "1", "eval", tmp_path / "pairs", cwd=tmp_path)
    assert r.exit_code == 2 and "'eval' is a subcommand: write it first" in r.stderr
    assert sorted(p.name for p in (tmp_path / "pairs").iterdir()) == ["rain-1.png"]
    r = derain("modles", cwd=tmp_path)
    assert r.exit_code == 2 and "did you mean the subcommand 'models'" in r.stderr
    r = derain("help", cwd=tmp_path)
    assert r.exit_code == 2 and "run derain --help" in r.stderr
    (tmp_path / "modles").mkdir()  # a real folder of that name is a folder
    r = derain("modles", cwd=tmp_path)
    assert "did you mean" not in r.stderr and "no images found" in r.stderr


def test_a_finished_rerun_refuses_what_a_fresh_run_refuses(tmp_path: Path,
                                                            tiny_weights: Path) -> None:
    """With every result there, --tile 8, a --weights that is no weights file and an
    untrained -m exited 0 (audit): a cron job learnt of them only with a new photo."""
    import torch

    src = _img(tmp_path / "a.png")
    assert derain(src, "--weights", tiny_weights).exit_code == 0
    cases = [(("--weights", tiny_weights, "--tile", "8"), 2, "at least 16 px"),
             (("--weights", tmp_path / "a.png"), 1, "not a weights file"),
             (("-m", "semi-drdnet"), 1, "has no pretrained weights yet"),
             (("-m", "nosuch"), 2, "unknown model 'nosuch'"),
             # a file that does not fit -m exited 0 here, 1 on a fresh run (session 63)
             (("--weights", tiny_weights, "-m", "rdmc-lite"), 1, "do not fit --model"),
             (("--weights", tiny_weights, "-m", "nosuch"), 2, "unknown model 'nosuch'")]
    for args, code, text in cases:
        r = derain(src, *args)
        assert r.exit_code == code and text in r.stderr, (args, r.stderr)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for args, code, text in cases[-2:]:  # the same answer where there is work to do
        r = derain(_img(fresh / "b.png"), *args)
        assert r.exit_code == code and text in r.stderr, (args, r.stderr)
    torch.save({"w": torch.zeros(1)}, tmp_path / "w.pt")
    for args in (("--weights", tiny_weights), ("--weights", tmp_path / "w.pt"), ()):
        assert derain(src, *args).exit_code == 0, args  # nothing to do, nothing wrong


def test_glob_patterns_are_not_taken_for_mistyped_subcommands(tmp_path: Path,
                                                              tiny_weights: Path) -> None:
    """`derain 'rain*'` was refused as "did you mean 'train'" (review)."""
    _img(tmp_path / "rain-001.png")
    r = derain("rain*", "--weights", tiny_weights, cwd=tmp_path)
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "rain-001_derained.png").is_file()


def test_a_finished_rerun_reads_weights_names_as_a_fresh_run_does(tmp_path: Path,
                                                                   tiny_weights: Path) -> None:
    """Any name but .pt/.pth/.ckpt is read as safetensors (weights.read_state)."""
    import shutil

    src = _img(tmp_path / "a.png")
    shutil.copy(tiny_weights, tmp_path / "w.bin")
    for _ in range(2):  # fresh, then finished
        assert derain(src, "--weights", tmp_path / "w.bin").exit_code == 0


# ------------------------------------------------------------ odd names, pipes, terminals
def test_an_empty_path_is_a_usage_error_not_the_current_folder(tmp_path: Path,
                                                                tiny_weights: Path) -> None:
    """An audit: `derain "$PHOTO"` with an empty variable derained every photo of the
    current folder ("" is "." to pathlib), and `-o ""` was taken as no -o."""
    src = _img(tmp_path / "a.png")
    r = derain("", "--weights", tiny_weights, cwd=tmp_path)
    assert r.exit_code == 2 and 'an empty path ("")' in r.output
    r = derain(src, "-o", "", "--weights", tiny_weights)
    assert r.exit_code == 2 and '-o ""' in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_paths_that_look_like_markup_are_printed_as_they_are(tmp_path: Path,
                                                             tiny_weights: Path) -> None:
    """An audit: 'x[/y]/p.png' failed with a MarkupError after the photo was derained (exit
    1), and 'a[bold].png' was reported as 'a_derained.png'; a newline in a name split the
    "wrote" line."""
    for rel, shown in (("x[/y]/p.png", "x[/y]/p_derained.png"),
                       ("a[bold].png", "a[bold]_derained.png"),
                       ("new\nline.png", "new\\nline_derained.png")):
        src = _img(tmp_path / rel)
        r = derain(src, "--weights", tiny_weights, "--threads", "1")
        assert r.exit_code == 0, r.output
        assert f"wrote {tmp_path}/{shown}" in r.stderr


def test_names_that_are_not_utf8_are_shown_as_the_shell_shows_them(
        tmp_path: Path, tiny_weights: Path) -> None:
    name = os.fsdecode(b"caf\xe9.png")
    _img(tmp_path / name)
    r = derain(tmp_path / name, "--weights", tiny_weights, "--threads", "1")
    assert r.exit_code == 0, r.output
    assert "caf\\xe9_derained.png" in r.stderr and "\\udce9" not in r.stderr


def test_warnings_show_names_escaped_too(tmp_path: Path, tiny_weights: Path) -> None:
    """The "wrote" lines escaped a name's control characters but warnings and errors
    printed them raw: a folder named with an escape sequence could recolour or clear the
    user's terminal."""
    pics = tmp_path / "pics\x1b[2J"
    _img(pics / "a.png")
    (pics / "sub").mkdir()  # warned about: not entered without -r
    r = derain(pics, "--weights", tiny_weights, "--threads", "1")
    assert r.exit_code == 0, r.output
    assert "pics\\x1b[2J: 1 subfolder(s) not entered" in r.stderr
    assert "\x1b[2J" not in r.stderr
    forged = tmp_path / "pics\nerror: forged"  # a line break in a name forged a line
    _img(forged / "a.png")
    (forged / "sub").mkdir()
    r = derain(forged, "--weights", tiny_weights, "--threads", "1")
    assert "pics\\nerror: forged: 1 subfolder(s) not entered" in r.stderr, r.stderr
    assert not any(line.startswith("error: forged") for line in r.stderr.splitlines())
    for args in (("eval", "--model", "identity", "--data", tmp_path / "no\x1b[2J"),
                 ("synth", tmp_path / "no\x1b[2J", "-o", tmp_path / "p")):
        r = derain(*args)  # and errors, the subcommands' too
        assert r.exit_code == 2 and "no\\x1b[2J" in r.stderr and "\x1b" not in r.stderr, args


def test_a_narrow_terminal_gets_the_summary_as_a_line(tmp_path: Path) -> None:
    """An audit: at 20 columns the table's failed count showed as '…'."""
    import io

    from rich.console import Console

    from derain_cli.batch import BatchOptions, FileResult, Summary
    from derain_cli.cli import _print_summary

    s = Summary(failed=[("a.png", "x")],
                files=[FileResult("a.png", None, "failed", reason="x")])
    # 64-65: the table's last header came out "megapixel…" (an audit)
    for width, wanted in ((20, "failed 1,"), (64, "failed 1,"), (65, "failed 1,"),
                          (100, "failed")):
        buf = io.StringIO()
        _print_summary(Console(file=buf, width=width), s, BatchOptions())
        assert wanted in buf.getvalue() and "…" not in buf.getvalue(), buf.getvalue()


def test_a_reader_that_goes_away_ends_the_run_quietly(tmp_path: Path,
                                                      tiny_weights: Path) -> None:
    """An audit: `derain ... --json | true` printed "error: Broken pipe" and exited 1, the
    status of a failed photo, though every photo was done; `derain models >&-` failed with
    an AttributeError."""
    src = _img(tmp_path / "a.png")
    read, write = os.pipe()
    os.close(read)  # nobody reads: the first write fails with EPIPE
    try:
        p = subprocess.run(
            [sys.executable, "-m", "derain_cli", str(src), "--weights", str(tiny_weights),
             "--threads", "1", "--json"],
            stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert p.returncode == 141 and "error" not in p.stderr, p.stderr
    assert (tmp_path / "a_derained.png").is_file()
    p = subprocess.run([sys.executable, "-m", "derain_cli", "models"], stdout=None,
                       stderr=subprocess.PIPE, text=True, timeout=120,
                       preexec_fn=lambda: os.close(1))
    assert p.returncode == 0 and "error" not in p.stderr, p.stderr



def test_a_reader_that_goes_away_from_rich_output_ends_with_141_too(tmp_path: Path,
                                                                    tiny_weights: Path) -> None:
    """A docs audit: `derain models | true`, `derain --help | true` and `derain a.jpg 2>&1 |
    head` ended with 1, not the documented 141: rich's console catches the broken pipe and
    exits 1 itself."""
    src = _img(tmp_path / "a.png")
    for args, both in ((["models"], False), (["--help"], False),
                       ([str(src), "--weights", str(tiny_weights), "--threads", "1"], True)):
        read, write = os.pipe()
        os.close(read)
        try:
            p = subprocess.run([sys.executable, "-m", "derain_cli", *args], stdout=write,
                               stderr=write if both else subprocess.PIPE, text=True,
                               timeout=120)
        finally:
            os.close(write)
        assert p.returncode == 141, (args, p.returncode, p.stderr)
        assert both or p.stderr == "", p.stderr


def test_a_broken_pipe_that_is_not_stdout_is_an_error(tmp_path: Path) -> None:
    """A review: every BrokenPipeError ended the run quietly with 141, even one from a
    data loader's pipe while stdout was fine."""
    from derain_cli import cli

    def broken() -> None:
        raise BrokenPipeError(32, "Broken pipe")

    import io

    from rich.console import Console

    buf = io.StringIO()
    with pytest.raises(typer.Exit) as info, cli._friendly_errors(Console(file=buf), False):
        broken()
    assert info.value.exit_code == 1 and "error: " in buf.getvalue()


def test_no_help_text_loses_words_to_rich_markup() -> None:
    """Rich reads ``[word ...]`` in a help text as a style tag and drops it: eval's --csv
    help showed "Per-image CSV ." (audit). Every option's help of every command keeps its
    brackets escaped (``\\[default: ...]``)."""
    import re

    import typer

    from derain_cli.cli import app

    def commands(cmd: object) -> list:  # Typer's own click: duck-typed; lazy ones loaded
        if not hasattr(cmd, "list_commands"):
            return [cmd]
        names = cmd.list_commands(None)
        subs = [cmd.get_command(None, n) for n in names]
        return [cmd, *[c for s in subs if s is not None for c in commands(s)]]

    tag = re.compile(r"(?<!\\)\[[a-z#/@][^\[\]]*\]")
    every = commands(typer.main.get_command(app))
    found = [(c.name, p.name, p.help) for c in every for p in c.params
             if getattr(p, "param_type_name", "") == "option" and p.help
             and tag.search(p.help)]
    assert found == []
    assert {"eval", "train", "synth"} <= {c.name for c in every}  # the walk reached them


def _complete(words: str, cwd: Path, shell: str = "bash") -> list[str]:
    """What the completion script would offer for ``words`` (the last one being typed)."""
    import subprocess
    import sys

    env = {**os.environ, "_DERAIN_COMPLETE": f"complete_{shell}",
           "COMP_WORDS": words, "COMP_CWORD": str(len(words.split(" ")) - 1)}
    out = subprocess.run([sys.executable, "-m", "derain_cli"], env=env, cwd=cwd,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_shell_completion_offers_subcommands_options_models_and_leaves_paths(
        tmp_path: Path) -> None:
    """An audit: no completion at all ("Shell source not supported")."""
    import subprocess
    import sys

    from derain_cli.cli import _registry_names
    from derain_cli.models import MODELS

    script = subprocess.run([sys.executable, "-m", "derain_cli"], capture_output=True,
                            text=True, timeout=60,
                            env={**os.environ, "_DERAIN_COMPLETE": "bash_source"}).stdout
    assert "complete -o default -F _derain_completion derain" in script
    assert _complete("derain tr", tmp_path) == ["train"]
    assert _complete("derain train --st", tmp_path) == ["--steps"]
    assert _complete("derain -m semi-drdnet-l", tmp_path) == ["semi-drdnet-lite"]
    assert "rdmc-lite" in _complete("derain eval -m ", tmp_path)
    assert _complete("derain eval -m id", tmp_path) == ["identity"]
    from derain_cli.manifest import load_manifest  # download: only what can be fetched

    assert _complete("derain download ", tmp_path) == list(load_manifest())
    assert "semi-drdnet" not in _complete("derain download -m semi", tmp_path)
    assert _complete("derain x.jpg --mo", tmp_path) == ["--model"]
    # the main job's options first, and subcommands after --debug (an audit: neither)
    assert _complete("derain --thr", tmp_path) == ["--threads"]
    assert _complete("derain --debug gr", tmp_path) == ["grow"]
    (tmp_path / "examples").mkdir()  # a folder beside: the shell completes the path
    assert _complete("derain ex", tmp_path) == []
    # distill's and grow's models too (nothing was offered: an audit); a name or a file
    assert _complete("derain distill -m semi-drdnet-t", tmp_path) == ["semi-drdnet-tiny"]
    assert _complete("derain distill --student rdmc-", tmp_path) == ["rdmc-lite"]
    assert _complete("derain grow x --to semi-drdnet-l", tmp_path) == ["semi-drdnet-lite"]
    assert "rdmc" in _complete("derain grow ", tmp_path)
    assert _complete("derain grow ex", tmp_path) == []  # the folder: the shell's
    assert _registry_names() == list(MODELS)  # read from the source, without PyTorch
    # a Tab on the first word or on -m imports no PyTorch (the first word took 2 s: review)
    probe = ("import sys\nfrom derain_cli.cli import main\ntry:\n    main()\n"
             "except SystemExit:\n    pass\nprint('torch' in sys.modules, file=sys.stderr)")
    for words in ("derain ", "derain -m s", "derain --", "derain export --",  # (export's
                  "derain bench -m "):  # and bench's took 4 s: an audit)
        env = {**os.environ, "_DERAIN_COMPLETE": "complete_bash", "COMP_WORDS": words,
               "COMP_CWORD": str(len(words.split(" ")) - 1)}
        ran = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
        assert ran.stderr.strip().splitlines()[-1] == "False", (words, ran.stderr)
    assert "models" in _complete("derain ", tmp_path)


def test_listing_and_refusing_models_imports_no_pytorch(tmp_path: Path) -> None:
    """`derain models` imported PyTorch to count parameters and read the manifest: 2 s and
    more before a line (session 70's list); the registry and the weights checks answer
    without it now, as do `download`, an unknown `-m` and one without weights."""
    probe = ("import sys\nfrom derain_cli.cli import main\nsys.argv = ['derain', *sys.argv[1:]]"
             "\ntry:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
             "print(code, 'torch' in sys.modules, file=sys.stderr)")
    env = {**os.environ, "DERAIN_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    _img(tmp_path / "a.png")
    for args, code in ((["models"], 0), (["models", "--json"], 0),
                       (["download", "semi-drdnet-tiny"], 0),
                       (["a.png", "-m", "nope"], 2), (["a.png", "-m", "semi-drdnet"], 1)):
        ran = subprocess.run([sys.executable, "-c", probe, *args], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        assert ran.stderr.strip().splitlines()[-1] == f"{code} False", (args, ran.stderr)
    assert "semi-drdnet-fast" in subprocess.run(
        [sys.executable, "-c", probe, "models"], env=env, cwd=tmp_path, capture_output=True,
        text=True, timeout=120).stdout


def test_output_file_refusals_are_kept(tmp_path: Path, tiny_weights: Path) -> None:
    """A mutation audit: without these checks `-o out.jpg --format png` wrote PNG data into
    out.jpg, and `-o out.GIF` made a folder out.GIF/ (the suffix compared as typed)."""
    src = _img(tmp_path / "a.png")
    r = derain(src, "--weights", tiny_weights, "-o", tmp_path / "out.jpg", "--format", "png")
    assert r.exit_code == 2 and "--format png contradicts -o" in " ".join(r.stderr.split())
    assert not (tmp_path / "out.jpg").exists()
    r = derain(src, "--weights", tiny_weights, "-o", tmp_path / "out.GIF")
    assert r.exit_code == 2 and "cannot write .GIF files" in r.stderr, r.stderr
    assert not (tmp_path / "out.GIF").exists()


def test_max_pixels_0_is_no_limit(tmp_path: Path, tiny_weights: Path) -> None:
    """`--max-pixels 0` means no limit (its help); passed on as 0 it failed every photo as
    "more than --max-pixels (0 pixels)" (a mutation audit)."""
    src = _img(tmp_path / "a.png", 40, 30)
    r = derain(src, "--weights", tiny_weights, "--max-pixels", "0", "-o", tmp_path / "x.png")
    assert r.exit_code == 0 and (tmp_path / "x.png").is_file(), r.stderr
    r = derain(src, "--weights", tiny_weights, "--max-pixels", "1000", "-o", tmp_path / "y.png")
    assert r.exit_code == 1 and not (tmp_path / "y.png").exists()


def test_an_output_folder_inside_the_input_tree_is_not_scanned(tmp_path: Path,
                                                               tiny_weights: Path) -> None:
    """`derain t -r -o t/res/` where t/res holds other files (so no derain marker): the
    second run derained t/res/a.png into t/res/res/ and failed a.png, exit 1, without the
    -o folder kept out of the scan (a mutation audit)."""
    _img(tmp_path / "t" / "a.png")
    (tmp_path / "t" / "res").mkdir()
    (tmp_path / "t" / "res" / "note.txt").write_text("mine")
    for _ in range(2):
        r = derain(tmp_path / "t", "-r", "-o", f"{tmp_path / 't' / 'res'}/",
                   "--weights", tiny_weights)
        assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "t" / "res").iterdir()) == ["a.png", "note.txt"]


def test_a_finished_rerun_takes_and_refuses_as_a_fresh_run(tmp_path: Path,
                                                          tiny_weights: Path) -> None:
    """Boundaries a finished rerun checks without a model (a mutation audit): --tile 16 is
    the smallest tile a fresh run takes, so the rerun takes it too; fp16 on a CPU is
    refused by both."""
    import torch

    src = _img(tmp_path / "a.png")
    assert derain(src, "--weights", tiny_weights).exit_code == 0
    r = derain(src, "--weights", tiny_weights, "--tile", "16")
    assert r.exit_code == 0, r.stderr
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        r = derain(src, "--weights", tiny_weights, "--precision", "fp16")
        assert r.exit_code == 2, r.stderr


def test_int8_on_auto_with_a_gpu_is_refused_by_a_rerun_as_by_a_fresh_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a GPU (faked here), --device auto is the GPU, where a fresh run refuses
    --precision int8; a rerun over finished results took auto for a CPU and exited 0
    (a review of a mutation audit)."""
    import torch

    from derain_cli import fast_path

    src = _img(tmp_path / "a.png")
    assert derain(src, "-o", tmp_path / "out.png", "-m", "semi-drdnet-tiny").exit_code == 0
    monkeypatch.setattr(fast_path, "surely_cpu", lambda device: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for out in ("fresh.png", "out.png"):  # a fresh run, then a finished rerun
        r = derain(src, "-o", tmp_path / out, "-m", "semi-drdnet-tiny", "--precision", "int8")
        assert r.exit_code == 2 and "int8 runs on CPUs only" in r.stderr, (out, r.stderr)
    assert not (tmp_path / "fresh.png").exists()


def test_the_engine_is_weighed_by_the_whole_folder_and_the_run_start_is_kept(
        tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rerun that redoes one photo of a folder weighs the engine by all of them (as the
    first run did: README, "int8 or bf16"); no readable header means an unknown workload,
    not 0 MP; the run's start (results written since are another run's) is taken before
    the model loads. Each was a surviving mutant."""
    from derain_cli import batch, cli

    made: list[dict] = []
    original = cli._make_derainer
    monkeypatch.setattr(cli, "_make_derainer", lambda **kw: made.append(kw) or original(**kw))
    starts: list = []
    plan = batch.plan_jobs
    monkeypatch.setattr(batch, "plan_jobs",
                        lambda items, options: starts.append(options.started) or plan(
                            items, options))
    folder = tmp_path / "in"
    _img(folder / "a.png", 100, 50)
    out = tmp_path / "out"
    before = time.time()
    assert derain(folder, "-o", out, "--weights", tiny_weights).exit_code == 0
    _img(folder / "b.png", 100, 50)
    assert derain(folder, "-o", out, "--weights", tiny_weights).exit_code == 0
    assert [(k["workload_images"], k["workload_megapixels"]) for k in made] == [
        (1, pytest.approx(0.005)), (2, pytest.approx(0.01))]
    assert len(starts) == 2 and all(before <= s <= time.time() for s in starts), starts
    (folder / "c.png").write_bytes(b"not an image")
    made.clear()
    derain(folder, "-o", out, "--weights", tiny_weights)
    assert [(k["workload_images"], k["workload_megapixels"]) for k in made] == [
        (2, pytest.approx(0.01))]
    bad = tmp_path / "bad"
    (bad / "x.png").parent.mkdir()
    (bad / "x.png").write_bytes(b"not an image")
    made.clear()
    derain(bad, "-o", tmp_path / "out2", "--weights", tiny_weights)
    assert [(k["workload_images"], k["workload_megapixels"]) for k in made] == [(None, None)]


def test_json_carries_the_runs_warnings(tmp_path: Path, tiny_weights: Path) -> None:
    """Photos a folder scan left out and a PNG named .jpg were said on stderr only (and -q
    hid them): a script reading --json learnt nothing of them (an audit)."""
    _img(tmp_path / "in" / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "b.gif")
    _img(tmp_path / "in" / "d.jpg", format="PNG")
    r = derain(tmp_path / "in", "-o", tmp_path / "out", "--weights", tiny_weights, "--json",
               "-q")
    summary = json.loads(r.stdout)
    assert r.exit_code == 0 and summary["processed"] == 2, r.stdout
    warnings = summary["warnings"]
    assert len(warnings) == 2 and "1 GIF" in warnings[0] and "not read" in warnings[0]
    assert warnings[1].endswith("d.jpg is a PNG file named like a JPEG one: the result is "
                                "written as JPEG, by its name (--format png keeps PNG)")
    assert "warning" not in r.stderr  # -q: said in the JSON alone
    r = derain(tmp_path / "in" / "a.png", "-o", tmp_path / "x.png", "--weights", tiny_weights,
               "--json")
    assert json.loads(r.stdout)["warnings"] == []


def test_a_folder_named_as_a_subcommand_is_hinted_only_where_it_may_be_meant(
        tmp_path: Path) -> None:
    """`derain train` beside a folder train/ may mean the folder: the hint says how to name
    it. With the subcommand's own options (`--steps -1`) it was meant, and the hint that
    followed every such refusal misled (an audit)."""
    (tmp_path / "train").mkdir()
    hint = "'train' is a subcommand here; to derain the file or folder named 'train', write"
    r = derain("train", cwd=tmp_path)
    assert r.exit_code == 2 and hint in " ".join(r.stderr.split()), r.stderr
    r = derain("train", "--synthetic", "train", "--steps", "-1", cwd=tmp_path)
    assert r.exit_code == 2 and "--steps must be at least 1" in r.stderr
    assert "is a subcommand here" not in r.stderr, r.stderr


def test_a_terminal_width_of_zero_still_shows_the_errors(tmp_path: Path) -> None:
    """COLUMNS=0 (Emacs' shell, some fish set-ups) made rich print nothing at all, errors
    included (an audit)."""
    for columns in ("0", "3"):  # (under 20 columns the box held no words: a review)
        env = {**os.environ, "COLUMNS": columns, "LINES": "-1",
               "DERAIN_CACHE": str(tmp_path / "c")}
        ran = subprocess.run([sys.executable, "-m", "derain_cli", "-m", "nosuch", "a.png"],
                             env=env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=120)
        assert ran.returncode == 2 and "unknown model 'nosuch'" in " ".join(
            ran.stderr.replace("│", " ").split()), (columns, ran.stderr)


def test_o_takes_no_option_for_its_value(tmp_path: Path, tiny_weights: Path) -> None:
    """Click takes the word after -o whatever it is: `-o --help` wrote a folder named
    --help, `-o -q` one named -q, in the main job, synth and export (an audit). A path of
    that name that exists is taken; `-o -` keeps its own refusal."""
    def _flat(text: str) -> str:  # (rich's error box: its borders out, its lines joined)
        return " ".join(text.replace("│", " ").split())

    src = _img(tmp_path / "a.png")
    for args in (("-o", "--help"), ("-o", "-q"), ("-o", "-m", "semi-drdnet-tiny"),
                 ("-o", "--format=webp")):
        r = derain(src, "--weights", tiny_weights, *args, cwd=tmp_path)
        assert r.exit_code == 2 and "is an option's name, not a file or folder" in _flat(
            r.stderr), (args, r.stderr)
    for args in (("synth", str(tmp_path), "-o", "-q"), ("export", "-m", "semi-drdnet-tiny",
                                                         "-o", "-q"),
                 ("train", "-o", "--steps", "3")):
        r = derain(*args, cwd=tmp_path)
        assert r.exit_code == 2 and "is an option's name" in _flat(r.stderr), (args, r.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
    (tmp_path / "-out").mkdir()
    r = derain(src, "--weights", tiny_weights, "-o", "-out", cwd=tmp_path)
    assert r.exit_code == 0 and (tmp_path / "-out" / "a.png").is_file(), r.stderr
    # new paths that no option is named like are taken (they were refused too: a review)
    for value, made in (("-new.png", "-new.png"), ("-out/new/", "-out/new/a.png")):
        r = derain(src, "--weights", tiny_weights, "-o", value, cwd=tmp_path)
        assert r.exit_code == 0 and (tmp_path / made).is_file(), (value, r.stderr)
    r = derain(src, "--weights", tiny_weights, "-o", "-", cwd=tmp_path)
    assert r.exit_code == 2 and "does not write images to standard output" in r.stderr


def test_o_equals_is_not_a_folder_named_equals(tmp_path: Path, tiny_weights: Path) -> None:
    """`-o=out` gives the short option the value '=out': a folder named '=out' appeared
    where out/ was meant (an audit). It is refused naming both spellings; a path of that
    name that exists is taken."""
    src = _img(tmp_path / "a.png")
    for args in ((src, "--weights", tiny_weights, "-o=out"), ("synth", str(tmp_path), "-o=out")):
        r = derain(*args, cwd=tmp_path)
        flat = " ".join(r.stderr.replace("│", " ").split())
        assert r.exit_code == 2 and "write -o out (or --output=out)" in flat, (args, r.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
    (tmp_path / "=out").mkdir()
    r = derain(src, "--weights", tiny_weights, "-o=out", cwd=tmp_path)
    assert r.exit_code == 0 and (tmp_path / "=out" / "a.png").is_file(), r.stderr
    r = derain(src, "--weights", tiny_weights, "--output=out", cwd=tmp_path)
    assert r.exit_code == 0 and (tmp_path / "out" / "a.png").is_file(), r.stderr


def test_tile_options_with_whole_images_are_said(tmp_path: Path, tiny_weights: Path) -> None:
    """--tile 0 with --tile-overlap or --tile-batch ran without a word that they only apply
    when running out of memory turns to tiles (session 70); with tiles, nothing is said."""
    src = _img(tmp_path / "a.png")
    r = derain(src, "--weights", tiny_weights, "--tile", "0", "--tile-overlap", "8",
               "--tile-batch", "2", "-o", tmp_path / "w.png")
    assert r.exit_code == 0, r.stderr
    said = " ".join(r.stderr.split())
    assert ("warning: --tile-overlap and --tile-batch do nothing with --tile 0 (whole "
            "images) unless memory runs short" in said), r.stderr
    r = derain(src, "--weights", tiny_weights, "--tile", "0", "--tile-batch", "2",
               "-o", tmp_path / "b.png")
    assert "--tile-batch does nothing with --tile 0" in " ".join(r.stderr.split()), r.stderr
    for args in (("--tile", "64", "--tile-overlap", "8"), ("--tile", "0")):
        r = derain(src, "--weights", tiny_weights, *args, "-o", tmp_path / "t.png",
                   "--overwrite")
        assert r.exit_code == 0 and "nothing with --tile 0" not in r.stderr, (args, r.stderr)


def test_stats_megapixels_for_a_model_without_statistics_is_said(tmp_path: Path,
                                                                  tiny_weights: Path) -> None:
    """--stats-megapixels with RDMC did nothing without a word (session 63); typed for a
    Semi-DRDNet, or left at its default, nothing is said."""
    src = _img(tmp_path / "a.png")
    r = derain(src, "-m", "rdmc-lite", "--stats-megapixels", "2", "-o", tmp_path / "r.png")
    assert r.exit_code == 0, r.stderr
    assert "warning: --stats-megapixels does nothing for rdmc-lite" in r.stderr
    for args in (("--weights", tiny_weights, "--stats-megapixels", "2"), ("-m", "rdmc-lite")):
        r = derain(src, *args, "-o", tmp_path / "s.png", "--overwrite")
        assert r.exit_code == 0 and "does nothing" not in r.stderr, (args, r.stderr)


def test_the_last_line_tells_failed_folders_from_files(tmp_path: Path,
                                                       tiny_weights: Path) -> None:
    """A folder that could not be read (or held no photo) was counted as a file (audit)."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.png").write_text("not a photo")
    r = derain(tmp_path / "empty", tmp_path / "bad.png", f"{tmp_path}/nomatch*.jpg",
               "--weights", tiny_weights, "-o", tmp_path / "out")
    assert r.exit_code == 1 and "1 file(s) and 1 folder(s) and 1 pattern(s) failed" in (
        r.stderr), r.stderr


def test_a_photo_named_like_an_option_gets_a_hint(tmp_path: Path) -> None:
    """`derain -dash.jpg` said "No such option: -d" alone (an audit)."""
    _img(tmp_path / "-dash.png")
    for args in (("-dash.png",), ("eval", "-dash.png")):
        r = derain(*args, cwd=tmp_path)
        text = " ".join(r.output.replace("│", " ").split())
        assert r.exit_code == 2 and "a file named '-dash.png' is here: to name it, write " \
            "./-dash.png" in text, text
    r = derain("--qualty", "9", "x.png", cwd=tmp_path)  # no such file: no hint
    assert r.exit_code == 2 and "a file named" not in r.output
    (tmp_path / "-outdir").mkdir()  # an option's value, and another error: none (a review)
    r = derain("x.png", "-o", "-outdir", "--quality", "900", cwd=tmp_path)
    assert r.exit_code == 2 and "a file named" not in r.output


def test_a_file_in_an_unmarked_output_folder_is_not_called_a_result(
        tmp_path: Path, tiny_weights: Path) -> None:
    """In an -o folder of the user's own photos, a photo of a result's name was "skipped,
    result already exists (--overwrite redoes them)", and --overwrite replaced it without
    a word (an audit)."""
    _img(tmp_path / "in" / "same.png")
    mine = _img(tmp_path / "photos" / "same.png", seed=5)
    _img(tmp_path / "photos" / "other.png", seed=6)
    before = mine.read_bytes()
    r = derain(tmp_path / "in", "-o", tmp_path / "photos", "--weights", tiny_weights)
    out = " ".join(r.output.split())
    assert r.exit_code == 0 and "a folder derain did not mark as its results" in out, out
    assert "--overwrite redoes them" not in out and mine.read_bytes() == before
    r = derain(tmp_path / "in", "-o", tmp_path / "photos", "--weights", tiny_weights,
               "--overwrite")
    assert "warning: --overwrite replaces 1 file(s) already in" in " ".join(r.output.split())
    # a folder derain made and marked: its results are said as results
    derain(tmp_path / "in", "-o", tmp_path / "new", "--weights", tiny_weights)
    r = derain(tmp_path / "in", "-o", tmp_path / "new", "--weights", tiny_weights)
    out = " ".join(r.output.split())
    assert "skipped 1 file(s) whose result already exists" in out and "did not mark" not in out


@pytest.mark.parametrize("io_workers", [0, 2])
def test_the_folder_estimate_holds_in_the_pipelined_loop(tmp_path: Path, io_workers) -> None:
    """The pipelined loop (GPUs) reports a photo after the next one's derain: the estimate
    divided by the next photo's share alone, 13 times too long at its first tile (a
    review). Photos of equal work at 0.05 s a tile: the estimate at each photo's half
    is the time of the photos left."""
    import io
    import time as _time

    from rich.console import Console

    from derain_cli.batch import BatchOptions, collect_inputs, run_batch
    from derain_cli.cli import _RichProgress

    for i in range(4):
        _img(tmp_path / "in" / f"p{i}.png", 16, 16)
    seen: list[tuple[int, float]] = []

    class Stub:
        device_name = "cpu"

        def derain_array(self, px, on_tile=None):
            started = len(seen) + 1
            for k in range(1, 5):
                _time.sleep(0.05)
                on_tile(k, 4)
                if k == 2:
                    seen.append((started, progress.eta()))
            return px.astype(np.float32) / 255

    progress = _RichProgress(Console(file=io.StringIO(), force_terminal=True, width=120),
                             bars=True, report_failures=False, rank=0)
    with progress:
        s = run_batch(collect_inputs([str(tmp_path / "in")]), Stub(),
                      BatchOptions(output=tmp_path / "out", io_workers=io_workers), progress)
    assert s.processed == 4
    for started, eta in seen:  # 3.5, 2.5, 1.5, 0.5 photos of 0.2 s left
        assert eta == pytest.approx((4 - started + 0.5) * 0.2, rel=0.5), seen


def test_a_logs_last_failure_comes_before_the_line_that_counts_it(
    tmp_path: Path, tiny_weights: Path
) -> None:
    """Off a terminal the closing "derain 2/2 files" line came before the last file's
    "failed:" line (an audit): each failure is said before the line that counts it."""
    a = _img(tmp_path / "a.png")
    r = derain(a, tmp_path / "z.png", "-o", tmp_path / "out", "--weights", tiny_weights)
    assert r.exit_code == 1
    lines = r.stderr.splitlines()
    failed = next(i for i, ln in enumerate(lines) if ln.startswith("failed:"))
    counted = next(i for i, ln in enumerate(lines) if ln.startswith("derain 2/2 files"))
    assert failed < counted, r.stderr


def test_grow_shows_progress_then_says_what_it_wrote(tmp_path: Path) -> None:
    """grow was silent for its tens of seconds on a CPU (an audit): off a terminal its
    count comes before the closing lines."""
    r = derain("grow", "semi-drdnet-tiny", "--to", "semi-drdnet-fast", "--calib", "none",
               "-o", tmp_path / "g.safetensors")
    assert r.exit_code == 0, r.output
    lines = r.stderr.splitlines()
    assert lines[0].startswith("growing 1/1 "), r.stderr
    assert "grown into semi-drdnet-fast" in lines[1], r.stderr
    r = derain("grow", "semi-drdnet-tiny", "--to", "semi-drdnet-fast", "--calib", "none",
               "-o", tmp_path / "g.safetensors", "--overwrite", "-q")  # (as eval, export)
    assert r.exit_code == 0 and "growing" not in r.stderr and "grown into" in r.stderr


@pytest.mark.parametrize("command", [["eval", "DATA", "-m", "identity"], ["synth", "DATA"],
                                     ["export", "-m", "semi-drdnet-tiny"],
                                     ["download", "semi-drdnet-tiny"],
                                     ["grow", "semi-drdnet-tiny", "--to", "semi-drdnet-fast",
                                      "-o", "g.safetensors"],
                                     ["distill", "--clean", "DATA"], ["bench"]])
def test_one_process_commands_are_refused_under_torchrun(tmp_path: Path, monkeypatch,
                                                         command: list[str]) -> None:
    """eval under torchrun ran whole on every process: two JSON documents, and with --save
    one process refused (the other held the folder) and the other was stopped halfway (an
    audit). The commands that run as one process say so, exit 2, before any work."""
    (tmp_path / "DATA").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, said in (("0", True), ("1", False)):
        monkeypatch.setenv("RANK", rank)
        r = derain(*command)
        assert r.exit_code == 2, r.output
        assert ("WORLD_SIZE=2 says this is one of several (torchrun's): run it without "
                "torchrun" in " ".join(r.stderr.split())) == said, r.stderr
        if command[0] == "eval":  # --json answers it, once (a review: nothing, or twice)
            r = derain(*command, "--json")
            assert r.exit_code == 2 and (
                "WORLD_SIZE=2" in json.loads(r.stdout)["error"] if said else r.stdout == "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DATA"]  # nothing written


def test_a_stop_under_torchrun_by_its_signal_is_not_called_a_ctrl_c(monkeypatch) -> None:
    """A worker killed with kill -9: torchrun sent SIGTERM to the others, and rank 0 said
    "interrupted", as for a Ctrl-C nobody pressed (an audit)."""
    import io

    from derain_cli import cli

    def stopped() -> str:
        buf = io.StringIO()
        with pytest.raises(typer.Exit) as e:
            with cli._friendly_errors(cli.DerainConsole(file=buf, width=300), False, 0):
                raise KeyboardInterrupt
        assert e.value.exit_code == 130
        return buf.getvalue()

    monkeypatch.setattr(cli, "_ignore_further_stops", lambda: None)
    monkeypatch.setattr(cli, "_TERMINATED_BY", [15])
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "stopped by a termination signal (torchrun sends one" in stopped()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert stopped().strip().startswith("interrupted; run the same command again")


def test_o_naming_the_input_itself_is_a_usage_error(tmp_path: Path, tiny_weights: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`derain a.png -o a.png` (or ./a.png, or a link to it) failed the file after the
    progress bar, exit 1 with a summary table, as if the photo were at fault (an audit)."""
    monkeypatch.chdir(tmp_path)
    _img(tmp_path / "a.png", 20, 14)
    before = (tmp_path / "a.png").read_bytes()
    (tmp_path / "link.png").symlink_to("a.png")
    for out in ("a.png", "./a.png", str(tmp_path / "a.png"), "link.png"):
        for more in ((), ("--overwrite",)):
            r = derain("a.png", "-o", out, "--weights", tiny_weights, *more)
            flat = " ".join(r.output.replace("│", " ").split())
            assert r.exit_code == 2, r.output
            assert "is the input itself" in flat and "a_derained.png" in flat, flat
    assert (tmp_path / "a.png").read_bytes() == before


def test_json_answers_an_option_refused_while_the_command_line_is_read(
        tmp_path: Path, tiny_weights: Path) -> None:
    """`--strength 1.5 --json`, `-m nope --json`: exit 2 with stdout empty, while the
    command's own refusals (`-o` conflicts) printed `{"error": ...}`: a script's json.load
    failed on the one kind (an audit). eval's --json answers alike, in its own shape."""
    a = _img(tmp_path / "a.png", 20, 14)
    for args, said in ((("--strength", "1.5"), "--strength"), (("--ensemble", "3"), "ensemble"),
                       (("-m", "nope"), "nope"), (("--quality", "0"), "--quality"),
                       (("--weights", str(tmp_path / "missing.safetensors")), "missing")):
        r = derain(a, *args, "--json")
        assert r.exit_code == 2, r.output
        answer = json.loads(r.stdout)
        assert said in answer["error"] and answer["processed"] == 0, answer
        assert answer["interrupted"] is False
    r = derain("eval", str(tmp_path), "-m", "nope", "--json")
    answer = json.loads(r.stdout)
    assert r.exit_code == 2 and "nope" in answer["error"] and answer["count"] == 0, r.output
    r = derain(a, "--strength", "1.5")  # without --json stdout stays empty
    assert r.exit_code == 2 and r.stdout == ""


def test_quality_for_lossless_results_is_said_to_do_nothing(tmp_path: Path,
                                                            tiny_weights: Path) -> None:
    """`-o x.png --quality 50` was ignored in silence (an audit); JPEG results take it."""
    a = _img(tmp_path / "a.png", 20, 14)
    for args in (("-o", tmp_path / "x.png"), ("--format", "tiff", "-o", tmp_path / "t")):
        r = derain(a, *args, "--quality", "50", "--weights", tiny_weights)
        assert r.exit_code == 0 and "--quality does nothing here" in r.stderr, r.output
    r = derain(a, "-o", tmp_path / "x.jpg", "--quality", "50", "--weights", tiny_weights)
    assert r.exit_code == 0 and "--quality" not in r.stderr, r.output
    r = derain(a, "-o", tmp_path / "y.png", "--weights", tiny_weights)  # not given: no word
    assert r.exit_code == 0 and "--quality" not in r.stderr, r.output
    # PNG and BMP photos keeping their formats (no -o, no --format) were not said (an audit)
    b = tmp_path / "in" / "b.bmp"
    b.parent.mkdir()
    Image.open(a).save(b)
    _img(tmp_path / "in" / "c.png", 20, 14)
    r = derain(tmp_path / "in", "--quality", "50", "--weights", tiny_weights)
    assert r.exit_code == 0 and ("--quality does nothing here: BMP and PNG are written "
                                 "losslessly") in " ".join(r.stderr.split()), r.output
    r = derain(tmp_path / "in", "--quality", "50", "--weights", tiny_weights)  # a rerun
    assert r.exit_code == 0 and "--quality" not in r.stderr, r.output  # writes nothing
    Image.open(a).convert("RGB").save(tmp_path / "in" / "d.jpg")  # one JPEG takes it
    r = derain(tmp_path / "in", "--quality", "50", "--weights", tiny_weights)
    assert r.exit_code == 0 and "--quality" not in r.stderr, r.output


def test_a_missing_input_with_an_existing_o_file_is_said_by_the_batch(
        tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check for `-o` naming the input itself looked at inputs that cannot be looked at
    (missing, a pattern matching nothing, a link loop) and ended on a raw OSError, exit 1,
    --json empty (a review): the batch says what is wrong with each, as before."""
    monkeypatch.chdir(tmp_path)
    _img(tmp_path / "exist.png", 20, 14)
    os.symlink("loop.png", tmp_path / "loop.png")
    for given, said in (("nothere.png", "no such file"), ("nomatch*.jpg", "no images match"),
                        ("loop.png", "loop")):
        r = derain(given, "-o", "exist.png", "--weights", tiny_weights, "--json")
        assert r.exit_code == 1, r.output
        failed = json.loads(r.stdout)["failed"]
        assert len(failed) == 1 and said in failed[0]["reason"], failed


def test_eval_strength_max_pixels_and_a_damaged_pair_reach_their_commands(
        tmp_path: Path, tiny_weights: Path) -> None:
    """`eval --strength 0` scores the rainy images as they are; the main job's
    --max-pixels refuses a photo over it; a pair that cannot be read is a failure (exit
    1), not a usage error (a mutation audit: dropping each passed every test)."""
    for i in range(2):
        _img(tmp_path / "p" / "rainy" / f"{i}.png", 24, 20, seed=i)
        _img(tmp_path / "p" / "clean" / f"{i}.png", 24, 20, seed=i + 5)
    ident = derain("eval", tmp_path / "p", "-m", "identity", "--json")
    zero = derain("eval", tmp_path / "p", "--weights", tiny_weights, "--strength", "0",
                  "--json")
    full = derain("eval", tmp_path / "p", "--weights", tiny_weights, "--json")
    assert ident.exit_code == zero.exit_code == full.exit_code == 0, zero.output
    psnr = [json.loads(r.stdout)["psnr_y"] for r in (ident, zero, full)]
    assert psnr[1] == pytest.approx(psnr[0], abs=1e-6) and psnr[2] != pytest.approx(psnr[0])
    big = _img(tmp_path / "big.png", 40, 30)
    r = derain(big, "-o", tmp_path / "o.png", "--weights", tiny_weights, "--max-pixels",
               "1000", "--json")
    failed = json.loads(r.stdout)["failed"]
    assert r.exit_code == 1 and len(failed) == 1 and "1200" in failed[0]["reason"], failed
    (tmp_path / "p" / "clean" / "1.png").write_bytes(b"not a png")
    r = derain("eval", tmp_path / "p", "-m", "identity")
    assert r.exit_code == 1 and "1.png" in r.output, r.output


def test_rain_angle_auto_names_each_turned_photo_with_its_signed_turn(
        tmp_path: Path, tiny_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The list of turned photos was never printed in a test (noise is never turned)."""
    from derain_cli import slant

    real = slant.choose_angle
    monkeypatch.setattr(slant, "choose_angle", lambda rgb, derain: (50.0, 50.0, None)
                        if rgb.shape[1] == 40 else real(rgb, derain))
    _img(tmp_path / "in" / "a.png", w=40, h=30)
    _img(tmp_path / "in" / "b.png", w=36, h=30)
    r = derain("in", "--weights", tiny_weights, "-o", "out", "--rain-angle", "auto",
               cwd=tmp_path)
    assert r.exit_code == 0, r.output
    assert "--rain-angle auto turned 1 of 2 photo(s): in/a.png +50" in r.output, r.output
