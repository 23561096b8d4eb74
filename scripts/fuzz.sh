#!/usr/bin/env bash
# Builds the libFuzzer programs (fuzz/, CMake option LOWMEM_FUZZ: clang,
# AddressSanitizer, UndefinedBehaviorSanitizer) in build-fuzz/ and runs each
# target for SECONDS seconds (default 60) on a copy of its seed corpus
# (fuzz/corpus/<target>/). Crashes, sanitizer reports and over-long error
# messages stop a target with its reproducer in build-fuzz/artifacts/.
#
#   scripts/fuzz.sh                 # every target, 60 s each
#   scripts/fuzz.sh 600 safetensors # one target, 10 minutes
#   RUNS=10000000 scripts/fuzz.sh 0 manifest   # a fixed number of executions
#
# Prints "<target>: <executions> executions, <crashes> crashes" per target;
# exits non-zero when any target failed. docs/reliability.md records runs.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-60}
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  TARGETS=(safetensors manifest adapter_config tokenizer_json gguf recipe jsonl)
fi
BUILD=${BUILD:-build-fuzz}
JOBS=${JOBS:-2}
if [ ! -f "$BUILD/build.ninja" ]; then
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_COMPILER=clang++ -DLOWMEM_FUZZ=ON -DLOWMEM_BUILD_TESTS=OFF \
    -DLOWMEM_BUILD_BENCH=OFF -DLOWMEM_BUILD_TOOLS=OFF \
    -DCMAKE_DISABLE_PRECOMPILE_HEADERS=ON
fi
ninja -C "$BUILD" -j"$JOBS" $(printf 'fuzz_%s ' "${TARGETS[@]}")
mkdir -p "$BUILD/artifacts"
# LibTorch itself is not instrumented; its allocator's leaks at exit are not
# ours.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
status=0
for t in "${TARGETS[@]}"; do
  corpus="$BUILD/corpus/$t"
  mkdir -p "$corpus"
  cp -n fuzz/corpus/"$t"/* "$corpus"/ 2>/dev/null || true
  log="$BUILD/fuzz_$t.log"
  args=(-max_len=65536 -timeout=20 -rss_limit_mb=4096
        -artifact_prefix="$BUILD/artifacts/$t-" -print_final_stats=1)
  if [ -n "${RUNS:-}" ]; then
    args+=(-runs="$RUNS")
  else
    args+=(-max_total_time="$SECONDS_PER_TARGET")
  fi
  if "$BUILD/fuzz_$t" "${args[@]}" "$corpus" >"$log" 2>&1; then
    rc=0
  else
    rc=$?
    status=1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  crashes=$(ls "$BUILD/artifacts" | grep -c "^$t-" || true)
  echo "$t: ${execs} executions, ${crashes} crashes (exit $rc; log $log)"
done
exit $status
