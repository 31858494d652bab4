"""Tests for derain_cli.pairs: rainy/clean layouts, overrides and error messages."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from PIL import Image

from derain_cli.pairs import (
    SUBFOLDER_LAYOUTS,
    Pair,
    PairsError,
    find_pairs,
    list_images,
)


def _img(path: Path) -> Path:
    """A 2x2 PNG at ``path`` (PNG bytes whatever the suffix: find_pairs never decodes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (2, 2), (10, 20, 30)).save(path, format="PNG")
    return path


def _make(root: Path, *names: str) -> None:
    for name in names:
        _img(root / name)


def _names(pairs: list[Pair], root: Path) -> list[tuple[str, str]]:
    return [
        (p.rainy.relative_to(root).as_posix(), p.clean.relative_to(root).as_posix()) for p in pairs
    ]


# ------------------------------------------------------------------------- list_images


def test_list_images_filters_sorts_and_skips_hidden(tmp_path):
    _make(tmp_path, "b10.png", "b2.JPG", "a.jpeg", "c.bmp", "d.tif", "e.TIFF", "f.webp")
    _make(tmp_path, ".hidden.png", "sub/inner.png", ".cache/x.png")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "g.gif").write_bytes(b"GIF89a")
    (tmp_path / "dir.png").mkdir()  # a folder with an image suffix is not an image
    found = [p.name for p in list_images(tmp_path)]
    assert found == ["a.jpeg", "b2.JPG", "b10.png", "c.bmp", "d.tif", "e.TIFF", "f.webp"]
    rec = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path, recursive=True)]
    assert "sub/inner.png" in rec
    assert not any(".cache" in r or ".hidden" in r for r in rec)
    assert len(rec) == 8


def test_list_images_follows_linked_folders_once_each(tmp_path):
    root, elsewhere = tmp_path / "photos", tmp_path / "dataset"
    _make(root, "own.png", "sub/inner.png")
    _make(elsewhere, "linked.png", "deeper/more.png")
    (root / "data").symlink_to(elsewhere, target_is_directory=True)  # linked into place
    (root / "again").symlink_to(elsewhere, target_is_directory=True)  # the same, twice
    (root / "sub" / "up").symlink_to(root, target_is_directory=True)  # a loop
    rec = [p.relative_to(root).as_posix() for p in list_images(root, recursive=True)]
    assert sorted(rec) == ["again/deeper/more.png", "again/linked.png", "own.png",
                           "sub/inner.png"]


def test_reads_into_finds_an_output_inside_the_folder_or_behind_a_link(tmp_path):
    from derain_cli.pairs import reads_into

    photos, runs = tmp_path / "photos", tmp_path / "runs"
    _make(photos, "a.png")
    runs.mkdir()
    assert reads_into(photos, photos / "out") == photos
    assert reads_into(photos, runs / "r1") is None
    (photos / "link").symlink_to(runs, target_is_directory=True)
    assert reads_into(photos, runs / "r1") == photos / "link"
    assert reads_into(photos, runs) == photos / "link"
    assert reads_into(photos, tmp_path) is None  # holds the photos; writes nothing read
    assert reads_into(tmp_path / "missing", runs) is None


def test_list_images_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "nope")
    _img(tmp_path / "a.png")
    with pytest.raises(NotADirectoryError):
        list_images(tmp_path / "a.png")


# ------------------------------------------------------------------------- subfolder layouts


@pytest.mark.parametrize(("rainy", "clean"), SUBFOLDER_LAYOUTS)
def test_each_subfolder_layout(tmp_path, rainy, clean):
    for n in ("001.png", "002.png", "010.png"):
        _img(tmp_path / rainy / n)
        _img(tmp_path / clean / n)
    pairs = find_pairs(tmp_path)
    assert [p.name for p in pairs] == ["001.png", "002.png", "010.png"]
    assert _names(pairs, tmp_path)[0] == (f"{rainy}/001.png", f"{clean}/001.png")


def test_subfolder_names_case_insensitive(tmp_path):
    _make(tmp_path, "Input/x.png", "Input/y.png", "TARGET/x.png", "TARGET/y.png")
    pairs = find_pairs(tmp_path)
    assert _names(pairs, tmp_path) == [
        ("Input/x.png", "TARGET/x.png"),
        ("Input/y.png", "TARGET/y.png"),
    ]


def test_natural_order_and_pair_fields(tmp_path):
    _make(
        tmp_path, *(f"rainy/{n}.png" for n in (10, 2, 1)), *(f"clean/{n}.png" for n in (1, 2, 10))
    )
    pairs = find_pairs(tmp_path)
    assert [p.name for p in pairs] == ["1.png", "2.png", "10.png"]
    assert pairs[0] == Pair(tmp_path / "rainy/1.png", tmp_path / "clean/1.png", "1.png")
    with pytest.raises(dataclasses.FrozenInstanceError):
        pairs[0].name = "x"  # type: ignore[misc]


