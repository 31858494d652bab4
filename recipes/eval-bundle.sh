#!/usr/bin/env bash
# Score a run's weights on the three evaluation sets (fp32, Y PSNR / SSIM) and bundle them
# with those scores, the last step of every stage since 2026-12-01: additive-stage.sh,
# average-stage.sh and the model recipes' distillation stages call it. Not a recipe by
# itself; the evaluation sets are only scored here, never trained on.
#   bash recipes/eval-bundle.sh NAME RUN CONTINUED_FROM NOTE
# NAME: registry name (the bundle it replaces); RUN: the folder holding model.safetensors
# and manifest_entry.json, where eval-*.json are written; CONTINUED_FROM and NOTE go into
# the manifest (recipes/bundle.py).
set -euo pipefail
if [ $# -ne 4 ]; then
  echo "usage: $0 NAME RUN CONTINUED_FROM NOTE" >&2
  exit 2
fi
NAME=$1 RUN=$2 CONTINUED_FROM=$3 NOTE=$4
DATA=${DATA:-../shared/data}
for set in rain100l heavy-small sirr-val; do
  derain eval --weights "$RUN/model.safetensors" --data "$DATA/$set" --precision fp32 \
    --json > "$RUN/eval-$set.json"
done
# a soup (recipes/soup_entry.py) has no training validation: its own score on the pairs
# the stages validate on (the first 10 of rain100l) becomes its metrics.val
val=()
if grep -q '"soup"' "$RUN/manifest_entry.json"; then
  derain eval --weights "$RUN/model.safetensors" --data "$DATA/rain100l" --limit 10 \
    --precision fp32 --json > "$RUN/val-rain100l.json"
  val=(--val-eval "$RUN/val-rain100l.json")
fi
python recipes/bundle.py "$RUN" --name "$NAME" --status interim \
  --recipe "recipes/$NAME.sh" --eval "$RUN"/eval-*.json ${val[@]+"${val[@]}"} \
  --continued-from "$CONTINUED_FROM" --note "$NOTE"
