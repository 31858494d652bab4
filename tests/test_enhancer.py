"""Derainer: the library API (types in == types out, devices, precision, OOM fallback)."""

import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from derain_cli import tiling
from derain_cli.enhancer import Derainer, cpu_supports_bf16, resolve_device, resolve_precision
from derain_cli.errors import OptionError


@pytest.fixture(scope="module")
def derainer(tiny_weights):
    return Derainer(weights=tiny_weights, device="cpu")


def _photo(h=40, w=52, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_numpy_in_numpy_out(derainer):
    x = _photo()
    y = derainer.derain(x)
    assert isinstance(y, np.ndarray) and y.dtype == np.uint8 and y.shape == x.shape
    f = derainer.derain(x.astype(np.float32) / 255)
    assert f.dtype == np.float32 and f.min() >= 0 and f.max() <= 1
    assert np.abs(f * 255 - y).max() <= 1


def test_a_small_image_runs_mirrored_out_and_comes_back_its_own_size(derainer):
    """A 40 x 52 photo goes through the network as the 256 px image ``pad_small`` makes of
    it and is cut back out: the same pixels as deraining that image by hand."""
    x = _photo()  # 40 x 52: 216 rows and 204 columns to add, half on each side
    got = derainer.derain_array(x)
    padded = np.pad(x, ((108, 108), (102, 102), (0, 0)), mode="symmetric")
    by_hand = Derainer(weights=derainer.weights_label, device="cpu")
    by_hand.small_side = 0
    assert got.shape == x.shape
    np.testing.assert_array_equal(got, by_hand.derain_array(padded)[108:148, 102:154])
    assert not np.array_equal(got, by_hand.derain_array(x))  # the context changed it


def test_a_small_flat_image_keeps_its_brightness():
    """rdmc-lite alone on a 16 px mid-grey darkened it by 9 levels
    (benchmarks/flat_bias.py); mirrored out to 256 px it is within a level or two, as a
    large flat image is."""
    d = Derainer(model="rdmc-lite", device="cpu", precision="fp32", backend="torch")
    grey = np.full((16, 16, 3), 128, np.uint8)
    assert abs(float(d.derain(grey).mean()) - 128) <= 2
    d.small_side = 0
    assert abs(float(d.derain(grey).mean()) - 128) > 5  # what it fixes


def test_integer_samples_need_no_float_copy(derainer, monkeypatch):
    """derain_array takes decoded uint8/uint16 samples as they are (the batch path does)."""
    handed: list[np.ndarray] = []
    real_run_tiled = tiling.run_tiled

    def recording(image, *args, **kwargs):
        handed.append(image)
        return real_run_tiled(image, *args, **kwargs)

    monkeypatch.setattr(tiling, "run_tiled", recording)
    x = _photo(tiling.SMALL_SIDE, 270)  # (a smaller one runs mirrored out: a copy)
    derainer.derain_array(x)
    deep = x.astype(np.uint16) * 257
    derainer.derain_array(deep)
    assert handed[0] is x and handed[1] is deep  # no whole-image float copy before tiling
    handed.clear()
    f = x.astype(np.float32)
    f *= np.float32(1 / 255)
    np.testing.assert_array_equal(derainer.derain_array(x), derainer.derain_array(f))
    np.testing.assert_allclose(derainer.derain_array(deep), derainer.derain_array(f), atol=1e-6)


def test_alpha_gray_and_16bit_kept(derainer):
    rgba = np.dstack([_photo(), np.full((40, 52), 77, np.uint8)])
    out = derainer.derain(rgba)
    assert out.shape == (40, 52, 4) and (out[..., 3] == 77).all()
    gray = _photo()[..., 0]
    assert derainer.derain(gray).shape == gray.shape
    deep = _photo().astype(np.uint16) * 257
    out16 = derainer.derain(deep)
    assert out16.dtype == np.uint16 and out16.max() > 255


def test_pil_float_and_bilevel_modes_stay_gray(derainer):
    gray = _photo()[..., 0].astype(np.float32) / 255
    out = derainer.derain(Image.fromarray(gray))  # mode F: floats in [0, 1]
    assert out.mode == "F" and 0 <= np.asarray(out).min() and np.asarray(out).max() <= 1
    assert abs(float(np.asarray(out).mean()) - float(gray.mean())) < 0.2
    # Pillow's own convert("F") and convert("I") give 0-255: kept at that scale, not read
    # as [0, 1] (refused) or 0-65535 (came back near black)
    gray8 = Image.fromarray(_photo()[..., 0])
    for mode in ("F", "I"):
        src = gray8.convert(mode)
        out = np.asarray(derainer.derain(src), np.float32)
        assert out.max() <= 255 and abs(out.mean() - np.asarray(src).mean()) < 40, mode
    wide = Image.fromarray(_photo()[..., 0].astype(np.int32) * 257)  # 16-bit data in mode I
    assert np.asarray(derainer.derain(wide)).max() > 255
    assert derainer.derain(Image.fromarray(_photo()).convert("1")).mode == "L"


def test_derain_follows_tiles_for_a_progress_bar(tiny_weights):
    """Only derain_array took on_tile: a notebook's large PIL image had no progress hook."""
    d = Derainer(weights=tiny_weights, device="cpu", tile=64)
    for image in (Image.fromarray(_photo(150, 200)), _photo(150, 200)[..., 0],
                  Image.fromarray(_photo(150, 200)).convert("I;16")):
        seen: list[tuple[int, int]] = []
        d.derain(image, on_tile=lambda done, total, seen=seen: seen.append((done, total)))
        assert len(seen) > 1 and seen[-1][0] == seen[-1][1], seen


@pytest.mark.parametrize("engine", [dict(precision="fp32"), dict(precision="int8")])
def test_a_derainer_pickles_on_every_engine(tiny_weights, engine):
    """A PyTorch Derainer pickled its whole network and an int8 (ONNX) one failed, so a
    process pool worked on one machine and not on another (an audit). Pickled as its
    settings, rebuilt: the same results, and the settings made since kept."""
    import pickle

    if engine["precision"] == "int8":
        d = Derainer(model="semi-drdnet-tiny", device="cpu", **engine)
    else:
        d = Derainer(weights=tiny_weights, device="cpu", **engine)
    d.strength, d.tile, d.small_side = 0.5, 64, 0
    d.tile_overlap, d.tile_batch = 8, 3  # settable since, and kept (they were lost: a review)
    d.stats_megapixels = 0.001  # and this (it came back 4.0: an audit)
    blob = pickle.dumps(d)
    assert len(blob) < 4096  # settings, not weights
    again = pickle.loads(blob)
    assert (again.backend, again.precision, again.strength, again.tile, again.small_side,
            again.tile_overlap, again.tile_batch, again.stats_megapixels) == (
        d.backend, d.precision, 0.5, 64, 0, 8, 3, 0.001)
    for bad in ("x", -1, float("nan"), True):  # checked when set, as the others ("x"
        with pytest.raises(OptionError, match="stats_megapixels must be a number >= 0"):
            d.stats_megapixels = bad  # failed deep in the tiler, -1 ran as 0: an audit)
    assert d.stats_megapixels == 0.001
    photo = _photo(70, 90)
    assert np.array_equal(again.derain(photo), d.derain(photo))


def test_a_pickle_made_after_a_chdir_finds_relative_weights(tiny_weights, tmp_path,
                                                            monkeypatch):
    """`Derainer(weights="tiny.safetensors")`, then a notebook's %cd: the pickle (a copy,
    a process pool) looked for the file in the new folder (an audit)."""
    import copy
    import pickle
    import shutil

    shutil.copy(tiny_weights, tmp_path / "tiny.safetensors")
    monkeypatch.chdir(tmp_path)
    d = Derainer(weights="tiny.safetensors", device="cpu")
    monkeypatch.chdir(tmp_path.parent)
    assert pickle.loads(pickle.dumps(d)).tile == copy.copy(d).tile == d.tile


def test_a_tile_set_during_a_run_is_kept(tiny_weights):
    """A run ended by putting back the tile it started with: a tile set meanwhile (another
    thread sharing the Derainer, an on_tile callback) was undone in silence (an audit).
    Only an out-of-memory retry's smaller tile is kept by a run."""
    d = Derainer(weights=tiny_weights, device="cpu", tile=64)

    def change(done, total):
        d.tile = 128

    d.derain(_photo(150, 200), on_tile=change)
    assert d.tile == 128


def test_setters_take_the_constructors_auto_values(tiny_weights):
    """tile_batch None or 0 and tile_overlap None mean "automatic" to the constructor but
    were refused when set afterwards (a review of the library)."""
    d = Derainer(weights=tiny_weights, device="cpu", tile=64, tile_overlap=8, tile_batch=3)
    auto = Derainer(weights=tiny_weights, device="cpu", tile=64)
    d.tile_overlap, d.tile_batch = None, None
    assert (d.tile_overlap, d.tile_batch) == (auto.tile_overlap, auto.tile_batch) == (
        auto.tile_overlap, 1)
    d.tile_batch = 3
    d.tile_batch = 0
    assert d.tile_batch == 1
    for bad in (-1, True, "2"):
        with pytest.raises(OptionError):
            d.tile_batch = bad


def test_options_refused_before_a_model_without_weights(tiny_weights):
    """A model without weights was refused before a misspelt device or an int8 request
    that cannot run (a review): the caller fixed the weights, then learnt of the rest."""
    with pytest.raises(OptionError, match="unknown device 'bogus'"):
        Derainer(model="semi-drdnet", device="bogus")
    with pytest.raises(OptionError, match="int8 runs through ONNX Runtime"):
        Derainer(model="semi-drdnet", precision="int8", backend="torch")
    from derain_cli.weights import WeightsError

    with pytest.raises(WeightsError, match="has no pretrained weights yet"):
        Derainer(model="semi-drdnet", device="cpu")


def test_rain_angle_auto_reports_progress_through_its_check(tiny_weights, monkeypatch):
    """The slant's check with the network reported nothing, then (1, 1) at the end: a bar
    stood still for most of the photo's time (an audit). Its passes count now, one job."""
    from derain_cli import slant

    monkeypatch.setattr(slant, "estimate_angle", lambda rgb: 40.0)  # checked, not taken
    d = Derainer(weights=tiny_weights, device="cpu", tile=64, rain_angle="auto")
    calls: list[tuple[int, int]] = []
    d.derain(_photo(90, 120), on_tile=lambda done, total: calls.append((done, total)))
    assert len(calls) > 4 and len({t for _, t in calls}) == 1
    dones = [done for done, _ in calls]
    assert dones == sorted(dones) and dones[-1] == calls[0][1]
    assert dones[len(dones) // 2] < dones[-1]  # it moved during the check


def test_a_masked_array_is_refused_not_unmasked_in_silence(derainer):
    masked = np.ma.masked_array(_photo(), mask=np.zeros(_photo().shape, bool))
    with pytest.raises(TypeError, match="masked one's mask would be ignored"):
        derainer.derain(masked)


def test_tile_and_small_side_are_checked_when_set_later(tiny_weights):
    """An audit: ``d.tile = 8`` ran (slow, far off), ``d.tile = "big"`` failed deep
    inside with a TypeError about ``<=``, ``d.small_side = -1`` ran as 0."""
    from derain_cli.errors import OptionError

    d = Derainer(weights=tiny_weights, device="cpu", tile=64)
    for bad in (8, -5, "big", 1.5, True):
        with pytest.raises(OptionError, match="tile must be"):
            d.tile = bad
    assert d.tile == 64
    d.tile = 0  # the whole image
    d.tile = np.int64(48)
    assert d.tile == 48 and isinstance(d.tile, int)
    for bad in (-1, "0", 2.0):
        with pytest.raises(OptionError, match="small_side must be"):
            d.small_side = bad
    d.small_side = 0
    assert d.small_side == 0
    # set afterwards, a negative overlap blended the tiles into a broken image in silence
    for attr, value, msg in (("tile_overlap", -5, "tile_overlap must be at least 0"),
                             ("tile_overlap", 2.5, "tile_overlap must be a whole number"),
                             ("tile_batch", -1, "tile_batch must be at least 0"),
                             ("tile_batch", 2.5, "tile_batch must be a whole number")):
        kept = getattr(d, attr)
        with pytest.raises(OptionError, match=msg):
            setattr(d, attr, value)
        assert getattr(d, attr) == kept
    d.tile_overlap, d.tile_batch = np.int64(8), 2
    assert d.tile_overlap == 8 and d.tile_batch == 2


def test_a_tile_covering_a_small_photo_is_one_pass(tiny_weights):
    """A photo mirrored out to 256 px ran in tiles of that context when the tile covered
    the photo itself (an audit: up to 15/255 off with --tile-overlap 0, and a thousand
    16 px tiles for a 1 px photo)."""
    x = _photo(7, 13)
    whole = Derainer(weights=tiny_weights, device="cpu", tile=0, precision="fp32",
                     backend="torch").derain(x)
    tiled = Derainer(weights=tiny_weights, device="cpu", tile=64, tile_overlap=0,
                     precision="fp32", backend="torch")
    np.testing.assert_array_equal(tiled.derain(x), whole)
    assert tiled.tile == 64  # asked for the next photo, as it was


def test_a_value_a_little_past_a_scale_is_refused_not_guessed(derainer):
    """[0, 1] floats overshooting to 1.02 were read as 0-255 (far off), 0-255 data with
    one sample at 256 as 16-bit (an audit)."""
    f = _photo()[..., 0].astype(np.float32) / 255
    f[0, 0] = 1.02
    with pytest.raises(ValueError, match="mode F samples reach 1.02"):
        derainer.derain(Image.fromarray(f))
    i = _photo()[..., 0].astype(np.int32)
    i[0, 0] = 256
    with pytest.raises(ValueError, match="mode I samples reach 256"):
        derainer.derain(Image.fromarray(i))
    f[0, 0] = 1.005  # a little overshoot is clipped, as arrays' is
    assert derainer.derain(Image.fromarray(f)).mode == "F"


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_a_pil_image_stored_turned_is_derained_upright(derainer, orientation):
    """A phone's portrait photo (EXIF orientation 6) was derained as stored, sideways, its
    streaks across the network's view, and they mostly stayed (an audit). Derained
    upright and returned as stored with its tag: turned upright, it is the upright photo's
    result pixel for pixel."""
    from PIL import ImageOps

    upright = Image.fromarray(_photo(48, 36))
    undo = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_270}[orientation]
    stored = upright.transpose(undo)
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.info["exif"] = exif.tobytes()
    assert np.array_equal(np.asarray(ImageOps.exif_transpose(stored)), np.asarray(upright))
    out = derainer.derain(stored)
    assert out.size == stored.size and out.getexif().get(0x0112) == orientation
    assert np.array_equal(np.asarray(ImageOps.exif_transpose(out)),
                          np.asarray(derainer.derain(upright)))


def test_a_tiff_turned_by_its_tag_is_not_turned_twice(derainer):
    """Pillow turns a TIFF upright as it loads it and drops the tag: read before the load,
    the tag turned it again and the result came back sideways (an audit); a tag set in
    memory (no EXIF bytes in ``info``) came back without its tag."""
    import io

    upright = Image.fromarray(_photo(48, 36))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buf, "TIFF", exif=exif.tobytes())
    buf.seek(0)
    out = derainer.derain(Image.open(buf))
    assert out.size == upright.size
    assert np.array_equal(np.asarray(out), np.asarray(derainer.derain(upright)))
    in_memory = upright.transpose(Image.Transpose.ROTATE_90)
    in_memory.getexif()[0x0112] = 6
    out = derainer.derain(in_memory)
    assert out.size == in_memory.size and out.getexif().get(0x0112) == 6
    # EXIF bytes saying 1, changed to 6 in memory: the result carried the bytes' 1 (review)
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    one = Image.Exif()
    one[0x0112] = 1
    stored.info["exif"] = one.tobytes()
    stored.getexif()[0x0112] = 6
    assert derainer.derain(stored).getexif().get(0x0112) == 6
    six = Image.Exif()
    six[0x0112] = 6
    for change in ("set to 1", "deleted"):  # and the reverse: the bytes' 6 came back
        fresh = Image.fromarray(_photo(48, 36))
        fresh.info["exif"] = six.tobytes()
        assert fresh.getexif().get(0x0112) == 6  # read from the bytes
        if change == "deleted":
            del fresh.getexif()[0x0112]
        else:
            fresh.getexif()[0x0112] = 1
        assert derainer.derain(fresh).getexif().get(0x0112) in (None, 1), change
    # no change in memory, though getexif() says 1 from elsewhere: the camera's EXIF bytes
    # (an XMP orientation) or none (a TIFF's own tags) are carried as they were, not
    # rewritten with a TIFF's structure tags or moved maker-note offsets (a review)
    camera = Image.Exif()
    camera[0x010F] = "Canon"
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/'
           b'1999/02/22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/'
           b'tiff/1.0/" tiff:Orientation="1"/></rdf:RDF></x:xmpmeta>')
    jpeg = io.BytesIO()
    upright.save(jpeg, "JPEG", exif=camera.tobytes(), xmp=xmp)
    jpeg.seek(0)
    opened = Image.open(jpeg)
    assert opened.getexif().get(0x0112) == 1  # from the XMP, not the bytes
    assert derainer.derain(opened).info["exif"] == opened.info["exif"]
    tiff = io.BytesIO()
    one = Image.Exif()
    one[0x0112] = 1
    upright.save(tiff, "TIFF", exif=one.tobytes())
    tiff.seek(0)
    assert "exif" not in derainer.derain(Image.open(tiff)).info


