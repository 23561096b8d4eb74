#!/bin/bash
# One point of the CAME-vs-Adafactor study (docs/benchmarks/came_vs_adafactor.md):
# `lowmem compare` on the pretrain suite with one method, rate, budget, batch
# and seed, and the experiment switches of came_ablation.patch as environment
# variables (comma-separated K=V, or - for none); further arguments go to
# `lowmem compare` (the plain hyperparameters need no patch: --set
# came.beta3=0.999, --clip-norm 1, ...). Prints one line ending in the
# validation loss (nats/byte).
#   LOWMEM=path/to/patched/lowmem bench/experiments/came_ablation_run.sh came 3e-3 250 16 0 EXP_CAME_MODE=bc
#   bench/experiments/came_ablation_run.sh came 3e-3 250 16 0 - --set came.beta3=0.999
set -eu
M=$1 LR=$2 ST=$3 B=$4 SEED=$5 E=$6
shift 6
LOWMEM=${LOWMEM:-build/tools/lowmem}
OUTROOT=${OUTROOT:-/tmp/came_ablation}
[ "$E" != "-" ] && for kv in ${E//,/ }; do export "$kv"; done
X="$*"
d=$OUTROOT/$M-$LR-$ST-$B-$SEED-$E${X:+-${X// /_}}
"$LOWMEM" compare --suite pretrain --methods "$M" --lr "$LR" --steps "$ST" --gpt-batch "$B" \
  --seed "$SEED" --threads 1 --gnuplot "" --out "$d" "$@" >/dev/null 2>&1
v=$(awk -F, 'NR==2{print $(NF-1)}' "$d/results.csv")
echo "$M $LR $ST $B $SEED $E${X:+ $X} $v"
