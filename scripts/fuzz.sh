#!/usr/bin/env bash
# Builds the safetensors header fuzzer with clang and runs it.
#   scripts/fuzz.sh            # 10 minutes (the long run)
#   scripts/fuzz.sh 60         # CI: a 60-second smoke run
# Seeds: the tiny fixtures' shards plus a few hand-made headers; new corpus entries go to
# build-fuzz/corpus, crashes to build-fuzz/crash-*.
set -euo pipefail
seconds="${1:-600}"
root="$(cd "$(dirname "$0")/.." && pwd)"
build="$root/build-fuzz"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DFERRY_BUILD_FUZZERS=ON -DFERRY_BUILD_TESTS=OFF -DFERRY_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build "$build" --target safetensors_header_fuzzer -j2
mkdir -p "$build/corpus" "$build/seeds"
for f in "$root"/tests/data/tiny_*/model-0000[12]-*.safetensors; do
  # The header plus a little data is enough of a seed.
  head -c 4096 "$f" > "$build/seeds/$(basename "$(dirname "$f")")_$(basename "$f")"
done
cp "$root"/tests/data/tiny_llama/reference.safetensors "$build/seeds/reference.safetensors" 2>/dev/null || true
cd "$build"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  ./fuzz/safetensors_header_fuzzer -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 \
  -dict="$root/fuzz/safetensors.dict" corpus seeds
