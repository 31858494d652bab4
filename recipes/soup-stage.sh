#!/usr/bin/env bash
# One "soup" stage, as semi-drdnet-lite's stages 11 and 12, semi-drdnet-fast's stage 10
# and semi-drdnet-tiny's rounds 8 and 9 ran: two 10-minute runs from START (light to heavy
# added rain; the same draw with veiled rain in one of nine; seed 5 unless SEED is set,
# batch 8 of 64 px, lr 1e-4 decaying over the budget, EMA 0.99), then START and the two
# averaged with equal shares (benchmarks/average_weights.py), scored and bundled
# (eval-bundle.sh). Not a recipe by itself; the model recipes call it.
#   bash recipes/soup-stage.sh NAME START RUN CONTRAST TRAINING_DATA CONTINUED_FROM NOTE
# NAME: registry name (the bundle it replaces); START: the weights both runs start from;
# RUN: the runs' folder prefix (RUN-added, RUN-veiled, RUN-soup); CONTRAST: the runs' extra
# `derain train` flags, contrastive terms and loss weights (e.g. "--contrast-features self
# --contrast-terms bg --psnr-weight 0.005");
# TRAINING_DATA: the soup's manifest training_data; CONTINUED_FROM and NOTE: as
# eval-bundle.sh. The time budget makes the step counts machine-dependent.
set -euo pipefail
if [ $# -ne 7 ]; then
  echo "usage: $0 NAME START RUN CONTRAST TRAINING_DATA CONTINUED_FROM NOTE" >&2
  exit 2
fi
NAME=$1 START=$2 RUN=$3 CONTRAST=$4 TRAINING_DATA=$5 CONTINUED_FROM=$6 NOTE=$7
DATA=${DATA:-../shared/data}
read -r -a contrast <<< "$CONTRAST"
for cfg in "added light,medium,heavy,mixed" \
           "veiled light,medium,heavy,mixed,light,medium,heavy,mixed,veiled"; do
  read -r kind preset <<< "$cfg"
  derain train -m "$NAME" --weights "$START" --synthetic "$DATA/clean-bsds" \
    --preset "$preset" "${contrast[@]}" --val "$DATA/rain100l" --val-limit 10 \
    --out "$RUN-$kind" --steps 100000 --time-budget 600 --batch 8 --patch 64 --lr 1e-4 \
    --warmup 20 --ema 0.99 --val-every 250 --ckpt-every 250 --seed "${SEED:-5}" --threads 2 \
    --quiet
done
mkdir -p "$RUN-soup"
python benchmarks/average_weights.py "$START" "$RUN-added/model.safetensors" \
  -o "$RUN-half.safetensors"
python benchmarks/average_weights.py "$RUN-half.safetensors" "$RUN-veiled/model.safetensors" \
  --alpha 0.3333333 -o "$RUN-soup/model.safetensors"
python recipes/soup_entry.py "$RUN-soup" "$RUN-added" "$RUN-veiled" \
  --training-data "$TRAINING_DATA"
bash recipes/eval-bundle.sh "$NAME" "$RUN-soup" "$CONTINUED_FROM" "$NOTE"