def test_package_lists_its_lazy_names():
    import derain_cli

    assert "Derainer" in dir(derain_cli)


def test_pil_in_pil_out(derainer):
    for mode in ("RGB", "RGBA", "L", "P", "I;16"):
        img = Image.fromarray(_photo()).convert(mode)
        out = derainer.derain(img)
        assert isinstance(out, Image.Image) and out.size == img.size
    assert derainer.derain(Image.fromarray(_photo()).convert("RGBA")).mode == "RGBA"
    assert derainer.derain(Image.fromarray(_photo()).convert("L")).mode == "L"


def test_cmyk_image_gets_an_rgb_result_without_its_cmyk_profile(derainer):
    """A CMYK image's profile cannot describe the RGB result: a plain ``out.save()`` would
    embed an invalid profile. The result is converted as ``derain`` reads CMYK files, and
    carries sRGB (converted through the profile) or no profile at all."""
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img = Image.fromarray(_photo()).convert("CMYK")
    img.info["icc_profile"] = srgb[:16] + b"CMYK" + srgb[20:]  # header says CMYK
    out = derainer.derain(img)
    assert out.mode == "RGB" and out.size == img.size
    icc = out.info.get("icc_profile")
    assert icc is None or icc[16:20] == b"RGB "


def test_metadata_byte_order_premultiplied_and_float_alpha(derainer):
    """Gaps an audit of the library found: info dropped for I;16/I/F images, big-endian
    arrays refused, La/RGBa crashing, float64 alpha rounded through float32."""
    info = {"dpi": (300, 300), "icc_profile": b"not checked here", "xmp": b"<x:xmpmeta/>"}
    for mode, arr in (("I;16", _photo()[..., 0].astype(np.uint16) * 257),
                      ("I", _photo()[..., 0].astype(np.int32)),
                      ("F", _photo()[..., 0].astype(np.float32) / 255)):
        img = Image.fromarray(arr)
        img.info.update(info)
        out = derainer.derain(img)
        assert out.info.get("dpi") == (300, 300), mode
        assert out.info.get("icc_profile") == info["icc_profile"], mode
        assert out.info.get("xmp") == info["xmp"], mode  # (a mutation audit)

    native = _photo().astype(np.uint16) * 257
    big = native.astype(">u2")
    out = derainer.derain(big)
    assert out.dtype == np.dtype(">u2")
    np.testing.assert_array_equal(out.astype(np.uint16), derainer.derain(native))
    # derain_array takes them too (it refused what derain() takes: an audit)
    np.testing.assert_array_equal(derainer.derain_array(big), derainer.derain_array(native))

    rgba = Image.fromarray(np.dstack([_photo(), np.full((40, 52), 200, np.uint8)]), "RGBA")
    assert derainer.derain(rgba.convert("RGBa")).mode == "RGBA"
    assert derainer.derain(rgba.convert("La")).mode == "LA"

    f = np.random.default_rng(3).random((40, 52, 4))  # float64, alpha with 53-bit detail
    out = derainer.derain(f)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out[..., 3], f[..., 3])