def test_two_layouts_present_are_refused_not_guessed(tmp_path):
    """The first layout in the table won in silence and the other set was left out."""
    _make(tmp_path, "rainy/a.png", "clean/a.png", "gt/b.png")
    with pytest.raises(PairsError, match=r"more than one set of pair folders: 'rainy/' \+ "
                                         r"'clean/' and 'rainy/' \+ 'gt/'.*--rainy-dir"):
        find_pairs(tmp_path)
    assert _names(find_pairs(tmp_path, "rainy", "clean"), tmp_path) == [
        ("rainy/a.png", "clean/a.png")]


def test_one_folder_named_pairs_with_its_own_partner(tmp_path):
    """--rainy-dir rain beside rainy/ + clean/ paired rain/ with clean/ (the other set's
    images of the same names: 11 dB instead of 26 in the audit)."""
    _make(tmp_path, "rainy/1.png", "clean/1.png", "rain/1.png", "norain/1.png")
    assert _names(find_pairs(tmp_path, rainy_dir="rain"), tmp_path) == [
        ("rain/1.png", "norain/1.png")]
    assert _names(find_pairs(tmp_path, clean_dir="norain"), tmp_path) == [
        ("rain/1.png", "norain/1.png")]
    assert _names(find_pairs(tmp_path, clean_dir="CLEAN"), tmp_path) == [
        ("rainy/1.png", "clean/1.png")]
    (tmp_path / "norain" / "1.png").unlink()
    (tmp_path / "norain").rmdir()  # rain/'s own partner gone: clean/ is rainy/'s, refused
    with pytest.raises(PairsError, match=r"'clean/'\) belong to another set there"):
        find_pairs(tmp_path, rainy_dir="rain")
    _make(tmp_path, "foggy/1.png")  # no layout's name: clean/ is rainy/'s, refused
    with pytest.raises(PairsError, match=r"belong to another set there; name its clean "
                                         r"folder with --clean-dir"):
        find_pairs(tmp_path, rainy_dir="foggy")
    _make(tmp_path, "gt/1.png")  # gt/ is nobody's: foggy/ + gt/
    assert _names(find_pairs(tmp_path, rainy_dir="foggy"), tmp_path) == [
        ("foggy/1.png", "gt/1.png")]


def test_images_in_subfolders_of_a_side_are_not_dropped_in_silence(tmp_path):
    _make(tmp_path, "rainy/1.png", "clean/1.png", "rainy/sub/3.png", "clean/sub/3.png")
    with pytest.raises(PairsError, match=r"2 subfolders of it hold images, which are not "
                                         r"read: 'rainy/sub/', 'clean/sub/'"):
        find_pairs(tmp_path)
    assert len(find_pairs(tmp_path, strict=False)) == 1
    assert len(find_pairs(tmp_path / "rainy" / "..", "rainy/sub", "clean/sub")) == 1


def test_stem_match_when_extensions_differ(tmp_path):
    _make(tmp_path, "rainy/001.jpg", "rainy/002.png", "clean/001.png", "clean/002.png")
    pairs = find_pairs(tmp_path)
    assert _names(pairs, tmp_path) == [
        ("rainy/001.jpg", "clean/001.png"),
        ("rainy/002.png", "clean/002.png"),
    ]


def test_jorder_split_rain_norain_numbering(tmp_path):
    _make(tmp_path, *(f"rain/rain-{i:03d}.png" for i in (1, 2, 3)))
    _make(tmp_path, *(f"norain/norain-{i}.png" for i in (1, 2, 3)))  # unpadded: still matches
    pairs = find_pairs(tmp_path)
    assert _names(pairs, tmp_path) == [
        (f"rain/rain-{i:03d}.png", f"norain/norain-{i}.png") for i in (1, 2, 3)
    ]


def test_jorder_e_rain_x2_subfolder(tmp_path):
    _make(tmp_path, "rain/X2/norain-1x2.png", "rain/X2/norain-2x2.png")
    _make(tmp_path, "norain/norain-1.png", "norain/norain-2.png")
    pairs = find_pairs(tmp_path)
    assert _names(pairs, tmp_path) == [
        ("rain/X2/norain-1x2.png", "norain/norain-1.png"),
        ("rain/X2/norain-2x2.png", "norain/norain-2.png"),
    ]
    # two such subfolders: neither stands for the side, and neither is dropped in
    # silence (a mutation audit: the first was taken, the second left out)
    _make(tmp_path, "rain/X3/norain-1x3.png")
    with pytest.raises(PairsError, match=r"2 subfolders of it hold images, which are not "
                                         r"read: 'rain/X2/', 'rain/X3/'"):
        find_pairs(tmp_path)


