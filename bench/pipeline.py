#!/usr/bin/env python3
"""Pipeline parallelism (issue 17): one rank against two, on one model, rounds interleaved.

Rows, each a fresh `ferry run --json` (or `ferry launch --nproc 2 -- run --json`):
  * 1 rank resident: the whole model in one process;
  * 2 ranks resident: each rank holds half the decoder layers (ferry launch on loopback);
  * the capacity comparison, at a per-rank budget (--budget, default 60% of the model's bytes):
    1 rank with --device-map auto --max-memory cpu=BUDGET (the rest of the model goes to disk, read
    every step), and 2 ranks with the same budget each, which hold their stages resident. With
    --memory-limit (root) these rows run inside memory cgroups of their budgets (plus
    --process-memory per process), the page cache dropped first, as on hosts that have only that
    memory: without it, the disk-placed weights of the 1-rank row stay in a page cache that the
    budget does not count, and are hardly read from storage at all.
With --sequences N (N prompts at once) the 2-rank row keeps N/2 prompts in flight per group
(`--micro-batches 2`, the default across 2 ranks: while rank 1 runs one group, rank 0 runs the other),
and a row "2 ranks, lockstep" (`--micro-batches 1`) shows the batch stepping through the stages
together. A second baseline, "1 rank, the batch in 2 halves", runs N/2 prompts in one process and
counts two of its steps per step of the whole batch: groups of N/2 can be cheaper per prompt than one
batch of N (caches), and the 2-rank row gets that for free, so "vs best 1 rank" divides by the better
of the two 1-rank rows. --threads T sets OMP_NUM_THREADS for every process (the issue's comparison: 2 ranks of 1
thread each against 1 rank of 1 thread).
It prints ms per decode step (every prompt's next token), tokens per second (all prompts), the bytes
each stage boundary carries per step, the time rank 0 spent in send/recv (waits for rank 1's compute
included) and what the link to rank 1 takes alone for one step's message (timed before generating),
and checks that every row generates the same tokens.

  python3 bench/pipeline.py MODEL_DIR --ferry build/ferry [--budget 1.6GB] [--rounds 3] [--tokens 32]
                            [--sequences 8 --threads 1] [--prompt-tokens 8] [--no-capacity]

With --prefill, it measures the prompt instead (prompts of --prompt-tokens positions, one new token):
the whole prompt in one forward against the prompt in chunks of --prefill-chunk positions, in one
process and across 2 ranks, where the chunks flow through the stages one behind the other (rank 0 on
chunk k + 1 while rank 1 is on chunk k), so that even one prompt keeps both stages busy. It prints
prompt tokens per second.

  python3 bench/pipeline.py MODEL_DIR --prefill [--prompt-tokens 256] [--prefill-chunk 32] [--sequences 1]
"""
import os
import argparse
import atexit
import json
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from memory_cgroup import MemoryCgroup, drop_page_cache  # noqa: E402


def run(cmd, env, cgroup=None):
    """One row's run (inside `cgroup`'s memory limit if given, the page cache dropped first); its JSON."""
    if cgroup:
        drop_page_cache()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=cgroup.join if cgroup else None)
    if p.returncode != 0:
        killed = f" (the memory cgroup counts {cgroup.oom_kills()} OOM kill(s))" if cgroup else ""
        sys.exit(f"pipeline.py: failed ({p.returncode}){killed}: {' '.join(cmd)}\n{p.stderr[-3000:]}")
    line = p.stdout.strip().splitlines()[-1]
    return json.loads(line[len("[rank 0] "):] if line.startswith("[rank 0] ") else line)


def parse_bytes(text):
    """'0.55GiB', '600MB', '1000000' -> bytes."""
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    t = text.strip().upper()
    for unit, factor in units.items():
        if t.endswith(unit):
            return int(float(t[:-len(unit)]) * factor)
    return int(t)


def ids_args(prompts):
    """--ids "P1;P2;..." or, past what one argument may hold (128 KiB), --ids-file with one prompt a line."""
    text = ";".join(prompts)
    if len(text) < 100_000:
        return ["--ids", text]
    f = tempfile.NamedTemporaryFile("w", prefix="ferry-ids-", suffix=".txt", delete=False)
    f.write("\n".join(prompts) + "\n")
    f.close()
    atexit.register(os.unlink, f.name)
    return ["--ids-file", f.name]


