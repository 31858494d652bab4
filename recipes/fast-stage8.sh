#!/usr/bin/env bash
# semi-drdnet-fast's stage 8 (recipes/semi-drdnet-fast.sh; bundled at commit 220dd1b until
# stage 9 replaced it on 2026-12-04), the start of two later stages: rdmc-lite's stage 9
# distils from it and semi-drdnet-lite's stage 10 grows it.
#
# usage: bash recipes/fast-stage8.sh DEST_FILE
# Prints DEST_FILE holding it (sha256 checked), or today's weights/semi-drdnet-fast.safetensors
# where there is no git history (recipes/weights-at.sh says so on stderr).
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: bash recipes/fast-stage8.sh DEST_FILE" >&2
  exit 2
fi
exec bash "$(dirname "$0")/weights-at.sh" semi-drdnet-fast 220dd1b \
  d6ce3ab16713e6d1a802d47e7b4f6ada623f297425117378a6bb88f027359073 "$1"
