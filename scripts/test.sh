#!/usr/bin/env bash
# Installs what is missing, builds everything and runs the test suite: every
# test but the `slow` ones, then the `e2e` ones (the README's own commands end
# to end: fine-tune -> merge -> export -> llama.cpp, the chat JSONL recipe),
# then the libFuzzer targets (fuzz/: clang with AddressSanitizer and
# UndefinedBehaviorSanitizer, built in build-fuzz/ by scripts/fuzz.sh) for
# LOWMEM_FUZZ_SECONDS seconds each (default 60; 0 skips them), two at a time.
# Any failing test, fuzzer crash or sanitizer report fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
BUILD=${LOWMEM_BUILD_DIR:-build}
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD" -j "$(nproc)"
(cd "$BUILD" && ctest --output-on-failure -j "$(nproc)" -LE slow "$@")
(cd "$BUILD" && ctest --output-on-failure -j "$(nproc)" -L e2e "$@")
FUZZ_SECONDS=${LOWMEM_FUZZ_SECONDS:-60}
if [ "$FUZZ_SECONDS" != 0 ]; then
  BUILD=${LOWMEM_FUZZ_BUILD_DIR:-build-fuzz} JOBS="$(nproc)" PARALLEL=2 \
    ./scripts/fuzz.sh "$FUZZ_SECONDS"
fi