def test_bad_array_shape(derainer):
    with pytest.raises(ValueError, match="HxW"):
        derainer.derain(np.zeros((4, 4, 5), np.uint8))


def test_sample_scales_that_would_be_guessed_wrong_are_refused(derainer):
    x = _photo()
    for bad in (x.astype(np.int64), x.astype(np.int32)):  # 0-255 in wide ints
        with pytest.raises(ValueError, match="uint8 or uint16 samples"):
            derainer.derain(bad)
    with pytest.raises(TypeError, match="not list"):  # what would come back? an array, not
        derainer.derain(x.tolist())  # a list: types in are types out, so arrays only
    with pytest.raises(ValueError, match=r"\[0, 1\].*0\.\.255"):  # 0-255 as floats
        derainer.derain(x.astype(np.float32))
    with pytest.raises(ValueError, match="empty image"):
        derainer.derain(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        derainer.derain(np.full((8, 8, 3), np.nan, np.float32))
    # a little overshoot from earlier processing is fine
    assert derainer.derain(x.astype(np.float32) / 255 * 1.005).shape == x.shape


def test_bad_tiles_and_threads_are_refused(tiny_weights, caplog):
    for kw, msg in ((dict(tile=-3), "tile must be at least 0"),
                    (dict(tile=7), "at least 16 px"),
                    (dict(tile_overlap=-1), "tile_overlap must be at least 0"),
                    (dict(threads=-1), "threads must be at least 1")):
        with pytest.raises(ValueError, match=msg):
            Derainer(weights=tiny_weights, device="cpu", **kw)
    with caplog.at_level("WARNING"):
        Derainer(weights=tiny_weights, device="cpu", tile=32)
    assert "little context" in caplog.text


def test_more_threads_than_cpus_is_pointed_out(tiny_weights, caplog):
    import os

    before = torch.get_num_threads()
    try:
        with caplog.at_level("WARNING"):
            Derainer(weights=tiny_weights, device="cpu", threads=(os.cpu_count() or 1) + 1)
        assert "more than this machine's" in caplog.text
        caplog.clear()
        with caplog.at_level("WARNING"):
            Derainer(weights=tiny_weights, device="cpu", threads=1)
        assert "more than" not in caplog.text
    finally:
        torch.set_num_threads(before)


def test_device_and_precision_rules():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device(" CPU ").type == "cpu"  # as the CLI takes it
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_supports_bf16() else "fp32")
    with pytest.raises(ValueError, match="fp16 is not supported on the CPU") as refused:
        resolve_precision("fp16", cpu)
    # only suggests what this CPU can run
    assert ("bf16" in str(refused.value)) == cpu_supports_bf16()
    # the ONNX backend ignores bf16 (fp32 graphs): its advice was followed by a warning
    with pytest.raises(ValueError, match="use --precision fp32$"):
        resolve_precision("fp16", cpu, "onnx")
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("int4", cpu)


def test_out_of_memory_halves_the_tile(tiny_weights, monkeypatch, caplog):
    d = Derainer(weights=tiny_weights, device="cpu", tile=256, backend="torch")
    real = d.runner.forward

    def limited(x, pooled):
        if x.shape[-2] * x.shape[-1] > 64 * 64:  # memory goes with a tile's area
            raise tiling.TileOutOfMemory("fake")
        return real(x, pooled)

    monkeypatch.setattr(d.runner, "forward", limited)
    out = d.derain_array(np.random.default_rng(0).random((150, 170, 3), dtype=np.float32))
    assert out.shape == (150, 170, 3) and d.tile == 64
    assert "out of memory" in caplog.text
    # a tile that is no power-of-two multiple of the floor stops at the floor, not below
    # it (100 -> 64, not 50: a mutation audit)
    d.tile = 100

    def under_80(x, pooled):
        if x.shape[-2] * x.shape[-1] > 80 * 80:
            raise tiling.TileOutOfMemory("fake")
        return real(x, pooled)

    monkeypatch.setattr(d.runner, "forward", under_80)
    d.derain_array(np.random.default_rng(1).random((150, 170, 3), dtype=np.float32))
    assert d.tile == 64

    def always(x, pooled):
        raise tiling.TileOutOfMemory("cuDNN error: unable to find an engine to execute this "
                                     "computation\nmore lines")

    monkeypatch.setattr(d.runner, "forward", always)
    # the last error's first line comes with it: that cuDNN message may not mean memory
    with pytest.raises(MemoryError, match="64px tiles do not fit in memory; .* \\(the last "
                       "error: cuDNN error: unable to find an engine to execute this "
                       "computation\\)$"):
        d.derain_array(np.zeros((100, 100, 3), np.float32))


