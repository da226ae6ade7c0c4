#!/usr/bin/env bash
# Builds the test suite with AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/) and runs it.
# CI runs this after scripts/test.sh. With a number of seconds as argument, each libFuzzer target
# (safetensors header parser, offload index, model tree, device map, torch.save checkpoints) then gets a run of that length
# (scripts/fuzz.sh, clang).
# With `thread` as argument it builds and runs the suite under ThreadSanitizer instead (build-tsan/;
# OpenBLAS's own thread pool is suppressed, tests/tsan.supp); CI does not, for time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
if [ "${1:-}" = thread ]; then
  cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFERRY_SANITIZE=thread \
    -DFERRY_BUILD_BENCHMARKS=OFF >/dev/null
  cmake --build build-tsan -j"$(nproc)" --target ferry_tests ferry_cli
  TSAN_OPTIONS="halt_on_error=1 suppressions=$PWD/tests/tsan.supp" ./build-tsan/tests/ferry_tests
  exit 0
fi
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Release -DFERRY_SANITIZE=address,undefined \
  -DFERRY_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build build-asan -j"$(nproc)" --target ferry_tests ferry_cli
# LibTorch keeps allocations alive until exit by design: leaks are checked by the fuzzers, not here.
ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ./build-asan/tests/ferry_tests
if [ -n "${1:-}" ]; then
  FERRY_WITH_FUZZER=1 bash scripts/install_deps.sh
  bash scripts/fuzz.sh "$1" safetensors_header_fuzzer
  bash scripts/fuzz.sh "$1" offload_index_fuzzer
  bash scripts/fuzz.sh "$1" model_tree_fuzzer
  bash scripts/fuzz.sh "$1" device_map_fuzzer
  bash scripts/fuzz.sh "$1" torch_checkpoint_fuzzer
fi
