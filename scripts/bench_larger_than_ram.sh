#!/usr/bin/env bash
# A model larger than the memory it may use (issue 14): every decoder layer on disk, inside a cgroup
# memory limit of 60% of the model; ferry's decode against the disk's own read bandwidth and against
# transformers + accelerate in the same limit, plus the warm, unlimited case (see
# bench/larger_than_ram.py). Needs root for the cgroup. Installs transformers and accelerate into .venv
# (scripts/bench_vs_accelerate.sh does the same), writes a 2.7 GB float32 Llama-shaped checkpoint
# (12 layers, hidden 2048) if MODEL_DIR has none.
#   scripts/bench_larger_than_ram.sh [MODEL_DIR] [bench/larger_than_ram.py options, e.g. --rounds 5]
# FERRY_BUILD picks the ferry build folder (default build: the ferry of the README's build; the
# streaming path does not depend on the LibTorch version).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=/tmp/ferry-llama-12
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then dir=$1; shift; fi
build=${FERRY_BUILD:-build}
[ -x "$build/ferry" ] && [ -x "$build/bench_disk_read" ] || bash scripts/build.sh
bash scripts/install_torch2.sh
py=.venv/bin/python
if ! "$py" -c 'import transformers, accelerate, safetensors' 2>/dev/null; then
  torch_version=$("$py" -c 'import torch; print(torch.__version__.split("+")[0])')
  "$py" -m pip install -q --disable-pip-version-check transformers accelerate safetensors numpy "torch==$torch_version"
fi
[ -f "$dir/config.json" ] || "./$build/make_big_llama" "$dir" --layers 12 --hidden 2048 --dtype float32
exec "$py" bench/larger_than_ram.py "$dir" --ferry "$build/ferry" --bench-disk "$build/bench_disk_read" "$@"
