#!/usr/bin/env bash
# Generates a ~2.5 GB Llama-shaped checkpoint (10 layers, hidden 2048, float32) and runs
# bench_offload on it: resident vs disk-offloaded decode, streamer on/off, warm and cold cache.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-/tmp/ferry-bench-llama}
bash scripts/build.sh
[ -f "$dir/config.json" ] || ./build/make_big_llama "$dir" --layers 10 --hidden 2048 --dtype float32
./build/bench_offload "$dir" --steps 8
