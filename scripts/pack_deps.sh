#!/bin/sh
# Copies the Debian development files lowmem builds against (yaml-cpp, GoogleTest,
# CLI11, nlohmann-json, zlib, Gloo headers) into a relocatable prefix, for building
# on a machine that has a LibTorch but no apt (e.g. a GPU box whose Python ships a
# CUDA LibTorch; see scripts/cuda_check.sh and docs/DEVELOPERS.md, "CUDA").
#   scripts/pack_deps.sh DEST      then   CMAKE_PREFIX_PATH="<libtorch>;DEST/usr"
set -eu
dest=${1:?usage: scripts/pack_deps.sh DEST}
ma=lib/x86_64-linux-gnu
mkdir -p "$dest/usr/include" "$dest/usr/$ma/cmake" "$dest/usr/share/cmake"
for d in yaml-cpp gtest CLI nlohmann gloo zlib.h zconf.h; do
  cp -a "/usr/include/$d" "$dest/usr/include/"
done
for d in yaml-cpp GTest; do cp -a "/usr/$ma/cmake/$d" "$dest/usr/$ma/cmake/"; done
for d in CLI11 nlohmann_json; do cp -a "/usr/share/cmake/$d" "$dest/usr/share/cmake/"; done
cp -a /usr/$ma/libyaml-cpp.so* /usr/$ma/libyaml-cpp.a /usr/$ma/libgtest.a \
  /usr/$ma/libgtest_main.a /usr/$ma/libz.a "$dest/usr/$ma/"
cp -L /usr/$ma/libz.so "$dest/usr/$ma/libz.so"   # Debian's link is absolute
echo "packed into $dest ($(du -sh "$dest" | cut -f1))"