def test_ddn_several_rainy_versions_per_clean_image(tmp_path):
    _make(tmp_path, *(f"rainy_image/901_{k}.jpg" for k in (1, 2, 14)), "rainy_image/902_1.jpg")
    _make(tmp_path, "ground_truth/901.jpg", "ground_truth/902.jpg")
    pairs = find_pairs(tmp_path)
    assert [p.name for p in pairs] == ["901_1.jpg", "901_2.jpg", "901_14.jpg", "902_1.jpg"]
    assert [p.clean.name for p in pairs] == ["901.jpg"] * 3 + ["902.jpg"]


# ------------------------------------------------------------------------- flat / PReNet


def test_flat_rain100_naming(tmp_path):
    _make(
        tmp_path, *(f"rain-{i:03d}.png" for i in (1, 2)), *(f"norain-{i:03d}.png" for i in (1, 2))
    )
    _make(tmp_path, "overview.png")  # neither kind: ignored in a flat folder
    pairs = find_pairs(tmp_path)
    assert _names(pairs, tmp_path) == [
        ("rain-001.png", "norain-001.png"),
        ("rain-002.png", "norain-002.png"),
    ]


def test_flat_rain_traintl_unpadded(tmp_path):
    _make(
        tmp_path, *(f"rain-{i}.png" for i in (1, 2, 10)), *(f"norain-{i}.png" for i in (1, 2, 10))
    )
    assert [p.name for p in find_pairs(tmp_path)] == ["rain-1.png", "rain-2.png", "rain-10.png"]


def test_flat_suffix_naming(tmp_path):
    _make(tmp_path, "street_rain.png", "street_clean.png", "park-rainy.jpg", "park-gt.jpg")
    pairs = find_pairs(tmp_path)
    assert _names(pairs, tmp_path) == [
        ("park-rainy.jpg", "park-gt.jpg"),
        ("street_rain.png", "street_clean.png"),
    ]


def test_prenet_rainy_subfolder_clean_in_root(tmp_path):
    _make(tmp_path, "rainy/rain-001.png", "rainy/rain-002.png", "norain-001.png", "norain-002.png")
    pairs = find_pairs(tmp_path)
    assert _names(pairs, tmp_path) == [
        ("rainy/rain-001.png", "norain-001.png"),
        ("rainy/rain-002.png", "norain-002.png"),
    ]


# ------------------------------------------------------------------------- overrides


def test_a_named_folder_whose_table_partner_is_absent_takes_a_usual_one(tmp_path):
    """--clean-dir ground_truth beside rainy/ said "no rainy folder (rainy/, ...)": only its
    table partner rainy_image/ was looked for (an audit)."""
    _make(tmp_path, "rainy/1.png", "ground_truth/1.png")
    assert _names(find_pairs(tmp_path, clean_dir="ground_truth"), tmp_path) == [
        ("rainy/1.png", "ground_truth/1.png")]
    _make(tmp_path, "clean/1.png")  # rainy/ is clean/'s partner now: not taken
    with pytest.raises(PairsError, match="belong to another set there"):
        find_pairs(tmp_path, clean_dir="ground_truth")


def test_override_both_names(tmp_path):
    _make(tmp_path, "Hazy/a.png", "Sharp/a.png", "rainy/zzz.png", "clean/zzz.png")
    pairs = find_pairs(tmp_path, rainy_dir="hazy", clean_dir="Sharp")
    assert _names(pairs, tmp_path) == [("Hazy/a.png", "Sharp/a.png")]


def test_override_absolute_paths(tmp_path):
    _make(tmp_path, "x/one/a.png", "y/two/a.png")
    pairs = find_pairs(tmp_path, rainy_dir=tmp_path / "x/one", clean_dir=str(tmp_path / "y/two"))
    assert _names(pairs, tmp_path) == [("x/one/a.png", "y/two/a.png")]


def test_override_one_side_finds_partner(tmp_path):
    _make(tmp_path, "mine/a.png", "gt/a.png")
    assert _names(find_pairs(tmp_path, rainy_dir="mine"), tmp_path) == [("mine/a.png", "gt/a.png")]
    _make(tmp_path, "noisy/b.png", "truth/b.png")
    pairs = find_pairs(tmp_path, rainy_dir="noisy", clean_dir="truth")
    assert _names(pairs, tmp_path) == [("noisy/b.png", "truth/b.png")]


