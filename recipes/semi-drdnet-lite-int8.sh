#!/usr/bin/env bash
# Recipe for weights/semi-drdnet-lite.int8.onnx, the int8 graph CPUs run by default.
# Run from the repository root with ../shared/data present, after the fp32 weights are
# bundled (the graph records their hash and is refused for any other weights).
# Calibration: synthetic rain over the first 8 clean-bsds photos; the 8 convolutions
# that hurt most when quantized alone (ranked on the next 4, synthetic rain too) stay
# fp32. rain100l is only scored, never used to choose anything.
set -euo pipefail
DATA=${DATA:-../shared/data}
RUNS=${RUNS:-runs}
mkdir -p "$RUNS/int8"
derain export -m semi-drdnet-lite --int8 "$DATA/clean-bsds" --keep-fp32 8 \
  "$RUNS/int8/semi-drdnet-lite.int8.onnx"
python recipes/bundle_int8.py "$RUNS/int8/semi-drdnet-lite.int8.onnx" --name semi-drdnet-lite
for set in rain100l heavy-small sirr-val; do
  derain eval -m semi-drdnet-lite --data "$DATA/$set" --precision int8 --json \
    > "$RUNS/int8/eval-$set.json"
done
python recipes/bundle_int8.py "$RUNS/int8/semi-drdnet-lite.int8.onnx" --name semi-drdnet-lite \
  --eval "$RUNS"/int8/eval-*.json
