#!/usr/bin/env bash
# Configures and builds ferry (Release). Extra arguments go to cmake's configure step.
#   FERRY_TORCH=debian (default): Debian's LibTorch 1.13, CPU only, in build/
#   FERRY_TORCH=pypi:             PyTorch 2.x's LibTorch with CUDA (scripts/install_torch2.sh puts it
#                                 in .venv/), in build-torch2/; on a machine without a GPU it runs on the CPU
set -euo pipefail
cd "$(dirname "$0")/.."
case "${FERRY_TORCH:-debian}" in
  debian)
    bash scripts/install_deps.sh
    cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
    cmake --build build -j"$(nproc)" ;;
  pypi)
    FERRY_TORCH=pypi bash scripts/install_deps.sh
    bash scripts/install_torch2.sh
    torch_dir=$(.venv/bin/python -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null)
    cmake -S . -B build-torch2 -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_PREFIX_PATH="$torch_dir;$torch_dir/share/cmake" -DTORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" \
      "$@" >/dev/null
    cmake --build build-torch2 -j"$(nproc)" ;;
  *) echo "FERRY_TORCH must be debian or pypi, got '$FERRY_TORCH'" >&2; exit 2 ;;
esac
