#!/bin/sh
# Side-by-side training-step benchmark: the C++ GPT (bench/train_step.cpp,
# with torch::optim::AdamW and with lowmem's fused AdamW) and the same model in
# Python (bench/train_step.py, Debian python3-torch; nanoGPT attention and the
# C++ model's baddbmm attention), alternating, one process per measurement.
#
#   ninja -C build train_step && bench/run_train_step.sh
#   SIZES="small" STEPS=5 THREADS=1 ROUNDS=2 bench/run_train_step.sh
#
# Environment: BUILD (build dir, default build), SIZES ("small large"),
# STEPS (timed steps, 6), WARMUP (1), THREADS (0 = all cores), ROUNDS (1).
set -eu
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
SIZES=${SIZES:-"small large"}
STEPS=${STEPS:-6}
WARMUP=${WARMUP:-1}
THREADS=${THREADS:-0}
ROUNDS=${ROUNDS:-1}
PY=/usr/bin/python3   # Debian's python3-torch; the python3 on PATH may lack torch
BIN="$BUILD/bench/train_step"
[ -x "$BIN" ] || { echo "build $BIN first: ninja -C $BUILD train_step" >&2; exit 2; }
echo "# $(date -u) $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg)"
r=1
while [ "$r" -le "$ROUNDS" ]; do
  for size in $SIZES; do
    common="--size $size --steps $STEPS --warmup $WARMUP --threads $THREADS"
    "$BIN" $common --optim torch
    $PY bench/train_step.py $common --attention nanogpt
    "$BIN" $common --optim lowmem
    $PY bench/train_step.py $common --attention baddbmm
  done
  r=$((r + 1))
done
echo "# done $(date -u), load: $(cut -d' ' -f1-3 /proc/loadavg)"
