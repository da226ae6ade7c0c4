#!/usr/bin/env bash
# Builds ferry and runs its main job on the built-in example: `ferry demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
./build/ferry demo "$@"
