#!/usr/bin/env bash
# Recipe for the bundled semi-drdnet-fast weights: the bundled semi-drdnet-lite distilled
# to 2 detail blocks (derain_cli/distill.py), so that a 12-megapixel photo fits the
# 2-minute budget on a 2-core CPU. The rain network is semi-drdnet-lite's, unchanged.
# Distillation sees synthetic rain over clean-bsds (the last 25 photos held out for the
# before/after scores) and the unlabeled real-rain photos; the evaluation sets are only
# scored. Run from the repository root with ../shared/data present.
set -euo pipefail
DATA=${DATA:-../shared/data}
RUNS=${RUNS:-runs}
OUT="$RUNS/distill/fast"
derain distill -m semi-drdnet-lite --detail-blocks 2 --clean "$DATA/clean-bsds" \
  --real "$DATA/real-rain" --steps 240 --max-minutes 22 --threads 2 \
  --name semi-drdnet-fast --out "$OUT" --quiet
for set in rain100l heavy-small sirr-val; do
  derain eval --weights "$OUT/model.safetensors" --data "$DATA/$set" --precision fp32 --json \
    > "$RUNS/distill/eval-$set.json"
done
python recipes/bundle.py "$OUT" --name semi-drdnet-fast --status interim \
  --recipe recipes/semi-drdnet-fast.sh --eval "$RUNS"/distill/eval-*.json
# The int8 graph belongs to these exact weights.
NAME=semi-drdnet-fast bash recipes/semi-drdnet-lite-int8.sh
