#!/usr/bin/env bash
# Builds the test suite with AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/) and runs it,
# then gives each libFuzzer target a short run (scripts/fuzz.sh, clang). CI runs this after
# scripts/test.sh. Usage: scripts/test_sanitizers.sh [fuzz seconds per target, default 30]
set -euo pipefail
cd "$(dirname "$0")/.."
FERRY_WITH_FUZZER=1 bash scripts/install_deps.sh
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Release -DFERRY_SANITIZE=address,undefined \
  -DFERRY_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build build-asan -j"$(nproc)" --target ferry_tests ferry_cli
# LibTorch keeps allocations alive until exit by design: leaks are not checked here (the fuzzers do).
ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ./build-asan/tests/ferry_tests
seconds="${1:-30}"
bash scripts/fuzz.sh "$seconds" safetensors_header_fuzzer
bash scripts/fuzz.sh "$seconds" offload_index_fuzzer
