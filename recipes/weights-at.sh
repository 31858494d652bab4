#!/usr/bin/env bash
# A bundled weights file as it was at an earlier commit, for recipe stages that start from
# (or distil from) weights a later stage replaced: rdmc-lite's stages 9 and 10 distil from
# them, semi-drdnet-lite's stage 10 grows one (recipes/fast-stage8.sh names that one).
#
# usage: bash recipes/weights-at.sh NAME COMMIT SHA256 DEST_FILE
# Writes weights/NAME.safetensors from COMMIT to DEST_FILE, checks its sha256 and prints
# DEST_FILE. Where there is no such history (an archive, a shallow clone) or the file
# differs, prints today's bundled weights/NAME.safetensors instead and says so on stderr:
# the recipe still runs, from another start than the shipped weights had.
set -euo pipefail
if [ $# -ne 4 ]; then
  echo "usage: bash recipes/weights-at.sh NAME COMMIT SHA256 DEST_FILE" >&2
  exit 2
fi
NAME=$1 COMMIT=$2 SHA256=$3 DEST=$4
mkdir -p "$(dirname "$DEST")"
if git show "$COMMIT:weights/$NAME.safetensors" > "$DEST" 2>/dev/null \
    && [ "$(sha256sum "$DEST" | cut -d' ' -f1)" = "$SHA256" ]; then
  echo "$DEST"
else
  rm -f "$DEST"
  echo "$0: no git history here with $NAME as bundled at commit $COMMIT;" \
    "using today's weights/$NAME.safetensors instead" >&2
  echo "weights/$NAME.safetensors"
fi
