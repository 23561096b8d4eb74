#!/usr/bin/env bash
# Installs what is missing, builds everything and runs the test suite: every
# test but the `slow` ones, then the `e2e` ones (the README's own commands end
# to end: fine-tune -> merge -> export -> llama.cpp, the chat JSONL recipe),
# then the libFuzzer targets (fuzz/: clang with AddressSanitizer and
# UndefinedBehaviorSanitizer, built in build-fuzz/ by scripts/fuzz.sh), two
# at a time, each for LOWMEM_FUZZ_RUNS executions (default 100000) from the
# fixed libFuzzer seed LOWMEM_FUZZ_SEED (default 1): the same work on any
# machine and the same mutations at first (runs still diverge a little with
# coverage feedback). Open-ended fuzzing (random seeds, hours) is
# scripts/fuzz.sh's job (docs/reliability.md); its finds become replayed
# inputs. LOWMEM_FUZZ_SECONDS=N instead fuzzes
# N seconds per target from a random seed; LOWMEM_FUZZ_SECONDS=0 skips fuzzing.
# Any failing test, fuzzer crash or sanitizer report fails the script.
# The build is a unity build (CMake batches of 16 sources, LOWMEM_UNITY_BATCH,
# so LibTorch's headers are parsed once per batch): a cold build of
# everything took 9 min on 2 cores instead of about 22 (LOWMEM_UNITY_BUILD=OFF:
# one compile per source, better for editing one file at a time;
# docs/DEVELOPERS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
BUILD=${LOWMEM_BUILD_DIR:-build}
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_UNITY_BUILD="${LOWMEM_UNITY_BUILD:-ON}" \
  -DCMAKE_UNITY_BUILD_BATCH_SIZE="${LOWMEM_UNITY_BATCH:-16}"
cmake --build "$BUILD" -j "$(nproc)"
(cd "$BUILD" && ctest --output-on-failure -j "$(nproc)" -LE slow "$@")
(cd "$BUILD" && ctest --output-on-failure -j "$(nproc)" -L e2e "$@")
FUZZ_SECONDS=${LOWMEM_FUZZ_SECONDS:-}
if [ -z "$FUZZ_SECONDS" ]; then
  BUILD=${LOWMEM_FUZZ_BUILD_DIR:-build-fuzz} JOBS="$(nproc)" PARALLEL=2 \
    SEED=${LOWMEM_FUZZ_SEED:-1} RUNS=${LOWMEM_FUZZ_RUNS:-100000} \
    ./scripts/fuzz.sh 0
elif [ "$FUZZ_SECONDS" != 0 ]; then
  BUILD=${LOWMEM_FUZZ_BUILD_DIR:-build-fuzz} JOBS="$(nproc)" PARALLEL=2 \
    ./scripts/fuzz.sh "$FUZZ_SECONDS"
fi
