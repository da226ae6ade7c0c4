#!/usr/bin/env bash
# The streamer's GPU checks, as one run on a machine with an NVIDIA GPU and PyTorch 2.x (CUDA):
#   1. builds ferry against the PyTorch wheel's LibTorch (dependencies from .gpu-deps, which
#      scripts/gpu_deps.sh fills on a Debian machine; carry it),
#   2. runs the CUDA tests and the streamer tests, then the CUDA tests under compute-sanitizer,
#   3. generates a 4.1 GB bfloat16 Llama (10 layers, hidden 4096) and runs bench_cuda_offload on it
#      (CPU-RAM and disk offload, streamer vs synchronous, beside pinned/pageable H2D bandwidth).
# Logs go to $OUT (or /tmp/ferry-gpu). With the device tool:
#   bash scripts/gpu_deps.sh; run(command="bash scripts/gpu_check.sh", carry=[".gpu-deps"], timeout_s=600)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/ferry-gpu}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
start=$(date +%s)
cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DFERRY_BUILD_FUZZERS=OFF \
  -DCMAKE_PREFIX_PATH="$torch_prefix;$PWD/.gpu-deps/usr" -DTORCH_CUDA_ARCH_LIST=9.0 >"$out/configure.log" 2>&1 \
  && cmake --build build-cuda -j"$(nproc)" --target ferry_tests bench_cuda_offload make_big_llama >"$out/build.log" 2>&1
status=$?
echo "build: exit $status, $(( $(date +%s) - start )) s" | tee "$out/summary.txt"
if [ $status -ne 0 ]; then tail -40 "$out/configure.log" "$out/build.log"; exit $status; fi
./build-cuda/tests/ferry_tests --gtest_filter='DispatchCuda*:Streamer*:Dispatch*' 2>&1 | tee "$out/tests.log" | tail -5
echo "tests: exit ${PIPESTATUS[0]}" | tee -a "$out/summary.txt"
compute-sanitizer --tool memcheck --error-exitcode 3 ./build-cuda/tests/ferry_tests --gtest_filter='DispatchCuda*' \
  >"$out/memcheck.log" 2>&1
echo "compute-sanitizer memcheck: exit $?" | tee -a "$out/summary.txt"
tail -3 "$out/memcheck.log"
./build-cuda/make_big_llama /tmp/ferry-gpu-llama --layers 10 --hidden 4096 --dtype bfloat16 >/dev/null
./build-cuda/bench_cuda_offload /tmp/ferry-gpu-llama --steps 8 --rounds 3 2>&1 | tee "$out/bench.txt"
