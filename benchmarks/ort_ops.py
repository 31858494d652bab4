"""Where ONNX Runtime spends its time in a graph, and what PReLU costs in each spelling.

Why: ``derain_cli.models.deploy`` rewrites the exported networks because of these two
measurements; this script reproduces both on the machine it runs on.

    python benchmarks/ort_ops.py profile GRAPH.onnx [--height 768 --width 1024]
    python benchmarks/ort_ops.py prelu [--height 768 --width 1024]
    python benchmarks/ort_ops.py compare A.onnx B.onnx ... [--rounds 4]

``profile`` runs the graph (a ``derain export`` or int8 graph; Semi-DRDNet's ``pooled`` and
``local`` inputs are fed as an untiled run does) once to warm up, then twice under ONNX
Runtime's profiler, and prints seconds per megapixel and each operator type's share of
the kernel time. ``prelu`` times a per-channel PReLU on a 32-channel tensor as ``PRelu``
and as ``Max(x, Mul(x, slope))`` (equal for slopes in [0, 1]), checks they agree, and
prints the ratio. ``compare`` times several graphs on the same input, interleaved round by
round so that a busy moment hits all of them alike, and prints each one's best and median
seconds per megapixel and its speed relative to the first graph (an older graph comes
from git, e.g. ``git show 1f27c93:weights/semi-drdnet-lite.int8.onnx > old.onnx``). All
use 2 intra-op threads unless ``--threads`` says otherwise.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time

import numpy as np
import onnxruntime as ort

from derain_cli.onnx_backend import pooled_feeds


def _session(model: str | bytes, threads: int, profile_dir: str | None = None
             ) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if profile_dir:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(profile_dir, "ort")
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _feeds(s: ort.InferenceSession, h: int, w: int) -> dict[str, np.ndarray]:
    names = {i.name: i for i in s.get_inputs()}
    feeds = {"image": np.random.default_rng(0).random((1, 3, h, w), np.float32)}
    if "pooled" in names:
        feeds |= pooled_feeds(names["pooled"].shape[1:], 1)
    if "mask" in names:
        feeds["mask"] = np.ones((1, 1, h, w), np.float32)
    return feeds


def profile(graph: str, h: int, w: int, threads: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        s = _session(graph, threads, tmp)
        feeds = _feeds(s, h, w)
        s.run(None, feeds)
        t = time.perf_counter()
        for _ in range(2):
            s.run(None, feeds)
        per_run = (time.perf_counter() - t) / 2
        events = json.load(open(s.end_profiling()))
    spent: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"].get("op_name", "?")
            spent[op] += e["dur"]
            count[op] += 1
    total = sum(spent.values()) or 1
    print(f"{graph}: {per_run / (h * w / 1e6):.2f} s/MP at {w}x{h} (profiler on), "
          f"{threads} threads")
    print(f"{'operator':24s} {'share':>6s} {'nodes':>6s}")
    for op, d in spent.most_common():
        print(f"{op:24s} {100 * d / total:5.1f}% {count[op] // 3:6d}")


def compare(graphs: list[str], h: int, w: int, threads: int, rounds: int) -> None:
    runs = []
    for g in graphs:
        s = _session(g, threads)
        feeds = _feeds(s, h, w)
        s.run(None, feeds)  # warm-up
        runs.append((s, feeds, []))
    for _ in range(rounds):
        for s, feeds, times in runs:
            t = time.perf_counter()
            s.run(None, feeds)
            times.append(time.perf_counter() - t)
    mp = h * w / 1e6
    base = min(runs[0][2])
    print(f"{w}x{h}, {threads} threads, {rounds} interleaved rounds")
    print(f"{'graph':56s} {'best s/MP':>9s} {'median':>7s} {'speed':>6s}")
    for g, (_, _, times) in zip(graphs, runs, strict=True):
        print(f"{g:56s} {min(times) / mp:9.2f} {float(np.median(times)) / mp:7.2f} "
              f"{base / min(times):5.2f}x")


def _prelu_graph(kind: str, c: int, h: int, w: int, slope: np.ndarray) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(slope, "a")]
    if kind == "PRelu":
        nodes = [helper.make_node("PRelu", ["x", "a"], ["y"])]
    else:
        nodes = [helper.make_node("Mul", ["x", "a"], ["ax"]),
                 helper.make_node("Max", ["x", "ax"], ["y"])]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, c, h, w]) for n in "xy"]
    g = helper.make_graph(nodes, kind, io[:1], io[1:], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def prelu(h: int, w: int, threads: int, c: int = 32, repeats: int = 5) -> None:
    rng = np.random.default_rng(0)
    slope = rng.uniform(0.05, 0.4, (c, 1, 1)).astype(np.float32)
    x = rng.standard_normal((1, c, h, w), dtype=np.float32)
    ref = np.where(x > 0, x, slope * x)
    times = {}
    for kind in ("PRelu", "Max(x, Mul(x, slope))"):
        s = _session(_prelu_graph(kind, c, h, w, slope), threads)
        y = s.run(None, {"x": x})[0]
        assert np.abs(y - ref).max() == 0, kind
        t = time.perf_counter()
        for _ in range(repeats):
            s.run(None, {"x": x})
        times[kind] = (time.perf_counter() - t) / repeats
        print(f"{kind:24s} {1000 * times[kind]:7.1f} ms  ({c}x{h}x{w}, {threads} threads)")
    a, b = times.values()
    print(f"PRelu / Max-Mul: {a / b:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["profile", "prelu", "compare"])
    p.add_argument("graphs", nargs="*")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--height", type=int, default=768)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    if a.what == "profile":
        if len(a.graphs) != 1:
            p.error("profile takes one graph")
        profile(a.graphs[0], a.height, a.width, a.threads)
    elif a.what == "compare":
        if not a.graphs:
            p.error("compare needs graphs")
        compare(a.graphs, a.height, a.width, a.threads, a.rounds)
    else:
        prelu(a.height, a.width, a.threads)


if __name__ == "__main__":
    main()
