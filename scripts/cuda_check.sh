#!/bin/bash
# Builds lowmem against the CUDA LibTorch that a GPU machine's python3 torch
# ships and runs the test suite there, the CUDA tests (tests/optim/cuda_test.cpp,
# tests/train/device_test.cpp) first. Logs go to $OUT (default /tmp/cuda_check). DEPS: a prefix made by
# scripts/pack_deps.sh when the machine has no apt (yaml-cpp, GoogleTest, ...).
#   DEPS=$PWD/.devdeps scripts/cuda_check.sh
set -u
OUT=${OUT:-/tmp/cuda_check}
DEPS=${DEPS:-}
PY=${PYTHON:-python3}
JOBS=${JOBS:-$(nproc)}
mkdir -p "$OUT"
{
  nvidia-smi -L
  g++ --version | head -1
  cmake --version | head -1
  $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())'
} 2>&1 | tee "$OUT/env.txt"
TP=$($PY -c 'import torch; print(torch.utils.cmake_prefix_path)')
prefix="$TP"
flags=()
if [ -n "$DEPS" ]; then
  prefix="$TP;$DEPS/usr"
  flags+=("-DCMAKE_CXX_FLAGS=-idirafter $DEPS/usr/include")
fi
cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DLOWMEM_BUILD_BENCH=OFF \
  -DCMAKE_PREFIX_PATH="$prefix" "${flags[@]}" >"$OUT/configure.log" 2>&1 \
  || { tail -40 "$OUT/configure.log"; exit 1; }
grep -E "LOWMEM|Torch|CUDA" "$OUT/configure.log" | head -20
SECONDS=0
timeout "${BUILD_TIMEOUT:-360}" ninja -C build-cuda -k 0 -j"$JOBS" >"$OUT/build.log" 2>&1
rc=$?
echo "build rc=$rc in ${SECONDS}s"
grep -E "error:|FAILED:" "$OUT/build.log" | head -40
[ $rc -eq 0 ] || exit 1
# PyTorch's own LibTorch >= 2.5 (pip wheels) exports the std::filesystem of
# the old libstdc++ it links statically (pytorch/pytorch#133437); loaded ahead
# of the system libstdc++, it takes our std::filesystem calls and they crash
# (every test that makes a temporary folder). Preloading the compiler's
# libstdc++ makes its definitions win. See docs/DEVELOPERS.md.
if [ -z "${LD_PRELOAD:-}" ] && [ "${PRELOAD_LIBSTDCXX:-1}" = 1 ]; then
  export LD_PRELOAD=$(g++ -print-file-name=libstdc++.so.6)
  echo "LD_PRELOAD=$LD_PRELOAD"
fi
build-cuda/tests/optim_tests --gtest_filter='Cuda.*' 2>&1 | tee "$OUT/cuda_tests.log" | tail -30
# lowmem train / compare on the GPU: a short run matching the CPU's, resume
# across devices (tests/train/device_test.cpp), the toy compare suite
# (tests/compare/device_test.cpp).
build-cuda/tests/train_tests --gtest_filter='Device.*' 2>&1 | tee "$OUT/device_tests.log" | tail -30
build-cuda/tests/compare_tests --gtest_filter='Device.*' 2>&1 | tee -a "$OUT/device_tests.log" | tail -30
(cd build-cuda && timeout "${TEST_TIMEOUT:-240}" ctest -LE slow -j"$JOBS" --timeout 200 \
  >"$OUT/ctest.log" 2>&1)
echo "ctest rc=$?"
grep -E "tests passed|tests failed|\*\*\*Failed|\*\*\*Exception|Timeout|Not Run" "$OUT/ctest.log" | head -40
sed -n '/The following tests FAILED/,$p' "$OUT/ctest.log" | head -60
