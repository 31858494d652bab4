"""Train ``semi-drdnet-lite`` on the CPU for a fixed time budget, then score it on Rain100L.

    python benchmarks/train_lite_cpu.py [--budget 1200] [--out runs/bench-lite-cpu]

Training data: synthetic rain (``--preset``, default mixed) over ``../shared/data/clean-bsds``.
``../shared/data/rain100l`` is used for validation and the final score only, never for
training. The run stops cleanly when the budget is spent (checkpoint + export), so the
score printed is that of ``RUN/model.safetensors`` (EMA weights). Exits 0 with a message when
``../shared/data`` is absent (a fresh clone does not have it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=1200.0, help="training seconds")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-lite-cpu")
    ap.add_argument("--model", default="semi-drdnet-lite")
    ap.add_argument("--preset", default="mixed")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--amp", default="auto",
                    help="auto (bf16 where the CPU has bf16 instructions, else fp32), bf16, fp32")
    ap.add_argument("--contrast-features", default="none",
                    help="none (fastest on CPUs), self, vgg19 or auto")
    ap.add_argument("--val-limit", type=int, default=10, help="val pairs during training")
    ap.add_argument("--eval-limit", type=int, default=None, help="pairs in the final score")
    ap.add_argument("--fresh", action="store_true", help="delete --out first")
    args = ap.parse_args()

    clean, rain100l = DATA / "clean-bsds", DATA / "rain100l"
    if not clean.is_dir() or not rain100l.is_dir():
        print(f"benchmark skipped: {DATA} (clean-bsds/, rain100l/) is not available")
        return 0

    from derain_cli.enhancer import cpu_supports_bf16
    from derain_cli.evaluate import evaluate
    from derain_cli.train import TrainConfig, train

    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)
    resume = (args.out / "last.pt").exists()
    t0 = time.time()
    res = train(TrainConfig(
        model=args.model, synthetic=[str(clean)], preset=args.preset, val=str(rain100l),
        val_limit=args.val_limit, val_every=10**9, out=str(args.out), steps=10**6,
        batch=args.batch, patch=args.patch, lr=args.lr, warmup=50, ema=0.99, amp=args.amp,
        device="cpu",
        workers=args.workers, ckpt_every=200, time_budget=args.budget, resume=resume,
        contrast_features=args.contrast_features,
        training_data=f"synthetic rain ({args.preset}) on clean-bsds (375 BSDS500 photos)",
    ))
    train_s = time.time() - t0
    t1 = time.time()
    ev = evaluate(str(res.weights), rain100l, limit=args.eval_limit, device="cpu",
                  csv_path=args.out / "rain100l.csv", overwrite=True)  # a rerun resumes
    summary = {
        "model": args.model, "amp": args.amp, "cpu_bf16": cpu_supports_bf16(),
        "steps": res.steps, "train_seconds": round(train_s, 1),
        "patches": res.steps * args.batch, "rain100l_psnr_y": round(ev.psnr_y, 3),
        "rain100l_ssim_y": round(ev.ssim_y, 4), "rain100l_images": ev.count,
        "eval_seconds": round(time.time() - t1, 1), "weights": str(res.weights),
    }
    (args.out / "benchmark.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"rain100l: PSNR-Y {ev.psnr_y:.2f} dB, SSIM-Y {ev.ssim_y:.4f} "
          f"({res.steps} steps in {train_s / 60:.1f} min; identity is 26.90 / 0.8384)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
