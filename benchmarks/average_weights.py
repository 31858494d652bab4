"""Average two weight files of one network (a "model soup"), to test whether it beats both.

    python benchmarks/average_weights.py A.safetensors B.safetensors -o SOUP.safetensors
        [--alpha 0.5]
    derain eval --weights SOUP.safetensors --data ../shared/data/rain100l --precision fp32

Every floating-point tensor (weights and batch-norm statistics alike) becomes
``(1 - alpha) * A + alpha * B``, computed in fp32 and stored in A's dtype; integer tensors
(batch-norm step counters) are taken from the nearer file. A's metadata (name, config,
format) is kept, so ``derain --weights`` reads the result like A. docs/model-history.md
says what it measured: between the two, not above them, for two runs of semi-drdnet-fast
on one draw (2026-12-02); above both on sirr-val for stage 7 and a cycle with veiled rain
on larger crops (2026-12-03), which is how semi-drdnet-fast's stage 8 was made
(recipes/semi-drdnet-fast.sh calls this script).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import save

from derain_cli.weights import canonical_safetensors, read_state


def average(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
            alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * a + alpha * b`` per tensor; the files must hold the same tensors."""
    if a.keys() != b.keys():
        raise ValueError(f"the files hold different tensors: {sorted(a.keys() ^ b.keys())[:5]}")
    out = {}
    for k, ta in a.items():
        tb = b[k]
        if ta.shape != tb.shape:
            raise ValueError(f"{k}: shapes {tuple(ta.shape)} and {tuple(tb.shape)} differ")
        if ta.is_floating_point():
            out[k] = ((1 - alpha) * ta.float() + alpha * tb.float()).to(ta.dtype)
        else:
            out[k] = (tb if alpha >= 0.5 else ta).clone()
    return out


def parser() -> argparse.ArgumentParser:
    """The command line (tests/test_recipes.py parses the recipes' calls with it)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--alpha", type=float, default=0.5, help="B's share (0..1)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    state_a, meta = read_state(args.a)
    state_b, _ = read_state(args.b)
    soup = average(state_a, state_b, args.alpha)
    # sorted header: the same soup is the same file (recipes bundle it; a rerun can be
    # compared with the shipped file byte for byte)
    Path(args.output).write_bytes(canonical_safetensors(save(soup, metadata=meta)))
    print(f"wrote {args.output}: {len(soup)} tensors, {1 - args.alpha:g} x {args.a} + "
          f"{args.alpha:g} x {args.b}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
