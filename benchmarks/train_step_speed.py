"""Seconds per training step on this CPU: fp32 vs bf16 autocast, NCHW vs channels_last.

    python benchmarks/train_step_speed.py [--model semi-drdnet-lite] [--threads 1]
        [--batch 8] [--patch 64]

One step = forward, L1 loss, backward and an AdamW update on a batch of random crops
(default 8 of 64 px, the CPU recipes' batch; rdmc-lite's recipe: --batch 3 --patch 256).
Best of the last three of four steps. Each line also says whether every weight gradient
was finite (a step with non-finite ones is timed but not applied): on a 2-core AMD EPYC
oneDNN's bf16 weight gradients of rdmc-lite came back NaN in channels_last, which is why
`derain train` checks (train._bf16_grads_finite). This is how the
training defaults were chosen: channels_last always, and bf16 only on CPUs with bf16
instructions (on an AVX2-only CPU PyTorch runs bf16 convolutions through its slow
reference kernels).
"""

from __future__ import annotations

import argparse
import time

import torch

from derain_cli.models import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="semi-drdnet-lite")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=64)
    args = ap.parse_args()
    if args.steps < 2:  # the first step (warm-up) is never timed
        ap.error("--steps must be at least 2")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.model).train()
    x = torch.rand(args.batch, 3, args.patch, args.patch)
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    for amp in ("fp32", "bf16"):
        for layout in ("nchw", "channels_last"):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            model = model.to(memory_format=fmt)
            xx = x.contiguous(memory_format=fmt)
            times = []
            finite = True
            for _ in range(args.steps):
                t = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
                    y = model(xx)
                (y.float() - x).abs().mean().backward()
                ok = all(bool(torch.isfinite(p.grad).all())
                         for p in model.parameters() if p.grad is not None)
                finite = finite and ok
                if ok:
                    opt.step()
                opt.zero_grad()
                times.append(time.perf_counter() - t)
            print(f"{args.model} {amp:>4} {layout:<13} {min(times[1:]):7.3f} s/step"
                  + ("" if finite else "  NON-FINITE weight gradients"), flush=True)


if __name__ == "__main__":
    main()