def test_override_only_clean(tmp_path):
    _make(tmp_path, "input/a.png", "reference/a.png")
    assert _names(find_pairs(tmp_path, clean_dir="reference"), tmp_path) == [
        ("input/a.png", "reference/a.png")
    ]


def test_override_same_folder_is_flat(tmp_path):
    _make(tmp_path, "all/rain-1.png", "all/norain-1.png")
    pairs = find_pairs(tmp_path, rainy_dir="all", clean_dir="all")
    assert _names(pairs, tmp_path) == [("all/rain-1.png", "all/norain-1.png")]
    # one side's folder named for both (a typo) said it plainly: it listed the same files on
    # both sides and said to rename one side (an audit)
    _make(tmp_path, "clean/a.png", "clean/b.png")
    with pytest.raises(PairsError, match="--rainy-dir and --clean-dir name the same folder"):
        find_pairs(tmp_path, rainy_dir="clean", clean_dir="clean")


def test_names_that_differ_in_case_only_are_said(tmp_path):
    """rainy/A.PNG with clean/a.png said to name the folders, which were found (an audit)."""
    _make(tmp_path, "rainy/A.PNG", "clean/a.png")
    with pytest.raises(PairsError, match=r"differ in case only \(as 'A.PNG' and 'a.png'\): "
                                         r"names are matched exactly; rename one side"):
        find_pairs(tmp_path)


def test_override_missing_folder(tmp_path):
    _make(tmp_path, "rainy/a.png", "clean/a.png")
    with pytest.raises(
        PairsError, match=r"rainy folder 'wet' not found .*\(subfolders there: clean, rainy\)"
    ):
        find_pairs(tmp_path, rainy_dir="wet", clean_dir="clean")


def test_override_without_partner(tmp_path):
    _make(tmp_path, "wet/a.png")
    with pytest.raises(PairsError, match="no clean folder"):
        find_pairs(tmp_path, rainy_dir="wet")


# ------------------------------------------------------------------------- errors


def test_unmatched_files_listed_on_each_side(tmp_path):
    _make(tmp_path, "rainy/common.png", "clean/common.png", "clean/only_clean.png")
    _make(tmp_path, *(f"rainy/extra{i:02d}.png" for i in range(12)))
    with pytest.raises(PairsError) as info:
        find_pairs(tmp_path)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "subfolders 'rainy/' + 'clean/'" in msg
    assert "by file name" in msg
    assert "1 pair," in msg
    assert "12 rainy images in 'rainy/' without a clean partner" in msg
    assert "extra00.png" in msg and "extra09.png" in msg and "extra10.png" not in msg
    assert "and 2 more" in msg
    assert "1 clean image in 'clean/' without a rainy partner: only_clean.png" in msg
    # strict=False keeps the matched pairs
    pairs = find_pairs(tmp_path, strict=False)
    assert [p.name for p in pairs] == ["common.png"]


def test_unmatched_with_numbering(tmp_path):
    _make(tmp_path, "rain/rain-1.png", "rain/rain-2.png", "rain/rain-3.png")
    _make(tmp_path, "norain/norain-1.png", "norain/norain-2.png")
    with pytest.raises(PairsError, match=r"(?s)rain-N / norain-N.*1 rainy image.*rain-3\.png"):
        find_pairs(tmp_path)


def test_no_match_at_all_lists_both_sides(tmp_path):
    _make(tmp_path, "rainy/a.png", "clean/b.png")
    with pytest.raises(PairsError, match=r"(?s)no rainy image matches.*a\.png.*b\.png"):
        find_pairs(tmp_path)


def test_empty_side(tmp_path):
    _make(tmp_path, "rainy/a.png")
    (tmp_path / "clean").mkdir()
    with pytest.raises(PairsError, match=r"no images in 'clean/'"):
        find_pairs(tmp_path)
    (tmp_path / "rainy" / "a.png").unlink()  # both empty: "no layout found" (an audit)
    with pytest.raises(PairsError, match=r"its folders 'rainy/' and 'clean/' hold no images"):
        find_pairs(tmp_path)


def test_pair_sets_one_level_down_are_named(tmp_path):
    """A folder holding two pair sets was told to name --rainy-dir (an audit)."""
    _make(tmp_path, "a/rainy/x.png", "a/clean/x.png", "b/rain/y.png", "b/norain/y.png")
    with pytest.raises(PairsError, match=r"its subfolder\(s\) 'a/', 'b/' are pair sets: give "
                                         r"each one \(train: --pairs .*a --pairs .*b; eval: one "
                                         r"set a run, derain eval .*a\)"):
        find_pairs(tmp_path)


