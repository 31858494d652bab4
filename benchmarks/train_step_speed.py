"""Seconds per training step on this CPU: fp32 vs bf16 autocast, NCHW vs channels_last.

    python benchmarks/train_step_speed.py [--model semi-drdnet-lite] [--threads 1]

One step = forward, L1 loss, backward and an AdamW update on a batch of 8 random 64 px
crops (the CPU recipes' batch). Best of the last three of four steps. This is how the
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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.model).train()
    x = torch.rand(8, 3, 64, 64)
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    for amp in ("fp32", "bf16"):
        for layout in ("nchw", "channels_last"):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            model = model.to(memory_format=fmt)
            xx = x.contiguous(memory_format=fmt)
            times = []
            for _ in range(args.steps):
                t = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
                    y = model(xx)
                (y.float() - x).abs().mean().backward()
                opt.step()
                opt.zero_grad()
                times.append(time.perf_counter() - t)
            print(f"{args.model} {amp:>4} {layout:<13} {min(times[1:]):7.3f} s/step", flush=True)


if __name__ == "__main__":
    main()
