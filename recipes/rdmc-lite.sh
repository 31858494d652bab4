#!/usr/bin/env bash
# Recipe for the bundled, interim rdmc-lite weights: a fresh rdmc-lite (output layer
# zeroed, so it starts as the identity) trained with `derain distill --student` to
# imitate the bundled semi-drdnet-lite on crops of synthetic rain over clean-bsds (the
# last 25 photos held out for the before/after scores) and of the unlabeled real-rain
# photos. Why: trained on synthetic pairs on a 2-core CPU (recipes/rdmc-lite-supervised.sh)
# rdmc-lite fitted the synthetic haze and ended below the rainy input on rain100l.
# The evaluation sets are only scored. Run from the repository root with
# ../shared/data present. On the 2-core AVX2 CPU of 2026-11-30 the time limit stopped
# the run as its log says (1 thread, other benchmarks beside it); a faster machine runs
# every step. Replace when GPU-trained weights exist (recipes/full-models-gpu.sh).
# The teacher is semi-drdnet-lite as its stages 1-2 left it (commit before 2026-11-30's
# stage 3, which distilled it back from this model): recipes/semi-drdnet-lite.sh runs
# this script at that point.
set -euo pipefail
DATA=${DATA:-../shared/data}
RUNS=${RUNS:-runs}
OUT="$RUNS/distill-rdmc-lite"
derain distill -m semi-drdnet-lite --student rdmc-lite \
  --clean "$DATA/clean-bsds" --real "$DATA/real-rain" --steps 520 --lr 5e-4 \
  --max-minutes 70 --threads 1 --name rdmc-lite --out "$OUT/round1" --quiet
for set in rain100l heavy-small sirr-val; do
  derain eval --weights "$OUT/round1/model.safetensors" --data "$DATA/$set" --precision fp32 \
    --json > "$OUT/eval-$set.json"
done
python recipes/bundle.py "$OUT/round1" --name rdmc-lite --status interim \
  --recipe recipes/rdmc-lite.sh --eval "$OUT"/eval-*.json \
  --note "Interim: rdmc-lite distilled from semi-drdnet-lite (itself interim, CPU-trained); \
it imitates that model, it was not trained with RDMC's own losses. Replace when GPU-trained \
weights exist."
# No int8 graph: one quantized with KEEP_FP32=0 scored like fp32 (rain100l 28.47 dB
# against 28.45), but since RDMC's inference rewrite (models/deploy.py) and the
# shape-specialised sessions (onnx_backend.ShapedSessions) the fp32 graph is faster:
# 12 MP photo 66.8 s fp32 against 82.9 s int8, 2.36 against 3.96 GB peak RSS
# (python benchmarks/photo_e2e.py -m rdmc-lite -m "rdmc-lite --precision fp32",
# 2026-11-30, with the int8 graph still bundled). To make one anyway:
#   NAME=rdmc-lite KEEP_FP32=0 bash recipes/semi-drdnet-lite-int8.sh