def test_one_side_of_a_set_names_the_folder_to_give(tmp_path, monkeypatch):
    """`eval pairs/rainy` was told to name --rainy-dir and --clean-dir (an audit)."""
    _make(tmp_path, "set/rainy/x.png", "set/clean/x.png")
    for side in ("rainy", "clean"):
        with pytest.raises(PairsError, match=rf"set/{side} is one side of the pairs in "
                                             r".*set: give that folder"):
            find_pairs(tmp_path / "set" / side)
    monkeypatch.chdir(tmp_path / "set" / "rainy")  # `.` named `.` as the set (a review)
    with pytest.raises(PairsError, match=rf"^\. is one side of the pairs in {tmp_path}/set: "):
        find_pairs(Path("."))


def test_no_layout_lists_what_was_looked_for(tmp_path):
    _make(tmp_path, "photos/a.png", "holiday.png")
    with pytest.raises(PairsError) as info:
        find_pairs(tmp_path)
    msg = str(info.value)
    assert "no rainy/clean layout found" in msg
    for rainy, clean in SUBFOLDER_LAYOUTS:
        assert f"{rainy}/ + {clean}/" in msg
    assert "rain-N + norain-N" in msg and "X_rain + X_clean" in msg
    assert "PReNet" in msg
    assert "1 subfolder (photos/)" in msg
    assert "1 image in the root (holiday.png)" in msg
    assert "rainy_dir=" in msg


def test_root_not_a_folder(tmp_path):
    # worded as the other data flags word it (--synthetic, --rainy: pairs.list_images)
    with pytest.raises(PairsError, match="no such folder: "):
        find_pairs(tmp_path / "missing")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(PairsError, match="not a folder: "):
        find_pairs(tmp_path / "file.png")


def test_natural_order_whatever_the_listing_order(tmp_path):
    _make(tmp_path, *(f"rainy/{i}.png" for i in range(30)), *(f"clean/{i}.png" for i in range(30)))
    expected = [(f"rainy/{i}.png", f"clean/{i}.png") for i in range(30)]  # 2 before 10
    assert _names(find_pairs(tmp_path), tmp_path) == expected


# ------------------------------------------------------------------------- hints


def test_hints_name_the_cli_flags_and_the_python_arguments(tmp_path):
    """The messages reach CLI users too: no bare ``strict=False`` / ``rainy_dir=`` advice."""
    _make(tmp_path / "layout", "photos/a.png", "holiday.png")
    _make(tmp_path / "nomatch", "rainy/a.png", "clean/b.png")
    _make(tmp_path / "left", "rainy/a.png", "rainy/b.png", "clean/a.png")
    _make(tmp_path / "given", "mine/a.png")
    for case in ("layout", "nomatch"):
        with pytest.raises(PairsError) as info:
            find_pairs(tmp_path / case)
        msg = str(info.value)
        assert "--rainy-dir" in msg and "--clean-dir" in msg, msg
        assert "rainy_dir= and clean_dir= in Python" in msg, msg
        assert "Pass rainy_dir=" not in msg
    with pytest.raises(PairsError) as info:
        find_pairs(tmp_path / "left")
    msg = str(info.value)
    assert "move the unmatched files out of the folder" in msg
    assert "in Python, find_pairs(..., strict=False)" in msg
    assert "or pass strict=False" not in msg
    with pytest.raises(PairsError, match=r"name it with --clean-dir \(clean_dir= in Python\)"):
        find_pairs(tmp_path / "given", rainy_dir="mine")
    with pytest.raises(PairsError, match=r"name it with --rainy-dir \(rainy_dir= in Python\)"):
        find_pairs(tmp_path / "given", clean_dir="mine")


def test_system_folders_beside_photos_are_not_nested_images(tmp_path):
    """A Synology NAS puts @eaDir/ thumbnails in every photo folder: a working rain/ +
    norain/ set was refused as holding images in a subfolder (review)."""
    _make(tmp_path, "rain/rain-1.png", "norain/norain-1.png",
          "rain/@eaDir/rain-1.png/SYNOPHOTO_THUMB_XL.jpg", "__MACOSX/rain/._x.png")
    assert _names(find_pairs(tmp_path), tmp_path) == [("rain/rain-1.png", "norain/norain-1.png")]


def test_one_folder_named_with_two_table_partners_is_refused(tmp_path):
    _make(tmp_path, "input/1.png", "target/1.png", "gt/1.png")
    with pytest.raises(PairsError, match=r"2 folders could hold its clean partners"):
        find_pairs(tmp_path, rainy_dir="input")


