#!/usr/bin/env bash
# Builds ferry and runs every test (GoogleTest through CTest). FERRY_TORCH=pypi tests the
# PyTorch 2.x build (build-torch2/) instead of Debian's LibTorch 1.13 (build/); see scripts/build.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
dir=build; [ "${FERRY_TORCH:-debian}" = pypi ] && dir=build-torch2
cd "$dir" && ctest --output-on-failure -j"$(nproc)"
