#!/usr/bin/env bash
# Installs what is missing, builds everything and runs the test suite: every
# test but the `slow` ones, then the `e2e` ones (the README's own commands end
# to end: fine-tune -> merge -> export -> llama.cpp, the chat JSONL recipe).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
BUILD=${LOWMEM_BUILD_DIR:-build}
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD" -j "$(nproc)"
cd "$BUILD"
ctest --output-on-failure -j "$(nproc)" -LE slow "$@"
ctest --output-on-failure -j "$(nproc)" -L e2e "$@"
