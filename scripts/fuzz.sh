#!/usr/bin/env bash
# Builds the libFuzzer programs (fuzz/, CMake option LOWMEM_FUZZ: clang,
# AddressSanitizer, UndefinedBehaviorSanitizer) in build-fuzz/ and runs each
# target for SECONDS seconds (default 60) on a copy of its seed corpus
# (fuzz/corpus/<target>/; the targets are the folders there). Crashes,
# sanitizer reports, uncaught exceptions, hangs (> TIMEOUT s per input,
# default 20, wall-clock time: a starved process needs more), more than
# RSS_LIMIT_MB MiB of memory (default 4096) and over-long error messages
# stop a target with its reproducer in build-fuzz/artifacts/.
#
#   scripts/fuzz.sh                 # every target, 60 s each
#   scripts/fuzz.sh 600 safetensors # one target, 10 minutes
#   RUNS=10000000 scripts/fuzz.sh 0 manifest   # a fixed number of executions
#   PARALLEL=2 scripts/fuzz.sh      # two targets at a time
#   MAX_LEN=8192 scripts/fuzz.sh    # inputs of at most 8 KiB (default 64 KiB)
#   SEED=1 RUNS=100000 PARALLEL=2 scripts/fuzz.sh 0   # scripts/test.sh (CI):
#                                   # a fixed seed and count (the same work on
#                                   # any machine), from the seeds alone
#
# Prints "<target>: <executions> executions, <crashes> crashes ..." per
# target; exits non-zero when any target failed or found a crash.
# docs/reliability.md records runs.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-60}
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  for d in fuzz/corpus/*/; do TARGETS+=("$(basename "$d")"); done
fi
BUILD=${BUILD:-build-fuzz}
JOBS=${JOBS:-2}
PARALLEL=${PARALLEL:-1}
mkdir -p "$BUILD"
# -O1: the usual level for sanitized fuzzing (compiles faster than -O2).
# Unity build: each layer's sources compile in batches of 8, so LibTorch's
# headers are parsed once per batch, not once per source. Only the layers the
# targets link are built (not gen/, compare/, the CLI, tests, benchmarks).
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -DCMAKE_CXX_COMPILER=clang++ \
  -DLOWMEM_FUZZ=ON -DLOWMEM_BUILD_TESTS=OFF -DLOWMEM_BUILD_BENCH=OFF \
  -DLOWMEM_BUILD_TOOLS=OFF -DCMAKE_DISABLE_PRECOMPILE_HEADERS=ON \
  -DCMAKE_UNITY_BUILD=ON >"$BUILD/configure.log" ||
  { cat "$BUILD/configure.log"; exit 1; }
ninja -C "$BUILD" -j"$JOBS" $(printf 'fuzz_%s ' "${TARGETS[@]}")
mkdir -p "$BUILD/artifacts"
# LibTorch itself is not instrumented; its allocator's leaks at exit are not
# ours. malloc_context_size=0: ASan records no stack per allocation (about
# half of each execution's time; detection is unchanged, a report just lacks
# the allocation's stack: replay the reproducer with
# ASAN_OPTIONS=detect_leaks=0 to get it).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:allocator_may_return_null=1:malloc_context_size=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# Runs target $1; its exit status is libFuzzer's.
run_target() {
  local t=$1
  local corpus="$BUILD/corpus/$t"
  if [ -n "${SEED:-}" ]; then
    rm -rf "$corpus"  # a fixed seed starts from the seeds alone: reproducible
  fi
  mkdir -p "$corpus"
  cp -n fuzz/corpus/"$t"/* "$corpus"/ 2>/dev/null || true
  local args=(-max_len="${MAX_LEN:-65536}" -timeout="${TIMEOUT:-20}"
              -rss_limit_mb="${RSS_LIMIT_MB:-4096}"
              -artifact_prefix="$BUILD/artifacts/$t-" -print_final_stats=1)
  if [ -n "${SEED:-}" ]; then
    args+=(-seed="$SEED")
  fi
  if [ -n "${RUNS:-}" ]; then
    args+=(-runs="$RUNS")
  else
    args+=(-max_total_time="$SECONDS_PER_TARGET")
  fi
  "$BUILD/fuzz/fuzz_$t" "${args[@]}" "$corpus" >"$BUILD/fuzz_$t.log" 2>&1
}

# Target $1's reproducers: crashes, leaks, timeouts, out-of-memory inputs.
# libFuzzer also writes slow-unit-* files (an input over 10 s, wall clock,
# e.g. while other jobs starve the campaign); those are reported, not failed.
findings() {
  ls "$BUILD/artifacts" | grep "^$1-" | grep -v -- "-slow-unit-" || true
}

# One line per target from its log and exit status ($BUILD/fuzz_$t.rc).
report() {
  local t=$1 rc log="$BUILD/fuzz_$1.log" execs crashes secs
  rc=$(cat "$BUILD/fuzz_$t.rc")
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" |
    grep -o '[0-9]*$' || echo "?")
  secs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" |
    grep -o 'in [0-9]*' | grep -o '[0-9]*' || echo "?")
  crashes=$(findings "$t" | grep -c . || true)
  echo "$t: ${execs} executions in ${secs} s, ${crashes} crashes (exit $rc; log $log)"
  if [ "$rc" != 0 ]; then
    echo "--- $t failed; the end of $log:"
    tail -n 40 "$log"
  fi
}

# Earlier reproducers of these targets move to artifacts/old/: a count is of
# this run.
mkdir -p "$BUILD/artifacts/old"
for t in "${TARGETS[@]}"; do
  for f in "$BUILD/artifacts/$t-"*; do
    if [ -f "$f" ]; then mv -f "$f" "$BUILD/artifacts/old/"; fi
  done
  rm -f "$BUILD/fuzz_$t.rc"
done
running=0
for t in "${TARGETS[@]}"; do
  if [ "$running" -ge "$PARALLEL" ]; then
    wait -n || true
    running=$((running - 1))
  fi
  ( rc=0; run_target "$t" || rc=$?; echo "$rc" >"$BUILD/fuzz_$t.rc" ) &
  running=$((running + 1))
done
wait
status=0
for t in "${TARGETS[@]}"; do
  report "$t"
  if [ "$(cat "$BUILD/fuzz_$t.rc")" != 0 ] ||
     [ -n "$(findings "$t")" ]; then
    status=1
  fi
done
exit $status