def test_out_of_memory_halves_the_batch_before_the_tile(tiny_weights, monkeypatch, caplog):
    """Several tiles per pass: fewer tiles at once is tried before smaller tiles."""
    d = Derainer(weights=tiny_weights, device="cpu", tile=64, backend="torch", tile_batch=4)
    real = d.runner.forward

    def limited(x, pooled):
        if x.shape[0] > 1:
            raise tiling.TileOutOfMemory("fake")
        return real(x, pooled)

    monkeypatch.setattr(d.runner, "forward", limited)
    x = np.random.default_rng(0).random((150, 170, 3), dtype=np.float32)
    out = d.derain_array(x)
    assert d.tile_batch == 1 and d.tile == 64  # the tile kept its size
    assert "retrying with 2 tile(s) per pass" in caplog.text
    assert "retrying with 1 tile(s) per pass" in caplog.text
    monkeypatch.setattr(d.runner, "forward", real)
    np.testing.assert_allclose(out, d.derain_array(x), atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_tile_batch_gives_the_same_result(tiny_weights, tmp_path, monkeypatch, backend):
    monkeypatch.setenv("DERAIN_CACHE", str(tmp_path))
    x = _photo(150, 170)
    kw = dict(weights=tiny_weights, device="cpu", tile=64, backend=backend, precision="fp32")
    one = Derainer(**kw)
    assert one.tile_batch == 1  # CPUs run one tile at a time unless told
    three = Derainer(**kw, tile_batch=3)
    a, b = one.derain_array(x), three.derain_array(x)
    assert np.abs(a - b).max() < 1e-5
    with pytest.raises(ValueError, match="tile_batch"):
        Derainer(**kw, tile_batch=-1)


def test_cpu_allocator_failure_counts_as_out_of_memory():
    """PyTorch's CPU allocator words it differently from CUDA; both must shrink the tile."""
    from derain_cli.torch_runner import _is_oom

    with pytest.raises(RuntimeError) as info:  # ~1 PB: refused at once, nothing allocated
        torch.empty(2**48, dtype=torch.float32)
    assert _is_oom(info.value)
    assert not _is_oom(RuntimeError("shapes cannot be multiplied"))
    # cuDNN and cuBLAS workspaces that do not fit (their words, as PyTorch passes them on)
    for text in ("cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
                 "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
                 "FIND was unable to find an engine to execute this computation",
                 "could not create a primitive"):  # oneDNN's, under a memory limit (audit)
        assert _is_oom(RuntimeError(text)), text
    # oneDNN refusing a setting is not out of memory (a review)
    assert not _is_oom(RuntimeError("could not create a primitive descriptor for a "
                                    "convolution forward propagation primitive"))


def test_top_level_import_and_gray_alpha(tiny_weights):
    """The README's ``from derain_cli import Derainer``; LA images keep their alpha."""
    from derain_cli import Derainer as Public

    d = Public(weights=tiny_weights, device="cpu", tile=0)
    la = np.zeros((20, 24, 2), np.uint8)
    la[..., 0] = 120
    la[..., 1] = np.arange(24, dtype=np.uint8)[None] * 10
    out = d.derain(la)
    assert out.shape == la.shape and out.dtype == np.uint8
    assert np.array_equal(out[..., 1], la[..., 1])
    pil = d.derain(Image.fromarray(la, mode="LA"))
    assert pil.mode == "LA" and np.array_equal(np.asarray(pil)[..., 1], la[..., 1])


def test_onnx_backend_matches_torch(tiny_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("DERAIN_CACHE", str(tmp_path))
    x = _photo(70, 90)
    torch_side = Derainer(weights=tiny_weights, device="cpu", tile=48, precision="fp32",
                          backend="torch")  # auto would pick ONNX on a CPU: ONNX vs ONNX
    onnx_side = Derainer(weights=tiny_weights, device="cpu", tile=48, backend="onnx")
    assert (torch_side.backend, onnx_side.backend) == ("torch", "onnx")
    a, b = torch_side.derain(x), onnx_side.derain(x)
    # ONNX Runtime runs fp32 graphs whatever was asked, and says so in .precision (the banner)
    assert Derainer(weights=tiny_weights, device="cpu", backend="onnx",
                    precision="bf16").precision == "fp32"
    assert np.abs(a.astype(int) - b).max() <= 1


def test_onnx_backend_ignores_bf16_on_a_cpu_without_bf16(tiny_weights, tmp_path, monkeypatch):
    # The same answer on every CPU: an fp32 graph runs whatever was asked. Before, a CPU
    # without bf16 instructions (AVX2 only) raised here, one with them warned and ran fp32.
    from derain_cli import torch_runner

    monkeypatch.setenv("DERAIN_CACHE", str(tmp_path))
    monkeypatch.setattr(torch_runner, "cpu_supports_bf16", lambda: False)
    d = Derainer(weights=tiny_weights, device="cpu", backend="onnx", precision="bf16")
    assert (d.backend, d.precision) == ("onnx", "fp32")
    with pytest.raises(ValueError, match="no bf16 instructions"):  # PyTorch would run bf16
        Derainer(weights=tiny_weights, device="cpu", backend="torch", precision="bf16")


def test_tile_progress_callback(derainer):
    seen = []
    d = derainer
    old = d.tile
    d.tile = 32
    try:
        d.derain_array(np.zeros((64, 80, 3), np.float32), on_tile=lambda i, n: seen.append((i, n)))
    finally:
        d.tile = old
    assert seen and seen[-1][0] == seen[-1][1]


def test_auto_backend_is_onnx_for_fp32_cpu_work(tiny_weights, monkeypatch):
    from derain_cli import torch_runner

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch_runner, "cpu_supports_bf16", lambda: False)
    assert torch_runner.resolve_backend(cpu, "auto") == "onnx"
    assert torch_runner.resolve_backend(cpu, "fp32") == "onnx"
    d = Derainer(weights=tiny_weights, device="cpu", tile=0)
    assert (d.backend, d.precision) == ("onnx", "fp32")
    monkeypatch.setattr(torch_runner, "cpu_supports_bf16", lambda: True)
    assert torch_runner.resolve_backend(cpu, "auto") == "torch"  # bf16 autocast: PyTorch
    assert torch_runner.resolve_backend(cpu, "bf16") == "torch"
    assert torch_runner.resolve_backend(cpu, "fp32") == "onnx"
    assert torch_runner.resolve_backend(torch.device("cuda"), "auto") == "torch"
    with pytest.raises(ValueError, match="use auto, torch or onnx"):
        Derainer(weights=tiny_weights, device="cpu", backend="tensorrt")


def test_without_onnxruntime_everything_runs_on_pytorch(tiny_weights, monkeypatch):
    import sys

    from derain_cli import torch_runner

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # find_spec: not installed
    monkeypatch.setattr(torch_runner, "cpu_supports_bf16", lambda: False)
    assert torch_runner.resolve_backend(torch.device("cpu"), "fp32") == "torch"
    d = Derainer(weights=tiny_weights, device="cpu", tile=0)
    assert d.backend == "torch"
    with pytest.raises(ValueError, match="int8 needs onnxruntime"):
        Derainer(model="semi-drdnet-tiny", device="cpu", precision="int8")


def test_tile_overlap_follows_the_network_reach(tiny_weights, caplog):
    from derain_cli.enhancer import DEFAULT_OVERLAP, default_overlap
    from derain_cli.models import build_model

    assert default_overlap(build_model("semi-drdnet-tiny")) == 32  # radius 13
    assert default_overlap(build_model("semi-drdnet-fast")) == DEFAULT_OVERLAP  # 23 -> 48
    assert default_overlap(build_model("semi-drdnet")) == DEFAULT_OVERLAP  # capped
    assert default_overlap(build_model("rdmc-lite")) == 96  # its own, measured
    assert default_overlap(build_model("rdmc")) == 96  # the same class attribute
    d = Derainer(weights=tiny_weights, device="cpu")
    assert d.tile_overlap == default_overlap(d.network)
    with caplog.at_level("WARNING"):
        d = Derainer(weights=tiny_weights, device="cpu", tile=128, tile_overlap=5)
    assert d.tile_overlap == 5  # said: seams 79/255 deep went without a word (an audit)
    reach = default_overlap(d.network)
    assert f"tile overlap of 5 px is less than the {reach} px" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        Derainer(weights=tiny_weights, device="cpu", tile=128, tile_overlap=reach)
        Derainer(weights=tiny_weights, device="cpu", tile=0, tile_overlap=5)  # no tiles
    assert "tile overlap" not in caplog.text


def test_rdmc_tiles_are_never_smaller_than_its_minimum(tmp_path, caplog):
    from derain_cli.models import RDMC, RDMCConfig
    from derain_cli.weights import save_weights

    net = RDMC(RDMCConfig(channels=(4, 8, 8, 8, 8), stages=1))
    path = tmp_path / "r.safetensors"
    save_weights(net, path, name="r", arch="rdmc", config=net.cfg)
    for asked, used in ((256, RDMC.min_tile), (0, 0), (1024, 1024), (None, 2 * RDMC.min_tile)):
        caplog.clear()
        with caplog.at_level("WARNING", logger="derain_cli"):
            d = Derainer(weights=path, device="cpu", tile=asked, backend="torch")
        assert d.tile == used
        # a user who lowered --tile to save memory is told they got bigger tiles
        assert ("--tile 256 is below" in caplog.text) == (asked == 256), caplog.text


def test_out_of_memory_never_shrinks_below_the_model_minimum(tmp_path, monkeypatch, caplog):
    """The out-of-memory fallback halved down to 64 px whatever the model: RDMC's tiles
    under its minimum do not agree with the whole image. It stops at the minimum and says
    why it cannot go lower."""
    from derain_cli.models import RDMC, RDMCConfig
    from derain_cli.weights import save_weights

    net = RDMC(RDMCConfig(channels=(4, 8, 8, 8, 8), stages=1))
    path = tmp_path / "r.safetensors"
    save_weights(net, path, name="r", arch="rdmc", config=net.cfg)
    d = Derainer(weights=path, device="cpu", tile=4 * RDMC.min_tile, backend="torch")

    def always(x, pooled):
        raise tiling.TileOutOfMemory("fake")

    monkeypatch.setattr(d.runner, "forward", always)
    big = np.zeros((5 * RDMC.min_tile, 5 * RDMC.min_tile, 3), np.uint8)
    with pytest.raises(MemoryError, match=f"needs tiles of at least {RDMC.min_tile}px"):
        d.derain_array(big)
    tried = [int(n) for n in re.findall(r"retrying with (\d+)px tiles", caplog.text)]
    assert tried == [2 * RDMC.min_tile, RDMC.min_tile]


@pytest.mark.parametrize("kwargs, words", [
    ({"model": ""}, "model must be a registry name"),
    ({"weights": ""}, "weights is an empty path"),
    ({"weights": 5}, r"weights must be a path \(str or pathlib.Path\), not 5"),
    ({"weights": b"/w.safetensors"}, "weights must be a path"),
    ({"device": None}, "device must be a string"),
    ({"tile": "512"}, "tile must be a whole number"),
    ({"tile_batch": 1.5}, "tile_batch must be a whole number"),
    ({"threads": True}, "threads must be a whole number"),
    ({"stats_megapixels": "4"}, "stats_megapixels must be a number"),
    ({"stats_megapixels": float("nan")}, "stats_megapixels must be a number"),
    # unchecked: a TypeError from engine_choice, or -2 photos taken (session 63 audit)
    ({"workload_images": "x", "workload_megapixels": 5.0}, "workload_images must be a whole"),
    ({"workload_images": 2.5}, "workload_images must be a whole number"),
    ({"workload_images": -2}, "workload_images must be at least 1"),
])
def test_constructor_refuses_bad_argument_types_up_front(kwargs, words):
    """Before, these failed later inside the tiler or PyTorch ('<' not supported between
    'str' and 'int'), or model='' quietly loaded the default (audit of the library API)."""
    from derain_cli import OptionError

    with pytest.raises(OptionError, match=words):
        Derainer(**kwargs)


def test_engine_words_in_any_case_and_a_progress_callback_that_cannot_be_called(derainer):
    """precision="FP32" and backend="ONNX" were refused where device="CPU" was taken (the CLI
    takes any case); on_tile=5 failed after the first tile's work (an audit)."""
    from derain_cli import OptionError

    d = Derainer(model="semi-drdnet-tiny", precision="FP32", backend="Torch", device="CPU",
                 threads=1)
    assert (d.precision, d.backend) == ("fp32", "torch")
    for call in (derainer.derain, derainer.derain_array):
        with pytest.raises(OptionError, match="on_tile must be a function"):
            call(np.zeros((8, 8, 3), np.uint8), on_tile=5)


def test_library_errors_are_exported_and_value_errors(tmp_path):
    import derain_cli
    from derain_cli import UnknownModelError, WeightsError

    assert {"OptionError", "UnknownModelError", "WeightsError", "WeightsUnavailable"} <= set(
        derain_cli.__all__)
    # the training and evaluation functions' errors too (each had to be found in its module:
    # an audit), every listed name the class of its module
    from derain_cli import distill, evaluate, train

    assert derain_cli.TrainError is train.TrainError
    assert derain_cli.DistillInterrupted is distill.DistillInterrupted
    assert derain_cli.EvalInterrupted is evaluate.EvalInterrupted
    from derain_cli import slant, tiling  # what derain() raises (in their modules only: an

    assert derain_cli.CanvasTooLarge is slant.CanvasTooLarge  # audit)
    assert derain_cli.TilesExhausted is tiling.TilesExhausted
    for name in derain_cli.__all__:
        if name != "__version__":
            assert isinstance(getattr(derain_cli, name), type), name
    with pytest.raises(ValueError, match="unknown model 'nope'"):  # caught as a bad argument
        Derainer(model="nope")
    assert issubclass(UnknownModelError, KeyError)  # as before
    with pytest.raises(WeightsError, match="is a folder"):
        Derainer(weights=tmp_path, model="semi-drdnet-tiny")


def test_the_hint_for_a_loaded_image_runs_as_written(derainer, tmp_path):
    """derain(loaded) said to write derain(loaded.pixels)'s result with write_image, which
    refuses that uint8 result (an audit ran the hint as written)."""
    from derain_cli.images import read_image, write_image

    Image.fromarray(_photo(40, 30)).save(tmp_path / "a.png")
    loaded = read_image(tmp_path / "a.png")
    with pytest.raises(TypeError) as e:
        derainer.derain(loaded)
    assert "out = derainer.derain_array(loaded.pixels)" in str(e.value)
    out = derainer.derain_array(loaded.pixels)
    write_image(tmp_path / "b.png", out, loaded)
    assert Image.open(tmp_path / "b.png").size == Image.open(tmp_path / "a.png").size


def test_derain_array_says_what_it_takes(derainer):
    with pytest.raises(ValueError, match=r"HxWx3 array, not \(20, 30, 4\)"):
        derainer.derain_array(np.zeros((20, 30, 4), np.uint8))
    with pytest.raises(ValueError, match=r"astype\(np.uint8\) \* 255"):  # not 0/1 samples
        derainer.derain(np.zeros((20, 30), bool))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_strength_mixes_the_photo_and_the_derained_photo(tiny_weights, dtype):
    from derain_cli.enhancer import blend_toward_input

    rgb = _photo(70, 45)
    x = rgb.astype(np.float32) / 255 if dtype == np.float32 else (
        rgb.astype(dtype) * (257 if dtype == np.uint16 else 1))
    full = Derainer(weights=tiny_weights, device="cpu", tile=0).derain_array(x)
    unit = rgb.astype(np.float32) / 255
    assert np.abs(full - unit).max() > 0.05  # the network changes the photo
    for s in (0.0, 0.3, 1.0):
        got = Derainer(weights=tiny_weights, device="cpu", tile=0, strength=s).derain_array(x)
        np.testing.assert_allclose(got, unit + s * (full - unit), atol=2e-6)
    # band by band (3 rows at a time) is the same as at once
    out = full.copy()
    blend_toward_input(out, x, 0.6, rows=3)
    np.testing.assert_allclose(out, unit + 0.6 * (full - unit), atol=2e-6)


def test_strength_0_gives_the_photo_without_running_the_network(tiny_weights, monkeypatch):
    """--strength 0 ran the network for minutes on a CPU and then threw its result away."""
    rgb = _photo(40, 30).astype(np.uint16) * 257
    d = Derainer(weights=tiny_weights, device="cpu", tile=0, strength=0.0, rain_angle="auto")
    calls = []
    monkeypatch.setattr(type(d), "_passes", lambda *a, **k: calls.append(a))
    ticks = []
    out = d.derain_array(rgb, on_tile=lambda done, total: ticks.append((done, total)))
    assert calls == [] and ticks == [(1, 1)] and out.dtype == np.float32
    np.testing.assert_allclose(out, rgb.astype(np.float32) / 65535, rtol=1e-6, atol=0)
    assert d.last_rain_angle == 0.0
    d.rain_angle = 45  # nothing turned: --json said 45 (an audit)
    d.derain_array(rgb)
    assert d.last_rain_angle == 0.0
    stray = np.full((8, 8, 3), 1.005, np.float32)  # in range for derain_array's check
    stray[0, 0, 0] = -0.005
    out = d.derain_array(stray)  # clipped to [0, 1] as the network's result is (a review)
    assert out.min() == 0.0 and out.max() == 1.0


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), True, "0.5"])
def test_strength_outside_0_to_1_is_refused(tiny_weights, bad):
    from derain_cli.errors import OptionError

    with pytest.raises(OptionError, match="strength"):
        Derainer(weights=tiny_weights, device="cpu", strength=bad)
    d = Derainer(weights=tiny_weights, device="cpu", strength=0.5)
    with pytest.raises(OptionError, match="strength"):  # set later: checked too (an audit)
        d.strength = bad
    assert d.strength == 0.5
    d.strength = np.float32(0.25)
    assert d.strength == 0.25 and type(d.strength) is float


