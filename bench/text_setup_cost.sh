#!/usr/bin/env bash
# Time to first streamed token, split: tokenizer and chat-template set-up vs the model (issue 16).
# For each chat fixture (tests/data/chat/*.json: a fixture model, its family's tokenizer and template),
# runs `ferry run --prompt` and one turn of `ferry chat`, ROUNDS times interleaved, and prints the
# medians: tokenizer load + encode, template render + encode, model load, prefill (= first token).
#   bash bench/text_setup_cost.sh [ROUNDS (default 5)]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
ferry=build/ferry
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
python3 - "$ferry" "$work" "$rounds" <<'PY'
import json, os, statistics, subprocess, sys
ferry, work, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = "tests/data"
cases = sorted(f[:-5] for f in os.listdir(f"{data}/chat") if f.endswith(".json"))
dirs = {}
for name in cases:
    ref = json.load(open(f"{data}/chat/{name}.json"))
    d = os.path.join(work, name); os.makedirs(d)
    for f in os.listdir(f"{data}/{ref['model']}"):
        os.symlink(os.path.abspath(f"{data}/{ref['model']}/{f}"), os.path.join(d, f))
    os.symlink(os.path.abspath(f"{data}/tokenizers/{ref['tokenizer']}.tokenizer.json"), os.path.join(d, "tokenizer.json"))
    json.dump(ref["tokenizer_config"], open(os.path.join(d, "tokenizer_config.json"), "w"))
    dirs[name] = (d, ref["turns"][0]["user"])
rows = {n: {"tokenizer": [], "template": [], "setup": [], "load": [], "prefill": []} for n in cases}
for _ in range(rounds):
    for name in cases:  # interleaved
        d, user = dirs[name]
        r = json.loads(subprocess.run([ferry, "run", d, "--prompt", user, "--max-new-tokens", "1", "--json"],
                                      check=True, capture_output=True, text=True).stdout)
        rows[name]["tokenizer"].append(r["timings"]["tokenizer_s"])
        rows[name]["load"].append(r["timings"]["load_s"])
        rows[name]["prefill"].append(r["timings"]["prefill_s"])
        c = json.loads(subprocess.run([ferry, "chat", d, "--json", "--max-new-tokens", "1"], input=user + "\n",
                                      check=True, capture_output=True, text=True).stdout.splitlines()[0])
        rows[name]["template"].append(c["template_s"])
        rows[name]["setup"].append(c["setup_s"])
ms = lambda v: f"{1000 * statistics.median(v):.2f}"
print(f"| fixture | tokenizer load + encode (run) | tokenizer + template load (chat) | template render + encode | model load | prefill = first token |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for n in cases:
    r = rows[n]
    print(f"| {n} | {ms(r['tokenizer'])} ms | {ms(r['setup'])} ms | {ms(r['template'])} ms | {ms(r['load'])} ms | {ms(r['prefill'])} ms |")
PY
