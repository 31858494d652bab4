"""Training data: paired folders, synthetic rain on clean photos, unlabeled rainy photos.

Everything is decoded once and kept in RAM as uint8 (a few hundred photos of ~0.5 MP is a few
hundred MB at most). Items are addressed by *keys* ``(index, epoch, slot)`` produced by
:class:`StepBatchSampler`, and every random choice of an item (crop, flip, rotation, the rain
drawn over a synthetic background) comes from ``np.random.default_rng([seed, epoch, slot,
index, stream])``. So an item does not depend on worker processes, on the order in which
workers run, or on anything that happened before: the data stream is a pure function of
``(seed, step)``, which is what makes ``--resume`` bitwise exact (a checkpoint only has to
store the step) and what lets each DDP rank draw its own shard of every global batch.

Dataset items are dicts of CHW float32 tensors in [0, 1]:

* labeled (paired or synthetic): ``rainy``, ``clean``, ``rain_free`` (a bool: the item was
  left without rain, see ``clean_fraction``) and, with ``with_aug``, ``rainy_aug``: the same
  background under other, freshly synthesized rain (an extra negative/positive for the
  contrastive losses).
* unlabeled: ``rainy`` only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from . import synth
from .pairs import Pair, find_pairs, list_photos

Key = tuple[int, int, int]  # (index, epoch, slot)

_STREAM_CROP = 1
_STREAM_RAIN = 2
_STREAM_RAIN_AUG = 3
_STREAM_RAIN_FREE = 4


class DataError(ValueError):
    """A data folder that cannot be used (empty, unreadable); the message says why."""


def load_rgb_u8(path: str | Path, depths: list[int] | None = None,
                transparent: list[bool] | None = None) -> np.ndarray:
    """Decode an image file to HxWx3 uint8 RGB (EXIF orientation applied, alpha dropped).

    Through ``images.read_image``, so training and evaluation see a photo exactly as
    ``derain`` does (16-bit, CMYK, palette and turned TIFFs included). ``depths``: the
    file's bits a sample (8 or 16) is appended there (a 16-bit one is rounded to 8).
    ``transparent``: whether any pixel is less than opaque is appended there (the colour
    of a transparent pixel is kept, but nothing says it is hidden)."""
    from .images import read_image

    try:
        loaded = read_image(path)
    except Exception as e:  # noqa: BLE001 - any decoder failure is a data error
        raise DataError(f"{path}: cannot read image ({e})") from None
    if depths is not None:
        depths.append(loaded.bit_depth)
    if transparent is not None:
        a = loaded.alpha
        transparent.append(a is not None and bool((a < np.iinfo(a.dtype).max).any()))
    return np.clip(np.rint(np.asarray(loaded.rgb, np.float32) * 255.0), 0, 255
                   ).astype(np.uint8)


def fit_long_side(img: np.ndarray, max_side: int) -> np.ndarray:
    """``img`` downscaled (area) so its long side is ``max_side``; as it is where it is no
    longer, or ``max_side`` is 0."""
    h, w = img.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return img
    import cv2

    s = max_side / max(h, w)
    return cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))),
                      interpolation=cv2.INTER_AREA)


def pixel_digest(img: np.ndarray) -> str:
    """A digest of an image's decoded pixels (and shape): the same photo in two files, a
    JPEG and the PNG ``derain synth`` wrote of it, digests alike."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    h.update(repr((img.shape, img.dtype.str)).encode())
    h.update(np.ascontiguousarray(img).tobytes())
    return h.hexdigest()


def _load_all(paths: Sequence[Path]) -> list[np.ndarray]:
    """Every one of ``paths`` decoded; ``DataError`` naming each that cannot be, not only the
    first: a pair set with several damaged files took one run per file to find them all."""
    images, bad = [], []
    for p in paths:
        try:
            images.append(load_rgb_u8(p))
        except DataError as e:
            bad.append(str(e))
    if len(bad) == 1:
        raise DataError(bad[0])
    if bad:
        more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DataError(f"{len(bad)} images cannot be read: {'; '.join(bad[:5])}{more}")
    return images


