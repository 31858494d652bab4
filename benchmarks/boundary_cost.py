"""What ``derain train``'s per-step snapshot costs against a training step.

After every step, training keeps the random state and the BatchNorm buffers of the step
boundary (``train.boundary_state``), so that a Ctrl-C in the middle of the next step
still saves a checkpoint that resumes bitwise exactly. This times that snapshot against
one plain training step (fp32, AdamW, an L1 loss on the output; no contrastive terms, so
the step is the cheapest a real run takes) on this machine, per model.

Usage (from the repository root)::

    python benchmarks/boundary_cost.py [-m semi-drdnet-fast ...] [--batch 8] [--patch 64]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

import torch  # noqa: E402

from derain_cli.models import build_model  # noqa: E402
from derain_cli.train import boundary_state  # noqa: E402


def parser() -> argparse.ArgumentParser:
    """The command line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", action="append",
                    help="registered model (repeatable; default: semi-drdnet-fast, "
                         "semi-drdnet-lite, rdmc-lite, semi-drdnet)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--snapshots", type=int, default=2000, help="snapshots timed")
    ap.add_argument("--steps", type=int, default=5, help="training steps timed")
    return ap


def measure(name: str, batch: int, patch: int, snapshots: int, steps: int) -> dict[str, float]:
    """Seconds per snapshot and per training step for one model (random weights)."""
    model = build_model(name).train()
    for _ in range(20):
        boundary_state(model)
    t0 = time.perf_counter()
    for _ in range(snapshots):
        boundary_state(model)
    snap = (time.perf_counter() - t0) / snapshots
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    x = torch.rand(batch, 3, patch, patch)

    def step() -> None:
        out = model(x)
        out = out[0] if isinstance(out, (tuple, list)) else out
        loss = (out - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return {"snapshot_s": snap, "step_s": (time.perf_counter() - t0) / steps,
            "buffer_values": float(sum(b.numel() for b in model.buffers()))}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    names = args.model or ["semi-drdnet-fast", "semi-drdnet-lite", "rdmc-lite", "semi-drdnet"]
    print(f"{torch.get_num_threads()} threads, batch {args.batch} x {args.patch} px, fp32")
    print("| model | buffer values | snapshot | training step | share |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in names:
        r = measure(name, args.batch, args.patch, args.snapshots, args.steps)
        print(f"| {name} | {r['buffer_values']:.0f} | {r['snapshot_s'] * 1e6:.0f} us | "
              f"{r['step_s'] * 1e3:.0f} ms | {100 * r['snapshot_s'] / r['step_s']:.3f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
