#!/usr/bin/env bash
# ferry vs the real Hugging Face transformers + accelerate on the same checkpoint and device maps:
# load time, ms per decode token, peak RSS (and peak GPU memory on a GPU), and a check that the
# greedy tokens agree (see bench/vs_accelerate.py). Installs transformers and accelerate from PyPI
# into .venv next to its torch (never changing torch's version), generates a ~2.5 GB float32
# Llama-shaped checkpoint if MODEL_DIR has none, then runs the comparison.
#   scripts/bench_vs_accelerate.sh [MODEL_DIR] [bench/vs_accelerate.py options, e.g. --rounds 5 --out r.json]
# FERRY_BUILD picks the ferry build folder (default build-torch2, ferry built against .venv's LibTorch).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=/tmp/ferry-vs-accelerate-llama
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then dir=$1; shift; fi
build=${FERRY_BUILD:-build-torch2}

if [ -f scripts/install_torch2.sh ]; then
  bash scripts/install_torch2.sh
elif ! [ -x .venv/bin/python ]; then
  echo "bench_vs_accelerate: no .venv and no scripts/install_torch2.sh to create it; make .venv with torch first" >&2
  exit 1
fi
py=.venv/bin/python
if ! "$py" -c 'import transformers, accelerate, safetensors, numpy' 2>/dev/null; then
  torch_version=$("$py" -c 'import torch; print(torch.__version__.split("+")[0])')
  echo "bench_vs_accelerate: installing transformers and accelerate into .venv (torch stays $torch_version)" >&2
  "$py" -m pip install -q --disable-pip-version-check transformers accelerate safetensors numpy "torch==$torch_version"
fi

for tool in ferry make_big_llama; do
  [ -x "$build/$tool" ] || { echo "bench_vs_accelerate: $build/$tool not found; build ferry first (FERRY_BUILD=$build)" >&2; exit 1; }
done
[ -f "$dir/config.json" ] || "./$build/make_big_llama" "$dir" --layers 10 --hidden 2048 --dtype float32
exec "$py" bench/vs_accelerate.py "$dir" --ferry "$build/ferry" "$@"
