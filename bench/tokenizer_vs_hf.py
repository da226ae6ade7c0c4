#!/usr/bin/env python3
"""ferry's tokenizers against Hugging Face's `tokenizers` library: encode throughput, one thread, on the
same corpus (the texts of tests/data/tokenizers/<family>.reference.json, one call per text, ~2 MB a
round; best of --rounds), and the same ids.

    cmake -S . -B build -DFERRY_BUILD_BENCHMARKS=ON && cmake --build build --target bench_tokenizer
    RAYON_NUM_THREADS=1 .venv/bin/python bench/tokenizer_vs_hf.py --bench build/bench_tokenizer
"""
import argparse
import json
import os
import subprocess
import time

from tokenizers import Tokenizer

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "tokenizers")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default="build/bench_tokenizer")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    ferry = {r["family"]: r for r in json.loads(subprocess.run(
        [args.bench, "--data", DATA, "--rounds", str(args.rounds), "--json"], check=True, capture_output=True,
        text=True).stdout)}
    print("%-8s %14s %14s %8s %s" % ("family", "tokenizers MB/s", "ferry MB/s", "ratio", "same tokens"))
    for family in ["gpt2", "llama3", "qwen2", "llama2", "mistral"]:
        tok = Tokenizer.from_file(os.path.join(DATA, family + ".tokenizer.json"))
        with open(os.path.join(DATA, family + ".reference.json"), encoding="utf-8") as f:
            texts = [c["text"] for c in json.load(f)["cases"]]
        size = sum(len(t.encode()) for t in texts)
        repeats = max(1, 2_000_000 // max(1, size))
        best = float("inf")
        for _ in range(args.rounds):
            tokens = 0
            start = time.perf_counter()
            for _ in range(repeats):
                for t in texts:
                    tokens += len(tok.encode(t).ids)
            best = min(best, time.perf_counter() - start)
        hf = size * repeats / best / 1e6
        ours = ferry[family]["encode_mb_per_s"]
        print("%-8s %14.2f %14.2f %7.1fx %s" % (family, hf, ours, ours / hf, tokens == ferry[family]["tokens"]))


if __name__ == "__main__":
    main()
