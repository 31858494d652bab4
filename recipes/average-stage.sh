#!/usr/bin/env bash
# Average a decaying cycle with the weights it started from (half and half), score the
# average on the three evaluation sets and bundle it, as semi-drdnet-fast's stage 8 and
# semi-drdnet-lite's stage 9 shipped. The model recipes call it after
# recipes/additive-stage.sh has run the cycle; it is not a recipe by itself.
#   bash recipes/average-stage.sh NAME START CYCLE OUT CONTINUED_FROM NOTE TRAINING_DATA
# NAME: registry name; START: a copy of the weights the cycle started from (the bundle,
# copied before additive-stage.sh replaced it); CYCLE: the cycle's run folder; OUT: the
# average's folder (model, manifest entry, eval-*.json); CONTINUED_FROM, NOTE: as
# additive-stage.sh; TRAINING_DATA: the manifest's training_data, in words.
set -euo pipefail
if [ $# -ne 7 ]; then
  echo "usage: $0 NAME START CYCLE OUT CONTINUED_FROM NOTE TRAINING_DATA" >&2
  exit 2
fi
NAME=$1 START=$2 CYCLE=$3 OUT=$4 CONTINUED_FROM=$5 NOTE=$6 TRAINING_DATA=$7
mkdir -p "$OUT"
python benchmarks/average_weights.py "$START" "$CYCLE/model.safetensors" \
  -o "$OUT/model.safetensors"
python recipes/soup_entry.py "$OUT" "$CYCLE" --training-data "$TRAINING_DATA"
bash recipes/eval-bundle.sh "$NAME" "$OUT" "$CONTINUED_FROM" "$NOTE"
