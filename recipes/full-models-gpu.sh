#!/usr/bin/env bash
# Recipe for the paper-size models on one GPU (NOT yet run by this project: no
# GPU was available when the interim weights were made; see README "Models").
# Same two stages as the lite recipes, with bigger patches, batches and steps.
# For a machine of your own with derain installed and ../shared/data beside the checkout
# (hours: 60000 steps). Not for the project's short device leases: those run
# recipes/gpu-session.sh, which carries its data and trains in time-boxed chunks.
set -euo pipefail
DATA=${DATA:-../shared/data}
RUNS=${RUNS:-runs}
MODEL=${MODEL:-semi-drdnet}   # or rdmc
derain train --model "$MODEL" --synthetic "$DATA/clean-bsds" --preset mixed \
  --val "$DATA/rain100l" --val-limit 50 --out "$RUNS/$MODEL" \
  --steps 60000 --batch 16 --patch 128 --lr 3e-4 --warmup 1000 --ema 0.999 \
  --amp auto --workers 8 --val-every 2000 --ckpt-every 1000 --contrast-features auto
derain finetune --weights "$RUNS/$MODEL/model.safetensors" --rainy "$DATA/real-rain" \
  --clean "$DATA/clean-bsds" --val "$DATA/rain100l" --out "$RUNS/$MODEL-ft" --steps 1000
for set in rain100l heavy-small sirr-val; do
  derain eval --weights "$RUNS/$MODEL-ft/model.safetensors" --data "$DATA/$set"
done
