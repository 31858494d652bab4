"""Add a training run's weights to weights/ and its record to weights/manifest.json.

    python recipes/bundle.py RUN_DIR --name semi-drdnet-lite --status interim \
        --eval runs/eval-rain100l.json runs/eval-heavy-small.json ...

The record starts from the run's ``manifest_entry.json`` (written by
``derain train``/``finetune``); ``--eval`` adds the figures printed by
``derain eval --json``, so every number in the manifest comes from a command.
The Hub fields name where the file is to be published; ``published: false``
until it is.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from derain_cli.weights import WeightRecord, bundled_dir, load_manifest, sha256_file, write_manifest

HUB_REPO = "derain-project/derain-weights"
#: how ``--val-eval``'s figures were made, as the manifest says it
VAL_EVAL = ("derain eval --limit {count} --precision fp32: the weights' own score on the "
            "set's first {count} pairs (those `derain train --val-limit {count}` validates on)")


def parser() -> argparse.ArgumentParser:
    """The command line (tests/test_recipes.py parses the recipes' calls with it)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--status", default="release")
    ap.add_argument("--eval", nargs="*", type=Path, default=[], help="derain eval --json outputs")
    ap.add_argument("--val-eval", type=Path, default=None,
                    help="derain eval --json output on the validation pairs: the weights' "
                         "own metrics.val (a soup has no training validation of its own)")
    ap.add_argument("--note", default="")
    ap.add_argument("--recipe", default="")
    ap.add_argument("--continued-from", default="",
                    help="the weights the run started from (train --weights), in words")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)

    entry = json.loads((args.run / "manifest_entry.json").read_text())
    src = args.run / entry["file"]
    dest = bundled_dir() / f"{args.name}.safetensors"
    shutil.copyfile(src, dest)
    entry.update(name=args.name, file=dest.name, sha256=sha256_file(dest),
                 size=dest.stat().st_size, status=args.status)
    entry["hub"] = {"repo_id": HUB_REPO, "filename": dest.name, "revision": "main",
                    "published": False}
    metrics = entry.setdefault("metrics", {})
    for path in args.eval:
        res = json.loads(path.read_text())
        metrics[Path(res["data_dir"]).name] = {
            k: round(res[k], 4) for k in ("psnr_y", "ssim_y", "psnr_rgb")} | {"count": res["count"]}
    if args.val_eval is not None:
        res = json.loads(args.val_eval.read_text())
        metrics["val"] = {"set": Path(res["data_dir"]).name, "psnr": round(res["psnr_y"], 3),
                          "ssim": round(res["ssim_y"], 4), "count": res["count"],
                          "measured_by": VAL_EVAL.format(count=res["count"])}
    if args.note:
        entry["note"] = args.note
    if args.recipe:
        entry["recipe"] = args.recipe
    if args.continued_from:
        entry["continued_from"] = args.continued_from
    records = load_manifest()
    records[args.name] = WeightRecord.from_dict(entry)
    write_manifest(records)
    print(f"bundled {dest} ({entry['size']} bytes, sha256 {entry['sha256'][:12]}...)")


if __name__ == "__main__":
    main()
