#!/usr/bin/env bash
# Supervised recipe for rdmc-lite (NOT what is shipped: the 40-min CPU run of stage 1
# scored 23.96 dB on 10 rain100l images, below the rainy input; stage 2 was not run).
# The shipped interim weights come from recipes/rdmc-lite.sh (distillation). Kept so a
# GPU run can start from it with more steps and larger patches.
# Run from the repository root with ../shared/data present. Stage 1 is supervised
# training on rain synthesized over clean-bsds (new rain every epoch); rain100l is
# used for validation / checkpoint selection only, never for gradient steps.
# Stage 2 is the semi-supervised step: fine-tuning on the unlabeled real-rain
# photos with the contrastive terms, clean-bsds as unpaired clean positives.
set -euo pipefail
DATA=${DATA:-../shared/data}
RUNS=${RUNS:-runs}
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} derain train --model rdmc-lite \
  --synthetic "$DATA/clean-bsds" --preset mixed \
  --val "$DATA/rain100l" --val-limit 10 --out "$RUNS/rdmc-lite-interim" \
  --steps 100000 --time-budget 2400 --batch 8 --patch 64 --lr 5e-4 --warmup 50 --ema 0.99 \
  --amp bf16 --workers 0 --val-every 250 --ckpt-every 100 --contrast-features none --quiet
# (run before 2026-12-01, when finetune still re-estimated BatchNorm statistics from
# its crops; it now keeps them, so a rerun will differ; --consistency 0.1: the default
# then, 1.0 since 2026-12-03)
derain finetune --weights "$RUNS/rdmc-lite-interim/model.safetensors" \
  --rainy "$DATA/real-rain" --clean "$DATA/clean-bsds" --contrast-features self \
  --consistency 0.1 \
  --val "$DATA/rain100l" --out "$RUNS/rdmc-lite-ft" --steps "${FT_STEPS:-200}" --seed 0 --quiet
derain eval --weights "$RUNS/rdmc-lite-ft/model.safetensors" --data "$DATA/rain100l"
