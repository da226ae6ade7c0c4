#!/usr/bin/env bash
# Fills .gpu-deps/ with the build dependencies a GPU machine without apt lacks (nlohmann_json,
# CLI11, GoogleTest), copied from this Debian machine's packages in their /usr layout, so that
# scripts/gpu_check.sh can build there with CMAKE_PREFIX_PATH=.gpu-deps/usr. Carry .gpu-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
d=.gpu-deps/usr
rm -rf .gpu-deps
mkdir -p "$d/include" "$d/share/cmake" "$d/lib/x86_64-linux-gnu/cmake"
cp -r /usr/include/nlohmann /usr/include/CLI /usr/include/gtest /usr/include/gmock "$d/include/"
cp -r /usr/share/cmake/nlohmann_json /usr/share/cmake/CLI11 "$d/share/cmake/"
cp -r /usr/lib/x86_64-linux-gnu/cmake/GTest "$d/lib/x86_64-linux-gnu/cmake/"
cp /usr/lib/x86_64-linux-gnu/libgtest*.a /usr/lib/x86_64-linux-gnu/libgmock*.a "$d/lib/x86_64-linux-gnu/"
du -sh .gpu-deps