def interleaved(rows, rounds, env, describe, adjust=None, cgroups=None):
    """Every row once per round, the order reversed every other round, so that the machine's drift
    hits every row alike; returns each row's JSON results. adjust(name, j) may rescale a result;
    cgroups: row name -> the MemoryCgroup it runs in."""
    results = {name: [] for name in rows}
    for r in range(rounds):
        for name in (list(rows) if r % 2 == 0 else list(reversed(rows))):
            j = run(rows[name], env, (cgroups or {}).get(name))
            if adjust:
                adjust(name, j)
            results[name].append(j)
            print(f"round {r + 1} {name:32} {describe(j)}", flush=True)
    return results


def tokens_agree(results, tokens_of):
    """0 when every run of every row generated the same tokens (tokens_of(j)), else 1; says which."""
    tokens = {json.dumps(tokens_of(x)) for runs in results.values() for x in runs}
    if len(tokens) != 1:
        print("tokens DIVERGE between rows:", tokens)
        return 1
    print(f"\ntokens agree across all {sum(len(v) for v in results.values())} runs")
    print("benchmark:", " ".join([sys.executable] + sys.argv))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--ferry", default="build/ferry")
    ap.add_argument("--budget", help="one rank's memory budget for the capacity rows (default: 60%% of the model's bytes)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--sequences", type=int, default=1, help="prompts generated at once")
    ap.add_argument("--threads", type=int, help="OMP_NUM_THREADS for every process (default: LibTorch's)")
    ap.add_argument("--prefill", action="store_true", help="measure the prompt's forward (see above)")
    ap.add_argument("--prompt-tokens", type=int, help="positions per prompt (default 8; with --prefill 256)")
    ap.add_argument("--no-capacity", action="store_true", help="leave out the rows at a memory budget")
    ap.add_argument("--memory-limit", action="store_true",
                    help="hold the budget rows to their budget (root): 1 rank in a memory cgroup of the budget plus "
                         "--process-memory, 2 ranks in one of twice that, the page cache dropped before each run, so "
                         "that what goes to disk is read from storage, not from a page cache the budget leaves out")
    ap.add_argument("--process-memory", default="0.5GiB",
                    help="--memory-limit: what a process needs beyond its weights (LibTorch, activations, buffers)")
    ap.add_argument("--prefill-chunk", type=int, default=32, help="--prefill: positions per chunk")
    a = ap.parse_args()
    if a.prefill:
        a.prompt_tokens = a.prompt_tokens or 256
        return prefill(a)
    prompts = [" ".join(str(1 + (s * 7 + t) % 500) for t in range(a.prompt_tokens or 8)) for s in range(a.sequences)]
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(a.threads)} if a.threads else {}))
    tail = ["--max-new-tokens", str(a.tokens), "--json", "--quiet"]
    common = ["run", a.model_dir] + ids_args(prompts) + tail
    two = [a.ferry, "launch", "--nproc", "2", "--"] + common
    rows = {"1 rank resident": [a.ferry] + common}
    cgroups = {}
    halves = "1 rank, the batch in 2 halves"
    if a.sequences > 1:
        rows[halves] = [a.ferry, "run", a.model_dir] + ids_args(prompts[:a.sequences // 2]) + tail
        rows["2 ranks, 2 groups in flight"] = two
        rows["2 ranks, lockstep"] = two + ["--micro-batches", "1"]
    else:
        rows["2 ranks resident"] = two
    if not a.no_capacity:
        if not a.budget:
            model_bytes = sum(os.path.getsize(os.path.join(a.model_dir, f)) for f in os.listdir(a.model_dir)
                              if f.endswith(".safetensors"))
            a.budget = f"{model_bytes * 6 // 10 / 2**30:.2f}GiB"
        at_budget = ["--device-map", "auto", "--max-memory", f"cpu={a.budget}"]
        one_at_budget, two_at_budget = f"1 rank, {a.budget} budget", f"2 ranks, {a.budget} budget each"
        rows[one_at_budget] = [a.ferry] + common + at_budget
        rows[two_at_budget] = two + at_budget
        if a.memory_limit:
            limit = parse_bytes(a.budget) + parse_bytes(a.process_memory)
            cgroups = {one_at_budget: MemoryCgroup(limit), two_at_budget: MemoryCgroup(2 * limit)}
            for c in cgroups.values():
                if c.error:
                    sys.exit(f"pipeline.py: --memory-limit: {c.error}")
            print(f"budget rows in memory limits: 1 rank {limit / 2**30:.2f} GiB, 2 ranks {2 * limit / 2**30:.2f} GiB "
                  f"(the budget + {a.process_memory} per process), page cache dropped first", flush=True)
    def two_steps_of_halves(name, j):  # two steps of half the batch make one step of the whole
        if name == halves:
            j["timings"]["decode_ms_per_token"] *= 2
    try:
        results = interleaved(rows, a.rounds, env, lambda j: f"{j['timings']['decode_ms_per_token']:8.1f} ms/step",
                              two_steps_of_halves, cgroups)
    finally:
        for c in cgroups.values():
            c.remove()
    print(f"\n{a.model_dir}, {a.sequences} prompt(s), {a.tokens} new tokens each, threads per process: "
          f"{a.threads or 'default'}, median of {a.rounds} rounds\n")
    best = min(statistics.median(x["timings"]["decode_ms_per_token"] for x in results[name])
               for name in results if name.startswith("1 rank") and "budget" not in name)
    print("| row | ms / decode step | tokens/s | vs 1 rank | vs best 1 rank | bytes to the next stage / step | bytes back / step | rank 0 send+recv s | rank 0 computing s | disk-placed bytes / step (rank 0) | read from storage / step (rank 0) | link to rank 1 alone, one way / step message |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = None
    for name, runs in results.items():
        ms = statistics.median(x["timings"]["decode_ms_per_token"] for x in runs)
        base = base or ms
        p = runs[0].get("pipeline", {})
        disk = statistics.median(x["timings"].get("offloaded_bytes_per_token", 0) for x in runs)
        comm = statistics.median(x.get("pipeline", {}).get("communication_s", 0.0) for x in runs)
        busy = statistics.median(x.get("pipeline", {}).get("compute_s", 0.0) for x in runs)
        stored = [x["timings"].get("decode_storage_bytes_per_token") for x in runs]
        stored = f"{statistics.median(stored) / 2**20:.1f} MiB" if None not in stored else "-"
        links = [x.get("pipeline", {}).get("link") for x in runs]
        link = (f"{statistics.median(k['one_way_s'] for k in links) * 1e6:.0f} us / {links[0]['message_bytes']} B"
                if all(links) else "-")
        print(f"| {name} | {ms:.1f} | {a.sequences * 1000 / ms:.2f} | {base / ms:.2f}x | {best / ms:.2f}x | {p.get('bytes_sent_per_token', 0):.0f} | {p.get('bytes_received_per_token', 0):.0f} | "
              f"{comm:.3f} | {busy:.3f} | {disk / 2**20:.1f} MiB | {stored} | {link} |")
    # every row the same tokens (the halves row: the first half's)
    return tokens_agree(results, lambda x: x["generated"][:a.sequences // 2] if a.sequences > 1 else x["generated"])


def prefill(a):
    """The --prefill rows: prompt tokens per second, whole prompts against chunks, 1 rank against 2."""
    prompts = [" ".join(str(1 + (s * 7 + t * 13) % 500) for t in range(a.prompt_tokens)) for s in range(a.sequences)]
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(a.threads)} if a.threads else {}))
    common = ["run", a.model_dir] + ids_args(prompts) + ["--max-new-tokens", "1", "--json", "--quiet"]
    chunks = ["--prefill-chunk", str(a.prefill_chunk)]
    two = [a.ferry, "launch", "--nproc", "2", "--"] + common
    rows = {"1 rank, whole prompt": [a.ferry] + common,
            f"1 rank, chunks of {a.prefill_chunk}": [a.ferry] + common + chunks,
            "2 ranks, whole prompt": two,
            f"2 ranks, chunks of {a.prefill_chunk}": two + chunks + ["--micro-batches", "1"]}
    if a.sequences > 1:
        rows[f"2 ranks, chunks of {a.prefill_chunk}, 2 groups"] = two + chunks
    results = interleaved(rows, a.rounds, env, lambda j: f"{j['timings']['prefill_s']:8.3f} s prefill")
    print(f"\n{a.model_dir}, {a.sequences} prompt(s) of {a.prompt_tokens} positions, threads per process: "
          f"{a.threads or 'default'}, median of {a.rounds} rounds\n")
    print("| row | prefill s | prompt tokens/s | vs 1 rank | forwards |")
    print("|---|---:|---:|---:|---:|")
    base = None
    for name, runs in results.items():
        sec = statistics.median(x["timings"]["prefill_s"] for x in runs)
        base = base or sec
        print(f"| {name} | {sec:.3f} | {a.sequences * a.prompt_tokens / sec:.1f} | {base / sec:.2f}x | "
              f"{runs[0]['timings']['prefill_forwards']} |")
    return tokens_agree(results, lambda x: x["generated"])


if __name__ == "__main__":
    sys.exit(main())
