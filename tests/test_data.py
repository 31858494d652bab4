"""Training data: crops/augmentation, synthetic rain per (seed, epoch, index), sampling."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import smooth_photo
from PIL import Image

from derain_cli import data as D
from derain_cli.pairs import PairsError
from derain_cli.synth import synthesize


@pytest.fixture
def clean_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    d = tmp_path / "clean"
    d.mkdir()
    for i in range(8):
        Image.fromarray(smooth_photo(rng, 48, 48)).save(d / f"c{i}.png")
    Image.fromarray(smooth_photo(rng, 20, 30)).save(d / "small.png")  # smaller than the patch
    return d


@pytest.fixture
def pairs_dir(tmp_path: Path) -> Path:
    """rainy = clean + 40 everywhere, so any misaligned crop shows up."""
    rng = np.random.default_rng(1)
    root = tmp_path / "pairs"
    (root / "rainy").mkdir(parents=True)
    (root / "clean").mkdir()
    for i in range(4):
        c = (smooth_photo(rng, 40, 60) // 2).astype(np.uint8)
        Image.fromarray(c).save(root / "clean" / f"{i}.png")
        Image.fromarray(c + 40).save(root / "rainy" / f"{i}.png")
    return root


def test_synthetic_items_shapes_and_reproducibility(clean_dir):
    ds = D.LabeledDataset(clean_dirs=[clean_dir], patch=32, seed=3, with_aug=True)
    assert len(ds) == 9
    a = ds[(2, 0, 5)]
    assert set(a) == {"rainy", "clean", "rainy_aug", "rain_free"}
    assert not a.pop("rain_free")
    for v in a.values():
        assert v.shape == (3, 32, 32) and v.dtype == torch.float32
        assert 0.0 <= float(v.min()) and float(v.max()) <= 1.0
    b = ds[(2, 0, 5)]
    assert all(torch.equal(a[k], b[k]) for k in a)  # same (seed, epoch, slot, index)
    c = ds[(2, 1, 5)]  # next epoch: new crop and new rain
    assert not torch.equal(a["rainy"], c["rainy"])
    assert not torch.equal(a["rainy"] - a["clean"], a["rainy_aug"] - a["clean"])
    other_seed = D.LabeledDataset(clean_dirs=[clean_dir], patch=32, seed=4)[(2, 0, 5)]
    assert not torch.equal(a["rainy"], other_seed["rainy"])


def test_every_damaged_file_of_a_pair_set_is_named_at_once(pairs_dir):
    """Only the first was named: a set with three damaged files took three runs to mend."""
    for name in ("rainy/1.png", "clean/2.png", "rainy/3.png"):
        (pairs_dir / name).write_bytes(b"not an image")
    with pytest.raises(D.DataError) as e:
        D.LabeledDataset(pairs_dirs=[pairs_dir], patch=24)
    text = str(e.value)
    assert text.startswith("3 images cannot be read: ")
    assert [n in text for n in ("rainy/1.png", "clean/2.png", "rainy/3.png")] == [True] * 3
    (pairs_dir / "clean" / "2.png").write_bytes((pairs_dir / "clean" / "0.png").read_bytes())
    (pairs_dir / "rainy" / "3.png").write_bytes((pairs_dir / "rainy" / "0.png").read_bytes())
    with pytest.raises(D.DataError, match=r"^\S*rainy/1\.png: cannot read image"):  # one
        D.LabeledDataset(pairs_dirs=[pairs_dir], patch=24)


def test_clean_fraction_leaves_some_items_without_rain(clean_dir, pairs_dir):
    plain = D.LabeledDataset(clean_dirs=[clean_dir], pairs_dirs=[pairs_dir], patch=24, seed=3)
    ds = D.LabeledDataset(clean_dirs=[clean_dir], pairs_dirs=[pairs_dir], patch=24, seed=3,
                          clean_fraction=0.3)
    n_synth = len(ds.sources[1].clean)
    free = rainy = 0
    for slot in range(120):
        key = (4 + slot % n_synth, 0, slot)  # the synthetic source comes after the pairs
        it = ds[key]
        if it["rain_free"]:
            assert torch.equal(it["rainy"], it["clean"])
            free += 1
        else:  # the other items are exactly what a dataset without the option gives
            ref = plain[key]
            assert torch.equal(it["clean"], ref["clean"])
            assert torch.equal(it["rainy"], ref["rainy"])
            assert not torch.equal(it["rainy"], it["clean"])
            rainy += 1
    assert 20 <= free <= 55 and rainy + free == 120  # ~30 %
    assert not any(bool(ds[(i, 0, i)]["rain_free"]) for i in range(4))  # real pairs: never
    with pytest.raises(D.DataError):
        D.LabeledDataset(clean_dirs=[clean_dir], clean_fraction=1.0)


def test_small_images_are_reflect_padded(clean_dir):
    ds = D.LabeledDataset(clean_dirs=[clean_dir], patch=40, seed=0)
    idx = [i for i, n in enumerate(ds.sources[0].names) if n == "small.png"][0]
    item = ds[(idx, 0, 0)]
    assert item["clean"].shape == (3, 40, 40)
    img = np.arange(2 * 3 * 3).reshape(2, 3, 3).astype(np.uint8)
    assert D.pad_to(img, 9).shape == (9, 9, 3)  # repeated reflection when far too small


def test_paired_crops_stay_aligned(pairs_dir):
    ds = D.LabeledDataset(pairs_dirs=[pairs_dir], patch=24, seed=0)
    assert ds.kinds == ["paired"]
    for slot in range(6):
        it = ds[(slot % 4, 0, slot)]
        diff = (it["rainy"] - it["clean"]) * 255
        assert torch.allclose(diff, torch.full_like(diff, 40.0), atol=1e-3)


@pytest.mark.parametrize("sizes", [((96, 96), (100, 90)), ((40, 40), (44, 48))])
def test_pairs_of_different_sizes_are_refused_upfront_by_name(pairs_dir, sizes):
    """Found by an audit: such a pair failed after training had started, without its name
    (or, smaller than the patch, each side was padded alone and trained misaligned)."""
    (rh, rw), (ch, cw) = sizes
    rng = np.random.default_rng(2)
    Image.fromarray(smooth_photo(rng, rh, rw)).save(pairs_dir / "rainy" / "zz.png")
    Image.fromarray(smooth_photo(rng, ch, cw)).save(pairs_dir / "clean" / "zz.png")
    with pytest.raises(D.DataError, match=rf"1 pair\(s\) differ in size: .*zz\.png is {rw}x{rh} "
                                          rf"but .*zz\.png is {cw}x{ch}"):
        D.LabeledDataset(pairs_dirs=[pairs_dir], patch=48)


def test_paired_overrides_and_errors(pairs_dir, tmp_path):
    ds = D.LabeledDataset(pairs_dirs=[pairs_dir], rainy_dir="rainy", clean_dir="clean", patch=8)
    assert len(ds) == 4
    (tmp_path / "empty").mkdir()
    with pytest.raises(PairsError):
        D.LabeledDataset(pairs_dirs=[tmp_path / "empty"])
    with pytest.raises(D.DataError):
        D.LabeledDataset(clean_dirs=[tmp_path / "empty"])
    with pytest.raises(D.DataError):
        D.LabeledDataset()


def test_unlabeled(clean_dir):
    ds = D.UnlabeledDataset([clean_dir], patch=16, seed=0)
    it = ds[(0, 0, 0)]
    assert set(it) == {"rainy"} and it["rainy"].shape == (3, 16, 16)


def test_unlabeled_skips_an_unreadable_photo_with_one_warning(clean_dir, capsys):
    """``train --unlabeled DIR``: one damaged photo among many must not end the job."""
    (clean_dir / "broken.jpg").write_text("not an image")
    (clean_dir / "sub").mkdir()
    (clean_dir / "sub" / "empty.png").write_bytes(b"")
    ds = D.UnlabeledDataset([clean_dir], patch=16, seed=0)
    assert len(ds) == 9
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(ln.startswith("warning: ") for ln in lines), lines
    assert "broken.jpg: cannot read image (" in lines[0] and lines[0].endswith("; skipped")
    assert "empty.png" in lines[1]


def test_a_skipped_photo_is_said_by_rank_0_alone(clean_dir, capsys, monkeypatch):
    """Under torchrun each skip warning came once a process (an audit)."""
    (clean_dir / "broken.jpg").write_text("not an image")
    for rank, said in (("1", 0), ("0", 1)):  # (each machine's first: LOCAL_RANK)
        monkeypatch.setenv("LOCAL_RANK", rank)
        D.UnlabeledDataset([clean_dir], patch=16, seed=0)
        assert capsys.readouterr().err.count("broken.jpg") == said, rank


def test_a_skipped_photos_name_is_shown_escaped(clean_dir, capsys):
    """A photo named with an escape sequence found in a training folder reached the
    terminal raw through the skip warning."""
    (clean_dir / "x\x1b[2J.jpg").write_text("not an image")
    D.UnlabeledDataset([clean_dir], patch=16, seed=0)
    err = capsys.readouterr().err
    assert "x\\x1b[2J.jpg: cannot read image" in err and "\x1b" not in err


def test_load_photos_downscales_and_fails_clearly_when_nothing_is_readable(clean_dir,
                                                                          tmp_path):
    """``finetune --rainy DIR`` loads through ``load_photos``: skip, shrink, or say why not."""
    (clean_dir / "broken.png").write_text("not an image")
    skipped: list[str] = []
    photos = D.load_photos(clean_dir, max_side=24, on_skip=lambda p, why: skipped.append(p.name))
    assert skipped == ["broken.png"] and len(photos) == 9
    assert max(max(p.shape[:2]) for p in photos) == 24 and photos[0].dtype == np.uint8
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_text("x")
    (bad / "b.png").write_text("y")
    with pytest.raises(D.DataError, match=r"bad: none of the 2 images could be read"):
        D.load_photos(bad, on_skip=lambda p, why: None)
    with pytest.raises(D.DataError, match="none of the 2 images could be read"):
        D.UnlabeledDataset([bad])
    with pytest.raises(D.DataError, match="no images found"):
        D.load_photos(_empty(tmp_path))


def test_synthetic_clean_photos_skip_an_unreadable_one(clean_dir, capsys):
    """``train --synthetic DIR`` / ``finetune --clean DIR``: same rule as unlabeled photos."""
    (clean_dir / "broken.png").write_text("not an image")
    ds = D.LabeledDataset(clean_dirs=[clean_dir], patch=16)
    assert len(ds) == 9 and "broken.png" not in ds.sources[0].names
    assert "broken.png: cannot read image" in capsys.readouterr().err


def _empty(tmp_path: Path) -> Path:
    d = tmp_path / "empty"
    d.mkdir()
    return d


def test_sampler_shards_and_restarts():
    full = D.StepBatchSampler(10, 2, seed=1, world=2, rank=0, total_steps=12)
    other = D.StepBatchSampler(10, 2, seed=1, world=2, rank=1, total_steps=12)
    assert full.steps_per_epoch == 2  # 10 // (2 * 2)
    a, b = list(full), list(other)
    assert len(a) == 12
    for s in range(12):  # the two ranks never draw the same item in one step
        assert not {k[0] for k in a[s]} & {k[0] for k in b[s]}
        assert all(k[1] == s // 2 for k in a[s])  # epoch recorded in each key
    restarted = list(D.StepBatchSampler(10, 2, seed=1, world=2, rank=0, start_step=7,
                                        total_steps=12))
    assert restarted == a[7:]
    # epochs are different permutations
    assert [k[0] for k in a[0]] != [k[0] for k in a[2]] or [k[0] for k in a[1]] != [
        k[0] for k in a[3]]


def test_sampler_dataset_smaller_than_batch():
    s = D.StepBatchSampler(3, 4, seed=0, total_steps=2)
    batches = list(s)
    assert all(len(b) == 4 for b in batches)
    assert len({k[2] for k in batches[0]}) == 4  # distinct slots -> distinct crops


def test_loader_workers_match_single_process(clean_dir):
    # Start OpenCV's thread pool in this (parent) process first: forked workers that resized it
    # hung forever; with the fix they deliver, and a stuck worker fails within `timeout`.
    big = np.random.default_rng(0).random((1500, 1500), dtype=np.float32)
    cv2.GaussianBlur(big, (0, 0), 3)
    cv2.resize(big, (2500, 2500))
    ds = D.LabeledDataset(clean_dirs=[clean_dir], patch=16, seed=0)
    def batches(workers: int) -> list[torch.Tensor]:
        s = D.StepBatchSampler(len(ds), 3, seed=0, total_steps=3)
        return [b["rainy"] for b in D.make_loader(ds, s, workers=workers, timeout=60)]
    for x, y in zip(batches(0), batches(2), strict=True):
        assert torch.equal(x, y)


def test_loader_workers_started_by_spawn_match_single_process(clean_dir, pairs_dir):
    """macOS and Windows start DataLoader workers by spawning (Linux forks): each worker
    gets the datasets pickled and imports derain afresh. Every kind of item (paired,
    synthetic with its augmented rain and rain-free share, unlabeled) must come back as the
    main process makes it."""
    import torch.multiprocessing as tmp

    labeled = D.LabeledDataset(pairs_dirs=[pairs_dir], clean_dirs=[clean_dir], patch=16,
                               seed=3, with_aug=True, clean_fraction=0.3)
    unlabeled = D.UnlabeledDataset([clean_dir], patch=16, seed=4)

    def batches(ds: torch.utils.data.Dataset, workers: int) -> list[dict[str, torch.Tensor]]:
        s = D.StepBatchSampler(len(ds), 4, seed=0, total_steps=4)
        return list(D.make_loader(ds, s, workers=workers, timeout=120))

    before = tmp.get_start_method()
    tmp.set_start_method("spawn", force=True)
    try:
        spawned = [batches(labeled, 2), batches(unlabeled, 2)]
    finally:
        tmp.set_start_method(before, force=True)
    for ds, got in zip((labeled, unlabeled), spawned, strict=True):
        for a, b in zip(batches(ds, 0), got, strict=True):
            assert a.keys() == b.keys()
            for k in a:
                assert torch.equal(a[k], b[k]), k


def test_crops_are_flipped_and_rotated_the_same_way_in_a_pair():
    """All eight flips/rotations occur, each applied alike to both images of a pair (the
    aligned-crop test used a uniform offset, which no flip or rotation can change)."""
    yy, xx = np.mgrid[0:16, 0:16]
    img = np.stack([yy, xx, np.zeros_like(yy)], axis=-1).astype(np.uint8)
    seen = set()
    rng = np.random.default_rng(0)
    for _ in range(200):
        a, b = D.random_crop([img, img + 100], 16, rng)
        assert np.array_equal(b, a + 100)  # the pair stays aligned
        seen.add(a.tobytes())
    dihedral = {np.ascontiguousarray(np.rot90(f, k)).tobytes()
                for f in (img, img[:, ::-1]) for k in range(4)}
    assert seen == dihedral  # all eight orientations, nothing else
    plain = D.random_crop([img], 16, rng, augment=False)[0]
    assert np.array_equal(plain, img)


def test_photo_folders_leave_derains_own_results_out(tmp_path, caplog):
    """``derain my_rainy/`` writes NAME_derained.EXT beside the photos (and -o folders hold
    its marker); finetune --rainy, train --synthetic and synth took those results for
    photos (audit). The folder given itself is read even if marked."""
    from derain_cli.evaluate import synth_pairs

    rng = np.random.default_rng(0)
    d = tmp_path / "photos"
    for rel in ("a.png", "a_derained.png", "out/b.png", "keep/c.png"):
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(d / rel)
    (d / "out" / ".derain-output").write_text("results")
    (d / "run").mkdir()  # a training run's folder: its curves.png is no photo
    (d / "run" / ".derain-run.lock").write_text("")
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(d / "run" / "c.png")
    with caplog.at_level("WARNING", logger="derain_cli"):
        assert len(D.load_photos(d)) == 2  # a.png and keep/c.png
    assert "3 of its images are derain results" in caplog.text
    assert synth_pairs(d, tmp_path / "pairs", seed=0) == 2
    assert sorted(p.name for p in (tmp_path / "pairs" / "clean").iterdir()) == ["a.png",
                                                                               "c.png"]
    (d / ".derain-output").write_text("results")  # named itself: still read
    assert len(D.load_photos(d)) == 2


def test_full_rainy_images_for_batchnorm_are_the_rainy_ones(clean_dir, pairs_dir):
    """BatchNorm statistics are re-estimated on whole training images as the network will
    see them: the pairs' rainy side, and synthetic rain over the clean photos (a mutation
    audit: returning the clean side passed every test)."""
    ds = D.LabeledDataset(pairs_dirs=[pairs_dir], clean_dirs=[clean_dir], patch=24, seed=3)
    paired, synthetic = ds.sources[0], ds.sources[1]
    assert paired.kind == "paired" and synthetic.kind != "paired"
    got = ds.full_rainy(0, seed=1)
    np.testing.assert_array_equal(got, paired.rainy[0].astype(np.float32) / 255)
    assert not np.array_equal(got, paired.clean[0].astype(np.float32) / 255)
    i = len(paired.rainy)
    rained = ds.full_rainy(i, seed=1)
    clean = synthetic.clean[0].astype(np.float32) / 255
    assert rained.shape == clean.shape and float(np.abs(rained - clean).mean()) > 0.005


def test_16_bit_photos_are_rounded_to_8_bits_not_cut(tmp_path):
    """A 16-bit sample becomes its nearest 8-bit level: cut down, half of the pixels fell a
    level, a bias of half a level (a mutation audit)."""
    x = (np.arange(64 * 64 * 3, dtype=np.uint32) * 37 % 65536).astype(np.uint16)
    x = x.reshape(64, 64, 3)
    cv2.imwrite(str(tmp_path / "deep.png"), x[..., ::-1])
    got = D.load_rgb_u8(tmp_path / "deep.png")
    want = np.clip(np.rint(x.astype(np.float64) / 65535 * 255), 0, 255).astype(np.uint8)
    assert np.abs(got.astype(int) - want).max() == 0


def test_the_largest_fitting_patch_is_that_of_the_largest_photo(pairs_dir):
    """``derain train`` warns that ``--patch`` pads every crop when it is larger than the
    largest square crop of some photo: with photos of mixed sizes that is the largest
    photo's short side (a mutation audit found nothing failing when it was the smallest
    photo's, which warned of padding for patches that fit the large photos)."""
    rng = np.random.default_rng(2)
    photos = [smooth_photo(rng, h, w) for h, w in ((48, 48), (20, 30), (90, 70))]
    ds = D.LabeledDataset(clean_images=photos, patch=32)
    assert ds.largest_fitting_patch() == 70
    both = D.LabeledDataset(pairs_dirs=[str(pairs_dir)], clean_images=photos[:2], patch=32)
    assert both.largest_fitting_patch() == 48  # the pairs are 40 x 60


