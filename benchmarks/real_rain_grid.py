"""Before/after grid of real rainy photos (../shared/data/real-rain) for visual checks.

    python benchmarks/real_rain_grid.py -o grid.png [--model NAME | --weights F ...] [--count 6]

Each row is one photo: the rainy input, then one column per model given. It also prints,
per column, how much the model changed the photos: the mean absolute difference of the
BT.601 studio-swing luma (`metrics.rgb_to_y`, 8-bit levels, the Y of `derain eval` and
`benchmarks/contrast_ablation.py`) between its output and the input, over the photos of
the grid at the size they were processed (at most 1024 px). The real-rain photos come from the web
and may not be redistributed, so the grid is generated at run time and never committed.
Exits 0 with a message when the data is absent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from derain_cli.enhancer import Derainer
from derain_cli.metrics import rgb_to_y
from derain_cli.pairs import list_images

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-rain"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--model", action="append", default=[], help="registered model (repeatable)")
    ap.add_argument("--weights", action="append", default=[], type=Path, help="weights file")
    ap.add_argument("--count", type=int, default=6)
    ap.add_argument("--start", type=int, default=0, help="index of the first photo")
    ap.add_argument("--cell", type=int, default=320, help="cell width in pixels")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--precision", default="fp32",
                    help="every column's precision (fp32: the networks themselves; before "
                         "2026-12-05 a --model column ran its int8 graph and a --weights "
                         "one bf16, 0.11 levels of |dY| apart on the same weights)")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"SKIPPED: {args.data} not found (the real-rain photos are not shipped)")
        return 0
    photos = list_images(args.data)[args.start:args.start + args.count]
    prec = args.precision
    columns: list[tuple[str, Derainer]] = [(m, Derainer(model=m, precision=prec))
                                           for m in args.model]
    columns += [(w.parent.name if w.stem == "model" else w.stem,
                 Derainer(weights=w, precision=prec))
                for w in args.weights]  # a run folder's model.safetensors: the run's name
    if not columns:
        columns = [("default", Derainer(precision=prec))]
    cw = args.cell
    rows = []
    change = np.zeros(len(columns))
    for p in photos:
        img = Image.open(p).convert("RGB")
        img.thumbnail((1024, 1024))
        rgb = np.asarray(img)
        cells = [rgb] + [d.derain(rgb) for _, d in columns]
        y_in = rgb_to_y(rgb)
        change += [np.abs(rgb_to_y(c) - y_in).mean() for c in cells[1:]]
        scale = cw / rgb.shape[1]
        ch = round(rgb.shape[0] * scale)
        rows.append([Image.fromarray(c).resize((cw, ch), Image.LANCZOS) for c in cells])
    labels = ["rainy input"] + [name for name, _ in columns]
    head = 20
    width = cw * len(labels)
    height = head + sum(r[0].height for r in rows)
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    for i, label in enumerate(labels):
        draw.text((i * cw + 4, 4), label, fill="black")
    y = head
    for r in rows:
        for i, cell in enumerate(r):
            grid.paste(cell, (i * cw, y))
        y += r[0].height
    args.output.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.output)
    print(f"wrote {args.output} ({len(rows)} photos x {len(labels)} columns)")
    for (name, _), total in zip(columns, change, strict=True):
        print(f"{name}: mean |dY| against the input {total / max(len(rows), 1):.2f} levels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
