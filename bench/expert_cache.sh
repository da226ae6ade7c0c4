#!/usr/bin/env bash
# The expert cache's effect (issue 15): hit rate and expert bytes loaded per token, by policy and
# budget, on the MoE fixtures with every expert on disk (one device-map entry per expert), greedy
# decoding of 128 tokens. Budgets are fractions of all experts' bytes. Deterministic (counts, not time).
#   bash bench/expert_cache.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - <<'PY'
import json, os, subprocess, tempfile
out = tempfile.mkdtemp()
print("| model | budget (of all experts) | policy | hit rate | expert bytes loaded / token | served from cache / token |")
print("| --- | ---: | --- | ---: | ---: | ---: |")
for name, block in [("tiny_mixtral", "block_sparse_moe"), ("tiny_qwen3_moe", "mlp")]:
    cfg = json.load(open(f"tests/data/{name}/config.json"))
    layers, experts = cfg["num_hidden_layers"], cfg.get("num_local_experts", cfg.get("num_experts"))
    inter = cfg.get("moe_intermediate_size", cfg.get("intermediate_size"))
    expert_bytes = 3 * cfg["hidden_size"] * inter * 4
    entries = {k: "cpu" for k in ["model.embed_tokens", "model.rotary_emb", "model.norm", "lm_head"]}
    for l in range(layers):
        for p in ["self_attn", "input_layernorm", "post_attention_layernorm", f"{block}.gate"]:
            entries[f"model.layers.{l}.{p}"] = "cpu"
        for e in range(experts):
            entries[f"model.layers.{l}.{block}.experts.{e}"] = "disk"
    path = os.path.join(out, name + ".json"); json.dump(entries, open(path, "w"))
    total = layers * experts * expert_bytes
    for fraction in [0, 0.25, 0.5]:
        for policy in (["frequency", "recency"] if fraction else ["none"]):
            args = ["build/ferry", "run", f"tests/data/{name}", "--ids", "1 5 9 14 3 77 120", "--max-new-tokens", "128",
                    "--json", "--quiet", "--device-map", path, "--expert-cache", str(int(fraction * total))]
            if fraction: args += ["--expert-cache-policy", policy]
            j = json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)["experts"]
            print(f"| {name} | {fraction:.0%} | {policy} | {j['cache_hit_rate']:.1%} | {j['bytes_loaded_per_token'] / 1024:.1f} KiB | {j['bytes_from_cache_per_token'] / 1024:.1f} KiB |")
PY
