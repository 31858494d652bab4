"""Tests for derain_cli.images: every fixture image is generated here, nothing external."""

from __future__ import annotations

import dataclasses
import functools
import os
import struct
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms, PngImagePlugin

from derain_cli import images
from derain_cli.images import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_SUFFIXES,
    ImageError,
    LoadedImage,
    is_image_path,
    prepare_image,
    read_image,
    write_image,
)

H, W = 24, 36  # deliberately not square, so a 90-degree rotation is visible in the size


def _rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def _rgb8() -> np.ndarray:
    return _rng().integers(0, 256, (H, W, 3), dtype=np.uint8)


def _smooth_rgb8() -> np.ndarray:
    """A gradient photo stand-in: lossy codecs reproduce it closely."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([x * 7, y * 10, (x + y) * 4], axis=-1).clip(0, 255).astype(np.uint8)


def _u8(rgb: np.ndarray) -> np.ndarray:
    return np.rint(rgb * 255).astype(np.uint8)


def _u16(rgb: np.ndarray) -> np.ndarray:
    return np.rint(rgb * 65535).astype(np.uint16)


def _png_of_rows(img: np.ndarray, interlaced: bool = False, cut: int = 0) -> bytes:
    """An 8-bit RGB PNG written by hand (Pillow writes no interlaced PNG), its unpacked
    rows short by ``cut`` bytes, the zlib stream still whole."""
    h, w, _ = img.shape
    passes = images._ADAM7 if interlaced else ((0, 0, 1, 1),)
    raw = b"".join(b"\0" + row.tobytes() for x0, y0, dx, dy in passes
                   for row in img[y0::dy, x0::dx] if row.size)
    raw = raw[:len(raw) - cut]

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0,
                                                                  int(interlaced)))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_a_png_whose_picture_data_ends_early_is_refused(tmp_path: Path) -> None:
    """A PNG whose zlib stream ended cleanly before its last row was decoded by Pillow
    without a word, the missing rows black (an audit); interlaced files count their seven
    passes."""
    img = np.random.default_rng(3).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    for interlaced in (False, True):
        (tmp_path / "whole.png").write_bytes(_png_of_rows(img, interlaced))
        back = read_image(tmp_path / "whole.png").rgb
        assert np.array_equal(np.round(back * 255).astype(np.uint8), img), interlaced
        (tmp_path / "short.png").write_bytes(_png_of_rows(img, interlaced, cut=1))
        with pytest.raises(ImageError, match="truncated image: the file ends before the "
                                             "picture does .*stops short of its last row"):
            read_image(tmp_path / "short.png")


def test_srgb_profiles_are_known_by_name_not_by_substring(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An untagged file is read as sRGB, so an sRGB profile left out changes nothing; but
    "Linear sRGB" and "esRGB" profiles matched "srgb" in their names (a review)."""
    icc = _srgb_icc()
    for name, srgb in (("sRGB IEC61966-2.1", True), ("sRGB built-in", True),
                       ("Compact sRGB v4", True), ("Linear sRGB", False), ("esRGB", False),
                       ("Display P3", False)):
        monkeypatch.setattr(ImageCms, "getProfileDescription", lambda p, n=name: n)
        assert images._is_srgb_profile(icc) is srgb, name