def warn_skipped(path: Path, reason: str) -> None:
    """Print one ``warning:`` line on stderr for an image that is skipped (``reason`` is the
    ``DataError`` text, which starts with the path). Under torchrun each machine's first
    process alone says it (each line came once a process: an audit; another machine reads
    files of its own, which it says itself)."""
    import os
    import sys

    from .fileio import terminal_text

    if os.environ.get("LOCAL_RANK", "0").strip() not in ("", "0"):
        return
    text = reason if reason.startswith(str(path)) else f"{path}: {reason}"
    print(f"warning: {terminal_text(text)}; skipped", file=sys.stderr, flush=True)


def load_photos(
    folder: str | Path,
    max_side: int = 0,
    *,
    on_skip: Callable[[Path, str], None] | None = None,
) -> list[np.ndarray]:
    """Decode every image under ``folder`` (recursively) to HxWx3 uint8, downscaled to
    ``max_side`` on the long side when given (0: keep).

    Why skipping: folders of real photos (``--unlabeled``, ``finetune --rainy``) often hold
    a damaged or mis-named file, and one of them should not end a long job. Each unreadable
    file is reported by ``on_skip(path, reason)`` (default :func:`warn_skipped`, one line);
    ``DataError`` when the folder has no images or none can be read.
    """
    return [img for _, img in _load_folder(folder, max_side, on_skip)]


def iter_readable(
    paths: Iterable[Path], on_skip: Callable[[Path, str], None] | None = None
) -> Iterator[tuple[Path, np.ndarray]]:
    """(path, HxWx3 uint8) for each of ``paths`` in order that decodes; the others are
    reported by ``on_skip(path, reason)`` (default :func:`warn_skipped`). Lazy, so a caller
    that needs only a few photos reads only as many files as it takes."""
    skip = on_skip or warn_skipped
    for p in paths:
        try:
            img = load_rgb_u8(p)
        except DataError as e:
            skip(p, str(e))
            continue
        yield p, img


def _load_folder(
    folder: str | Path, max_side: int = 0, on_skip: Callable[[Path, str], None] | None = None
) -> list[tuple[Path, np.ndarray]]:
    """``load_photos`` with each photo's path."""
    paths = list_photos(Path(folder))
    if not paths:
        raise DataError(f"{folder}: no images found")
    out: list[tuple[Path, np.ndarray]] = []
    for p, img in iter_readable(paths, on_skip):
        out.append((p, fit_long_side(img, max_side)))
    if not out:
        raise DataError(f"{folder}: none of the {len(paths)} images could be read")
    return out


def item_rng(seed: int, key: Key, stream: int) -> np.random.Generator:
    index, epoch, slot = key
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, slot, index, stream])