# --- pinned by a mutation audit (2026-12-07): each test below failed under a one-line change
# that every earlier test let through --------------------------------------------------------


def _gradient(h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([yy * 7 % 256, xx * 11 % 256, (yy + xx) % 256], -1).astype(np.uint8)


def test_dataset_item_is_synthesize_of_crop():
    """A synthetic item is its crop with rain of the run's preset, from its own streams (a
    mutation audit: --preset ignored went unseen)."""
    img = _gradient(48, 48)
    ok = True
    for preset in ("light", "heavy"):
        ds = D.LabeledDataset(clean_images=[img], patch=32, preset=preset, seed=5, with_aug=True)
        for key in [(0, 0, 0), (0, 3, 9)]:
            it = ds[key]
            (crop,) = D.random_crop([img], 32, D.item_rng(5, key, 1))
            c = crop.astype(np.float32) / 255
            ok &= torch.equal(it["clean"], D.to_tensor(c))
            for k, stream in (("rainy", 2), ("rainy_aug", 3)):
                rain = synthesize(c, preset, D.item_rng(5, key, stream))[0]
                ok &= torch.equal(it[k], D.to_tensor(rain))
    assert bool(ok)


def test_repeated_item_in_one_batch_differs():
    """An image repeated within one batch gets another crop and other rain each time (a
    mutation audit)."""
    ds = D.LabeledDataset(clean_images=[_gradient(40, 40)], patch=32, seed=0)
    keys = D.StepBatchSampler(1, 4, seed=0, total_steps=1).keys_for(0)
    its = [ds[k]["rainy"] for k in keys]
    assert all(not torch.equal(its[i], its[j]) for i in range(4) for j in range(i))


def test_ddp_epoch_covers_each_item_once():
    """under DDP an epoch gives every item once across steps and ranks (a mutation audit)."""
    n, b, w = 12, 2, 3
    seen = [k[0] for s in range(n // (b * w)) for r in range(w)
            for k in D.StepBatchSampler(n, b, seed=1, rank=r, world=w).keys_for(s)]
    assert sorted(seen) == list(range(n))


def test_all_datasets_augment(tmp_path):
    """Paired, synthetic and unlabeled items take all 8 flips and rotations (a mutation
    audit: each dataset's augmentation could be switched off unseen)."""
    img = _gradient(24, 24)
    for sub, pic in (("clean", img), ("rainy", img // 2)):
        (tmp_path / sub).mkdir()
        Image.fromarray(pic).save(tmp_path / sub / "a.png")
    pd = D.LabeledDataset(pairs_dirs=[tmp_path], patch=24, seed=0)
    sd = D.LabeledDataset(clean_images=[img], patch=24, seed=0, clean_fraction=0.99)
    ud = D.UnlabeledDataset(images=[img], patch=24, seed=0)
    for ds, k in ((pd, "clean"), (sd, "clean"), (ud, "rainy")):
        seen = {ds[(0, e, 0)][k].numpy().tobytes() for e in range(40)}
        assert len(seen) == 8, (type(ds).__name__, len(seen))


def test_crop_reaches_every_offset():
    """random crops reach every offset, the last row and column too (a mutation audit)."""
    img = _gradient(17, 19)
    r = np.random.default_rng(0)
    ys = set()
    xs = set()
    for _ in range(200):
        (c,) = D.random_crop([img], 16, r, augment=False)
        ys.add(int(c[0, 0, 0]) // 7)
        xs.add(int(c[0, 0, 1]) // 11)
    assert ys == {0, 1} and xs == {0, 1, 2, 3}


def test_pad_is_centred_reflection():
    """small images are reflect-padded, centred (a mutation audit)."""
    img = np.arange(3 * 4).reshape(3, 4, 1).astype(np.uint8)
    assert np.array_equal(D.pad_to(img, 5), np.pad(img, ((1, 1), (0, 1), (0, 0)), mode="reflect"))
