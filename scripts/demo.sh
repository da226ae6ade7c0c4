#!/usr/bin/env bash
# Builds ferry and runs its main job on the built-in example: `ferry demo`.
# FERRY_TORCH=pypi runs the PyTorch 2.x build (build-torch2/) instead of Debian's LibTorch 1.13 (build/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
dir=build; [ "${FERRY_TORCH:-debian}" = pypi ] && dir=build-torch2
"./$dir/ferry" demo "$@"
