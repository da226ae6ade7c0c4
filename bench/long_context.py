#!/usr/bin/env python3
"""Decoding with long contexts: how a decode step's cost grows with the positions in the KV cache.

A decode step reads the weights once and every prompt's cached keys and values once; with several
prompts of a few thousand positions the caches outweigh the weights. For each context length it runs
SEQUENCES prompts of that many positions and TOKENS new tokens each, in a fresh process per run:
  * ferry:        `ferry run MODEL --ids "P1;P2;..." --max-new-tokens TOKENS --json`
  * ferry (base): the same with --baseline-ferry (another build, e.g. the commit before a change)
  * transformers: from_pretrained + greedy generate (bench/vs_accelerate.py's child), the real
                  reference, with the same threads
Rounds are interleaved (every row once per round, the order reversed every other round); it prints
the median ms per decode step (every prompt's next token) and each row's growth from the shortest
context, and exits 1 unless every run of a context generated the same tokens.

  python3 bench/long_context.py MODEL_DIR --ferry build-torch2/ferry [--baseline-ferry OLD/ferry]
      [--contexts 256,1024,2048] [--sequences 8] [--tokens 16] [--threads 1] [--rounds 3] [--no-transformers]
"""
import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pipeline import interleaved  # noqa: E402  (rows in turn, rounds reversed, each run's JSON)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--ferry", default="build-torch2/ferry")
    ap.add_argument("--baseline-ferry", help="another ferry binary to run beside it")
    ap.add_argument("--contexts", default="256,1024,2048", help="prompt lengths, comma-separated")
    ap.add_argument("--sequences", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-transformers", action="store_true")
    a = ap.parse_args()

    with open(os.path.join(a.model_dir, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    contexts = [int(c) for c in a.contexts.split(",")]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    work = tempfile.mkdtemp(prefix="long-context-")
    tools = {"ferry": a.ferry}
    if a.baseline_ferry:
        tools["ferry (base)"] = a.baseline_ferry
    rows = {}  # "CONTEXT TOOL" -> command
    for ctx in contexts:
        prompts = [[1 + (s * 7 + t * 13) % (vocab - 1) for t in range(ctx)] for s in range(a.sequences)]
        ids = ";".join(" ".join(map(str, p)) for p in prompts)
        for tool, binary in tools.items():
            rows[f"{ctx} {tool}"] = [binary, "run", a.model_dir, "--ids", ids, "--max-new-tokens", str(a.tokens), "--json", "--quiet"]
        if not a.no_transformers:
            spec = os.path.join(work, f"transformers-{ctx}.json")
            with open(spec, "w") as f:
                json.dump({"model_dir": a.model_dir, "device_map": {"": "cpu"}, "offload_folder": os.path.join(work, "offload"),
                           "ids": prompts, "max_new_tokens": a.tokens, "threads": a.threads}, f)
            rows[f"{ctx} transformers"] = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                        "vs_accelerate.py"), a.model_dir, "--hf-child", spec]
    results = interleaved(rows, a.rounds, env, lambda j: f"decode {j['timings']['decode_ms_per_token']:9.2f} ms/step  "
                                                         f"prefill {j['timings']['prefill_s']:7.2f} s")

    names = list(tools) + ([] if a.no_transformers else ["transformers"])
    print(f"\n{a.model_dir}: {a.sequences} prompts, {a.tokens} new tokens each, {a.threads} thread(s), medians of "
          f"{a.rounds} rounds; ms per decode step (x: growth from {contexts[0]} positions)\n")
    print("| positions per prompt | " + " | ".join(names) + " |")
    print("|---:|" + "---:|" * len(names))
    ms = {key: statistics.median(j["timings"]["decode_ms_per_token"] for j in runs) for key, runs in results.items()}
    for ctx in contexts:
        cells = [f"{ms[f'{ctx} {n}']:.1f} ({ms[f'{ctx} {n}'] / ms[f'{contexts[0]} {n}']:.2f}x)" for n in names]
        print(f"| {ctx} | " + " | ".join(cells) + " |")
    def ferrys(key):  # ferry's tokens for the context of row `key`
        return results[f"{key.split()[0]} ferry"][0]["generated"]
    bad = [(key, j["generated"]) for key, runs in results.items() for j in runs if j["generated"] != ferrys(key)]
    for key, generated in bad:
        print(f"tokens DIFFER: context {key}: {generated[0][:8]}... vs ferry's {ferrys(key)[0][:8]}...")
    print(f"\ncommand: {' '.join([sys.executable] + sys.argv)}")
    if not bad:
        print("tokens agree: every run of each context generated the same tokens")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