@functools.cache
def _srgb_icc() -> bytes:
    """One sRGB profile for the whole run: LittleCMS stamps each with the time it was made,
    so two made a second apart differ (a comparison failed across a second's edge)."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _exif_bytes(orientation: int | None = None) -> bytes:
    exif = Image.Exif()
    exif[271] = "TestCam"  # Make
    if orientation is not None:
        exif[274] = orientation
    return exif.tobytes()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".derain-"))


# --------------------------------------------------------------------------------------------
# names


def test_supported_suffixes_and_is_image_path() -> None:
    assert {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".tif", ".tiff",
            ".bmp"} == set(SUPPORTED_SUFFIXES)
    assert is_image_path("a/b/photo.JPG")
    assert is_image_path("download.jfif") and images.format_for_path("x.JPE") == "JPEG"
    assert is_image_path(Path("x.tiff"))
    assert not is_image_path("notes.txt")
    assert not is_image_path("anim.gif")
    assert not is_image_path(".derain-abc123.tmp")  # our own temporary files
    assert not is_image_path(".photo.tmp-abc123.jpg")  # (as they were named before)


def test_default_max_pixels_allows_big_photos() -> None:
    assert DEFAULT_MAX_PIXELS >= 10000 * 8000
    images._check_pixels(10000, 8000, DEFAULT_MAX_PIXELS)  # must not raise


# --------------------------------------------------------------------------------------------
# round trips


def test_prepared_image_lets_go_of_the_float_result(tmp_path: Path) -> None:
    """prepare_image keeps only quantised samples: the float image can be freed before the
    encoder allocates its buffers (the batch does), and nothing is written until write()."""
    import weakref

    src = _rgb8()
    Image.fromarray(src).save(tmp_path / "in.png")
    loaded = read_image(tmp_path / "in.png")
    rgb = loaded.rgb
    alive = weakref.ref(rgb)
    prepared = prepare_image(tmp_path / "out.png", rgb, loaded)
    del rgb
    assert alive() is None and prepared.pixels.dtype == np.uint8
    assert not (tmp_path / "out.png").exists()
    prepared.write()
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.png")), src)
    with pytest.raises(ValueError, match="floating point"):  # checked before any file
        prepare_image(tmp_path / "bad.png", src, loaded)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff", ".bmp"])
def test_lossless_rgb_round_trip_is_exact(tmp_path: Path, suffix: str) -> None:
    src = _rgb8()
    Image.fromarray(src).save(tmp_path / f"in{suffix}")
    loaded = read_image(tmp_path / f"in{suffix}")
    assert loaded.rgb.dtype == np.float32 and loaded.rgb.shape == (H, W, 3)
    assert 0.0 <= loaded.rgb.min() and loaded.rgb.max() <= 1.0
    assert (loaded.bit_depth, loaded.grayscale, loaded.alpha) == (8, False, None)
    assert loaded.size == (W, H)
    np.testing.assert_array_equal(_u8(loaded.rgb), src)
    # The decoded samples themselves are kept (3 bytes a pixel; the tiler scales them).
    assert loaded.pixels.dtype == np.uint8
    np.testing.assert_array_equal(loaded.pixels, src)

    write_image(tmp_path / f"out{suffix}", loaded.rgb, loaded)
    back = read_image(tmp_path / f"out{suffix}")
    assert back.format == loaded.format
    np.testing.assert_array_equal(_u8(back.rgb), src)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".webp"])
def test_lossy_rgb_round_trip_is_close(tmp_path: Path, suffix: str) -> None:
    src = _smooth_rgb8()
    Image.fromarray(src).save(tmp_path / f"in{suffix}", quality=95)
    loaded = read_image(tmp_path / f"in{suffix}")
    write_image(tmp_path / f"out{suffix}", loaded.rgb, loaded, quality=95)
    back = read_image(tmp_path / f"out{suffix}")
    assert back.size == (W, H) and back.format in ("JPEG", "WEBP")
    assert np.abs(back.rgb - loaded.rgb).mean() < 3 / 255


def test_format_override_and_unknown_suffix(tmp_path: Path) -> None:
    rgb = _rgb8() / np.float32(255)
    write_image(tmp_path / "out.dat", rgb, format="png")
    assert Image.open(tmp_path / "out.dat").format == "PNG"
    with pytest.raises(ImageError, match="unknown output file type '.gif'"):
        write_image(tmp_path / "out.gif", rgb)
    with pytest.raises(ImageError, match="unsupported output format"):
        write_image(tmp_path / "out.png", rgb, format="GIF")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.dat"]


def test_rgba_png_keeps_alpha_exactly(tmp_path: Path) -> None:
    rgb = _rgb8()
    alpha = _rng().integers(0, 256, (H, W), dtype=np.uint8)
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "in.png")
    loaded = read_image(tmp_path / "in.png")
    assert loaded.alpha is not None and loaded.alpha.dtype == np.uint8
    np.testing.assert_array_equal(loaded.alpha, alpha)
    # colour under fully transparent pixels is kept too (nothing is premultiplied)
    np.testing.assert_array_equal(_u8(loaded.rgb), rgb)

    for suffix in (".png", ".tif"):
        write_image(tmp_path / f"out{suffix}", loaded.rgb, loaded)
        out = Image.open(tmp_path / f"out{suffix}")
        assert out.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(out)[..., 3], alpha)
        np.testing.assert_array_equal(np.asarray(out)[..., :3], rgb)

    write_image(tmp_path / "out.webp", loaded.rgb, loaded)
    assert Image.open(tmp_path / "out.webp").mode == "RGBA"
    for suffix in (".jpg", ".bmp"):  # no alpha there: dropped, nothing composited
        write_image(tmp_path / f"out{suffix}", loaded.rgb, loaded)
        assert Image.open(tmp_path / f"out{suffix}").mode == "RGB"


def test_gray_16bit_png_round_trip_exact(tmp_path: Path) -> None:
    gray = _rng().integers(0, 65536, (H, W), dtype=np.uint16)
    Image.fromarray(gray).save(tmp_path / "in.png")  # mode I;16
    loaded = read_image(tmp_path / "in.png")
    assert (loaded.bit_depth, loaded.grayscale, loaded.alpha) == (16, True, None)
    assert loaded.rgb.shape == (H, W, 3)
    np.testing.assert_array_equal(_u16(loaded.rgb[..., 0]), gray)

    for suffix in (".png", ".tif"):
        write_image(tmp_path / f"out{suffix}", loaded.rgb, loaded)
        out = Image.open(tmp_path / f"out{suffix}")
        assert out.mode.startswith("I;16")
        np.testing.assert_array_equal(np.asarray(out).astype(np.uint16), gray)
        back = read_image(tmp_path / f"out{suffix}")
        assert (back.bit_depth, back.grayscale) == (16, True)

    # 8-bit-only formats get the gray rounded to 8 bits, still single-channel
    write_image(tmp_path / "out.jpg", loaded.rgb, loaded)
    assert Image.open(tmp_path / "out.jpg").mode == "L"


def test_rgb_16bit_png_via_cv2_round_trip_exact(tmp_path: Path) -> None:
    rgb16 = _rng().integers(0, 65536, (H, W, 3), dtype=np.uint16)
    assert cv2.imwrite(str(tmp_path / "in.png"), rgb16[..., ::-1])  # cv2 wants BGR
    loaded = read_image(tmp_path / "in.png")
    assert (loaded.bit_depth, loaded.grayscale, loaded.mode) == (16, False, "RGB")
    np.testing.assert_array_equal(_u16(loaded.rgb), rgb16)
    assert loaded.pixels.dtype == np.uint16
    np.testing.assert_array_equal(loaded.pixels, rgb16)

    for suffix in (".png", ".tif"):
        write_image(tmp_path / f"out{suffix}", loaded.rgb, loaded)
        on_disk = cv2.imread(str(tmp_path / f"out{suffix}"), cv2.IMREAD_UNCHANGED)
        assert on_disk.dtype == np.uint16
        np.testing.assert_array_equal(on_disk[..., ::-1], rgb16)
        back = read_image(tmp_path / f"out{suffix}")
        assert back.bit_depth == 16
        np.testing.assert_array_equal(_u16(back.rgb), rgb16)

    write_image(tmp_path / "out.jpg", loaded.rgb, loaded)  # 8-bit only: reduced, not refused
    assert Image.open(tmp_path / "out.jpg").mode == "RGB"


@pytest.mark.parametrize("bits", [8, 16])
def test_alpha_dropped_for_jpeg_or_bmp_is_flattened_onto_white(tmp_path: Path, bits: int) -> None:
    # black under the transparent half, as many editors store it: it must not show
    dtype = np.uint8 if bits == 8 else np.uint16
    top = np.iinfo(dtype).max
    rgb = np.zeros((H, W, 3), dtype)
    rgb[:, W // 2:] = top // 2
    alpha = np.full((H, W), top, dtype)
    alpha[:, : W // 4] = 0
    alpha[:, W // 4: W // 2] = top // 2 + 1  # half covered: mid grey over white
    mode = "RGBA" if bits == 8 else None
    path = tmp_path / ("in.png" if bits == 8 else "in.tif")
    if bits == 8:
        Image.fromarray(np.dstack([rgb, alpha]), mode).save(path)
    else:
        assert cv2.imwrite(str(path), np.dstack([rgb[..., ::-1], alpha]))
    loaded = read_image(path)
    assert loaded.alpha is not None
    for suffix in (".jpg", ".bmp"):
        write_image(tmp_path / f"out{suffix}", loaded.rgb, loaded)
        out = np.asarray(Image.open(tmp_path / f"out{suffix}").convert("RGB")).astype(int)
        assert out[:, : W // 4 - 2].min() >= 250  # transparent black -> white
        assert abs(out[:, W // 4 + 2: W // 2 - 2].mean() - 127.5) < 4  # half black, half white
        assert abs(out[:, W // 2 + 2:].mean() - 127.5) < 4  # opaque: its own colour


def test_rgba_16bit_tiff_keeps_16bit_alpha(tmp_path: Path) -> None:
    rgba16 = _rng().integers(0, 65536, (H, W, 4), dtype=np.uint16)
    assert cv2.imwrite(str(tmp_path / "in.tif"), rgba16[..., [2, 1, 0, 3]])
    loaded = read_image(tmp_path / "in.tif")
    assert loaded.bit_depth == 16 and loaded.alpha is not None
    assert loaded.alpha.dtype == np.uint16
    np.testing.assert_array_equal(loaded.alpha, rgba16[..., 3])
    np.testing.assert_array_equal(_u16(loaded.rgb), rgba16[..., :3])

    write_image(tmp_path / "out.png", loaded.rgb, loaded)
    back = read_image(tmp_path / "out.png")
    np.testing.assert_array_equal(back.alpha, rgba16[..., 3])
    np.testing.assert_array_equal(_u16(back.rgb), rgba16[..., :3])

    write_image(tmp_path / "out.webp", loaded.rgb, loaded)  # 8-bit format: alpha scaled
    webp = np.asarray(Image.open(tmp_path / "out.webp"))
    np.testing.assert_array_equal(webp[..., 3], np.rint(rgba16[..., 3] / 257).astype(np.uint8))


def test_gray_alpha_16bit_png_round_trip_exact(tmp_path: Path) -> None:
    gray = _rng().integers(0, 65536, (H, W), dtype=np.uint16)
    alpha = _rng().integers(0, 65536, (H, W), dtype=np.uint16)
    rgb = np.repeat((gray / 65535).astype(np.float32)[..., None], 3, axis=2)
    like = LoadedImage(rgb, alpha, 16, True, "LA", "PNG")
    write_image(tmp_path / "ga.png", rgb, like)  # our own gray+alpha 16-bit encoder

    on_disk = cv2.imread(str(tmp_path / "ga.png"), cv2.IMREAD_UNCHANGED)  # libpng's view
    np.testing.assert_array_equal(on_disk[..., 0], gray)
    np.testing.assert_array_equal(on_disk[..., 3], alpha)
    back = read_image(tmp_path / "ga.png")
    assert (back.bit_depth, back.grayscale) == (16, True)
    np.testing.assert_array_equal(_u16(back.rgb[..., 0]), gray)
    np.testing.assert_array_equal(back.alpha, alpha)


@pytest.mark.parametrize(("suffix", "mode"), [(".png", "L"), (".jpg", "L"), (".tif", "L"),
                                              (".bmp", "L"), (".png", "LA")])
def test_grayscale_stays_grayscale(tmp_path: Path, suffix: str, mode: str) -> None:
    gray = _smooth_rgb8()[..., 0]
    arr = gray if mode == "L" else np.dstack([gray, np.full_like(gray, 200)])
    Image.fromarray(arr).save(tmp_path / f"in{suffix}")
    loaded = read_image(tmp_path / f"in{suffix}")
    assert loaded.grayscale and loaded.bit_depth == 8
    assert np.array_equal(loaded.rgb[..., 0], loaded.rgb[..., 1])
    write_image(tmp_path / f"out{suffix}", loaded.rgb, loaded)
    assert Image.open(tmp_path / f"out{suffix}").mode == mode
    back = read_image(tmp_path / f"out{suffix}")
    assert back.grayscale
    if suffix != ".jpg":
        np.testing.assert_array_equal(_u8(back.rgb[..., 0]), gray)


def test_processed_colour_is_folded_back_to_gray(tmp_path: Path) -> None:
    gray = np.zeros((H, W), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "in.png")
    loaded = read_image(tmp_path / "in.png")
    rgb = np.zeros((H, W, 3), dtype=np.float32)
    rgb[..., 1] = 1.0  # pure green -> luma 0.587
    write_image(tmp_path / "out.png", rgb, loaded)
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert out.ndim == 2 and int(out[0, 0]) == round(0.587 * 255)


def test_palette_and_bilevel_and_cmyk_load(tmp_path: Path) -> None:
    pal = Image.new("P", (W, H), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    pal.putpixel((1, 1), 1)
    pal.save(tmp_path / "p.png")
    loaded = read_image(tmp_path / "p.png")
    assert loaded.mode == "P" and loaded.alpha is None and not loaded.grayscale
    np.testing.assert_array_equal(loaded.rgb[0, 0], [1, 0, 0])
    np.testing.assert_array_equal(loaded.rgb[1, 1], [0, 0, 1])

    pal.save(tmp_path / "pt.png", transparency=0)
    loaded = read_image(tmp_path / "pt.png")
    assert loaded.alpha is not None
    assert (int(loaded.alpha[0, 0]), int(loaded.alpha[1, 1])) == (0, 255)

    Image.new("1", (W, H), 1).save(tmp_path / "b.png")
    loaded = read_image(tmp_path / "b.png")
    assert loaded.grayscale and loaded.rgb.min() == 1.0

    Image.new("CMYK", (W, H), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    loaded = read_image(tmp_path / "cmyk.jpg")
    assert loaded.mode == "CMYK" and not loaded.grayscale
    np.testing.assert_allclose(loaded.rgb[H // 2, W // 2], [1, 0, 0], atol=0.02)  # red
    write_image(tmp_path / "cmyk_out.jpg", loaded.rgb, loaded)
    assert Image.open(tmp_path / "cmyk_out.jpg").mode == "RGB"


def test_a_cmyk_profile_that_cannot_be_used_is_said(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A CMYK profile LittleCMS cannot use was dropped and the colours converted without it,
    in silence (an audit): said, naming the file; the pixels still come through."""
    bad = bytearray(200)
    bad[16:20], bad[36:40] = b"CMYK", b"acsp"
    Image.new("CMYK", (W, H), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100,
                                                    icc_profile=bytes(bad))
    with caplog.at_level("WARNING", logger="derain_cli"):
        loaded = read_image(tmp_path / "c.jpg")
    np.testing.assert_allclose(loaded.rgb[H // 2, W // 2], [1, 0, 0], atol=0.02)
    assert loaded.icc_profile is None
    assert f"{tmp_path / 'c.jpg'}: its CMYK colour profile cannot be used (" in caplog.text
    # a profile that does not say CMYK (junk, or an RGB one) was dropped in silence (a review)
    for name, icc in (("junk.jpg", b"\0" * 200), ("rgb.jpg", _srgb_icc())):
        Image.new("CMYK", (W, H), (0, 255, 255, 0)).save(tmp_path / name, quality=100,
                                                        icc_profile=icc)
        caplog.clear()
        with caplog.at_level("WARNING", logger="derain_cli"):
            loaded = read_image(tmp_path / name)
        np.testing.assert_allclose(loaded.rgb[H // 2, W // 2], [1, 0, 0], atol=0.02)
        assert (f"{tmp_path / name}: its colour profile is not a CMYK profile, so it cannot "
                "convert the CMYK colours") in caplog.text, name
    # a CMYK photo without a profile is converted without a word, as before
    caplog.clear()
    Image.new("CMYK", (W, H), (0, 255, 255, 0)).save(tmp_path / "plain.jpg", quality=100)
    with caplog.at_level("WARNING", logger="derain_cli"):
        read_image(tmp_path / "plain.jpg")
    assert "profile" not in caplog.text


# --------------------------------------------------------------------------------------------
# orientation and metadata


def test_exif_rotated_jpeg_loads_upright_and_writes_orientation_1(tmp_path: Path) -> None:
    src = np.zeros((H, W, 3), dtype=np.uint8)
    src[:, : W // 2] = 255  # left half white, as stored (sensor orientation)
    Image.fromarray(src).save(tmp_path / "in.jpg", exif=_exif_bytes(6), quality=100,
                              dpi=(300, 150))
    loaded = read_image(tmp_path / "in.jpg")
    assert loaded.size == (H, W)  # rotated by 90 degrees
    assert loaded.dpi == (150, 300)  # follows the rotation
    expected = np.rot90(src, -1)  # orientation 6: rotate 90 degrees clockwise to display
    assert np.abs(_u8(loaded.rgb).astype(int) - expected).mean() < 2
    assert loaded.rgb[: W // 2 - 2].mean() > 0.95  # the white half is on top now

    exif = Image.Exif()
    exif.load(loaded.exif)
    assert exif[274] == 1 and exif[271] == "TestCam"

    for suffix in (".jpg", ".png", ".webp", ".tif"):
        write_image(tmp_path / f"out{suffix}", loaded.rgb, loaded)
        with Image.open(tmp_path / f"out{suffix}") as out:
            out.load()
            assert out.size == (H, W)
            assert out.getexif().get(274) == 1
            assert out.getexif().get(271) == "TestCam"
        assert read_image(tmp_path / f"out{suffix}").size == (H, W)  # not rotated again


@pytest.mark.parametrize("orientation", range(1, 9))
def test_numpy_orientation_matches_pil(orientation: int) -> None:
    from PIL import ImageOps

    arr = _rgb8()[:5, :7]
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[274] = orientation
    im.info["exif"] = exif.tobytes()
    expected = np.asarray(ImageOps.exif_transpose(im))
    np.testing.assert_array_equal(images._orient_array(arr, orientation), expected)


def test_imagemagick_png_exif_chunk_is_applied_once(tmp_path: Path) -> None:
    """ImageMagick writes a PNG's EXIF as a "Raw profile type exif" text chunk. derain
    turned the pixels upright by it but copied the chunk, orientation 6 and all, so viewers
    turned the result once more. The EXIF now travels (orientation reset) as EXIF."""
    from PIL import ImageOps

    src = _rgb8()
    upright = (src.shape[0], src.shape[1])  # turned by 90 degrees: its height is the width
    exif = Image.Exif()
    exif[274] = 6
    exif[271] = "TestCam"
    raw = exif.tobytes()  # with its "Exif\0\0" header, as ImageMagick writes it
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", f"\nexif\n{len(raw):8d}\n{raw.hex()}\n")
    info.add_text("Comment", "kept")
    Image.fromarray(src).save(tmp_path / "im.png", pnginfo=info)
    loaded = read_image(tmp_path / "im.png")
    assert loaded.size == upright
    for suffix in (".png", ".jpg"):
        write_image(tmp_path / f"out{suffix}", loaded.rgb, loaded)
        with Image.open(tmp_path / f"out{suffix}") as out:
            assert out.getexif().get(274) in (None, 1)
            assert out.getexif().get(271) == "TestCam"
            assert ImageOps.exif_transpose(out).size == upright  # not turned again
            if suffix == ".png":
                assert out.text.get("Comment") == "kept"


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "RGB"])
@pytest.mark.parametrize("orientation", [2, 5, 6, 7, 8])
def test_uncompressed_tiff_orientation(tmp_path: Path, mode: str, orientation: int) -> None:
    """Pillow 13 memory-maps an uncompressed TIFF turned by 90 degrees with the turned size
    and scrambles these modes' pixels; derain's reader must still give the upright photo,
    the same as the picture turned beforehand and saved without an orientation."""
    from PIL import ImageOps

    rgb = _smooth_rgb8()[:40, :56]
    if mode == "I;16":
        base = Image.fromarray(rgb[..., 1].astype(np.uint16) * 257)
    else:
        base = Image.fromarray(rgb).convert(mode)
    exif = base.getexif()
    exif[274] = orientation
    base.save(tmp_path / "turned.tif", exif=exif.tobytes())  # uncompressed
    tagged = base.copy()
    tagged.info["exif"] = exif.tobytes()
    ImageOps.exif_transpose(tagged).save(tmp_path / "upright.tif")
    got, want = read_image(tmp_path / "turned.tif"), read_image(tmp_path / "upright.tif")
    assert got.size == want.size
    np.testing.assert_array_equal(got.rgb, want.rgb)
    if want.alpha is not None:
        np.testing.assert_array_equal(got.alpha, want.alpha)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("orientation", [3, 6])
def test_16bit_colour_orientation(tmp_path: Path, suffix: str, orientation: int) -> None:
    rgb16 = _rng().integers(0, 65536, (H, W, 3), dtype=np.uint16)
    like = LoadedImage((rgb16 / 65535).astype(np.float32), None, 16, False, "RGB", "PNG",
                       exif=_exif_bytes(orientation))
    write_image(tmp_path / f"o{suffix}", like.rgb, like)  # keeps the (non-1) orientation
    loaded = read_image(tmp_path / f"o{suffix}")
    assert loaded.bit_depth == 16
    np.testing.assert_array_equal(_u16(loaded.rgb), images._orient_array(rgb16, orientation))


def test_icc_profile_and_dpi_kept(tmp_path: Path) -> None:
    icc = _srgb_icc()
    Image.fromarray(_rgb8()).save(tmp_path / "in.png", icc_profile=icc, dpi=(300, 300))
    loaded = read_image(tmp_path / "in.png")
    assert loaded.icc_profile == icc
    assert loaded.dpi == (300.0, 300.0)  # 299.9994 from pixels-per-metre, snapped

    for suffix in (".jpg", ".png", ".webp", ".tif", ".bmp"):
        write_image(tmp_path / f"out{suffix}", loaded.rgb, loaded)
        back = read_image(tmp_path / f"out{suffix}")
        if suffix != ".bmp":
            assert back.icc_profile == icc, suffix
        if suffix != ".webp":  # WebP has no resolution field
            assert back.dpi == (300.0, 300.0), suffix

    sixteen = LoadedImage(loaded.rgb, None, 16, False, "RGB", "PNG", icc_profile=icc,
                          dpi=(240.0, 240.0))
    for suffix in (".png", ".tif"):
        write_image(tmp_path / f"out16{suffix}", loaded.rgb, sixteen)
        back = read_image(tmp_path / f"out16{suffix}")
        assert back.bit_depth == 16
        assert back.icc_profile == icc and back.dpi == (240.0, 240.0), suffix


_XMP = (b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
        b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
        b'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/" '
        b'tiff:Orientation="6"><dc:rights>(c) a photographer</dc:rights></rdf:Description>'
        b'</rdf:RDF></x:xmpmeta><?xpacket end="w"?>')


@pytest.mark.parametrize("src", ["jpg", "png", "webp", "tif"])
def test_xmp_is_kept_with_its_orientation_reset(tmp_path: Path, src: str) -> None:
    """Captions, ratings and copyright live in XMP: a photo tool must not drop them. The
    pixels come back upright, so XMP's orientation must say so, like EXIF's."""
    img = Image.fromarray(_rng().integers(0, 256, (H, W, 3), dtype=np.uint8))
    if src == "png":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", _XMP.decode())
        img.save(tmp_path / "in.png", pnginfo=info)
    elif src == "tif":
        img.save(tmp_path / "in.tif", tiffinfo={700: _XMP})
    else:
        img.save(tmp_path / f"in.{src}", xmp=_XMP)
    loaded = read_image(tmp_path / f"in.{src}")
    assert loaded.xmp is not None and b"(c) a photographer" in loaded.xmp
    assert b'tiff:Orientation="1"' in loaded.xmp and b'Orientation="6"' not in loaded.xmp
    for depth in (8, 16):
        loaded.bit_depth = depth  # 16 bits take the project's own PNG and TIFF encoders
        for ext in ("jpg", "png", "webp", "tif"):
            out = tmp_path / f"out{depth}.{ext}"
            write_image(out, loaded.pixels.astype(np.float32) / 255, like=loaded)
            back = read_image(out)
            assert back.xmp == loaded.xmp, (depth, ext)


def test_xmp_pixel_sizes_turn_with_the_pixels(tmp_path: Path) -> None:
    """A photo turned upright by a quarter had its EXIF pixel sizes swapped and its XMP's
    kept, so the two blocks disagreed (an audit)."""
    xmp = _XMP.replace(b'tiff:Orientation="6"', b'tiff:Orientation="6" xmlns:exif="http://ns.'
                       b'adobe.com/exif/1.0/" exif:PixelXDimension="%d" exif:PixelYDimension='
                       b'"%d" tiff:ImageWidth="%d" tiff:ImageLength="%d"' % (W, H, W, H)
                       ) + b"<exif:PixelXDimension>%d</exif:PixelXDimension>" % W
    exif = Image.Exif()
    exif[274] = 6
    img = Image.fromarray(_rng().integers(0, 256, (H, W, 3), dtype=np.uint8))
    img.save(tmp_path / "turned.jpg", xmp=xmp, exif=exif.tobytes())
    img.save(tmp_path / "upright.jpg", xmp=xmp.replace(b'Orientation="6"', b'Orientation="1"'))
    turned = read_image(tmp_path / "turned.jpg").xmp
    assert b'exif:PixelYDimension="%d" exif:PixelXDimension="%d"' % (W, H) in turned
    assert b"<exif:PixelYDimension>%d</exif:PixelYDimension>" % W in turned
    assert b'tiff:ImageLength="%d" tiff:ImageWidth="%d"' % (W, H) in turned  # (an audit)
    upright = read_image(tmp_path / "upright.jpg").xmp
    assert b'exif:PixelXDimension="%d" exif:PixelYDimension="%d"' % (W, H) in upright
    assert b'tiff:ImageWidth="%d" tiff:ImageLength="%d"' % (W, H) in upright


def test_a_tiffs_camera_tags_travel_as_exif(tmp_path: Path) -> None:
    """A TIFF keeps make, model, dates and the Exif sub-IFD as its own tags, not as an EXIF
    block; they must reach the output like a JPEG's EXIF does, its layout tags must not."""
    exif = Image.Exif()
    exif.update({271: "Canon", 272: "EOS R5", 306: "2026:01:01 10:00:00", 274: 6})
    exif[0x8769] = {0x829A: (1, 100), 0x9003: "2026:01:01 10:00:00"}
    with open(tmp_path / "cam.tif", "wb") as f:
        images._encode_tiff(f, _rng().integers(0, 256, (H, W, 3), dtype=np.uint8),
                            exif=exif.tobytes(), icc=None, dpi=None)
    loaded = read_image(tmp_path / "cam.tif")
    assert loaded.size == (H, W)  # rotated upright
    for ext in ("jpg", "png", "webp", "tif"):
        write_image(tmp_path / f"out.{ext}", loaded.pixels.astype(np.float32) / 255, like=loaded)
        back = Image.open(tmp_path / f"out.{ext}").getexif()
        assert (back.get(271), back.get(272), back.get(274)) == ("Canon", "EOS R5", 1), ext
        assert back.get_ifd(0x8769).get(0x829A) == (1, 100), ext
        assert back.get(256) in (None, H), ext  # no stale layout tags (a TIFF has its own)


@pytest.mark.parametrize("depth", [8, 16])
def test_png_text_chunks_are_kept(tmp_path: Path, depth: int) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "A. Photographer")
    info.add_itxt("Description", "Regen über Zürich")  # not Latin-1 safe: iTXt
    dtype = np.uint16 if depth == 16 else np.uint8
    arr = (_rng().integers(0, 256, (H, W, 3)) * (257 if depth == 16 else 1)).astype(dtype)
    if depth == 16:  # PIL cannot write 16-bit colour: the project's own encoder can
        with open(tmp_path / "in.png", "wb") as f:
            images._encode_png16(f, arr, exif=None, icc=None, dpi=None,
                                 text={"Author": "A. Photographer",
                                       "Description": "Regen über Zürich"})
    else:
        Image.fromarray(arr).save(tmp_path / "in.png", pnginfo=info)
    loaded = read_image(tmp_path / "in.png")
    assert loaded.bit_depth == depth
    assert loaded.text == {"Author": "A. Photographer", "Description": "Regen über Zürich"}
    write_image(tmp_path / "out.png", loaded.pixels.astype(np.float32) / (
        65535 if depth == 16 else 255), like=loaded)
    assert read_image(tmp_path / "out.png").text == loaded.text


@pytest.mark.parametrize("depth", [8, 16])
def test_png_gamma_and_chromaticity_are_kept(tmp_path: Path, depth: int) -> None:
    # A PNG without ICC profile says how its numbers map to colour with gAMA/cHRM (or sRGB);
    # a viewer that honours them would show the result differently if they were dropped.
    chunks = ((b"gAMA", struct.pack(">I", 55556)),
              (b"cHRM", struct.pack(">8I", 31270, 32900, 64000, 33000, 30000, 60000,
                                    15000, 6000)))
    dtype = np.uint16 if depth == 16 else np.uint8
    arr = (_rng().integers(0, 256, (H, W, 3)) * (257 if depth == 16 else 1)).astype(dtype)
    with open(tmp_path / "in.png", "wb") as f:
        images._encode_png16(f, arr, exif=None, icc=None, dpi=None, chunks=chunks)
    if depth == 8:  # the project's encoder writes 16 bits as given: re-save 8-bit with PIL
        info = PngImagePlugin.PngInfo()
        for kind, data in chunks:
            info.add(kind, data)
        Image.fromarray(arr).save(tmp_path / "in.png", pnginfo=info)
    loaded = read_image(tmp_path / "in.png")
    assert loaded.bit_depth == depth
    for out in ("out.png", "out.jpg"):
        write_image(tmp_path / out, loaded.rgb, like=loaded)
    back = Image.open(tmp_path / "out.png")
    assert back.info["gamma"] == pytest.approx(0.55556)
    assert back.info["chromaticity"] == pytest.approx((0.3127, 0.329, 0.64, 0.33, 0.3, 0.6,
                                                       0.15, 0.06))
    # sRGB travels too; with an ICC profile written the chunks are left out (sRGB beside iCCP
    # is invalid)
    Image.fromarray(_rgb8()).save(tmp_path / "s.png", pnginfo=_srgb_chunk())
    srgb = read_image(tmp_path / "s.png")
    write_image(tmp_path / "s_out.png", srgb.rgb, like=srgb)
    assert Image.open(tmp_path / "s_out.png").info.get("srgb") == 0
    srgb.icc_profile = _srgb_icc()
    write_image(tmp_path / "s_icc.png", srgb.rgb, like=srgb)
    assert "srgb" not in Image.open(tmp_path / "s_icc.png").info


def _srgb_chunk() -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add(b"sRGB", b"\x00")
    return info


def test_a_lossless_webp_stays_lossless(tmp_path: Path) -> None:
    arr = _rng().integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "l.webp", lossless=True)
    Image.fromarray(arr).save(tmp_path / "y.webp", quality=80)
    lossless, lossy = read_image(tmp_path / "l.webp"), read_image(tmp_path / "y.webp")
    assert lossless.lossless and not lossy.lossless
    write_image(tmp_path / "o.webp", arr.astype(np.float32) / 255, like=lossless)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o.webp").convert("RGB")), arr)
    assert images._webp_is_lossless(tmp_path / "o.webp")
    write_image(tmp_path / "o2.webp", arr.astype(np.float32) / 255, like=lossy)
    assert not images._webp_is_lossless(tmp_path / "o2.webp")
    frames = [Image.fromarray(arr), Image.fromarray(arr[::-1].copy())]  # ANMF chunks
    frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:],
                   lossless=True)
    assert images._webp_is_lossless(tmp_path / "anim.webp")


