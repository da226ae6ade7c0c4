#!/usr/bin/env python3
"""A model larger than the memory it may use: ferry's disk streaming vs the disk's bandwidth and Accelerate.

Every decoder layer of MODEL_DIR goes on disk (embeddings, final norm and lm_head on the CPU), and each
run happens inside a cgroup memory limit of LIMIT_FRACTION x the model's size, with the checkpoint evicted
from the page cache first (cold). Rows, in every round (the order rotating between rounds, since this
machine's virtual disk is cached by its host and its speed drifts between runs):
  disk               bench_disk_read: the disk-placed bytes read cold three ways (buffered; O_DIRECT as dd
                     does it; ferry's own direct reader with no compute); the disk's figure is the best
  accelerate         transformers + accelerate from PyPI, the same device map, in the limit
  ferry mapped       ferry run --disk-read mapped (weights read in place through the page cache), in the limit
  ferry auto         ferry run (it chooses: direct reads in the limit), in the limit
  warm mapped/auto   no limit, page cache warm: ferry run --disk-read mapped vs ferry run (auto keeps the
                     mapped path when the weights fit: no regression allowed)
For each: bytes read per token (ferry's offloaded_bytes_per_token; Accelerate reads the same layers), ms per
decode token, effective GB/s = bytes per token / time per token, anonymous and peak RSS. The greedy tokens of
every run must agree (exit 1 otherwise). Needs root for the cgroup (cgroup v1 or v2); without it the limit
rows say so and run without a limit.

Usage: larger_than_ram.py MODEL_DIR --ferry build/ferry --bench-disk build/bench_disk_read
           [--limit-fraction 0.6] [--rounds 3] [--max-new-tokens 8] [--threads 2] [--out r.json]
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from memory_cgroup import MemoryCgroup  # noqa: E402
from vs_accelerate import device_maps, first_divergence  # noqa: E402  (the same maps and checks)


def shard_files(model_dir):
    return sorted(os.path.join(model_dir, f) for f in os.listdir(model_dir) if f.endswith(".safetensors"))


def evict(files):
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def warm(files):
    for path in files:
        with open(path, "rb") as f:
            while f.read(64 << 20):
                pass


def run(cmd, env, cgroup=None):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=cgroup.join if cgroup else None)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        return {"failed": p.returncode, "stderr": p.stderr[-2000:], "wall_s": wall}
    result = json.loads(p.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--ferry", default="build/ferry")
    ap.add_argument("--bench-disk", default="build/bench_disk_read")
    ap.add_argument("--limit-fraction", type=float, default=0.6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rows", default="disk,accelerate,ferry mapped,ferry auto,warm mapped,warm auto")
    ap.add_argument("--out")
    a = ap.parse_args()

    with open(os.path.join(a.model_dir, "config.json")) as f:
        config = json.load(f)
    files = shard_files(a.model_dir)
    model_bytes = sum(os.path.getsize(p) for p in files)
    limit = int(model_bytes * a.limit_fraction)
    cgroup = MemoryCgroup(limit)
    if cgroup.error:
        print(f"larger_than_ram: {cgroup.error}; the 'limit' rows run WITHOUT a memory limit", file=sys.stderr)
        cgroup = None

    work = os.path.join(tempfile.gettempdir(), "ferry-larger-than-ram")
    os.makedirs(work, exist_ok=True)
    disk_map = device_maps(config["num_hidden_layers"], gpu=False)["disk"]
    map_path = os.path.join(work, "disk.json")
    with open(map_path, "w") as f:
        json.dump(disk_map, f)
    ids = [1] + [(7 * i + 3) % (config["vocab_size"] - 3) + 3 for i in range(15)]
    spec_path = os.path.join(work, "accelerate.json")
    with open(spec_path, "w") as f:
        json.dump({"model_dir": a.model_dir, "device_map": disk_map, "offload_folder": os.path.join(work, "offload"),
                   "ids": ids, "max_new_tokens": a.max_new_tokens, "threads": a.threads}, f)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    ferry = [a.ferry, "run", a.model_dir, "--ids", " ".join(map(str, ids)), "--max-new-tokens", str(a.max_new_tokens),
             "--device-map", map_path, "--json"]
    vs_accelerate = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vs_accelerate.py")
    rows = {
        "disk": ([a.bench_disk, a.model_dir, "--threads", "2"], None, "cold"),
        "accelerate": ([sys.executable, vs_accelerate, a.model_dir, "--hf-child", spec_path], cgroup, "cold"),
        "ferry mapped": (ferry + ["--disk-read", "mapped"], cgroup, "cold"),
        "ferry auto": (ferry, cgroup, "cold"),
        "warm mapped": (ferry + ["--disk-read", "mapped"], None, "warm"),
        "warm auto": (ferry, None, "warm"),
    }
    rows = {k: rows[k] for k in a.rows.split(",")}
    runs = []
    names = list(rows)
    for r in range(a.rounds):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate: every row goes first once
        for name in order:
            cmd, group, cache = rows[name]
            (evict if cache == "cold" else warm)(files)
            kills = group.oom_kills() if group else 0
            result = run(cmd, env, group)
            result.update(round=r, row=name, oom_killed=(group.oom_kills() - kills) if group else 0)
            runs.append(result)
            if "failed" in result:
                print(f"round {r + 1} {name}: FAILED (exit {result['failed']}, OOM kills {result['oom_killed']})\n"
                      f"{result['stderr']}", flush=True)
            elif name == "disk":
                print(f"round {r + 1} {name:13} buffered {result['buffered_bytes_per_s'] / 1e9:.2f}  O_DIRECT(dd) "
                      f"{result['direct_dd_bytes_per_s'] / 1e9:.2f}  ferry reader {result['direct_ferry_bytes_per_s'] / 1e9:.2f} GB/s",
                      flush=True)
            else:
                t = result["timings"]
                print(f"round {r + 1} {name:13} {t['decode_ms_per_token']:8.1f} ms/token  anon {t['rss_anon_bytes'] / 2**30:.2f} GiB  "
                      f"peak {t['peak_rss_bytes'] / 2**30:.2f} GiB  {result.get('disk_read', {}).get('mode', '')}", flush=True)
    if cgroup:
        cgroup.remove()

    layer_bytes = next((x["timings"]["offloaded_bytes_per_token"] for x in runs
                        if x["row"].startswith("ferry") and "timings" in x), None)

    def med(name, get):
        values = [get(x) for x in runs if x["row"] == name and "failed" not in x]
        return statistics.median(values) if values else None

    disk = med("disk", lambda x: x["disk_bytes_per_s"])
    print(f"\n{config['num_hidden_layers']} layers, hidden {config['hidden_size']}, {model_bytes / 1e9:.2f} GB; every decoder "
          f"layer on disk ({layer_bytes / 1e9 if layer_bytes else 0:.2f} GB read per token); limit "
          f"{'%.2f GB (%.0f%% of the model)' % (limit / 1e9, 100 * a.limit_fraction) if cgroup else 'NONE (no cgroup)'}; "
          f"{a.threads} threads; prompt {len(ids)}, {a.max_new_tokens} new tokens; median of {a.rounds} rounds\n")
    if "disk" in rows:
        print(f"disk, cold, the same bytes: buffered {med('disk', lambda x: x['buffered_bytes_per_s']) / 1e9:.2f} GB/s, "
              f"O_DIRECT as dd {med('disk', lambda x: x['direct_dd_bytes_per_s']) / 1e9:.2f} GB/s, "
              f"ferry's direct reader alone {med('disk', lambda x: x['direct_ferry_bytes_per_s']) / 1e9:.2f} GB/s "
              f"(disk figure: the best of the three, per round)\n")
    print("| run | limit | cache | bytes/token | ms/token | effective GB/s | of disk | anon RSS | peak RSS | mode |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    for name in rows:
        if name == "disk":
            continue
        ms = med(name, lambda x: x["timings"]["decode_ms_per_token"])
        if ms is None:
            print(f"| {name} | | | | FAILED | | | | | |")
            continue
        gbps = layer_bytes / ms / 1e6 if layer_bytes else 0
        # The share of the disk's figure measured in the same round, then the median over rounds.
        share = med(name, lambda x: (layer_bytes / x["timings"]["decode_ms_per_token"] / 1e6) /
                    (next(d["disk_bytes_per_s"] for d in runs if d["row"] == "disk" and d["round"] == x["round"]) / 1e9)) \
            if "disk" in rows and rows[name][2] == "cold" else None
        modes = {x.get("disk_read", {}).get("mode", "-") for x in runs if x["row"] == name and "failed" not in x}
        limited = rows[name][1] is not None
        print(f"| {name} | {limit / 1e9 if limited else 0:.2f} GB | {rows[name][2]} | {layer_bytes / 1e9:.2f} GB | {ms:.0f} | "
              f"{gbps:.2f} | {'%.0f%%' % (100 * share) if share else '-'} | "
              f"{med(name, lambda x: x['timings']['rss_anon_bytes']) / 2**30:.2f} GiB | "
              f"{med(name, lambda x: x['timings']['peak_rss_bytes']) / 2**30:.2f} GiB | {'/'.join(sorted(modes))} |")
    acc, auto = med("accelerate", lambda x: x["timings"]["decode_ms_per_token"]), med("ferry auto", lambda x: x["timings"]["decode_ms_per_token"])
    if acc and auto:
        print(f"\nferry auto vs Accelerate in the limit: {acc / auto:.2f}x faster per token")
    wm, wa = med("warm mapped", lambda x: x["timings"]["decode_ms_per_token"]), med("warm auto", lambda x: x["timings"]["decode_ms_per_token"])
    if wm and wa:
        print(f"no limit, warm: auto / mapped = {wa / wm:.3f}")
    print(f"\nbenchmark: {shlex.join([sys.executable] + sys.argv)}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"limit_bytes": limit if cgroup else None, "model_bytes": model_bytes, "runs": runs}, f, indent=1)

    token_runs = [x for x in runs if "generated" in x]
    failed = [x for x in runs if "failed" in x]
    bad = [x for x in token_runs if first_divergence(token_runs[0]["generated"][0], x["generated"][0])]
    for x in bad:
        print(f"tokens DIVERGE: round {x['round'] + 1} {x['row']}: {x['generated'][0]} vs {token_runs[0]['generated'][0]}")
    if not bad and token_runs:
        print(f"tokens agree: all {len(token_runs)} runs generated {token_runs[0]['generated'][0]}")
    return 1 if bad or failed else 0


if __name__ == "__main__":
    sys.exit(main())
