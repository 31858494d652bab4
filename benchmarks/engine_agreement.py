"""How far apart the CPU engines' outputs are, image for image (not against the clean).

    python benchmarks/engine_agreement.py --data ../shared/data/rain100l [--model M]
        [--engine int8 --engine bf16 --engine fp32] [--limit 10]

Each engine derains the first ``--limit`` rainy photos through ``Derainer`` on the CPU
(int8: the bundled graph in ONNX Runtime; bf16 and fp32: PyTorch), the results rounded to
8 bits as the CLI writes them; for every pair of engines it prints the largest difference
in levels, the share of values that differ and the RGB PSNR between the two outputs (mean
over the photos). Why: ``--precision auto`` picks int8 or bf16 per job (README, "int8 or
bf16"), so the same photo can come out of two engines; eval's PSNR against the clean
says each is within 0.1 dB of fp32, not how different the two images are.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

from derain_cli import data as D  # noqa: E402
from derain_cli import metrics  # noqa: E402
from derain_cli.enhancer import Derainer  # noqa: E402
from derain_cli.pairs import find_pairs  # noqa: E402

#: engine -> Derainer settings (fp32 pinned to PyTorch: ``auto`` may pick ONNX Runtime)
ENGINES = {"int8": ("int8", "auto"), "bf16": ("bf16", "torch"), "fp32": ("fp32", "torch")}


def outputs(model: str | None, engine: str, photos: list[np.ndarray],
            threads: int | None) -> list[np.ndarray]:
    """``photos`` derained by ``engine``, as 8-bit arrays."""
    precision, backend = ENGINES[engine]
    d = Derainer(model=model, device="cpu", precision=precision, backend=backend,
                 threads=threads, quiet=True)
    return [metrics.to_uint8(d.derain_array(p)) for p in photos]


def agreement(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[int, float, float]:
    """Largest difference (levels), share of differing values, mean RGB PSNR (dB)."""
    most, share, psnr = 0, [], []
    for x, y in zip(a, b, strict=True):
        diff = np.abs(x.astype(np.int16) - y.astype(np.int16))
        most = max(most, int(diff.max()))
        share.append(float((diff > 0).mean()))
        mse = float((diff.astype(np.float64) ** 2).mean())
        psnr.append(float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse))
    return most, float(np.mean(share)), float(np.mean(psnr))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="rainy/clean pairs folder")
    ap.add_argument("--model", default=None, help="a bundled model with an int8 graph "
                    "(default: the default model)")
    ap.add_argument("--engine", action="append", choices=sorted(ENGINES), default=None,
                    help="repeatable (default: int8, bf16, fp32)")
    ap.add_argument("--limit", type=int, default=10, help="first N photos (default 10)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    engines = args.engine or ["int8", "bf16", "fp32"]
    if "bf16" in engines:
        from derain_cli.engine_choice import cpu_has_bf16

        if not cpu_has_bf16():  # it failed with a traceback after the int8 pass (an audit)
            if args.engine:
                ap.error("this CPU has no bf16 instructions: leave out --engine bf16")
            engines.remove("bf16")
            print("bf16 left out: this CPU has no bf16 instructions", flush=True)
    photos = [D.load_rgb_u8(p.rainy) for p in find_pairs(args.data)[:args.limit]]
    out = {e: outputs(args.model, e, photos, args.threads) for e in engines}
    print(f"{args.model or 'default model'} on the first {len(photos)} photos of "
          f"{args.data.name}")
    print("| engines | largest difference (levels) | values that differ | PSNR between |")
    print("| --- | ---: | ---: | ---: |")
    for a, b in itertools.combinations(engines, 2):
        most, share, psnr = agreement(out[a], out[b])
        print(f"| {a} / {b} | {most} | {100 * share:.1f} % | {psnr:.2f} dB |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
