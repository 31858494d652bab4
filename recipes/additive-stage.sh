#!/usr/bin/env bash
# One stage of supervised training on the synthesizer's additive rain (the evaluation sets'
# kind: light, medium and mixed drawn evenly per image unless PRESET says otherwise) from
# existing weights, then the three evaluations and the bundling, as the bundled models'
# additive-rain stages ran from 2026-12-01 on. The model recipes call it; it is not a
# recipe by itself.
#   bash recipes/additive-stage.sh NAME START OUT SECONDS CONTINUED_FROM NOTE
# NAME: registry name; START: the weights to continue; OUT: the run folder (training
# state, log, eval-*.json); SECONDS: the time budget (2-core CPU, bf16 autocast, 2 threads);
# CONTINUED_FROM and NOTE go into the manifest (recipes/bundle.py). PRESET (train's
# --preset; light,medium,mixed), LR (1e-4), SEED (5), VAL_EVERY (250) and BATCHNORM (train's
# --batchnorm; unset: its default, keep) may be set: the stages run before train had
# --batchnorm refreshed the statistics (BATCHNORM=refresh). STEPS (100000) is train's
# --steps: the cosine learning-rate decay follows the steps or the elapsed share of the
# time budget, whichever is further on. With the default STEPS the budget sets the decay;
# a STEPS the budget reaches ends the decay at the last step (an annealed stage). Before
# 2026-12-03 the budget alone set it, so a stage whose steps ran out early (a faster CPU
# than planned) stopped with its rate halfway down.
# TRAIN_ARGS is appended to the train command (words split on spaces; a later option wins),
# e.g. "--batch 3 --patch 256 --l1-weight 1" for rdmc-lite (README, "rdmc-lite on added
# rain": measured, not shipped). rain100l (first 10 pairs) is only watched: the final
# weights are the run's last step, whatever the validation said. The int8 graph, where a
# model has one, is the caller's to remake (it belongs to these exact weights).
set -euo pipefail
if [ $# -ne 6 ]; then
  echo "usage: $0 NAME START OUT SECONDS CONTINUED_FROM NOTE" >&2
  exit 2
fi
NAME=$1 START=$2 OUT=$3 SECONDS_BUDGET=$4 CONTINUED_FROM=$5 NOTE=$6
DATA=${DATA:-../shared/data}
VAL_EVERY=${VAL_EVERY:-250}
derain train -m "$NAME" --weights "$START" \
  --synthetic "$DATA/clean-bsds" --preset "${PRESET:-light,medium,mixed}" --contrast-features none \
  --val "$DATA/rain100l" --val-limit 10 --out "$OUT" --steps "${STEPS:-100000}" \
  --time-budget "$SECONDS_BUDGET" --batch 8 --patch 64 --lr "${LR:-1e-4}" --warmup 20 \
  --ema 0.99 --val-every "$VAL_EVERY" --ckpt-every "$VAL_EVERY" --seed "${SEED:-5}" \
  --threads 2 --name "$NAME" ${BATCHNORM:+--batchnorm "$BATCHNORM"} --quiet ${TRAIN_ARGS:-}
bash recipes/eval-bundle.sh "$NAME" "$OUT" "$CONTINUED_FROM" "$NOTE"
