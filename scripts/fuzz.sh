#!/usr/bin/env bash
# Builds ferry's libFuzzer targets with clang (ASan + UBSan) and runs one.
#   scripts/fuzz.sh                 # the long run: 10 minutes of the safetensors header fuzzer
#   scripts/fuzz.sh 60              # CI: a 60-second smoke run
#   scripts/fuzz.sh 300 offload_index_fuzzer   # also: model_tree_fuzzer, device_map_fuzzer, torch_checkpoint_fuzzer
# Seeds: small valid files from fuzz/make_seeds.py (header fuzzer) or the fixtures' index files and a
# hand-written Accelerate index (index fuzzer). The corpus grows in build-fuzz/corpus-<fuzzer>;
# crashes are written to build-fuzz/crash-* and make the script fail. Inputs in
# fuzz/regressions/<fuzzer>/ (past crashes) are replayed first.
set -euo pipefail
seconds="${1:-600}"
fuzzer="${2:-safetensors_header_fuzzer}"
root="$(cd "$(dirname "$0")/.." && pwd)"
build="$root/build-fuzz"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DFERRY_BUILD_FUZZERS=ON -DFERRY_BUILD_TESTS=OFF -DFERRY_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build "$build" --target "$fuzzer" -j2
seeds="$build/seeds-$fuzzer"
mkdir -p "$build/corpus-$fuzzer" "$seeds"
extra=()
if [[ "$fuzzer" == safetensors_header_fuzzer ]]; then
  python3 "$root/fuzz/make_seeds.py" "$seeds"
  extra=(-dict="$root/fuzz/safetensors.dict")
elif [[ "$fuzzer" == model_tree_fuzzer ]]; then
  python3 -c "
import json, sys
cases = json.load(open('$root/tests/data/device_map_cases.json'))['cases']
for i, c in enumerate(cases[:40]):
    json.dump(c['model'], open('$seeds/tree%d.json' % i, 'w'))"
elif [[ "$fuzzer" == torch_checkpoint_fuzzer ]]; then
  # Byte 0 even: a data.pkl (from the fixtures); odd: a whole .bin file.
  python3 - "$root/tests/data" "$seeds" <<'PY'
import os, sys, zipfile
data, seeds = sys.argv[1], sys.argv[2]
for i, rel in enumerate(["torch_pickles/views.pt", "torch_pickles/non_tensor.pt", "torch_pickles/legacy.pt",
                         "tiny_llama_bin_sharded/pytorch_model-00003-of-00003.bin", "tiny_llama_bin/pytorch_model.bin"]):
    raw = open(os.path.join(data, rel), "rb").read()
    if len(raw) < 60000:
        open(os.path.join(seeds, "file%d" % i), "wb").write(b"\x01" + raw)
    if zipfile.is_zipfile(os.path.join(data, rel)):
        z = zipfile.ZipFile(os.path.join(data, rel))
        pkl = [n for n in z.namelist() if n.endswith("/data.pkl")][0]
        open(os.path.join(seeds, "pickle%d" % i), "wb").write(b"\x00" + z.read(pkl))
PY
  extra=(-rss_limit_mb=4096)
  # LibTorch 1.13's PyTorchStreamReader leaks miniz's state (~1 KB) when its constructor throws on a
  # damaged archive (the destructor that frees it never runs): not ferry's leak, so not reported.
  printf 'leak:libtorch_cpu.so\n' > "$build/lsan-torch.supp"
  export LSAN_OPTIONS="suppressions=$build/lsan-torch.supp"
elif [[ "$fuzzer" == device_map_fuzzer ]]; then
  printf '{"model.embed_tokens": 0, "model.layers.0": "cpu", "model.layers.1": "disk", "lm_head": "cuda:1", "": "mps"}' > "$seeds/map.json"
  printf '{"": "cpu"}' > "$seeds/cpu.json"
else
  cp "$root"/tests/data/tiny_*/model.safetensors.index.json "$seeds/" 2>/dev/null || true
  printf '{\n  "w": {\n    "dtype": "bfloat16",\n    "shape": [\n      2,\n      3\n    ]\n  },\n  "s": {\n    "dtype": "int64",\n    "shape": []\n  },\n  "t": {"safetensors_file": "a.safetensors", "weight_name": "x", "dtype": "float16"}\n}' > "$seeds/index.json"
fi
cd "$build"
# Inputs that once failed must keep passing.
if compgen -G "$root/fuzz/regressions/$fuzzer/*" >/dev/null; then
  "./fuzz/$fuzzer" "$root/fuzz/regressions/$fuzzer"/*
fi
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  "./fuzz/$fuzzer" -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 "${extra[@]}" \
  "corpus-$fuzzer" "$seeds"