@pytest.mark.parametrize("names", [
    ("rainy/001.jpg", "rainy/001.bmp", "clean/001.tif"),  # two rainy stems, one clean
    ("rain-1.png", "rain-001.png", "norain-1.png"),  # two rainy numbers for one clean
    ("rain-1.png", "norain-1.png", "norain-001.png"),  # two clean numbers for one rainy
])
def test_one_partner_claimed_twice_is_refused_not_shared(tmp_path, names):
    """A mutation audit: pairing two rainy files with one clean file (or dropping one of two
    clean files with the same key) went unnoticed by every test; each must be refused."""
    _make(tmp_path, *names)
    with pytest.raises(PairsError):
        find_pairs(tmp_path)
    try:  # the lenient reading shares no partner either (or finds no pair at all)
        loose = find_pairs(tmp_path, strict=False)
    except PairsError:
        loose = []
    assert len({p.clean for p in loose}) == len(loose)
    assert len({p.rainy for p in loose}) == len(loose)


@pytest.mark.parametrize("names", [
    ("rainy/caf\u00e9.png", "clean/cafe\u0301.png"),  # by name: composed, decomposed
    ("rainy/caf\u00e9.jpg", "clean/cafe\u0301.png"),  # by stem
    ("caf\u00e9_rain.png", "cafe\u0301_clean.png"),  # by suffix
])
def test_names_that_differ_only_in_unicode_normalisation_pair(tmp_path, names):
    """An audit: macOS writes names decomposed, so a pair copied from a Mac beside one
    written elsewhere was refused, listing two names that print alike."""
    _make(tmp_path, *names)
    pairs = find_pairs(tmp_path)
    assert len(pairs) == 1


def test_two_files_whose_names_differ_only_in_normalisation_keep_their_own_partners(
        tmp_path):
    """A review: with both forms on both sides (two files on Linux), the composed-form key
    merged them: strict mode refused a pair, the lenient one shared a clean file."""
    nfc, nfd = "caf\u00e9.png", "cafe\u0301.png"
    _make(tmp_path, f"rainy/{nfc}", f"rainy/{nfd}", f"clean/{nfc}", f"clean/{nfd}")
    pairs = find_pairs(tmp_path)
    assert sorted((p.rainy.name, p.clean.name) for p in pairs) == sorted(
        [(nfc, nfc), (nfd, nfd)])


