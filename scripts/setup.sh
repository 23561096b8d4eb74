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
  dataset-fashion-mnist fortunes fortunes-min
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PKGS[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
