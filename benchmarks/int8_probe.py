"""Does static int8 quantization (ONNX Runtime) pay for a model? Speed and rain100l loss.

Issue 6 allows int8 only where it keeps rain100l Y-PSNR within 0.1 dB of fp32. This script
exports the model's forward graph (``derain_cli.export``) and quantizes it with
``derain_cli.quantize`` (ONNX Runtime's static QDQ quantizer: per-channel int8 weights,
uint8 activations, calibrated on rain that ``derain_cli.synth`` draws over ``clean-bsds``
crops: training data, never evaluation data) for several *scopes* (which convolutions are
quantized). It then runs every graph untiled on the rain100l pairs and reports Y-PSNR, the
loss against fp32, the output agreement with fp32 and the speed ratio, all measured in this
one run:

    python benchmarks/int8_probe.py [-m semi-drdnet-lite] [--images 100] [--calib 8]
        [--scopes all,auto-8] [--reduce-range]

Scopes: ``all`` (every Conv), ``no-ends`` (not the first and last convolutions),
``detail`` (Semi-DRDNet's detail repair network only, rain network kept fp32), ``rain`` (the
rain network only), ``auto-K`` (all but the K convolutions that hurt most when quantized
alone, ranked by ``quantize.conv_sensitivity`` on held-out synthetic rain; what
``derain export --int8 --keep-fp32 K`` ships). ``--reduce-range``: 7-bit weights (the
shipped scheme; on CPUs without VNNI, 8-bit weights saturate). Without ../shared/data the
script says so and exits 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from derain_cli import export, metrics, quantize
from derain_cli.onnx_backend import OnnxRunner
from derain_cli.pairs import find_pairs, list_images
from derain_cli.weights import load_pretrained

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SCOPES = ("all", "no-ends", "detail", "rain")


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _excluded(names: list[str], scope: str) -> list[str]:
    """Node names the quantizer must leave in fp32 for ``scope``."""
    ends = ("/head/head.0/Conv", "/tail/Conv", "/detail_net/head/head.0/Conv",
            "/detail_net/tail/Conv")
    if scope == "all":
        return []
    if scope == "no-ends":
        return [n for n in names if n in ends]
    if scope == "detail":  # everything outside the detail network, and its two ends
        return [n for n in names if not n.startswith("/detail_net/") or n in ends]
    if scope == "rain":
        return [n for n in names if n.startswith("/detail_net/") or n in ends]
    raise ValueError(scope)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", default="semi-drdnet-lite")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--images", type=int, default=100, help="rain100l pairs to score")
    ap.add_argument("--calib", type=int, default=8, help="calibration crops (320 px)")
    ap.add_argument("--scopes", default=",".join(SCOPES),
                    help=f"comma list of {', '.join(SCOPES)} or auto-K (all but the K most "
                         "sensitive convolutions, ranked on held-out synthetic rain)")
    ap.add_argument("--reduce-range", action="store_true", help="7-bit weights")
    ap.add_argument("--held-out", type=int, default=4,
                    help="synthetic crops (256 px) for the auto-K sensitivity ranking")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    if not (args.data / "rain100l").is_dir() or not (args.data / "clean-bsds").is_dir():
        print(f"{args.data}: rain100l/clean-bsds not present; nothing measured")
        return 0

    import onnx

    net = load_pretrained(args.model, quiet=True).eval()
    photos = list_images(args.data / "clean-bsds")
    calib = quantize.synthetic_inputs(photos[: args.calib], 320, 0)

    with tempfile.TemporaryDirectory(prefix="derain-int8-") as tmp_dir:  # graphs: removed after
        tmp = Path(tmp_dir)
        cache = tmp / "calibration.json"
        fp32, *stats = export.export_onnx(net, tmp / "fp32.onnx")  # stats graph: tiling only
        scopes = args.scopes.split(",")
        ranking: list[tuple] = []
        if any(s.startswith("auto-") for s in scopes):
            t = time.perf_counter()
            held = quantize.synthetic_inputs(photos[args.calib: args.calib + args.held_out], 256,
                                             1000)
            ranking = quantize.conv_sensitivity([fp32, *stats], calib, held,
                                                reduce_range=args.reduce_range, cache=cache,
                                                threads=args.threads)
            print(f"sensitivity of {len(ranking)} convolutions in "
                  f"{time.perf_counter() - t:.0f} s; most sensitive first "
                  "(output PSNR vs fp32 with only that node in int8):", file=sys.stderr)
            for p, name in ranking[:16]:
                print(f"  {p:6.1f} dB  {name}", file=sys.stderr)
        graphs = {"fp32": fp32}
        for scope in scopes:
            t = time.perf_counter()
            if scope.startswith("auto-"):
                exclude = [n for _, n in ranking[: int(scope[5:])]]
            else:
                exclude = _excluded([n.name for n in onnx.load(str(fp32)).graph.node], scope)
            graphs[scope] = quantize.quantize_graph(fp32, tmp / f"{scope}.onnx", calib,
                                                    keep_fp32=exclude, cache=cache,
                                                    reduce_range=args.reduce_range)
            print(f"quantized scope {scope} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        runners = {k: OnnxRunner([p, *stats], threads=args.threads) for k, p in graphs.items()}

        pairs = find_pairs(args.data / "rain100l")[: args.images]
        scores = {k: [] for k in runners}
        agree = {k: [] for k in runners}
        secs = dict.fromkeys(runners, 0.0)
        for pair in pairs:
            rainy = _rgb(pair.rainy).astype(np.float32) / 255
            clean = _rgb(pair.clean)
            x = np.ascontiguousarray(rainy.transpose(2, 0, 1))[None]
            ref = None
            for k, run in runners.items():  # interleaved, so load changes hit every graph alike
                t = time.perf_counter()
                y = run.forward(x, None)[0].transpose(1, 2, 0)
                secs[k] += time.perf_counter() - t
                y8 = metrics.to_uint8(np.clip(y, 0, 1))
                ref = y8 if ref is None else ref
                scores[k].append(metrics.psnr_y(y8, clean))
                if k != "fp32":
                    agree[k].append(min(metrics.psnr(y8, ref), 99.0))

        base = np.mean(scores["fp32"])
        print(f"\n{args.model}: {len(pairs)} rain100l pairs, untiled, {args.threads} threads, "
              f"onnxruntime CPU{', 7-bit weights' if args.reduce_range else ''}\n")
        print("| graph | Y-PSNR (dB) | vs fp32 (dB) | output vs fp32 (dB) | speed vs fp32 |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for k in runners:
            d = np.mean(scores[k]) - base
            a = f"{np.mean(agree[k]):.1f}" if agree[k] else "-"
            print(f"| {k} | {np.mean(scores[k]):.3f} | {d:+.3f} | {a} | "
                  f"{secs['fp32'] / secs[k]:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
