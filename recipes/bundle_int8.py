"""Add an int8 graph made by ``derain export --int8`` to a bundled weight's manifest record.

    python recipes/bundle_int8.py GRAPH.onnx --name semi-drdnet-lite \
        --eval runs/int8-eval-rain100l.json

Copies the graph to ``weights/<name>.int8.onnx`` (and its statistics graph, if any, to
``<name>.int8.stats.onnx``) and records their sha256, the size and the
``derain.int8`` metadata the exporter wrote (the fp32 weights' state hash, the
convolutions kept in fp32, the calibration), plus what the torch-free start
(``derain_cli.fast_path``) needs: the weights file's sha256 and the network's tile
overlap and smallest tile (``enhancer.tiling_record``). ``--eval`` adds figures printed by
``derain eval --precision int8 --json``, so every number comes from a command. Refuses a
graph made from other weights than the bundled ones.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import onnx

from derain_cli.enhancer import tiling_record
from derain_cli.export import stats_path
from derain_cli.onnx_backend import state_sha256
from derain_cli.weights import (
    bundled_dir,
    load_manifest,
    load_pretrained,
    sha256_file,
    write_manifest,
)


def parser() -> argparse.ArgumentParser:
    """The command line (tests/test_recipes.py parses the recipes' calls with it)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("graph", type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--eval", nargs="*", type=Path, default=[], help="derain eval --json outputs")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)

    meta = {p.key: p.value for p in onnx.load(str(args.graph)).metadata_props}
    if "derain.int8" not in meta:
        raise SystemExit(f"{args.graph}: no derain.int8 metadata (derain export --int8)")
    info = json.loads(meta["derain.int8"])
    records = load_manifest()
    rec = records[args.name]
    net = load_pretrained(args.name, quiet=True)
    if info["source_sha256"] != state_sha256(net):
        raise SystemExit(f"{args.graph} was made from other weights than the bundled {args.name}")
    dest = bundled_dir() / f"{args.name}.int8.onnx"
    shutil.copyfile(args.graph, dest)
    entry = {"file": dest.name, "sha256": sha256_file(dest), "size": dest.stat().st_size}
    stats = stats_path(args.graph)
    if stats.is_file():  # Semi-DRDNet: the quantized statistics graph goes along
        stats_dest = stats_path(dest)
        shutil.copyfile(stats, stats_dest)
        entry |= {"stats_file": stats_dest.name, "stats_sha256": sha256_file(stats_dest)}
    entry |= info
    entry |= {"weights_sha256": rec.sha256, "tiling": tiling_record(net)}
    metrics = {}
    for path in args.eval:
        res = json.loads(path.read_text())
        metrics[Path(res["data_dir"]).name] = {
            k: round(res[k], 4) for k in ("psnr_y", "ssim_y", "psnr_rgb")} | {"count": res["count"]}
    if metrics:
        entry["metrics"] = metrics
    rec.extra["int8"] = entry
    write_manifest(records)
    print(f"bundled {dest} ({entry['size']} bytes, sha256 {entry['sha256'][:12]}...)")


if __name__ == "__main__":
    main()