def test_photos_in_formats_not_read_are_said_by_training_readers(tmp_path: Path,
                                                                  caplog) -> None:
    """finetune --rainy, distill --clean and train --synthetic passed over GIF or HEIC
    files in silence, "no images found" where there were only those (an audit)."""
    from derain_cli.pairs import list_photos

    _img(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.gif").write_bytes(b"GIF89a")
    (tmp_path / "c.HEIC").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("no photo")
    with caplog.at_level("WARNING", logger="derain_cli"):
        assert [p.name for p in list_photos(tmp_path)] == ["a.png"]
    assert "1 GIF and 1 HEIC file(s) not read" in caplog.text or \
        "1 HEIC and 1 GIF file(s) not read" in caplog.text, caplog.text
    assert "notes.txt" not in caplog.text


def test_a_link_to_a_photo_of_the_folder_is_read_once(tmp_path: Path, caplog) -> None:
    """finetune --rainy took `link.jpg -> 102.jpg` for a second photo: 20 photos of 19 (an
    audit). A photo reached twice is read once, and that is said."""
    from derain_cli.pairs import list_photos

    _img(tmp_path / "a.png")
    _img(tmp_path / "b.png")
    (tmp_path / "z.png").symlink_to(tmp_path / "a.png")
    (tmp_path / "0link.png").symlink_to(tmp_path / "b.png")  # sorted before its photo: the
    with caplog.at_level("WARNING", logger="derain_cli"):  # photo is kept (a review)
        assert [p.name for p in list_photos(tmp_path)] == ["a.png", "b.png"]
    assert "2 image(s) are links to photos read already (0link.png, z.png), read once" in \
        caplog.text
    assert "left out" not in caplog.text


def test_a_tie_between_matching_rules_keeps_the_same_names(tmp_path):
    """Two rules pair as many files: rainy x_1 / x_2 with clean x_1 / x_2 by file name, or
    both with clean x as X_k -> X. The earlier rule (the same names) is kept, and the
    refusal names it and the file it leaves over; a mutation audit found nothing failing
    when the later rule won a tie (every rainy photo scored against one clean x)."""
    _make(tmp_path, "rainy/x_1.png", "rainy/x_2.png", "clean/x_1.png", "clean/x_2.png",
          "clean/x.png")
    with pytest.raises(PairsError) as e:
        find_pairs(tmp_path)
    msg = " ".join(str(e.value).split())
    assert "matched by file name: 2 pairs" in msg, msg
    assert "1 clean image in 'clean/' without a rainy partner: x.png" in msg, msg
    assert _names(find_pairs(tmp_path, strict=False), tmp_path) == [
        ("rainy/x_1.png", "clean/x_1.png"), ("rainy/x_2.png", "clean/x_2.png")]


def test_numbered_names_pair_by_number_and_unmatched_names_say_to_rename(tmp_path):
    """rainy/1.png with clean/01.png did not pair, and the error said to name the folders,
    which were found (an audit): digits pair by their number; names that still do not
    match are said to be the problem."""
    _make(tmp_path / "n", "rainy/1.png", "rainy/2.png", "clean/01.png", "clean/02.png")
    assert _names(find_pairs(tmp_path / "n"), tmp_path / "n") == [
        ("rainy/1.png", "clean/01.png"), ("rainy/2.png", "clean/02.png")]
    # exact names still win where both would pair (1.png beside 01.png on the clean side)
    _make(tmp_path / "e", "rainy/1.png", "clean/1.png", "clean/01.png")
    with pytest.raises(PairsError, match="matched by file name: 1 pair, but\n  1 clean image "
                                         "in 'clean/' without a rainy partner: 01.png"):
        find_pairs(tmp_path / "e")
    # numbers pair among what names leave over, and only where unambiguous (a review: the
    # number rule competed whole with the name rule, and took exact partners away)
    _make(tmp_path / "m", "rainy/1.png", "rainy/02.png", "rainy/03.png", "clean/01.png",
          "clean/1.png", "clean/2.png", "clean/3.png")
    with pytest.raises(PairsError, match="without a rainy partner: 01.png"):
        find_pairs(tmp_path / "m")
    assert ("rainy/1.png", "clean/1.png") in _names(
        find_pairs(tmp_path / "m", strict=False), tmp_path / "m")
    _make(tmp_path / "a", "rainy/1.png", "rainy/2.png", "rainy/a.png", "clean/001.png",
          "clean/002.png", "clean/a.png")
    assert _names(find_pairs(tmp_path / "a"), tmp_path / "a") == [
        ("rainy/1.png", "clean/001.png"), ("rainy/2.png", "clean/002.png"),
        ("rainy/a.png", "clean/a.png")]
    _make(tmp_path / "d", "rainy/1.png", "rainy/01.png", "clean/001.png")  # two 1s: no guess
    with pytest.raises(PairsError, match="no rainy image matches a clean one"):
        find_pairs(tmp_path / "d")
    _make(tmp_path / "x", "rainy/a.png", "clean/b.png")
    with pytest.raises(PairsError, match="by number \\(1 = 001\\)") as e:
        find_pairs(tmp_path / "x")
    assert ("It is the file names that do not match: rename one side to match the other; if "
            "these are not the rainy and clean folders, name the folders explicitly with "
            "--rainy-dir and --clean-dir") in str(e.value)


# --- what a mutation audit of pairs.py found unpinned: wrong partners or silent losses,
# --- documented layouts, and messages

def test_a_link_to_the_rainy_folder_given_as_clean_pairs_no_image_with_itself(tmp_path):
    _make(tmp_path, "all/a.png", "all/b.png")
    (tmp_path / "both").symlink_to(tmp_path / "all", target_is_directory=True)
    with pytest.raises(PairsError, match=r"flat folder 'all/' \(given\)"):
        find_pairs(tmp_path, "all", "both")


@pytest.mark.parametrize(("names", "said"), [
    (("rain/rain-1.png", "rain/rain-2.png", "rain/notes.png", "norain/norain-1.png",
      "norain/norain-2.png"), r"1 rainy image in 'rain/' without a clean partner: notes\.png"),
    (("rain/rain-1.png", "norain/norain-1.png", "norain/readme.png"),
     r"1 clean image in 'norain/' without a rainy partner: readme\.png"),
    (("rainy/rain-1.png", "rainy/rain-2.png", "norain-1.png"),
     r"(?s)PReNet\), .* 1 rainy image in 'rainy/' without a clean partner: rain-2\.png"),
    (("rainy/rain-1.png", "rainy/rain-2.png", "norain-1.png", "norain-2.png", "norain-3.png"),
     r"1 clean image in the root folder without a rainy partner: norain-3\.png"),
])
def test_an_image_without_a_partner_is_named_not_dropped(tmp_path, names, said):
    """Every image in a rainy or clean folder finds a partner, or the set is refused naming
    it (a stray file could be dropped in silence, or a layout made lenient, unseen)."""
    _make(tmp_path, *names)
    with pytest.raises(PairsError, match=said):
        find_pairs(tmp_path)


def test_named_folders_name_an_image_without_a_partner(tmp_path):
    _make(tmp_path, "wet/a.png", "wet/b.png", "dry/a.png")
    with pytest.raises(PairsError, match=r"(?s)'wet/' \+ 'dry/' \(given\).* 1 rainy image in "
                                         r"'wet/' without a clean partner: b\.png"):
        find_pairs(tmp_path, "wet", "dry")


def test_images_two_levels_down_refuse_the_layout(tmp_path):
    _make(tmp_path, "rainy/1.png", "clean/1.png", "rainy/sub/deep/3.png", "clean/sub/deep/3.png")
    with pytest.raises(PairsError, match=r"2 subfolders of it hold images, which are not read: "
                                         r"'rainy/sub/', 'clean/sub/'"):
        find_pairs(tmp_path)


def test_one_folder_named_pairs_with_images_in_the_root(tmp_path):
    _make(tmp_path, "wet/rain-1.png", "norain-1.png")
    assert _names(find_pairs(tmp_path, "wet"), tmp_path) == [("wet/rain-1.png", "norain-1.png")]
    _make(tmp_path / "b", "rain-1.png", "dry/norain-1.png")
    assert _names(find_pairs(tmp_path / "b", None, "dry"), tmp_path / "b") == [
        ("rain-1.png", "dry/norain-1.png")]


def test_prenet_layout_with_a_rain_folder(tmp_path):
    _make(tmp_path, "rain/rain-1.png", "rain/rain-2.png", "norain-1.png", "norain-2.png")
    assert _names(find_pairs(tmp_path), tmp_path) == [
        ("rain/rain-1.png", "norain-1.png"), ("rain/rain-2.png", "norain-2.png")]


def test_flat_folder_suffixes_and_underscored_rain_numbers(tmp_path):
    _make(tmp_path, "street_input.png", "street_target.png", "park_in.png",
          "park_groundtruth.png", "a-in.png", "a-ground_truth.png")
    assert _names(find_pairs(tmp_path), tmp_path) == [
        ("a-in.png", "a-ground_truth.png"), ("park_in.png", "park_groundtruth.png"),
        ("street_input.png", "street_target.png")]
    _make(tmp_path / "n", "rain_1.png", "norain_1.png", "rain2.png", "norain2.png")
    assert sorted(_names(find_pairs(tmp_path / "n"), tmp_path / "n")) == [
        ("rain2.png", "norain2.png"), ("rain_1.png", "norain_1.png")]


def test_a_missing_or_file_override_is_said_to_be_no_folder(tmp_path):
    _make(tmp_path, "rainy/a.png", "clean/a.png", "f.png")
    for given in (tmp_path / "missing" / "x", tmp_path / "f.png"):
        with pytest.raises(PairsError, match="does not exist or is not a folder"):
            find_pairs(tmp_path, given, "clean")
        with pytest.raises(PairsError, match="does not exist or is not a folder"):
            find_pairs(tmp_path, given)


@pytest.mark.parametrize(("names", "args", "want"), [
    (("mine/a.png", "ground_truth/a.png"), ("mine",), [("mine/a.png", "ground_truth/a.png")]),
    (("rainy_image/a.png", "mine/a.png"), (None, "mine"), [("rainy_image/a.png", "mine/a.png")]),
])
def test_one_folder_named_finds_its_partner_by_every_layout_name(tmp_path, names, args, want):
    _make(tmp_path, *names)
    assert _names(find_pairs(tmp_path, *args), tmp_path) == want


def test_a_subfolder_that_is_no_layout_leaves_a_prenet_root_to_the_flat_reading(tmp_path):
    _make(tmp_path, "rainy/foo.png", "rain-1.png", "norain-1.png")
    assert _names(find_pairs(tmp_path), tmp_path) == [("rain-1.png", "norain-1.png")]


@pytest.mark.parametrize(("rainy", "clean"), SUBFOLDER_LAYOUTS)
def test_every_layouts_empty_folders_are_said_to_hold_no_images(tmp_path, rainy, clean):
    (tmp_path / rainy).mkdir()
    (tmp_path / clean).mkdir()
    with pytest.raises(PairsError, match=rf"its folders '{rainy}/' and '{clean}/' hold no "
                                         "images"):
        find_pairs(tmp_path)


def test_names_sort_naturally_whatever_their_case(tmp_path):
    _make(tmp_path, "rainy/B.png", "rainy/a.png", "clean/B.png", "clean/a.png")
    assert [p.name for p in find_pairs(tmp_path)] == ["a.png", "B.png"]


def test_pairs_held_counts_the_pairs_of_a_set_with_a_stray_file(tmp_path):
    from derain_cli.pairs import pairs_held

    _make(tmp_path, "rainy/a.png", "rainy/b.png", "clean/a.png")
    assert pairs_held(tmp_path) == "1 pairs"
