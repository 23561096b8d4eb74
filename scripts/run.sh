#!/usr/bin/env bash
# Installs what is missing, builds the lowmem CLI and runs the main job:
# `lowmem compare` (every method side by side). Extra arguments go to compare.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
BUILD=${LOWMEM_BUILD_DIR:-build}
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_UNITY_BUILD="${LOWMEM_UNITY_BUILD:-ON}" \
  -DCMAKE_UNITY_BUILD_BATCH_SIZE="${LOWMEM_UNITY_BATCH:-16}"
cmake --build "$BUILD" -j "$(nproc)" --target lowmem_cli
exec "./$BUILD/tools/lowmem" compare "$@"