def test_mismatched_icc_profile_is_not_written(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    gray_like = LoadedImage(np.zeros((H, W, 3), np.float32), None, 8, True, "L", "PNG",
                            icc_profile=_srgb_icc())  # an RGB profile on a gray image
    damaged = dataclasses.replace(gray_like, grayscale=False, icc_profile=b"x" * 200)
    with caplog.at_level("WARNING", logger="derain_cli"):
        write_image(tmp_path / "out.png", gray_like.rgb, gray_like)
        write_image(tmp_path / "out2.png", damaged.rgb, damaged)
    assert "icc_profile" not in Image.open(tmp_path / "out.png").info
    assert "icc_profile" not in Image.open(tmp_path / "out2.png").info
    lines = [r.getMessage() for r in caplog.records]  # not dropped in silence (an audit)
    assert lines == [
        f"{tmp_path / 'out.png'}: the photo's colour profile is left out: it is for colour "
        "images and PNG is written in grayscale",
        f"{tmp_path / 'out2.png'}: the photo's colour profile is left out: it is damaged or "
        "of a kind derain does not write"], lines


def test_an_opaque_alpha_channel_dropped_is_not_warned_about(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A folder of RGBA PNGs with no transparent pixel written as JPEG warned, once a
    file, that transparent areas were flattened (an audit); a real transparency still is."""
    rgba = np.dstack([_rgb8(), np.full((H, W), 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "opaque.png")
    rgba[0, 0, 3] = 10
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    with caplog.at_level("WARNING", logger="derain_cli"):
        for name in ("opaque", "clear"):
            loaded = read_image(tmp_path / f"{name}.png")
            write_image(tmp_path / f"{name}.jpg", loaded.rgb, loaded)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith(f"{tmp_path / 'clear.jpg'}: JPEG is "
                                                   "written without transparency")
    assert images._fmt_pixels(135_300) == "135,300 pixels"  # not "0.1 megapixels" beside
    assert images._fmt_pixels(100_000) == "0.1 megapixels"  # a limit of 0.1 (an audit)


def test_sixteen_bits_rounded_to_eight_are_said(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    cv2.imwrite(str(tmp_path / "in.png"), _rng().integers(0, 65536, (H, W, 3), np.uint16))
    loaded = read_image(tmp_path / "in.png")
    with caplog.at_level("WARNING", logger="derain_cli"):
        write_image(tmp_path / "out.png", loaded.rgb, loaded)  # 16 bits kept: no word
        write_image(tmp_path / "out.webp", loaded.rgb, loaded)
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'out.webp'}: WebP holds 8 bits a sample; the photo's 16-bit samples "
        "are rounded to 8 (write PNG or TIFF to keep 16 bits)"]


@pytest.mark.parametrize("orientation", [3, 5, 6, 7])
def test_exif_pixel_dimensions_follow_a_turned_photo(tmp_path: Path, orientation: int) -> None:
    """Orientation 6 applied, the result is H wide and W high, but its EXIF kept
    PixelXDimension = W and PixelYDimension = H (an audit); not swapped for a half turn."""
    src = _rgb8()
    h, w = src.shape[:2]
    im = Image.fromarray(src)
    exif = im.getexif()
    exif[274] = orientation
    exif[271] = "TestCam"
    sub = exif.get_ifd(0x8769)
    sub[0xA002], sub[0xA003] = w, h
    exif[0x0100], exif[0x0101] = w, h  # IFD0's ImageWidth, ImageLength: kept (an audit)
    im.save(tmp_path / "in.jpg", exif=exif.tobytes(), quality=95)
    loaded = read_image(tmp_path / "in.jpg")
    write_image(tmp_path / "out.jpg", loaded.rgb, loaded)
    with Image.open(tmp_path / "out.jpg") as out:
        dims = out.getexif().get_ifd(0x8769)
        assert (dims[0xA002], dims[0xA003]) == out.size  # the pixels' own width, height
        assert (out.getexif()[0x0100], out.getexif()[0x0101]) == out.size
        assert out.getexif().get(271) == "TestCam"
    assert out.size == ((h, w) if orientation >= 5 else (w, h))  # 5-8 swap the sides


def test_damaged_exif_keeps_what_can_be_read_and_says_so(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture,
                                                         ) -> None:
    """An EXIF block whose IFD0 count ran past its end was dropped whole, nothing said,
    though Pillow read its tags (an audit)."""
    exif = Image.Exif()
    exif[271], exif[306], exif[274] = "Canon", "2024:01:01 10:00:00", 6
    raw = bytearray(exif.tobytes())
    struct.pack_into("<H", raw, 6 + 8, 200)  # IFD0 at 8 says 200 entries; it holds 3
    img = Image.fromarray(_rgb8())
    img.save(tmp_path / "in.jpg", exif=bytes(raw))
    with caplog.at_level("WARNING", logger="derain_cli.images"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = read_image(tmp_path / "in.jpg")
    assert "the EXIF metadata is damaged; the tags that could be read are kept" in \
        caplog.text
    write_image(tmp_path / "out.jpg", loaded.rgb, loaded)
    with Image.open(tmp_path / "out.jpg") as out:
        tags = out.getexif()
        assert (tags.get(271), tags.get(306)) == ("Canon", "2024:01:01 10:00:00")
        assert tags.get(274) == 1 and out.size == (H, W)  # turned upright, said so
    garbage = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff"
    caplog.clear()
    with caplog.at_level("WARNING", logger="derain_cli.images"):
        assert images._readable_exif(garbage, False, "x.jpg") is None
    assert "x.jpg: the EXIF metadata is damaged and cannot be read; left out" in caplog.text


def test_a_jpeg_without_a_resolution_gets_none_written(tmp_path: Path) -> None:
    """Pillow reads 72 dpi into a JPEG with EXIF but no resolution in it (its JFIF an
    aspect ratio only); that stand-in was written into the output as the photo's own."""
    exif = Image.Exif()
    exif[271] = "Cam"
    Image.fromarray(_rgb8()).save(tmp_path / "in.jpg", exif=exif.tobytes())
    with Image.open(tmp_path / "in.jpg") as im:
        assert im.info.get("dpi") == (72, 72)  # Pillow's stand-in, the case here
    assert read_image(tmp_path / "in.jpg").dpi is None
    Image.fromarray(_rgb8()).save(tmp_path / "said.jpg", exif=exif.tobytes(), dpi=(72, 72))
    assert read_image(tmp_path / "said.jpg").dpi == (72.0, 72.0)  # the photo's own 72
    exif[0x011A], exif[0x011B] = 300, 300  # no unit: Pillow's 72 stands in (a review)
    Image.fromarray(_rgb8()).save(tmp_path / "nounit.jpg", exif=exif.tobytes())
    assert read_image(tmp_path / "nounit.jpg").dpi is None
    exif[0x0128] = 2
    Image.fromarray(_rgb8()).save(tmp_path / "exif.jpg", exif=exif.tobytes())
    assert read_image(tmp_path / "exif.jpg").dpi == (300.0, 300.0)


def test_exif_reset_unlinks_thumbnail() -> None:
    # II, IFD0 @8: Orientation=6, next IFD @26; IFD1 @26: Compression=6, next 0
    ifd0 = struct.pack("<H", 1) + struct.pack("<HHIHH", 274, 3, 1, 6, 0) + struct.pack("<I", 26)
    ifd1 = struct.pack("<H", 1) + struct.pack("<HHIHH", 259, 3, 1, 6, 0) + struct.pack("<I", 0)
    raw = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd0 + ifd1
    out = images._reset_exif_orientation(raw)
    assert out is not None and out.startswith(b"Exif\x00\x00")
    body = out[6:]
    assert struct.unpack_from("<H", body, 8 + 2 + 8)[0] == 1  # orientation value
    assert struct.unpack_from("<I", body, 8 + 2 + 12)[0] == 0  # no IFD1 any more
    assert images._reset_exif_orientation(b"Exif\x00\x00garbage") is None


# --------------------------------------------------------------------------------------------
# errors


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="file not found"):
        read_image(tmp_path / "nope.jpg")


def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty file \(0 bytes\)"):
        read_image(tmp_path / "empty.png")


def test_text_file_named_jpg(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("this is not a photo\n" * 20)
    with pytest.raises(ImageError, match="not an image file"):
        read_image(tmp_path / "notes.jpg")


def test_a_photo_in_a_format_not_read_is_named_whatever_its_name(tmp_path: Path) -> None:
    """A GIF named .png (or a phone's HEIC named .jpg) read "not an image file" (an
    audit): its first bytes say what it is."""
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png", format="GIF")
    with pytest.raises(ImageError, match="a GIF image, whatever its name, which derain does "
                                         "not read"):
        read_image(tmp_path / "a.png")
    (tmp_path / "b.jpg").write_bytes(b"\0\0\0\x18ftypheic" + bytes(64))
    with pytest.raises(ImageError, match="a HEIC image"):
        read_image(tmp_path / "b.jpg")


def test_a_damaged_photo_is_named_by_its_first_bytes(tmp_path: Path) -> None:
    """A PNG with one flipped bit in a text chunk's checksum, or a JPEG cut after 4 bytes,
    read "not an image file" (an audit): they start as a PNG and a JPEG do."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "rain")
    Image.fromarray(_rgb8()).save(tmp_path / "ok.png", pnginfo=info)
    data = bytearray((tmp_path / "ok.png").read_bytes())
    at = data.index(b"tEXt") + 4 + len(b"Title\0rain")  # the chunk's CRC follows its data
    data[at] ^= 1
    (tmp_path / "crc.png").write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"^a damaged PNG file: its header cannot be read "
                       r"\(the checksum of its tEXt chunk is wrong"):
        read_image(tmp_path / "crc.png")
    Image.fromarray(_rgb8()).save(tmp_path / "ok.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "ok.jpg").read_bytes()[:4])
    with pytest.raises(ImageError, match=r"^a damaged JPEG file: its header cannot be read "
                       r"\(cut short, or corrupt\)$"):
        read_image(tmp_path / "cut.jpg")
    assert [images.sniff_format(tmp_path / n) for n in ("crc.png", "cut.jpg", "ok.png")] == [
        "PNG", "JPEG", "PNG"]
    (tmp_path / "notes.txt").write_text("BM, but a text file")
    assert images.sniff_format(tmp_path / "notes.txt") is None  # no BMP header behind it
    Image.fromarray(_rgb8()).save(tmp_path / "ok.bmp")
    assert images.sniff_format(tmp_path / "ok.bmp") == "BMP"
    assert images.sniff_format(tmp_path / "missing.png") is None
    (tmp_path / "bad.webp").write_bytes(b"RIFF\0\0\0\0WEBPVP8 " + bytes(40))
    with pytest.raises(ImageError, match=r"the WebP decoder cannot read its data$"):
        read_image(tmp_path / "bad.webp")  # was libwebp's "could not create decoder object"


def test_a_tiff_that_cannot_be_decoded_is_still_called_a_tiff(tmp_path: Path) -> None:
    (tmp_path / "odd.tif").write_bytes(b"II*\x00" + bytes(100))  # a header, no usable IFD
    with pytest.raises(ImageError, match="a TIFF that cannot be decoded here"):
        read_image(tmp_path / "odd.tif")


def test_folder(tmp_path: Path) -> None:
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(ImageError, match="folder"):
        read_image(tmp_path / "dir.jpg")


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_image(tmp_path: Path, suffix: str) -> None:
    Image.fromarray(_rgb8()).save(tmp_path / f"full{suffix}")
    data = (tmp_path / f"full{suffix}").read_bytes()
    (tmp_path / f"half{suffix}").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated image: the file ends before the picture"):
        read_image(tmp_path / f"half{suffix}")


@pytest.mark.parametrize("compression", ["tiff_deflate", "tiff_lzw"])
def test_a_cut_compressed_tiff_is_said_cut_short(tmp_path: Path, compression: str) -> None:
    """Pillow writes a TIFF's directory after its pixels: a cut one was "damaged, or a
    layout such as 16-bit gray with alpha..." (an audit)."""
    Image.fromarray(_rgb8()).save(tmp_path / "full.tif", compression=compression)
    data = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) * 6 // 10])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's "Corrupt EXIF data" on the lost directory
        with pytest.raises(ImageError, match="cut short: the TIFF's directory lies past"):
            read_image(tmp_path / "cut.tif")


@pytest.mark.parametrize("progressive", [False, True])
def test_a_jpeg_lacking_only_its_end_marker_is_read(tmp_path: Path, caplog,
                                                    progressive: bool) -> None:
    """Refused as truncated, though its picture is whole and viewers open it (an audit); a
    JPEG cut inside its picture is still refused."""
    import logging

    rgb = _rng().integers(0, 256, (64, 96, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "full.jpg", quality=90, progressive=progressive)
    data = (tmp_path / "full.jpg").read_bytes()
    full = read_image(tmp_path / "full.jpg").pixels
    for cut in (2, 1):  # FF D9 gone, or D9 alone
        (tmp_path / "end.jpg").write_bytes(data[:-cut])
        with caplog.at_level(logging.WARNING):
            np.testing.assert_array_equal(read_image(tmp_path / "end.jpg").pixels, full)
        assert "end.jpg lacks its JPEG end marker; all its blocks decode" in caplog.text
    # cut inside the picture; before its last scan (a progressive file's coarse scans alone
    # decode every block: read as whole until a review)
    for end in (len(data) - 20, len(data) // 2, data.rindex(b"\xff\xda")):
        (tmp_path / "cut.jpg").write_bytes(data[:end])
        with pytest.raises(ImageError, match="truncated"):
            read_image(tmp_path / "cut.jpg")


def test_a_jpeg_too_small_for_its_picture_is_refused_before_decoding(tmp_path: Path) -> None:
    """A 675-byte JPEG whose header claimed 14000x14000 pixels (its end marker present)
    decoded to a flat gray picture, minutes and gigabytes later (an audit); a flat photo
    of 12 MP, two bits a block, is read."""
    import struct

    Image.new("RGB", (64, 48), (10, 200, 30)).save(tmp_path / "small.jpg", quality=90)
    data = bytearray((tmp_path / "small.jpg").read_bytes())
    at = data.index(b"\xff\xc0")
    data[at + 5:at + 9] = struct.pack(">HH", 14000, 14000)
    (tmp_path / "claims.jpg").write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"its \d+ bytes cannot hold the 14000x14000 picture"):
        read_image(tmp_path / "claims.jpg")
    (tmp_path / "junk.jpg").write_bytes(bytes(data[:at]) + b"\x00" + bytes(data[at:]))
    with pytest.raises(ImageError, match="cannot hold"):  # a junk byte before the frame
        read_image(tmp_path / "junk.jpg")  # header hid it (a review)
    for progressive in (False, True):
        Image.new("L", (4000, 3000), 128).save(tmp_path / "flat.jpg", quality=50,
                                               optimize=True, progressive=progressive)
        assert read_image(tmp_path / "flat.jpg").size == (4000, 3000)


def test_a_png_metadata_chunk_too_large_is_said_plainly(tmp_path: Path) -> None:
    """Pillow's "Decompressed data too large for PngImagePlugin.MAX_TEXT_CHUNK" called the
    photo corrupt in Pillow's own names (an audit)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("junk", "x" * (PngImagePlugin.MAX_TEXT_CHUNK + 1),
                  zip=True)
    Image.fromarray(_rgb8()).save(tmp_path / "big.png", pnginfo=info)
    with pytest.raises(ImageError, match="a metadata chunk too large to read"):
        read_image(tmp_path / "big.png")


def test_truncated_16bit_png(tmp_path: Path) -> None:
    rgb16 = _rng().integers(0, 65536, (H, W, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "full.png"), rgb16)
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "half.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated image: the file ends before the picture"):
        read_image(tmp_path / "half.png")


def test_too_many_pixels(tmp_path: Path) -> None:
    Image.fromarray(_rgb8()).save(tmp_path / "in.png")
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError, match=r"image is 864 pixels \(36x24\), more than --max-pix"):
        read_image(tmp_path / "in.png", max_pixels=500)
    assert Image.MAX_IMAGE_PIXELS == before  # PIL's global limit restored
    assert read_image(tmp_path / "in.png", max_pixels=None).size == (W, H)
    assert Image.MAX_IMAGE_PIXELS == before


def test_bomb_is_refused_from_the_header(tmp_path: Path) -> None:
    """A 100000 x 100000 PNG header with almost no data: refused before decoding."""
    chunk = images._png_chunk
    png = (b"\x89PNG\r\n\x1a\n"
           + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))
    (tmp_path / "bomb.png").write_bytes(png)
    with pytest.raises(ImageError, match=r"10000\.0 megapixels .* --max-pixels \(200\.0 mega"):
        read_image(tmp_path / "bomb.png")


def test_pil_decompression_bomb_becomes_image_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Image.fromarray(_rgb8()).save(tmp_path / "in.png")

    def boom(*args: object, **kwargs: object) -> None:
        raise Image.DecompressionBombError("Image size (1 pixels) exceeds limit")

    monkeypatch.setattr(images, "_read", boom)
    with pytest.raises(ImageError, match="too large"):
        read_image(tmp_path / "in.png")


def test_write_rejects_bad_arrays(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="HxWx3"):
        write_image(tmp_path / "o.png", np.zeros((H, W), np.float32))
    with pytest.raises(ValueError, match="floating point"):
        write_image(tmp_path / "o.png", np.zeros((H, W, 3), np.uint8))
    like = LoadedImage(np.zeros((H, W, 3), np.float32), np.zeros((H, W), np.uint8), 8, False,
                       "RGBA", "PNG")
    with pytest.raises(ValueError, match="alpha"):
        write_image(tmp_path / "o.png", np.zeros((H + 1, W, 3), np.float32), like)
    assert list(tmp_path.iterdir()) == []


def test_out_of_range_is_clipped_and_nan_or_0_255_floats_refused(tmp_path: Path) -> None:
    rgb = np.full((H, W, 3), 0.5, dtype=np.float32)
    rgb[0, 0] = [-1.0, 1.4, 0.0]
    write_image(tmp_path / "o.png", rgb)
    out = np.asarray(Image.open(tmp_path / "o.png"))
    np.testing.assert_array_equal(out[0, 0], [0, 255, 0])
    assert out[1, 1, 0] == 128
    # 0..255 floats came out white and NaN black, in silence (an audit)
    for bad, msg in ((rgb * 255, "reaches 357"), (np.where(rgb > 0.4, np.nan, rgb), "NaN"),
                     (np.clip(rgb, 0, 1) * 200, "reaches 200")):  # 0..255 data of a dark
        # photo, below 255 (a mutation audit: a limit of 255 still passed)
        with pytest.raises(ValueError, match=msg):
            write_image(tmp_path / "p.png", bad)
    assert not (tmp_path / "p.png").exists()
    for q in (0, 101, 90.5, True, "90"):  # 90.5 reached Pillow, True was 1 (an audit)
        with pytest.raises(ValueError, match="quality must be a whole number 1..100"):
            write_image(tmp_path / "p.jpg", rgb, quality=q)  # type: ignore[arg-type]
    write_image(tmp_path / "p.jpg", rgb, quality=np.int64(90))


def test_a_noisy_jpeg_that_outgrows_pillows_buffer_is_written(tmp_path: Path) -> None:
    """An optimised JPEG is made whole in a buffer of Pillow's guessed size (1 byte a pixel
    below quality 95, 2 from it): a noisy photo at --quality 94 or 100 failed to write
    ("Suspension not allowed here"; an audit)."""
    noise = np.random.default_rng(0).random((200, 200, 3), dtype=np.float32)  # past 64 kB
    for q in (94, 100):
        write_image(tmp_path / f"n{q}.jpg", noise, quality=q)
        with Image.open(tmp_path / f"n{q}.jpg") as im:
            im.load()
            assert im.size == (200, 200)
        assert (tmp_path / f"n{q}.jpg").stat().st_size > 200 * 200 * (2 if q == 100 else 1)


def test_missing_output_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="output folder does not exist"):
        write_image(tmp_path / "nope" / "o.png", np.zeros((H, W, 3), np.float32))


# --------------------------------------------------------------------------------------------
# atomic writes


def _fail_midway(exc: BaseException):
    def save(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        fp.write(b"half a photo")  # type: ignore[attr-defined]
        raise exc

    return save


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), RuntimeError("bug"),
                                 KeyboardInterrupt()])
def test_failed_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    rgb = _rgb8() / np.float32(255)
    monkeypatch.setattr(Image.Image, "save", _fail_midway(exc))
    expected = ImageError if isinstance(exc, OSError) else type(exc)
    with pytest.raises(expected):
        write_image(tmp_path / "out.jpg", rgb)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "out.png"
    write_image(dest, _rgb8() / np.float32(255))
    before = dest.read_bytes()

    monkeypatch.setattr(Image.Image, "save", _fail_midway(OSError(5, "I/O error")))
    with pytest.raises(ImageError, match=r"cannot write image .*out\.png: I/O error"):
        write_image(dest, np.zeros((H, W, 3), np.float32))
    assert dest.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_failed_16bit_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    like = LoadedImage(np.zeros((H, W, 3), np.float32), None, 16, False, "RGB", "PNG")

    def broken(fp: object, *args: object, **kwargs: object) -> None:
        fp.write(b"\x89PNG partial")  # type: ignore[attr-defined]
        raise RuntimeError("encoder crashed")

    monkeypatch.setattr(images, "_encode_png16", broken)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        write_image(tmp_path / "out.png", like.rgb, like)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_written_file_gets_normal_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_image(tmp_path / "new.png", np.zeros((H, W, 3), np.float32))
    finally:
        os.umask(old)
    assert (tmp_path / "new.png").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600

    (tmp_path / "new.png").chmod(0o640)
    write_image(tmp_path / "new.png", np.ones((H, W, 3), np.float32))  # replace keeps mode
    assert (tmp_path / "new.png").stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("bits,grayscale", [(8, False), (16, False), (8, True)])
def test_quantise_in_bands_matches_whole_image(bits: int, grayscale: bool) -> None:
    """The banded float->int conversion (bounded memory on huge photos) gives exactly the
    whole-image result, across band boundaries, with out-of-range and non-finite values."""
    rng = np.random.default_rng(1)
    w = 700  # (1 << 20) // 700 = 1497 rows per band: 3100 rows cross two boundaries
    rgb = rng.uniform(-0.1, 1.1, (3100, w, 3)).astype(np.float32)
    rgb[0, 0] = [np.nan, np.inf, -np.inf]
    rgb[1497, 5] = [0.5 / 255, 1.5 / 255, 254.5 / 255]  # halves round to even
    top = 65535.0 if bits == 16 else 255.0
    x = rgb @ images.LUMA if grayscale else rgb
    x = np.nan_to_num(x * np.float32(top), nan=0.0, posinf=top, neginf=0.0)
    want = np.rint(np.clip(x, 0.0, top)).astype(np.uint16 if bits == 16 else np.uint8)
    got = images._quantise(rgb, bits, grayscale)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------------------------
# Layouts that decoders would turn into a wrong picture without error (found by an audit)


def _png(ihdr: bytes, rows: bytes, trns: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"tRNS", trns)
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_16bit_gray_png_with_a_colour_key_keeps_its_transparency(tmp_path: Path) -> None:
    gray = _rng().integers(1, 65536, (H, W), dtype=np.uint16)
    gray[:5, :7] = 0  # the transparent key
    rows = b"".join(b"\0" + r.astype(">u2").tobytes() for r in gray)
    (tmp_path / "in.png").write_bytes(
        _png(struct.pack(">IIBBBBB", W, H, 16, 0, 0, 0, 0), rows, struct.pack(">H", 0)))
    loaded = read_image(tmp_path / "in.png")
    assert (loaded.bit_depth, loaded.grayscale) == (16, True)
    assert loaded.alpha is not None
    np.testing.assert_array_equal(loaded.alpha, np.where(gray == 0, 0, 65535))

    write_image(tmp_path / "out.png", loaded.rgb, loaded)
    back = cv2.imread(str(tmp_path / "out.png"), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back[..., 3], loaded.alpha)
    np.testing.assert_array_equal(back[..., 0], gray)


def test_16bit_rgb_png_with_a_colour_key_stays_16bit_with_its_alpha(tmp_path: Path) -> None:
    rgb = _u16(_smooth_rgb8() / 255.0)
    rgb[:5, :7] = 0
    rows = b"".join(b"\0" + r.astype(">u2").tobytes() for r in rgb)
    (tmp_path / "in.png").write_bytes(
        _png(struct.pack(">IIBBBBB", W, H, 16, 2, 0, 0, 0), rows, struct.pack(">HHH", 0, 0, 0)))
    loaded = read_image(tmp_path / "in.png")
    assert (loaded.bit_depth, loaded.grayscale) == (16, False)
    np.testing.assert_array_equal(loaded.pixels, rgb)
    assert loaded.alpha is not None
    np.testing.assert_array_equal(loaded.alpha, np.where((rgb == 0).all(-1), 0, 65535))


def _tiff(path: Path, planes: list[np.ndarray], *, planar: bool, sample_format: int = 1,
          photometric: int | None = None, extra_samples: int | None = None) -> None:
    """A minimal uncompressed little-endian TIFF (Pillow cannot write these layouts)."""
    h, w = planes[0].shape
    bits = planes[0].dtype.itemsize * 8
    n = len(planes)
    data = (b"".join(p.astype(planes[0].dtype.newbyteorder("<")).tobytes() for p in planes)
            if planar else np.stack(planes, -1).astype(planes[0].dtype.newbyteorder("<")).tobytes())
    strips = [data[i * len(data) // n:(i + 1) * len(data) // n] for i in range(n)] if planar \
        else [data]
    header = 8
    extra_at = header + len(data)  # arrays of tag values after the pixels
    extras = b""
    entries = []

    def tag(code: int, typ: int, values: list[int]) -> None:
        nonlocal extras
        size = {3: 2, 4: 4}[typ]
        fmt = {3: "<H", 4: "<I"}[typ]
        packed = b"".join(struct.pack(fmt, v) for v in values)
        if len(packed) <= 4:
            entries.append(struct.pack("<HHI", code, typ, len(values)) + packed.ljust(4, b"\0"))
        else:
            entries.append(struct.pack("<HHII", code, typ, len(values), extra_at + len(extras)))
            extras += packed
        assert size

    offsets, at = [], header
    for s in strips:
        offsets.append(at)
        at += len(s)
    tag(256, 4, [w])
    tag(257, 4, [h])
    tag(258, 3, [bits] * n)
    tag(259, 3, [1])
    tag(262, 3, [(2 if n >= 3 else 1) if photometric is None else photometric])
    tag(273, 4, offsets)
    tag(277, 3, [n])
    tag(278, 4, [h])
    tag(279, 4, [len(s) for s in strips])
    tag(284, 3, [2 if planar else 1])
    if extra_samples is not None:
        tag(338, 3, [extra_samples])
    tag(339, 3, [sample_format] * n)
    ifd_at = extra_at + len(extras)
    ifd = struct.pack("<H", len(entries)) + b"".join(entries) + struct.pack("<I", 0)
    path.write_bytes(b"II*\0" + struct.pack("<I", ifd_at) + data + extras + ifd)


def test_16bit_min_is_white_tiff_is_not_read_as_its_negative(tmp_path: Path) -> None:
    # photometric 0: stored 0 is white; Pillow inverts this at 8 bits but not at 16
    ramp = np.tile(np.arange(W, dtype=np.uint16) * 1000, (H, 1))
    _tiff(tmp_path / "miw16.tif", [ramp], planar=False, photometric=0)
    _tiff(tmp_path / "miw8.tif", [(ramp >> 8).astype(np.uint8)], planar=False, photometric=0)
    sixteen, eight = read_image(tmp_path / "miw16.tif"), read_image(tmp_path / "miw8.tif")
    assert sixteen.bit_depth == 16 and sixteen.grayscale
    np.testing.assert_array_equal(sixteen.pixels[..., 0], 65535 - ramp)
    np.testing.assert_array_equal(eight.pixels[..., 0], 255 - (ramp >> 8))  # Pillow's own
    write_image(tmp_path / "out.tif", sixteen.rgb, sixteen)  # written MinIsBlack, same picture
    np.testing.assert_array_equal(read_image(tmp_path / "out.tif").pixels, sixteen.pixels)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_tiff_extra_sample_of_no_declared_meaning_is_not_alpha(tmp_path: Path, dtype) -> None:
    # ExtraSamples 0 ("unspecified", e.g. Photoshop's saved selection) beside RGB: a mask of
    # zeros made the 16-bit result see-through where 8-bit dropped the channel
    ramp = np.tile(np.arange(W, dtype=np.uint16) * 1000, (H, 1))
    planes = [ramp, ramp // 2, ramp // 3, np.zeros_like(ramp)]
    if dtype == np.uint8:
        planes = [(q >> 8).astype(np.uint8) for q in planes]
    _tiff(tmp_path / "x.tif", planes, planar=False, extra_samples=0)
    loaded = read_image(tmp_path / "x.tif")
    assert loaded.alpha is None and loaded.bit_depth == (16 if dtype == np.uint16 else 8)
    np.testing.assert_array_equal(loaded.pixels, np.dstack(planes[:3]))


def test_tiff_layouts_pillow_would_misread_are_refused_clearly(tmp_path: Path) -> None:
    ramp = np.tile(np.arange(W, dtype=np.uint16) * 1000, (H, 1))
    cases = {
        "planar16.tif": ([ramp, ramp // 2, ramp // 3], True, 1, "separate colour planes"),
        "signed16.tif": ([(ramp.astype(np.int32) - 17000).astype(np.int16)], False, 2,
                         "signed-integer"),
        "u32.tif": ([ramp.astype(np.uint32) * 65537], False, 1, "32-bit samples"),
    }
    for name, (planes, planar, sf, reason) in cases.items():
        _tiff(tmp_path / name, planes, planar=planar, sample_format=sf)
        with pytest.raises(ImageError, match=reason):
            read_image(tmp_path / name)

    # the same writer's ordinary layouts still read correctly, so the refusals are about layout
    _tiff(tmp_path / "contig16.tif", [ramp, ramp // 2, ramp // 3], planar=False)
    np.testing.assert_array_equal(read_image(tmp_path / "contig16.tif").pixels[..., 1], ramp // 2)
    planes8 = [(ramp // 257).astype(np.uint8), (ramp // 514).astype(np.uint8),
               np.full_like(ramp, 7, dtype=np.uint8)]
    _tiff(tmp_path / "planar8.tif", planes8, planar=True)
    np.testing.assert_array_equal(read_image(tmp_path / "planar8.tif").pixels,
                                  np.stack(planes8, -1))


def test_decoder_warnings_become_one_log_line_naming_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # EXIF whose orientation entry points past its end: Pillow warns "Corrupt EXIF data"
    ifd = struct.pack("<H", 5) + struct.pack("<HHII", 0x112, 3, 1, 6)
    exif = b"Exif\0\0" + b"II*\0" + struct.pack("<I", 8) + ifd
    Image.fromarray(_rgb8()).save(tmp_path / "bad.jpg", exif=exif)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        before = warnings.showwarning
        with caplog.at_level("WARNING", logger="derain_cli"), images.warnings_to_log():
            read_image(tmp_path / "bad.jpg")
            warnings.warn("outside any read", UserWarning, stacklevel=1)
        assert warnings.showwarning is before  # restored on exit
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"{tmp_path / 'bad.jpg'}: Corrupt EXIF") for m in lines), lines
    assert not any("  " in m for m in lines), lines  # Pillow's double spaces made single
    assert "outside any read" in lines


def test_a_short_write_fails_the_jpeg_instead_of_leaving_it_cut_off(tmp_path: Path) -> None:
    """A full disk left a truncated JPEG counted as processed: Pillow's optimized JPEG
    encoder wrote to the descriptor and ignored the short write (audit). Here the file-size
    limit plays the full disk, in a child process."""
    import subprocess
    import sys

    code = f"""
import resource, signal, sys
import numpy as np
from derain_cli.images import ImageError, write_image
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
# ~40 KB: under the encoder's 160 KB buffer, so Pillow writes it in one (short) write
y, x = np.mgrid[0:400, 0:400]
img = np.stack([x / 400, y / 400, (x + y) / 800], -1)
img += np.random.default_rng(0).random((400, 400, 3)) * 0.03
try:
    write_image({str(tmp_path / "out.jpg")!r}, np.clip(img, 0, 1).astype(np.float32),
                quality=95)
except ImageError as e:
    print("refused:", e)
    sys.exit(0)
sys.exit(3)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "refused: cannot write image" in r.stdout, r.stdout + r.stderr
    assert not (tmp_path / "out.jpg").exists() and _leftovers(tmp_path) == []


def test_a_long_file_name_that_fits_is_written(tmp_path: Path) -> None:
    """The temporary name was built from the final one and passed the 255-byte limit."""
    dest = tmp_path / ("x" * 246 + ".png")
    write_image(dest, _rgb8().astype(np.float32) / 255)
    assert dest.is_file() and _leftovers(tmp_path) == []


def test_unread_photo_formats_are_known_by_suffix() -> None:
    from derain_cli.images import unread_photo_format

    assert unread_photo_format("x/IMG_0001.HEIC") == "HEIC"
    assert unread_photo_format("a.nef") == unread_photo_format("b.DNG") == "camera raw"
    assert unread_photo_format("a.gif") == "GIF"
    for name in ("a.jpg", "a.txt", "a.xmp", ".hidden.heic", "noext"):
        assert unread_photo_format(name) is None


# --------------------------------------------------------------------------- metadata audit
def _iptc_app13(caption: bytes, copyright_: bytes) -> bytes:
    """A Photoshop APP13 payload holding IPTC caption (2:120) and copyright (2:116)."""
    def record(dataset: int, data: bytes) -> bytes:
        return b"\x1c\x02" + bytes([dataset]) + struct.pack(">H", len(data)) + data

    iptc = record(120, caption) + record(116, copyright_)
    resource = (b"8BIM" + struct.pack(">H", 0x0404) + b"\0\0" + struct.pack(">I", len(iptc))
                + iptc + b"\0" * (len(iptc) % 2))
    return b"Photoshop 3.0\0" + resource


def test_jpeg_comment_and_iptc_travel_into_a_jpeg_result(tmp_path: Path) -> None:
    """Captions, keywords and copyright in IPTC (newsroom tools) and the JPEG comment were
    dropped in silence (audit); beside the ICC profile and EXIF, which Pillow also writes."""
    from PIL import IptcImagePlugin

    app13 = _iptc_app13(b"Rain over the harbour", b"(c) Jane")
    segment = b"\xff\xed" + struct.pack(">H", len(app13) + 2) + app13
    Image.fromarray(_smooth_rgb8()).save(tmp_path / "in.jpg", quality=95, extra=segment,
                                         comment=b"shot from the pier", icc_profile=_srgb_icc(),
                                         exif=_exif_bytes(1))
    loaded = read_image(tmp_path / "in.jpg")
    assert loaded.comment == b"shot from the pier" and loaded.app13 == (app13,)
    write_image(tmp_path / "out.jpg", loaded.rgb, loaded)
    out = Image.open(tmp_path / "out.jpg")
    assert out.info["comment"] == b"shot from the pier"
    assert IptcImagePlugin.getiptcinfo(out) == {(2, 120): b"Rain over the harbour",
                                               (2, 116): b"(c) Jane"}
    assert out.info["icc_profile"] == _srgb_icc() and out.getexif()
    write_image(tmp_path / "out.png", loaded.rgb, loaded)  # no place for them: not written
    assert "comment" not in Image.open(tmp_path / "out.png").info


def test_extended_xmp_travels_into_a_jpeg_result_and_is_said_elsewhere(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """XMP too large for one segment goes on in extension segments (phones' depth maps,
    editors' history); they were dropped in silence, the main packet naming them still
    (an audit)."""
    import hashlib

    ext = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">' + b"Q" * 3000 + b"</x:xmpmeta>"
    guid = hashlib.md5(ext).hexdigest().upper().encode()
    main = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999'
            b'/02/22-rdf-syntax-ns#"><rdf:Description xmlns:xmpNote="http://ns.adobe.com/xmp/'
            b'note/" xmpNote:HasExtendedXMP="' + guid + b'"/></rdf:RDF></x:xmpmeta>')
    parts = [b"http://ns.adobe.com/xmp/extension/\0" + guid + struct.pack(">II", len(ext), o)
             + ext[o:o + 2000] for o in (0, 2000)]
    segments = b"".join(b"\xff\xe1" + struct.pack(">H", len(p) + 2) + p for p in parts)
    Image.fromarray(_smooth_rgb8()).save(tmp_path / "in.jpg", quality=90, xmp=main,
                                         extra=segments)
    loaded = read_image(tmp_path / "in.jpg")
    assert loaded.xmp_extension == tuple(parts)
    write_image(tmp_path / "out.jpg", loaded.rgb, loaded)
    out = Image.open(tmp_path / "out.jpg")
    assert [d for m, d in out.applist if m == "APP1" and d.startswith(b"http://ns.adobe.com/"
                                                                       b"xmp/extension/")] == parts
    assert guid in out.info["xmp"]
    with caplog.at_level("WARNING", logger="derain_cli"):
        write_image(tmp_path / "out.png", loaded.rgb, loaded)
    assert "extended XMP (depth maps, edit history); left out (write JPEG" in caplog.text


def test_a_progressive_jpeg_gives_a_progressive_result(tmp_path: Path) -> None:
    """Progressive photos (web galleries load them coarse to fine) came out baseline
    (session 63); a baseline one stays baseline."""
    for progressive in (True, False):
        src = tmp_path / f"in{progressive}.jpg"
        Image.fromarray(_smooth_rgb8()).save(src, quality=90, progressive=progressive)
        loaded = read_image(src)
        assert loaded.progressive is progressive
        write_image(tmp_path / "out.jpg", loaded.rgb, loaded)
        assert bool(Image.open(tmp_path / "out.jpg").info.get("progressive")) is progressive
        write_image(tmp_path / "out.png", loaded.rgb, loaded)  # nothing to say in a PNG


def test_metadata_a_format_cannot_hold_is_said(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """EXIF, the comment and IPTC into BMP, the comment and IPTC into PNG, a PNG's text
    into JPEG were left out without a word, against the README's "never dropped in
    silence" (audit); a format that keeps everything says nothing."""
    app13 = _iptc_app13(b"Rain over the harbour", b"(c) Jane")
    segment = b"\xff\xed" + struct.pack(">H", len(app13) + 2) + app13
    Image.fromarray(_smooth_rgb8()).save(tmp_path / "in.jpg", quality=95, extra=segment,
                                         comment=b"pier", exif=_exif_bytes(1))
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "harbour")
    info.add_text("Author", "Jane")
    Image.fromarray(_smooth_rgb8()).save(tmp_path / "in.png", pnginfo=info)

    def said(src: str, out: str) -> list[str]:
        loaded = read_image(tmp_path / src)
        caplog.clear()
        with caplog.at_level("WARNING", logger="derain_cli"):
            write_image(tmp_path / out, loaded.rgb, loaded)
        return [r.getMessage() for r in caplog.records]

    assert said("in.jpg", "a.bmp") == [
        f"{tmp_path / 'a.bmp'}: BMP has no place for the photo's EXIF (camera, dates, "
        "copyright), JPEG comment and IPTC block (caption, keywords, copyright); left out "
        "(write JPEG to keep them)"]
    assert said("in.jpg", "a.png") == [
        f"{tmp_path / 'a.png'}: PNG has no place for the photo's JPEG comment and IPTC block "
        "(caption, keywords, copyright); left out (write JPEG to keep them)"]
    assert said("in.png", "b.jpg") == [
        f"{tmp_path / 'b.jpg'}: JPEG has no place for the photo's PNG text (Author, Title); "
        "left out (write PNG to keep it)"]
    assert said("in.jpg", "c.jpg") == said("in.png", "c.png") == []
    info = PngImagePlugin.PngInfo()  # ImageMagick's and editors' bookkeeping: not worth it
    info.add_text("Software", "GIMP")
    info.add_text("date:create", "2026-01-01T00:00:00+00:00")
    Image.fromarray(_smooth_rgb8()).save(tmp_path / "tool.png", pnginfo=info)
    assert said("tool.png", "d.jpg") == []


def test_exif_too_large_for_a_jpeg_loses_only_the_maker_note(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture
                                                             ) -> None:
    """The whole EXIF (dates, copyright, GPS) was dropped in silence when a large maker
    note made it pass a JPEG's 64 KB segment (audit)."""
    exif = Image.Exif()
    exif[0x8298] = "(c) Jane"
    exif.get_ifd(0x8769)[0x9003] = "2026:01:01 10:00:00"
    exif.get_ifd(0x8769)[0x927C] = b"M" * 70000
    Image.fromarray(_rgb8()).save(tmp_path / "in.png", exif=exif)
    loaded = read_image(tmp_path / "in.png")
    with caplog.at_level("WARNING", logger="derain_cli"):
        write_image(tmp_path / "out.jpg", loaded.rgb, loaded)
    got = Image.open(tmp_path / "out.jpg").getexif()
    assert got[0x8298] == "(c) Jane" and got.get_ifd(0x8769) == {0x9003: "2026:01:01 10:00:00"}
    assert "written without the camera's maker note" in caplog.text
    # XMP past one segment: left out, and said
    loaded.xmp = b"<x:xmpmeta>" + b" " * 70000 + b"</x:xmpmeta>"
    with caplog.at_level("WARNING", logger="derain_cli"):
        write_image(tmp_path / "out2.jpg", loaded.rgb, loaded)
    assert "the XMP metadata (68 KB) does not fit" in caplog.text


def _stereo_mpo(path: Path, disparity: bool) -> None:
    """A two-image MPO as Pillow writes it, its second entry's type set to a stereo view."""
    a, b = (Image.fromarray(np.full((H, W, 3), v, np.uint8)) for v in (128, 30))
    a.save(path, format="MPO", save_all=True, append_images=[b])
    if disparity:
        data = bytearray(path.read_bytes())
        tiff = data.find(b"MPF\0") + 4
        tag = data.find(b"\x02\xb0\x07\x00", tiff)  # MPEntry, little-endian
        entries = tiff + struct.unpack_from("<I", data, tag + 8)[0]
        struct.pack_into("<I", data, entries + 16, 0x020002)  # Multi-Frame (Disparity)
        path.write_bytes(bytes(data))


def test_a_stereo_mpo_says_its_second_view_is_left_out(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    _stereo_mpo(tmp_path / "plain.jpg", disparity=False)  # a preview or gain map: quiet
    _stereo_mpo(tmp_path / "stereo.jpg", disparity=True)
    with caplog.at_level("WARNING", logger="derain_cli"):
        read_image(tmp_path / "plain.jpg")
        assert "views" not in caplog.text
        assert read_image(tmp_path / "stereo.jpg").size == (W, H)
    assert "holds 2 views (a stereo pair or panorama set); only the first" in caplog.text
    assert images.unread_photo_format(tmp_path / "x.MPO") == "MPO (stereo)"


def test_colour_information_a_format_cannot_carry_is_said(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    """A profile BMP cannot carry is said, unless it is sRGB, which a file without one is
    read as (said too before: an audit)."""
    # an RGB profile not named sRGB: the built-in one, its description changed
    wide = _srgb_icc().replace("sRGB".encode("utf-16-be"), "wRGB".encode("utf-16-be"))
    Image.fromarray(_rgb8()).save(tmp_path / "icc.png", icc_profile=wide)
    Image.fromarray(_rgb8()).save(tmp_path / "srgb.png", icc_profile=_srgb_icc())
    linear = PngImagePlugin.PngInfo()
    linear.add(b"gAMA", struct.pack(">I", 100000))  # gamma 1.0: linear light
    Image.fromarray(_rgb8()).save(tmp_path / "linear.png", pnginfo=linear)
    srgb_like = PngImagePlugin.PngInfo()
    srgb_like.add(b"gAMA", struct.pack(">I", 45455))
    Image.fromarray(_rgb8()).save(tmp_path / "usual.png", pnginfo=srgb_like)
    with caplog.at_level("WARNING", logger="derain_cli"):
        for name, suffix in (("icc", ".bmp"), ("linear", ".jpg"), ("usual", ".jpg"),
                             ("icc", ".jpg"), ("srgb", ".bmp")):
            loaded = read_image(tmp_path / f"{name}.png")
            write_image(tmp_path / f"{name}_out{suffix}", loaded.rgb, loaded)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "BMP cannot carry the photo's colour profile" in lines[0]
    assert "the PNG's gamma (1) is not written in JPEG" in lines[1]


def test_a_result_too_large_for_its_format_is_refused_clearly(tmp_path: Path) -> None:
    wide = np.zeros((2, 16384, 3), np.float32)
    with pytest.raises(ImageError, match=r"WebP holds at most 16383 px a side and this photo "
                                         r"is 16384x2: write PNG or TIFF"):
        prepare_image(tmp_path / "w.webp", wide)
    prepare_image(tmp_path / "w.png", wide)  # PNG has room


def test_jpeg_side_limit_is_libjpegs():
    assert images.side_limit_problem("JPEG", 65500, 2) is None
    assert "65500 px a side" in images.side_limit_problem("JPEG", 65501, 2)


def test_decoder_notes_work_with_an_opencv_without_its_logging_module(monkeypatch):
    """A packaging audit: OpenCV before 4.13 has no cv2.utils.logging, and every photo
    failed on it (pyproject allows 4.8)."""
    import types

    import cv2

    from derain_cli.images import warnings_to_log

    monkeypatch.setattr(cv2, "utils", types.SimpleNamespace())
    with warnings_to_log():
        pass


def test_the_16bit_check_compares_every_band_of_rows() -> None:
    """The high-byte check runs in bands of rows (one full-size temporary less): a
    difference in the last band still tells the decodes apart."""
    from derain_cli.images import _high_bytes_are

    samples = (np.arange(3000 * 2000 * 3, dtype=np.uint32) % 65536).astype(np.uint16)
    samples = samples.reshape(3000, 2000, 3)  # more rows than one band holds
    ref = (samples >> 8).astype(np.uint8)
    assert _high_bytes_are(samples, ref)
    ref[-1, -1, -1] ^= 1
    assert not _high_bytes_are(samples, ref)


def test_a_mode_i_photo_of_8_bit_values_derains_to_the_levels_of_its_8_bit_twin(
        tiny_weights: Path) -> None:
    """A 32-bit integer (mode I) gray photo holding 0-255 values comes back in mode I at
    that scale, rounded to the nearest level as the same photo in mode L is: cut down
    instead, half of its pixels fell a level and ``strength=0`` (the photo as it is)
    changed 4 % of them (a mutation audit found nothing failing)."""
    from derain_cli.enhancer import Derainer

    gray = _rng().integers(0, 256, (40, 56)).astype(np.uint8)
    d = Derainer(weights=tiny_weights, device="cpu", tile=0, backend="torch")
    as_i = d.derain(Image.fromarray(gray.astype(np.int32)))
    assert as_i.mode == "I"
    assert np.array_equal(np.asarray(as_i), np.asarray(d.derain(Image.fromarray(gray))))
    d.strength = 0.0
    assert np.array_equal(np.asarray(d.derain(Image.fromarray(gray.astype(np.int32)))), gray)


# --- what a mutation audit of images.py found unpinned: each of these could change unseen

def test_webp_quality_is_used(tmp_path: Path) -> None:
    noisy = np.random.default_rng(2).random((64, 64, 3), dtype=np.float32)
    write_image(tmp_path / "lo.webp", noisy, quality=30)
    write_image(tmp_path / "hi.webp", noisy, quality=95)
    assert (tmp_path / "lo.webp").stat().st_size < 0.7 * (tmp_path / "hi.webp").stat().st_size


def test_a_lossless_webp_keeps_the_colour_under_transparent_pixels(tmp_path: Path) -> None:
    alpha = np.where(np.arange(W) < W // 2, 0, 255)[None, :].repeat(H, 0).astype(np.uint8)
    rgba = np.dstack([_rgb8(), alpha])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "in.webp", lossless=True, exact=True)
    loaded = read_image(tmp_path / "in.webp")
    write_image(tmp_path / "out.webp", loaded.rgb, loaded)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.webp")), rgba)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("depth", [8, 16])
def test_unequal_horizontal_and_vertical_dpi_are_kept_apart(tmp_path: Path, suffix: str,
                                                            depth: int) -> None:
    dt = np.uint16 if depth == 16 else np.uint8
    px = (np.random.default_rng(3).random((H, W, 3)) * np.iinfo(dt).max).astype(dt)
    like = LoadedImage(px, None, depth, False, "RGB", "PNG", dpi=(300.0, 150.0))
    write_image(tmp_path / f"o{suffix}", like.rgb, like)
    assert read_image(tmp_path / f"o{suffix}").dpi == (300.0, 150.0)


def test_an_8_bit_gray_png_colour_key_keeps_its_transparency(tmp_path: Path) -> None:
    g = np.random.default_rng(4).integers(1, 256, (H, W), dtype=np.uint8)
    g[:5] = 0
    Image.fromarray(g, "L").save(tmp_path / "in.png", transparency=0)
    loaded = read_image(tmp_path / "in.png")
    assert loaded.alpha is not None
    assert (loaded.alpha[:5] == 0).all() and (loaded.alpha[5:] == 255).all()
    write_image(tmp_path / "out.png", loaded.rgb, loaded)
    out = read_image(tmp_path / "out.png")
    np.testing.assert_array_equal(out.alpha, loaded.alpha)
    assert out.grayscale


def test_a_16_bit_gray_png_with_alpha_written_as_tiff_reads_back(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    g = rng.integers(0, 65536, (H, W), dtype=np.uint16)
    a = rng.integers(0, 65536, (H, W), dtype=np.uint16)
    with open(tmp_path / "in.png", "wb") as f:
        images._encode_png16(f, np.dstack([g, a]), exif=None, icc=None, dpi=None)
    loaded = read_image(tmp_path / "in.png")
    write_image(tmp_path / "out.tif", loaded.rgb, loaded)
    out = read_image(tmp_path / "out.tif")
    assert out.bit_depth == 16
    np.testing.assert_array_equal(out.pixels[..., 0], g)
    np.testing.assert_array_equal(out.alpha, a)


def test_infinite_values_either_way_are_refused_and_nothing_written(tmp_path: Path) -> None:
    rgb = np.full((H, W, 3), 0.5, np.float32)
    for bad in (-np.inf, np.inf):
        rgb[3, 3, 1] = bad
        with pytest.raises(ValueError, match="infinite"):
            write_image(tmp_path / "o.png", rgb)
    assert not (tmp_path / "o.png").exists()


def test_a_pngs_xmp_and_raw_exif_text_are_not_copied_as_text(tmp_path: Path) -> None:
    """Their old orientation (6) would turn the upright result again in viewers that read
    those chunks."""
    xmp = b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    exif = Image.Exif()
    exif[274] = 6
    raw = exif.tobytes()
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp.decode())
    info.add_text("Raw profile type exif", f"\nexif\n{len(raw):8d}\n{raw.hex()}\n")
    Image.fromarray(_rgb8()).save(tmp_path / "in.png", pnginfo=info)
    loaded = read_image(tmp_path / "in.png")
    write_image(tmp_path / "out.png", loaded.rgb, loaded)
    data = (tmp_path / "out.png").read_bytes()
    assert data.count(b"XML:com.adobe.xmp") == 1 and b'tiff:Orientation="6"' not in data
    assert b"Raw profile type exif" not in data


def test_a_tiff_without_resolution_gets_no_dpi(tmp_path: Path) -> None:
    """Pillow reports dpi (1, 1) for it: every result would have been written at 1 dpi."""
    Image.fromarray(_rgb8()).save(tmp_path / "in.tif")
    loaded = read_image(tmp_path / "in.tif")
    assert loaded.dpi is None
    write_image(tmp_path / "out.png", loaded.rgb, loaded)
    assert "dpi" not in Image.open(tmp_path / "out.png").info


def test_a_big_endian_long_orientation_is_reset_to_1() -> None:
    """An Orientation stored as a LONG (seen in the wild) in a big-endian EXIF: 1, not
    65536."""
    body = (b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1)
            + struct.pack(">HHII", 0x0112, 4, 1, 6) + struct.pack(">I", 0))
    out = images._reset_exif_orientation(b"Exif\x00\x00" + body)
    e = Image.Exif()
    e.load(out)
    assert e[0x0112] == 1


def test_an_8_bit_alpha_in_a_16_bit_output_stays_opaque(tmp_path: Path) -> None:
    like = LoadedImage(np.zeros((H, W, 3), np.uint16), np.full((H, W), 255, np.uint8), 16,
                       False, "RGBA", "PNG")
    write_image(tmp_path / "o.png", like.rgb, like)
    assert (read_image(tmp_path / "o.png").alpha == 65535).all()


def test_a_dpi_near_but_not_at_a_whole_number_is_kept(tmp_path: Path) -> None:
    Image.fromarray(_rgb8()).save(tmp_path / "in.tif", dpi=(72.2, 72.2))
    assert read_image(tmp_path / "in.tif").dpi == pytest.approx((72.2, 72.2))


def test_no_extended_xmp_is_written_without_its_main_packet(tmp_path: Path) -> None:
    big = b"<x:xmpmeta>" + b"a" * 70000 + b"</x:xmpmeta>"
    like = LoadedImage(_rgb8(), None, 8, False, "RGB", "JPEG", xmp=big,
                       xmp_extension=(images._XMP_EXTENSION + b"0" * 40 + b"x" * 100,))
    write_image(tmp_path / "o.jpg", like.rgb, like)
    assert images._XMP_EXTENSION not in (tmp_path / "o.jpg").read_bytes()


def test_png_colour_chunks_are_not_written_beside_an_icc_profile(tmp_path: Path) -> None:
    """The PNG spec forbids sRGB beside iCCP; gAMA would fight the profile."""
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for depth, dt in ((8, np.uint8), (16, np.uint16)):
        like = LoadedImage(_rgb8().astype(dt), None, depth, False, "RGB", "PNG",
                           icc_profile=icc,
                           png_colour=((b"sRGB", b"\x00"), (b"gAMA", struct.pack(">I", 45455))))
        write_image(tmp_path / "o.png", like.rgb, like)
        d = (tmp_path / "o.png").read_bytes()
        pos, kinds = 8, []
        while pos < len(d):
            (n,) = struct.unpack_from(">I", d, pos)
            kinds.append(d[pos + 4:pos + 8])
            pos += 12 + n
        assert b"iCCP" in kinds and b"sRGB" not in kinds and b"gAMA" not in kinds, kinds
