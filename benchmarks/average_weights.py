"""Average two weight files of one network (a "model soup"), to test whether it beats both.

    python benchmarks/average_weights.py A.safetensors B.safetensors -o SOUP.safetensors
        [--alpha 0.5]
    derain eval --weights SOUP.safetensors --data ../shared/data/rain100l --precision fp32

Every floating-point tensor (weights and batch-norm statistics alike) becomes
``(1 - alpha) * A + alpha * B``, computed in fp32 and stored in A's dtype; integer tensors
(batch-norm step counters) are taken from the nearer file. A's identity (format, name,
arch, config) is kept, so ``derain --weights`` reads the result like A; the rest of the
metadata says what the file is, not what A was (``soup_metadata``: before 2026-12-05 all of
A's was copied, so a soup claimed A's step count, or that it was "grown from" a model with
an exact agreement): ``training`` names this script and ``averaged_from`` lists every
member with its share, its file's sha256 and its own training metadata, a member that is
itself a soup replaced by its members (so a chain of averages reads as one soup).
docs/model-history.md says what it measured: between the two, not above them, for two
runs of semi-drdnet-fast on one draw (2026-12-02); above both on sirr-val for stage 7 and
a cycle with veiled rain on larger crops (2026-12-03), which is how semi-drdnet-fast's
stage 8 was made (recipes/semi-drdnet-fast.sh calls this script).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save

from derain_cli.fileio import atomic_write, sha256_file
from derain_cli.weights import canonical_safetensors, read_state

#: the metadata that tells derain which network a file holds: kept from A
IDENTITY = ("format", "name", "arch", "config")
#: what this script writes in ``training``
TRAINING = "benchmarks/average_weights.py (a model soup)"


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


def members(meta: dict[str, str], sha256: str, share: float) -> list[dict[str, object]]:
    """One file's part in a soup: itself (its sha256 and its own training metadata), or,
    for a file that is a soup already, its members with their shares scaled by ``share``."""
    if "averaged_from" in meta:
        inner = json.loads(meta["averaged_from"])
        return [m | {"share": round(float(m["share"]) * share, 9)} for m in inner]
    own = {k: v for k, v in sorted(meta.items()) if k not in IDENTITY}
    return [{"share": round(share, 9), "sha256": sha256, "metadata": own}]


def soup_metadata(meta_a: dict[str, str], meta_b: dict[str, str], sha_a: str, sha_b: str,
                  alpha: float) -> dict[str, str]:
    """The soup's safetensors metadata: A's identity, this script as its training, and
    ``averaged_from`` (JSON: the members, see ``members``). A file whose batch-norm
    statistics were not refreshed (``unrecalibrated``) passes that on."""
    meta = {k: meta_a[k] for k in IDENTITY if k in meta_a}
    meta["training"] = TRAINING
    meta["averaged_from"] = json.dumps(members(meta_a, sha_a, 1 - alpha)
                                       + members(meta_b, sha_b, alpha), sort_keys=True)
    if meta_a.get("unrecalibrated") or meta_b.get("unrecalibrated"):
        meta["unrecalibrated"] = "1"
    return meta


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
    state_a, meta_a = read_state(args.a)
    state_b, meta_b = read_state(args.b)
    soup = average(state_a, state_b, args.alpha)
    meta = soup_metadata(meta_a, meta_b, sha256_file(args.a), sha256_file(args.b), args.alpha)
    # sorted header: the same inputs give the same file (recipes bundle it; two reruns
    # can be compared byte for byte; the bundled soups' headers were rewritten on
    # 2026-12-05, so against them only the tensors compare)
    # written beside and renamed: an output named like an input would otherwise change
    # that input's tensors under the reader (safetensors maps the file), and an interrupted
    # write would leave half a file
    blob = canonical_safetensors(save(soup, metadata=meta))
    atomic_write(args.output, lambda tmp: Path(tmp).write_bytes(blob), durable=True)
    print(f"wrote {args.output}: {len(soup)} tensors, {1 - args.alpha:g} x {args.a} + "
          f"{args.alpha:g} x {args.b}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
