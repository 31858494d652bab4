#!/usr/bin/env bash
# Recipe for weights/$NAME.int8.onnx (NAME: semi-drdnet-lite unless set; semi-drdnet-fast,
# semi-drdnet-tiny too; rdmc-lite only by hand, see recipes/rdmc-lite.sh), the int8 graph CPUs
# run by default.
# Run from the repository root with ../shared/data present, after the fp32 weights are
# bundled (the graph records their hash and is refused for any other weights).
# Calibration: synthetic rain over the first 8 clean-bsds photos; the KEEP_FP32 (8 unless
# set; semi-drdnet-tiny, with 18 convolutions in all, used 4 until its round 7) convolutions
# that hurt most when quantized alone (ranked on the next 4, synthetic rain too) stay
# fp32. rain100l is only scored, never used to choose anything.
set -euo pipefail
DATA=${DATA:-../shared/data}
RUNS=${RUNS:-runs}
NAME=${NAME:-semi-drdnet-lite}
KEEP_FP32=${KEEP_FP32:-8}
OUT="$RUNS/int8-$NAME"
mkdir -p "$OUT"
derain export -m "$NAME" --int8 "$DATA/clean-bsds" --keep-fp32 "$KEEP_FP32" --overwrite \
  "$OUT/$NAME.int8.onnx"
python recipes/bundle_int8.py "$OUT/$NAME.int8.onnx" --name "$NAME"
for set in rain100l heavy-small sirr-val; do
  derain eval -m "$NAME" --data "$DATA/$set" --precision int8 --json > "$OUT/eval-$set.json"
done
python recipes/bundle_int8.py "$OUT/$NAME.int8.onnx" --name "$NAME" --eval "$OUT"/eval-*.json