def test_library_gaps_an_audit_found(tiny_weights, tmp_path, monkeypatch, caplog):
    """A path or tensor passed to derain() said "got shape ()"; numpy float scalars were
    refused for strength while numpy ints were taken for tile; the ONNX engines returned
    channel-planar (non C-contiguous) arrays; a tile_overlap over half the tile was cut
    in silence while the attribute kept the value asked for."""
    monkeypatch.setenv("DERAIN_CACHE", str(tmp_path))
    d = Derainer(weights=tiny_weights, device="cpu", backend="torch",
                 strength=np.float32(0.5), stats_megapixels=np.float32(2))
    assert d.strength == 0.5 and d.stats_megapixels == 2.0
    with pytest.raises(TypeError, match=r"not str; open it first: PIL.Image.open"):
        d.derain("photo.jpg")
    with pytest.raises(TypeError, match="not Tensor"):
        d.derain(torch.zeros(8, 8, 3))
    with pytest.raises(TypeError, match="not NoneType"):
        d.derain(None)
    photo = _photo(40, 52)
    for backend in ("torch", "onnx"):
        e = Derainer(weights=tiny_weights, device="cpu", backend=backend, precision="fp32")
        assert e.derain(photo).flags.c_contiguous, backend
        assert e.derain_array(photo).flags.c_contiguous, backend
    with caplog.at_level("WARNING", logger="derain_cli"):
        e = Derainer(weights=tiny_weights, device="cpu", backend="torch", tile=64,
                     tile_overlap=40)
    assert e.tile_overlap == 32 and "more than half the 64 px tile" in caplog.text


