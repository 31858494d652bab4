"""Would averaging outputs pay? Flipped copies of one model, or several models, scored.

    python benchmarks/self_ensemble.py -e semi-drdnet-fast -e semi-drdnet-fast:h
    python benchmarks/self_ensemble.py -e semi-drdnet-fast -e semi-drdnet-lite

Each ``-e MODEL[:FLIP]`` is one member: a registry name, run in fp32 on the image flipped
(``h`` left-right, ``v`` upside down, ``hv`` both; none by default) and flipped back; a
leading ``t`` (``t``, ``th``, ``tv``, ``thv``) transposes the image first, which turns the
rain sideways (why ``derain --ensemble`` offers flips only).
Prints Y PSNR / SSIM on each evaluation set for every member alone and for the mean of
their outputs (rounded to 8 bits, as ``derain eval`` scores). Why: a self-ensemble costs
one full pass per member, and an ensemble of models only helps where their errors differ;
this measures both before anyone builds either. Uses ../shared/data; prints a note and
exits 0 without it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

SETS = ("rain100l", "heavy-small", "sirr-val")
FLIPS = {"": (), "h": (1,), "v": (0,), "hv": (0, 1)}


def copy_of(img: np.ndarray, transpose: bool, axes: tuple[int, ...]) -> np.ndarray:
    """The member's copy of an HxWx3 image: transposed (if asked), then flipped."""
    x = img.transpose(1, 0, 2) if transpose else img
    return np.ascontiguousarray(np.flip(x, axes)) if axes else np.ascontiguousarray(x)


def put_back(out: np.ndarray, transpose: bool, axes: tuple[int, ...]) -> np.ndarray:
    """A member's result the image's way round: flipped back, then transposed back."""
    y = np.flip(out, axes) if axes else out
    return np.ascontiguousarray(y.transpose(1, 0, 2) if transpose else y)


def score(outs: list[np.ndarray], cleans: list[np.ndarray]) -> tuple[float, float]:
    from derain_cli import metrics

    u8 = [metrics.to_uint8(o) for o in outs]
    return (float(np.mean([metrics.psnr_y(o, c) for o, c in zip(u8, cleans, strict=True)])),
            float(np.mean([metrics.ssim_y(o, c) for o, c in zip(u8, cleans, strict=True)])))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-e", "--member", action="append", required=True,
                    help="MODEL or MODEL:h|v|hv|t|th|tv|thv (repeat)")
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--data", default="../shared/data")
    args = ap.parse_args()
    data = Path(args.data)
    if not data.is_dir():
        print(f"{data} not found: nothing to measure (the evaluation sets live there)")
        return 0
    from derain_cli import Derainer
    from derain_cli.data import load_rgb_u8
    from derain_cli.pairs import find_pairs

    members = []
    for m in args.member:
        name, _, flip = m.partition(":")
        transpose = flip.startswith("t")
        if flip.removeprefix("t") not in FLIPS:
            ap.error(f"unknown flip {flip!r} in {m!r}: use h, v or hv, each with a leading t "
                     "or not, or t alone")
        members.append((m, name, (transpose, FLIPS[flip.removeprefix("t")])))
    sets = args.sets.split(",")
    pairs = {s: [(load_rgb_u8(p.rainy), load_rgb_u8(p.clean)) for p in find_pairs(data / s)]
             for s in sets}
    outs: dict[str, dict[str, list[np.ndarray]]] = {}
    for label, name, (transpose, axes) in members:
        d = Derainer(model=name, device="cpu", precision="fp32")
        outs[label] = {}
        for s in sets:
            res = []
            for rainy, _ in pairs[s]:
                y = d.derain_array(copy_of(rainy, transpose, axes))
                res.append(put_back(y, transpose, axes))
            outs[label][s] = res
    rows = [(label, {s: outs[label][s] for s in sets}) for label, _, _ in members]
    if len(members) > 1:
        rows.append(("mean of all", {s: [np.mean(v, axis=0) for v in zip(
            *(outs[label][s] for label, _, _ in members), strict=True)] for s in sets}))
    print(f"{'member':<28}" + "".join(f"{s:>18}" for s in sets))
    for label, by_set in rows:
        cells = []
        for s in sets:
            p, q = score(by_set[s], [c for _, c in pairs[s]])
            cells.append(f"{p:.2f} / {q:.3f}")
        print(f"{label:<28}" + "".join(f"{c:>18}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