# --------------------------------------------------------------------------- augmentation
def pad_to(img: np.ndarray, patch: int) -> np.ndarray:
    """Reflect-pad an HxWxC image so that both sides are at least ``patch``."""
    h, w = img.shape[:2]
    ph, pw = max(0, patch - h), max(0, patch - w)
    if ph == 0 and pw == 0:
        return img
    # np.pad's reflect cannot pad by more than size-1 at once: repeat until large enough.
    while ph > 0 or pw > 0:
        h, w = img.shape[:2]
        sh, sw = min(ph, h - 1) if h > 1 else 0, min(pw, w - 1) if w > 1 else 0
        if sh == 0 and sw == 0:  # 1-pixel image: edge-pad
            img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="edge")
            break
        img = np.pad(img, ((sh // 2, sh - sh // 2), (sw // 2, sw - sw // 2), (0, 0)),
                     mode="reflect")
        ph, pw = ph - sh, pw - sw
    return img


def random_crop(
    images: Sequence[np.ndarray], patch: int, rng: np.random.Generator, augment: bool = True
) -> list[np.ndarray]:
    """The same random ``patch`` crop (+ flips and 90-degree rotation) of aligned images."""
    imgs = [pad_to(im, patch) for im in images]
    h, w = imgs[0].shape[:2]
    for im in imgs[1:]:
        if im.shape[:2] != (h, w):
            raise DataError(f"paired images differ in size: {imgs[0].shape} vs {im.shape}")
    y = int(rng.integers(0, h - patch + 1))
    x = int(rng.integers(0, w - patch + 1))
    out = [im[y : y + patch, x : x + patch] for im in imgs]
    if augment:
        flip = bool(rng.integers(0, 2))
        rot = int(rng.integers(0, 4))
        if flip:
            out = [im[:, ::-1] for im in out]
        if rot:
            out = [np.rot90(im, rot) for im in out]
    return [np.ascontiguousarray(im) for im in out]


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 or float32 [0,1] -> 3xHxW float32 tensor."""
    arr = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


# --------------------------------------------------------------------------- datasets
def _check_pair_sizes(pairs: Sequence[Pair], rainy: Sequence[np.ndarray],
                      clean: Sequence[np.ndarray]) -> None:
    """Refuse pairs whose two images differ in size before any step is taken, naming them
    (a crop of such a pair would be misaligned, or fail halfway through training)."""
    bad = [(p, r.shape, c.shape) for p, r, c in zip(pairs, rainy, clean, strict=True)
           if r.shape[:2] != c.shape[:2]]
    if bad:
        shown = "; ".join(f"{p.rainy} is {r[1]}x{r[0]} but {p.clean} is {c[1]}x{c[0]}"
                          for p, r, c in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise DataError(f"{len(bad)} pair(s) differ in size: {shown}{more}; "
                        "a pair must be the same photo with and without rain")


@dataclass
class _Source:
    kind: str  # "paired" | "synthetic"
    rainy: list[np.ndarray] | None
    clean: list[np.ndarray]
    names: list[str]


class LabeledDataset(Dataset):
    """Paired folders and/or synthetic rain over clean photos, as one indexable set.

    ``preset`` is one of the synthesizer's presets (``synth.PRESETS``: ``"light"``,
    ``"medium"``, ``"heavy"``, ``"mixed"``, ...) or a comma-separated list of them.
    Synthetic items get new rain for every ``(epoch, slot)``.
    ``clean_fraction``: the share of synthetic items left without rain (input = target).
    Every synthesized sample has rain, and rain only ever brightens, so without such items a
    network learns to darken and smooth whatever it sees, clean photos included.
    """

    def __init__(
        self,
        *,
        pairs_dirs: Sequence[str | Path] = (),
        clean_dirs: Sequence[str | Path] = (),
        clean_images: Sequence[np.ndarray] | None = None,
        rainy_dir: str | None = None,
        clean_dir: str | None = None,
        patch: int = 128,
        preset: str = "mixed",
        seed: int = 0,
        augment: bool = True,
        with_aug: bool = False,
        clean_fraction: float = 0.0,
    ) -> None:
        if not 0.0 <= clean_fraction < 1.0:
            raise DataError(f"clean_fraction must be in [0, 1), got {clean_fraction}")
        self.patch, self.preset, self.seed = patch, preset, seed
        self.clean_fraction = clean_fraction
        self.augment, self.with_aug = augment, with_aug
        self.sources: list[_Source] = []
        for d in pairs_dirs:
            pairs = find_pairs(Path(d), rainy_dir, clean_dir)
            both = _load_all([path for p in pairs for path in (p.rainy, p.clean)])
            rainy, clean = both[0::2], both[1::2]
            del both
            _check_pair_sizes(pairs, rainy, clean)
            self.sources.append(_Source("paired", rainy, clean, [p.name for p in pairs]))
        for d in clean_dirs:  # photos, like --unlabeled ones: a damaged file is skipped
            loaded = _load_folder(d)
            self.sources.append(_Source("synthetic", None, [img for _, img in loaded],
                                        [p.name for p, _ in loaded]))
        if clean_images is not None:
            if not len(clean_images):
                raise DataError("no clean images given")
            self.sources.append(_Source("synthetic", None, list(clean_images),
                                        [f"image{i}" for i in range(len(clean_images))]))
        if not self.sources:
            raise DataError("no training data: give paired folders or clean photos")
        self._offsets = np.cumsum([0] + [len(s.clean) for s in self.sources])
        self.kinds = sorted({s.kind for s in self.sources})

    def largest_fitting_patch(self) -> int:
        """The side of the largest square crop that fits in some image without padding:
        a larger ``patch`` mirror-pads every crop and costs its full size a step."""
        return max(min(img.shape[:2]) for s in self.sources for img in s.clean)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def describe(self) -> str:
        parts = [f"{len(s.clean)} {s.kind}" for s in self.sources]
        return ", ".join(parts)

    def _locate(self, index: int) -> tuple[_Source, int]:
        k = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return self.sources[k], index - int(self._offsets[k])

    def __getitem__(self, key: Key | int) -> dict[str, torch.Tensor]:
        if isinstance(key, int | np.integer):
            key = (int(key), 0, int(key))
        index = key[0]
        src, i = self._locate(index)
        rng = item_rng(self.seed, key, _STREAM_CROP)
        clean_u8 = src.clean[i]
        if src.kind == "paired":
            rainy_u8, clean_u8 = random_crop([src.rainy[i], clean_u8], self.patch, rng,
                                             self.augment)
            clean = clean_u8.astype(np.float32) / 255.0
            rainy = rainy_u8.astype(np.float32) / 255.0
            rain_free = False
        else:
            (clean_u8,) = random_crop([clean_u8], self.patch, rng, self.augment)
            clean = clean_u8.astype(np.float32) / 255.0
            rain_free = bool(self.clean_fraction) and (
                item_rng(self.seed, key, _STREAM_RAIN_FREE).random() < self.clean_fraction)
            rainy = clean.copy() if rain_free else synth.synthesize(
                clean, self.preset, item_rng(self.seed, key, _STREAM_RAIN))[0]
        item = {"rainy": to_tensor(rainy), "clean": to_tensor(clean),
                "rain_free": torch.tensor(rain_free)}
        if self.with_aug:
            rng_aug = item_rng(self.seed, key, _STREAM_RAIN_AUG)
            aug, _ = synth.synthesize(clean, self.preset, rng_aug)
            item["rainy_aug"] = to_tensor(aug)
        return item


    def full_rainy(self, index: int, seed: int) -> np.ndarray:
        """A whole (uncropped) rainy training image as HxWx3 float32, for BN recalibration."""
        src, i = self._locate(index)
        if src.kind == "paired":
            return src.rainy[i].astype(np.float32) / 255.0
        clean = src.clean[i].astype(np.float32) / 255.0
        rainy, _ = synth.synthesize(clean, self.preset, np.random.default_rng([seed, index]))
        return rainy


class UnlabeledDataset(Dataset):
    """Real rainy photos without ground truth (random crops with flips/rotations)."""

    def __init__(
        self,
        dirs: Sequence[str | Path] = (),
        *,
        images: Sequence[np.ndarray] | None = None,
        patch: int = 128,
        seed: int = 0,
        augment: bool = True,
        fitted_to: int = 0,
        flag: str = "--unlabeled",
    ) -> None:
        self.patch, self.seed, self.augment = patch, seed, augment
        #: the long side ``images`` were downscaled to (0: as they are), and the option
        #: that named the photos: for the warning on --val images among them
        self.fitted_to, self.flag = fitted_to, flag
        self.images: list[np.ndarray] = list(images) if images is not None else []
        for d in dirs:
            self.images.extend(load_photos(d))  # skips damaged photos with a warning
        if not self.images:
            raise DataError("no unlabeled rainy images")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: Key | int) -> dict[str, torch.Tensor]:
        if isinstance(key, int | np.integer):
            key = (int(key), 0, int(key))
        rng = item_rng(self.seed, key, _STREAM_CROP)
        (rainy,) = random_crop([self.images[key[0]]], self.patch, rng, self.augment)
        return {"rainy": to_tensor(rainy)}


# --------------------------------------------------------------------------- sampling
class StepBatchSampler(Sampler[list[Key]]):
    """Yields, for steps ``start_step .. total_steps-1``, this rank's share of each global batch.

    The global batch is ``batch * world`` items; epoch ``e`` visits the dataset in the
    permutation ``default_rng([seed, e, 7]).permutation(n)`` (several permutations
    concatenated when the dataset is smaller than one global batch). Step ``s`` is batch
    ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``; rank ``r`` takes items
    ``r*batch .. (r+1)*batch`` of it. Nothing is stateful: restarting at any step gives the
    same stream.
    """

    def __init__(
        self, n: int, batch: int, *, seed: int = 0, rank: int = 0, world: int = 1,
        start_step: int = 0, total_steps: int | None = None,
    ) -> None:
        if n <= 0:
            raise DataError("empty dataset")
        self.n, self.batch, self.seed = n, batch, seed
        self.rank, self.world = rank, world
        self.start_step, self.total_steps = start_step, total_steps
        gb = batch * world
        self.steps_per_epoch = max(1, n // gb)
        self._reps = max(1, math.ceil(gb / n))
        self._cache: tuple[int, np.ndarray] | None = None

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def _order(self, epoch: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != epoch:
            rng = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch, 7])
            order = np.concatenate([rng.permutation(self.n) for _ in range(self._reps)])
            self._cache = (epoch, order)
        return self._cache[1]

    def keys_for(self, step: int) -> list[Key]:
        epoch, pos = divmod(step, self.steps_per_epoch)
        order = self._order(epoch)
        gb = self.batch * self.world
        base = pos * gb + self.rank * self.batch
        return [(int(order[base + j]), epoch, base + j) for j in range(self.batch)]

    def __iter__(self) -> Iterator[list[Key]]:
        step = self.start_step
        while self.total_steps is None or step < self.total_steps:
            yield self.keys_for(step)
            step += 1

    def __len__(self) -> int:
        if self.total_steps is None:
            raise TypeError("infinite sampler")
        return max(0, self.total_steps - self.start_step)


#: Seconds a worker may take to deliver one batch before training stops with an error; a
#: batch takes well under a second, so this only fires on a stuck worker, never on slow data.
WORKER_TIMEOUT_S = 300.0


def make_loader(
    dataset: Dataset,
    sampler: StepBatchSampler,
    *,
    workers: int = 0,
    pin_memory: bool = False,
    timeout: float = WORKER_TIMEOUT_S,
) -> DataLoader:
    """A DataLoader over ``sampler``'s batches (workers prefetch 4 batches each).

    Workers are forked, so they must not touch thread pools inherited from the parent (see
    :func:`_worker_init`); ``timeout`` turns a stuck worker into an error instead of a hang.
    """
    kwargs = {}
    if workers > 0:
        kwargs = {"persistent_workers": False, "prefetch_factor": 4, "timeout": timeout}
    return DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, pin_memory=pin_memory,
        worker_init_fn=_worker_init if workers > 0 else None, **kwargs,
    )


def _worker_init(_: int) -> None:
    # Each worker uses one thread: cv2/torch threads inside workers only oversubscribe cores.
    # cv2.setNumThreads(0) (run sequentially), never (1): in a forked child, resizing the
    # thread pool that the parent already started waits forever on threads that do not exist
    # there (seen as a CI hang: any cv2 call in the parent before the loader started it).
    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(0)
    except Exception:  # noqa: BLE001 - cv2 is optional here
        pass
