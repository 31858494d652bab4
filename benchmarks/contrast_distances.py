"""How far a Semi-DRDNet's rain layer and output lie from each contrastive sample.

    python benchmarks/contrast_distances.py --checkpoint RUN/last.pt --weights FILE
        [--clean ../shared/data/clean-bsds] [--crops 32] [--patch 64]

Loads the ``self`` feature encoder a training run learned (its checkpoint's ``aux``) and
a model, draws synthetic rain crops as ``derain train`` does (light, medium, heavy and
mixed), and prints the feature distance (the layer-weighted L1 the ratio form uses) from
the rain network's R and from the output to each positive and negative. A negative much
farther than the positive barely shapes the ratio; one about as close is a hard negative.
This is how the rain branch's negatives were found easy (docs/contrastive-terms.md).
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="a run's last.pt or best.pt, "
                    "trained with --contrast-features self")
    ap.add_argument("--weights", required=True, help="a semi-drdnet model file")
    ap.add_argument("--clean", default="../shared/data/clean-bsds")
    ap.add_argument("--crops", type=int, default=32)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    from derain_cli.data import LabeledDataset
    from derain_cli.losses import SelfFeatures, detail_layer
    from derain_cli.weights import model_from_file

    ck = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    if not ck.get("aux", {}).get("features"):
        print(f"{args.checkpoint}: no self feature encoder in it", file=sys.stderr)
        return 2
    feats = SelfFeatures()
    feats.load_state_dict(ck["aux"]["features"])
    feats.eval()
    net = model_from_file(args.weights).eval()
    if not hasattr(net, "forward_parts"):
        print(f"{args.weights}: not a Semi-DRDNet", file=sys.stderr)
        return 2
    ds = LabeledDataset(clean_dirs=[args.clean], patch=args.patch, seed=args.seed,
                        preset="light,medium,heavy,mixed", with_aug=True)
    items = [ds[i % len(ds)] for i in range(args.crops)]
    x = torch.stack([it["rainy"] for it in items])
    b = torch.stack([it["clean"] for it in items])
    aug = torch.stack([it["rainy_aug"] for it in items])

    def dist(a: torch.Tensor, s: torch.Tensor) -> float:
        fa, fs = feats(a), feats(s)
        return sum(w * F.l1_loss(u, v).item()
                   for w, u, v in zip(feats.layer_weights, fa, fs, strict=True))

    with torch.no_grad():
        parts = net.forward_parts(x)
        r_true = x - b
        rows = [
            ("rain network's R", parts.rain, [
                ("positive R* = O - B", r_true), ("negative B", b),
                ("negative roll(B)", torch.roll(b, 1, 0)), ("negative mix (B + R*) / 2",
                                                             (b + r_true) / 2),
                ("negative R* + detail(B) (rain_leak)", r_true + detail_layer(b))]),
            ("output's rain layer O - out (rain_out)", x - parts.out, [
                ("positive R*", r_true), ("negative B", b)]),
            ("output", parts.out, [
                ("positive B", b), ("negative O", x), ("negative O' (other rain)", aug),
                ("negative re-rained output", (parts.out + r_true).clamp(0, 1))]),
        ]
        print(f"{args.crops} crops of {args.patch} px, encoder of {args.checkpoint}")
        for anchor_name, anchor, samples in rows:
            print(anchor_name)
            for name, sample in samples:
                print(f"  {name:<40} {dist(anchor, sample):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