def test_repr_says_what_runs(tiny_weights):
    d = Derainer(weights=tiny_weights, device="cpu", backend="torch", precision="fp32",
                 tile=64, strength=0.5)
    assert repr(d) == ("Derainer(model='tiny', device='cpu', backend='torch', "
                       "precision='fp32', tile=64, strength=0.5, ensemble=1, "
                       "rain_angle=0)")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_torch_derainer_works_in_a_forked_child(tiny_weights):
    """An audit: PyTorch's OpenMP pool does not survive fork, and a torch-backed Derainer
    made before the fork (gunicorn --preload) hung in the child's first derain()."""
    import signal
    import time

    d = Derainer(weights=tiny_weights, device="cpu", precision="fp32", backend="torch",
                 threads=2)
    img = np.random.default_rng(0).random((64, 80, 3), dtype=np.float32)
    want = d.derain(img)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: derain, report, never return into pytest
        try:
            ok = np.array_equal(d.derain(img), want)
            os.write(write, b"same" if ok else b"diff")
        finally:
            os._exit(0)
    os.close(write)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    if done[0] == 0:  # stuck in a C barrier: no signal handler of Python's would run there
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    got = os.read(read, 8) if done[0] else b"hung"
    os.close(read)
    assert got == b"same", got


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("tile", [0, 32])
@pytest.mark.parametrize("small_side", [0, tiling.SMALL_SIDE])
def test_ensemble_is_the_mean_of_the_copies_results(tiny_weights, dtype, tile, small_side):
    """``ensemble=N``: the mean of N passes over mirrored copies, each put back,
    tiled or not (the tiny Semi-DRDNet's whole-image statistics included), a small image
    mirrored out to 256 px or not, with the strength mix after the mean and one progress
    count over all N passes."""
    from derain_cli import ensemble as E

    rgb = _photo(h=45, w=70, seed=3)
    x = rgb if dtype == np.uint8 else rgb.astype(np.float32) / 255
    kw = dict(weights=tiny_weights, device="cpu", backend="torch", precision="fp32", tile=tile)
    one = Derainer(**kw)
    one.small_side = small_side
    singles = [E.undo(one.derain_array(np.ascontiguousarray(E.view(x, k))), k)
               for k in range(4)]
    for n in (2, 4):
        d = Derainer(ensemble=n, **kw)
        d.small_side = small_side
        calls = []
        got = d.derain_array(x, on_tile=lambda done, total, c=calls: c.append(done / total))
        assert got.dtype == np.float32 and got.shape == rgb.shape and got.flags.c_contiguous
        np.testing.assert_allclose(got, np.mean(singles[:n], axis=0), atol=2e-6)
        assert calls == sorted(calls) and calls[-1] == 1.0 and len(calls) >= n
    # a random network is no mirror-symmetric one: the mean is not the single pass
    assert np.abs(np.mean(singles[:2], axis=0) - singles[0]).max() > 1e-3
    d = Derainer(ensemble=2, strength=0.5, **kw)
    d.small_side = small_side
    unit = rgb.astype(np.float32) / 255
    np.testing.assert_allclose(d.derain_array(x), unit + 0.5 * (np.mean(singles[:2], axis=0)
                                                                - unit), atol=2e-6)


def test_ensemble_through_derain_keeps_alpha_and_gray(tiny_weights):
    d = Derainer(weights=tiny_weights, device="cpu", ensemble=4)
    rgba = np.dstack([_photo(h=30, w=41), np.full((30, 41), 77, np.uint8)])
    out = d.derain(rgba)
    assert out.shape == rgba.shape and (out[..., 3] == 77).all()
    assert d.derain(Image.fromarray(rgba[..., 0])).mode == "L"


@pytest.mark.parametrize("bad", [0, 3, 8, 2.0, True, "2"])
def test_other_ensemble_sizes_are_refused(tiny_weights, bad):
    from derain_cli.errors import OptionError

    with pytest.raises(OptionError, match="ensemble"):
        Derainer(weights=tiny_weights, device="cpu", ensemble=bad)
    d = Derainer(weights=tiny_weights, device="cpu", ensemble=2)
    with pytest.raises(OptionError, match="ensemble"):  # set later: checked too
        d.ensemble = bad
    assert d.ensemble == 2 and "ensemble=2" in repr(d)


def test_ensemble_weighs_the_engine_choice_as_n_times_the_work(tiny_weights, monkeypatch):
    """Each pass is a photo's worth of work: the fp32 engine choice (start-up against
    speed) is told N times the pixels, in N times the images (the same size each)."""
    from derain_cli import engine_choice

    seen = {}
    note = ["measured now"]

    def fake(net, threads, tile, megapixels, images, overlap=None, timed=True):
        seen.update(megapixels=megapixels, images=images)
        return "torch", note[0]

    monkeypatch.setattr(engine_choice, "fp32_backend", fake)
    d = Derainer(weights=tiny_weights, device="cpu", precision="fp32",
                 workload_megapixels=3.0, workload_images=2, ensemble=4)
    assert seen == {"megapixels": 12.0, "images": 8}
    # the note's megapixels are the passes': it says so (a review)
    assert d.engine_note == "measured now (the photos' pixels x 4 passes)"
    d = Derainer(weights=tiny_weights, device="cpu", precision="fp32",
                 workload_megapixels=3.0, workload_images=2)
    assert seen == {"megapixels": 3.0, "images": 2} and d.engine_note == "measured now"
    Derainer(weights=tiny_weights, device="cpu", precision="fp32", workload_megapixels=3.0,
             ensemble=2)
    assert seen == {"megapixels": 6.0, "images": 2}
    # a turned photo's canvas is work too: twice a square photo's pixels at 45 degrees
    d = Derainer(weights=tiny_weights, device="cpu", precision="fp32", workload_megapixels=3.0,
                 workload_images=2, ensemble=2, rain_angle=45)
    assert seen["megapixels"] == pytest.approx(12.0) and seen["images"] == 4
    assert d.engine_note == ("measured now (the photos' pixels x 2 passes x 2.00 for the "
                             "turned canvas (as of a square photo))")
    # a note that is not about the work takes no factor: "no bf16 instructions (the photos'
    # pixels x 2 passes)" read as nonsense (an audit)
    note[0] = "no bf16 instructions"
    d = Derainer(weights=tiny_weights, device="cpu", precision="fp32", workload_megapixels=3.0,
                 ensemble=2)
    assert d.engine_note == "no bf16 instructions"


