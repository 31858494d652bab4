#!/usr/bin/env bash
# semi-drdnet-fast's stage 8 (recipes/semi-drdnet-fast.sh; bundled at commit 220dd1b until
# stage 9 replaced it on 2026-12-04), the start of two later stages: rdmc-lite's stage 9
# distils from it and semi-drdnet-lite's stage 10 grows it.
#
# usage: bash recipes/fast-stage8.sh DEST_FILE
# Writes the file from the git history to DEST_FILE, checks its sha256 and prints DEST_FILE.
# Where there is no such history (an archive, a shallow clone), prints today's bundled
# weights/semi-drdnet-fast.safetensors instead and says so on stderr: the recipe still runs,
# from another start than the shipped weights had.
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: bash recipes/fast-stage8.sh DEST_FILE" >&2
  exit 2
fi
COMMIT=220dd1b
SHA256=d6ce3ab16713e6d1a802d47e7b4f6ada623f297425117378a6bb88f027359073
mkdir -p "$(dirname "$1")"
if git show "$COMMIT:weights/semi-drdnet-fast.safetensors" > "$1" 2>/dev/null \
    && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA256" ]; then
  echo "$1"
else
  rm -f "$1"
  echo "$0: no git history here with semi-drdnet-fast's stage 8 (commit $COMMIT);" \
    "using today's weights/semi-drdnet-fast.safetensors instead" >&2
  echo weights/semi-drdnet-fast.safetensors
fi
