#!/usr/bin/env bash
# The GPU checks in one run, on a machine with an NVIDIA GPU, PyTorch 2.x (CUDA) and the CUDA
# toolkit, but no Debian -dev packages and no network (prepare .gpu-deps with scripts/gpu_deps.sh here
# and carry it). Within 10 minutes on a fresh machine:
#   1. builds ferry against that PyTorch's LibTorch (build-cuda/);
#   2. runs the CUDA tests and the streamer, dispatch, model and LibTorch-2.x tests on the GPU machine;
#   3. runs the CUDA tests under compute-sanitizer --tool memcheck, then --tool racecheck;
#   4. bench_cuda_offload on a 4.1 GB bfloat16 Llama (10 layers, hidden 4096): pinned and pageable
#      host-to-device bandwidth, decode with the decoder layers in CPU RAM and on disk (streamer vs
#      synchronous, warm), disk cold cache vs the disk's sequential read, the resident decode;
#   5. the real Accelerate beside `ferry run` on the same checkpoint and device maps (bench/vs_accelerate.py:
#      resident on the GPU, layers in CPU RAM, layers on disk), transformers and accelerate installed
#      from .gpu-deps/wheels into a venv that sees the machine's torch;
#   6. mixtures of experts with their experts in CPU RAM: bench_expert_cost (the cost model's
#      predictions against the CPU's and the copy's measured times), then bench/make_big_moe.py's
#      2.7 GB Mixtral beside Accelerate (rows gpu, experts-cpu, experts-cpu-compute, experts-cpu-copy).
# Steps 1-5 take about 10 minutes on a fresh machine; FERRY_GPU_MOE=1 runs 1, 2 and 6 instead (also
# about 10), as the device tool allows one 10-minute command.
# Every step's log goes to $OUT (or /tmp/ferry-gpu); summary.txt has one line per step. With the device tool:
#   bash scripts/gpu_deps.sh; run(command="bash scripts/gpu_check.sh", carry=[".gpu-deps"], timeout_s=600)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/ferry-gpu}
mkdir -p "$out"
start=$(date +%s)
step() {  # step NAME SECONDS COMMAND...: runs COMMAND with a time limit, logs to $out/NAME.log
  local name=$1 limit=$2; shift 2
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local status=$?
  echo "$name: exit $status after $(( $(date +%s) - start )) s" | tee -a "$out/summary.txt"
  return $status
}
python=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
torch_dir=$("$python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')
"$python" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)' | tee -a "$out/gpu.txt"
generator=Ninja; command -v ninja >/dev/null || generator="Unix Makefiles"

step configure 120 cmake -S . -B build-cuda -G "$generator" -DCMAKE_BUILD_TYPE=Release -DFERRY_BUILD_FUZZERS=OFF \
  -DCMAKE_PREFIX_PATH="$torch_dir;$torch_dir/share/cmake;$PWD/.gpu-deps/usr" -DTORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" \
  || { tail -30 "$out/configure.log"; exit 1; }
step build 300 cmake --build build-cuda -j"$(nproc)" --target ferry_tests ferry_cli ferry_torch_cli bench_cuda_offload bench_expert_cost make_big_llama \
  || { grep -m5 -A5 "error" "$out/build.log"; exit 1; }

tests='DispatchCuda*:Streamer*:Dispatch*:TorchFeatures*:ModelsFixture*:ModelsMoe*:ExpertCompute*:ModelsCliCuda*'
step tests 120 ./build-cuda/tests/ferry_tests --gtest_filter="$tests"
tail -3 "$out/tests.log"
venv=/tmp/ferry-gpu-venv
"$python" -m venv --system-site-packages "$venv" &&
  step install_accelerate 120 "$venv/bin/pip" install --no-index --find-links .gpu-deps/wheels transformers accelerate ||
  echo "transformers + accelerate could not be installed offline (see install_accelerate.log): no side-by-side" | tee -a "$out/summary.txt"

if [ "${FERRY_GPU_MOE:-0}" != 1 ]; then
step memcheck 120 compute-sanitizer --tool memcheck --error-exitcode 3 ./build-cuda/tests/ferry_tests --gtest_filter='DispatchCuda*'
tail -2 "$out/memcheck.log"
step racecheck 120 compute-sanitizer --tool racecheck --error-exitcode 3 ./build-cuda/tests/ferry_tests --gtest_filter='DispatchCuda*'
tail -2 "$out/racecheck.log"

model=/tmp/ferry-gpu-llama
step make_model 120 ./build-cuda/make_big_llama "$model" --layers 10 --hidden 4096 --dtype bfloat16
step bench_cuda_offload 240 ./build-cuda/bench_cuda_offload "$model" --steps 8 --rounds 3
cat "$out/bench_cuda_offload.log"

step vs_accelerate 240 "$venv/bin/python" bench/vs_accelerate.py "$model" --ferry build-cuda/ferry --rounds 2 --max-new-tokens 16 \
  --rows gpu,cpu-offload,disk-gpu --out "$out/vs_accelerate.json"
tail -12 "$out/vs_accelerate.log"
fi

step bench_expert_cost 60 ./build-cuda/bench_expert_cost --rounds 5
cat "$out/bench_expert_cost.log"
moe=/tmp/ferry-gpu-moe
step make_moe 120 "$venv/bin/python" bench/make_big_moe.py "$moe"
step moe_vs_accelerate 300 "$venv/bin/python" bench/vs_accelerate.py "$moe" --ferry build-cuda/ferry --rounds 1 \
  --max-new-tokens 16 --rows gpu,experts-cpu,experts-cpu-compute,experts-cpu-copy --out "$out/moe_vs_accelerate.json"
tail -16 "$out/moe_vs_accelerate.log"
cat "$out/summary.txt"