def test_ensemble_holds_one_float32_photo_more_than_one_pass(tiny_weights):
    """The README's memory figure: the running sum, and one pass's result at a time beside
    it (a review found the first pass's result copied and the last result kept alive
    through the next pass: two photos more). numpy's buffers are what tracemalloc sees."""
    peaks = {n: _peak_photos(tiny_weights, ensemble=n) for n in (1, 2, 4)}
    assert peaks[2] - peaks[1] <= 1.1 and peaks[4] - peaks[1] <= 1.1, peaks


def _peak_photos(tiny_weights, **kw) -> float:
    """The most memory one derain of a 400 x 600 8-bit photo held, in float32 photos
    (numpy's and OpenCV's buffers, as tracemalloc sees them; a warm-up first)."""
    import tracemalloc

    img = _photo(h=400, w=600, seed=1)
    photo = img.shape[0] * img.shape[1] * 3 * 4  # bytes of one float32 result
    d = Derainer(weights=tiny_weights, device="cpu", backend="torch", precision="fp32",
                 tile=128, **kw)
    d.derain_array(img[:200, :200])  # warm-up outside the count
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        d.derain_array(img)
        return (tracemalloc.get_traced_memory()[1] - base) / photo
    finally:
        tracemalloc.stop()


def _median_across(x: np.ndarray, pooled: np.ndarray | None) -> np.ndarray:
    """A stand-in network that removes only upright rain: each pixel the median of the nine
    around it in its row, so thin lines that run up and down go, and lines across stay."""
    p = np.pad(x, ((0, 0), (0, 0), (0, 0), (4, 4)), mode="edge")
    w = x.shape[-1]
    return np.median([p[..., i:i + w] for i in range(9)], axis=0)


def _upright_only(tiny_weights, monkeypatch, **kw) -> Derainer:
    d = Derainer(weights=tiny_weights, device="cpu", backend="torch", precision="fp32",
                 tile=0, **kw)
    d.small_side = 0
    monkeypatch.setattr(d.runner, "forward", _median_across)
    return d


def _lines(rows: bool = True, slope: int = 0) -> np.ndarray:
    """0.2 gray with lines of 0.9: 1 px across every 30 rows, or diagonal where x - y (x + y
    for ``slope`` -1) is a multiple of 24, soft as rain streaks are (a Gaussian profile of
    0.8 px: a sharp 1 px line is smeared by the two resamplings more than by a network)."""
    img = np.full((96, 128, 3), 0.2, np.float32)
    if rows:
        img[15::30] = 0.9
    else:
        yy, xx = np.mgrid[0:96, 0:128].astype(np.float32)
        u = (xx - slope * yy) % 24
        d = np.minimum(u, 24 - u) / np.sqrt(2)  # distance to the nearest line
        img += (0.7 * np.exp(-d ** 2 / (2 * 0.8 ** 2)))[..., None]
    return img


def test_rain_angle_turns_the_photo_so_the_network_sees_upright_rain(tiny_weights,
                                                                     monkeypatch):
    """Rain across the photo (90 degrees either way) reaches the network upright and is
    removed; left as it is, the network does not see it as rain."""
    img = _lines()
    d = _upright_only(tiny_weights, monkeypatch)
    assert np.abs(d.derain_array(img) - img).max() < 1e-6  # nothing upright to remove
    for angle in (90, -90):
        d.rain_angle = angle
        out = d.derain_array(img)
        assert out.shape == img.shape and out.dtype == np.float32
        assert np.abs(out - 0.2).max() < 1e-4, angle  # a quarter turn: pixels onto pixels


def test_rain_angle_says_which_way_the_rain_slants(tiny_weights, monkeypatch):
    """Streaks like \\ (falling towards the bottom right) are stood up by a positive angle,
    streaks like / by a negative one; the wrong sign leaves them slanted twice as far."""
    down_right, down_left = _lines(rows=False, slope=1), _lines(rows=False, slope=-1)
    d = _upright_only(tiny_weights, monkeypatch, rain_angle=45)
    left_in = np.abs(d.derain_array(down_right) - 0.2).mean()
    wrong = np.abs(d.derain_array(down_left) - 0.2).mean()
    rain = np.abs(down_right - 0.2).mean()
    assert left_in < 0.2 * rain and wrong > 0.9 * rain, (left_in, wrong, rain)
    d.rain_angle = -45
    assert np.abs(d.derain_array(down_left) - 0.2).mean() < 0.2 * rain


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_a_turned_photo_loses_nothing_the_network_keeps(tiny_weights, monkeypatch, dtype):
    """Only the rain the network finds is turned back: a network that finds none gives the
    photo back as it was, to float rounding, whatever the angle and sample type."""
    rgb = _photo(h=45, w=70, seed=5)
    x = {np.uint8: rgb, np.uint16: rgb.astype(np.uint16) * 257,
         np.float32: rgb.astype(np.float32) / 255}[dtype]
    d = Derainer(weights=tiny_weights, device="cpu", backend="torch", precision="fp32",
                 tile=32, rain_angle=37)

    def same(t: np.ndarray, pooled: np.ndarray | None) -> np.ndarray:
        if t.dtype == np.uint8:  # 8-bit tiles come as samples (b, h, w, 3): scaled there
            return t.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(1 / 255)
        return t

    monkeypatch.setattr(d.runner, "forward", same)
    np.testing.assert_allclose(d.derain_array(x), rgb.astype(np.float32) / 255, atol=2e-6)


def test_a_turned_photo_taller_than_one_band_loses_nothing_the_network_keeps(
        tiny_weights, monkeypatch):
    """As above on a photo whose canvas is over 256 rows (``slant._BAND_ROWS``), as most
    photos are: below the first band the result was once taken for rain, unseen."""
    rgb = _photo(h=300, w=280, seed=5)
    d = Derainer(weights=tiny_weights, device="cpu", backend="torch", precision="fp32",
                 tile=128, rain_angle=37)
    monkeypatch.setattr(d.runner, "forward", lambda t, pooled: (
        t.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(1 / 255)
        if t.dtype == np.uint8 else t))
    np.testing.assert_allclose(d.derain_array(rgb), rgb.astype(np.float32) / 255, atol=2e-6)


def test_auto_logs_its_guess_and_its_turn_each_in_its_place(tiny_weights, monkeypatch, caplog):
    import logging

    from derain_cli import slant

    monkeypatch.setattr(slant, "choose_angle", lambda rgb, derain: (0.0, 50.0, None))
    d = Derainer(weights=tiny_weights, device="cpu", rain_angle="auto")
    with caplog.at_level(logging.INFO):
        d.derain_array(_photo())
    assert "guessed 50 degrees, turned 0" in caplog.text


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_turn_ensemble_and_strength_compose(tiny_weights, dtype):
    """With the real (tiny) network: the turned canvas goes through the ensemble's passes,
    the rain found is turned back and taken off, then the strength mix applies."""
    from derain_cli import slant

    rgb = _photo(h=45, w=70, seed=5)
    x = rgb if dtype == np.uint8 else rgb.astype(np.float32) / 255
    kw = dict(weights=tiny_weights, device="cpu", backend="torch", precision="fp32", tile=32)
    turn = slant.Turn.make(45, 70, 37)
    canvas = turn.forward(x)
    found = slant.Turn.rain(canvas, Derainer(ensemble=2, **kw).derain_array(canvas))
    full = turn.take_off(x, turn.back(found))
    unit = rgb.astype(np.float32) / 255
    got = Derainer(rain_angle=37, ensemble=2, strength=0.5, **kw).derain_array(x)
    np.testing.assert_allclose(got, unit + 0.5 * (full - unit), atol=1e-5)
    plain = Derainer(ensemble=2, strength=0.5, **kw).derain_array(x)
    assert np.abs(got - plain).max() > 1e-3  # the turn did something


