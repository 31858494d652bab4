#!/usr/bin/env bash
# Recipe for the bundled semi-drdnet-lite weights (interim, CPU-trained).
# Run from the repository root with ../shared/data present. Stage 1 is supervised
# training on rain synthesized over clean-bsds (new rain every epoch); rain100l is
# used for validation / checkpoint selection only, never for gradient steps.
# Stage 2 is the semi-supervised step: fine-tuning on the unlabeled real-rain
# photos with the contrastive terms, clean-bsds as unpaired clean positives.
# Provenance of the bundled file: stage 1 ran 1799 steps (40 min, 1 thread,
# load from other jobs) before BatchNorm recalibration existed; stage 2 started
# from that export. Rerunning this script today recalibrates BN at the stage-1
# export, so it reproduces the procedure, not the bytes.
set -euo pipefail
DATA=${DATA:-../shared/data}
RUNS=${RUNS:-runs}
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} derain train --model semi-drdnet-lite \
  --synthetic "$DATA/clean-bsds" --preset mixed \
  --val "$DATA/rain100l" --val-limit 10 --out "$RUNS/semi-lite-interim" \
  --steps 100000 --time-budget 2400 --batch 8 --patch 64 --lr 5e-4 --warmup 50 --ema 0.99 \
  --amp bf16 --workers 0 --val-every 250 --ckpt-every 100 --contrast-features none --quiet
derain finetune --weights "$RUNS/semi-lite-interim/model.safetensors" \
  --rainy "$DATA/real-rain" --clean "$DATA/clean-bsds" --contrast-features self \
  --val "$DATA/rain100l" --out "$RUNS/semi-lite-ft" --steps "${FT_STEPS:-200}" --seed 0 --quiet
for set in rain100l heavy-small sirr-val; do
  derain eval --weights "$RUNS/semi-lite-ft/model.safetensors" --data "$DATA/$set" --precision fp32 --json > "$RUNS/eval-$set.json"
done
python recipes/bundle.py "$RUNS/semi-lite-ft" --name semi-drdnet-lite --status interim --eval "$RUNS"/eval-*.json
# The int8 graph for CPUs (derain_cli.quantize) belongs to these exact weights: remake it.
bash recipes/semi-drdnet-lite-int8.sh