def test_turned_edge_cases(tiny_weights, caplog):
    """A 1-pixel image, floats a hair outside [0, 1] (accepted, as unturned), a long strip
    whose canvas would be many times the photo (refused, saying why), and an angle too
    small to pay (a warning)."""
    d = Derainer(weights=tiny_weights, device="cpu", backend="torch", precision="fp32",
                 rain_angle=45)
    for img in (np.full((1, 1, 3), 200, np.uint8),
                np.clip(np.random.default_rng(0).random((30, 40, 3), dtype=np.float32)
                        * 1.02 - 0.01, -0.01, 1.01)):
        out = d.derain_array(img)
        assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError, match="400x8 photo needs a canvas of 26.1 times its "
                                         "pixels \\(at most 4\\)"):
        d.derain_array(np.zeros((8, 400, 3), np.uint8))
    assert "about as well without" not in caplog.text
    with caplog.at_level("WARNING", logger="derain_cli"):
        d.rain_angle = 10
    assert "about as well without turning" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="derain_cli"):  # 0, the default, turns nothing:
        d.rain_angle = 0  # no warning (a mutation audit: every default Derainer could warn)
        d.rain_angle = -0.0
        d.rain_angle = 20
    assert "about as well without turning" not in caplog.text


def test_a_turned_photo_is_derained_tile_by_tile_with_progress(tiny_weights):
    """With the real (tiny) network, tiled: the turned canvas's tiles are counted, and the
    result differs from the unturned one (the network sees other pixels)."""
    rgb = _photo(h=260, w=300, seed=6)  # past the 256 px that small photos are padded to
    kw = dict(weights=tiny_weights, device="cpu", backend="torch", precision="fp32", tile=64)
    calls: list[tuple[int, int]] = []
    turned = Derainer(rain_angle=-30, **kw).derain_array(
        rgb, on_tile=lambda done, total: calls.append((done, total)))
    plain_calls: list[tuple[int, int]] = []
    plain = Derainer(**kw).derain_array(
        rgb, on_tile=lambda done, total: plain_calls.append((done, total)))
    assert turned.shape == plain.shape and turned.min() >= 0 and turned.max() <= 1
    assert np.abs(turned - plain).max() > 1e-3
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and calls[-1][0] == calls[-1][1]
    assert calls[-1][1] > plain_calls[-1][1]  # the canvas's tiles: more than the photo's


@pytest.mark.parametrize("bad", [91, -90.5, float("nan"), True, "45"])
def test_other_rain_angles_are_refused(tiny_weights, bad):
    from derain_cli.errors import OptionError

    with pytest.raises(OptionError, match="rain angle must be .* from -90 to 90"):
        Derainer(weights=tiny_weights, device="cpu", rain_angle=bad)
    d = Derainer(weights=tiny_weights, device="cpu", rain_angle=-20)
    with pytest.raises(OptionError, match="rain angle"):  # set later: checked too
        d.rain_angle = bad
    assert d.rain_angle == -20 and "rain_angle=-20" in repr(d)


def test_a_turned_photo_holds_a_few_float32_photos_more(tiny_weights):
    """The README's memory figure for ``rain_angle``: the turned canvas (8-bit, as the photo)
    and the network's float32 result on it (about twice the photo at 45 degrees) at once,
    then the rain turned back; measured as the ensemble's is."""
    peaks = {angle: _peak_photos(tiny_weights, rain_angle=angle) for angle in (0, 45)}
    # measured 2.59 (2026-12-06): the 8-bit canvas (0.52 float32 photos here) and the float32
    # result on it (2.08), less the plain pass's own result; a float32 canvas made it 3.23
    assert peaks[45] - peaks[0] <= 2.9, peaks


def test_auto_turns_each_photo_by_its_own_slant(tiny_weights, monkeypatch):
    """``rain_angle="auto"``: lines across the photo are turned upright (their guess, 90
    degrees, is checked with the network: turned, it takes them off); upright lines are not
    turned; ``last_rain_angle`` says which turn each photo got, and the progress of a
    photo checked whole ends at 1."""
    d = _upright_only(tiny_weights, monkeypatch, rain_angle="auto")
    assert d.last_rain_angle is None  # no photo yet
    across = _lines()
    calls: list[float] = []
    out = d.derain_array(across, on_tile=lambda done, total: calls.append(done / total))
    assert abs(d.last_rain_angle) == 90.0 and calls[-1] == 1.0
    assert np.abs(out - 0.2).max() < 1e-4
    upright = np.ascontiguousarray(across.transpose(1, 0, 2))
    import threading

    seen = []  # each thread's own turn: threads sharing the Derainer read each other's
    worker = threading.Thread(target=lambda: (d.derain_array(upright),  # (an audit)
                                              seen.append(d.last_rain_angle)))
    worker.start()
    worker.join()
    assert seen == [0.0] and abs(d.last_rain_angle) == 90.0
    other = []  # a thread that derained none reads the last any thread's (asyncio.to_thread
    reader = threading.Thread(target=lambda: other.append(d.last_rain_angle))  # : a review)
    reader.start()
    reader.join()
    assert other == [0.0]
    out = d.derain_array(upright)
    assert d.last_rain_angle == 0.0 and np.abs(out - 0.2).max() < 1e-4
    assert "rain_angle=auto" in repr(d)
    d.rain_angle = 30
    d.derain_array(upright)
    assert d.last_rain_angle == 30.0


@pytest.mark.parametrize(("passes", "forwards"), [(1, 2), (2, 4)])
def test_auto_checks_with_one_pass_each_way(tiny_weights, monkeypatch, passes, forwards):
    """The check derains the photo once as it is and once turned, whatever the ensemble;
    with one pass the turned result is kept, with more the photo is derained again with
    all of them (whole-image runs: one forward call a pass)."""
    d = _upright_only(tiny_weights, monkeypatch, rain_angle="auto", ensemble=passes)
    calls = []
    monkeypatch.setattr(d.runner, "forward",
                        lambda x, pooled: calls.append(x.shape) or _median_across(x, pooled))
    out = d.derain_array(_lines())
    assert abs(d.last_rain_angle) == 90.0 and np.abs(out - 0.2).max() < 1e-4
    assert len(calls) == forwards


def test_gray_comes_back_as_the_cli_writes_it(derainer, tmp_path):
    """A gray photo, derained as RGB, comes back as its BT.601 luma (as PIL's "L" and the
    CLI's writer make it): ``derain()`` returned the plain mean of the three channels, up
    to 5 levels off the CLI's file for the same photo and options (an audit)."""
    from typer.testing import CliRunner

    from derain_cli.cli import app

    gray = _photo(60, 70, seed=3)[..., 0]
    rgb = derainer.derain_array(np.repeat(gray[..., None], 3, axis=2))
    luma = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    want = np.clip(np.rint(luma * 255), 0, 255).astype(np.uint8)
    assert not np.array_equal(want, np.clip(np.rint(rgb.mean(axis=2) * 255), 0, 255))
    got = derainer.derain(gray)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.asarray(derainer.derain(Image.fromarray(gray))), want)
    Image.fromarray(gray).save(tmp_path / "g.png")
    r = CliRunner().invoke(app, [str(tmp_path / "g.png"), "-o", str(tmp_path / "out.png"),
                                 "--weights", derainer.weights_label, "-q"])
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.png")), got)


def test_a_palette_image_with_a_transparent_colour_keeps_its_transparency(derainer):
    """A GIF or palette PNG whose transparency is a palette entry ("transparency" in its
    info, mode P) comes back RGBA with that alpha, not opaque RGB (a mutation audit)."""
    idx = np.zeros((30, 40), np.uint8)
    idx[:, 20:] = 1
    img = Image.fromarray(idx, "P")
    img.putpalette([200, 30, 30, 20, 90, 200] + [0] * 762)
    img.info["transparency"] = 1
    out = derainer.derain(img)
    assert out.mode == "RGBA"
    alpha = np.asarray(out)[..., 3]
    assert (alpha[:, :20] == 255).all() and (alpha[:, 20:] == 0).all()


def test_threads_are_set_for_the_pytorch_engine(tiny_weights):
    """`threads=1` on the PyTorch engine sets its threads (a mutation audit: dropping the
    call passed, the tests looked only at the oversubscription warning)."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        Derainer(weights=tiny_weights, device="cpu", precision="fp32", backend="torch",
                 threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
