#!/usr/bin/env python3
"""ferry vs the real Hugging Face transformers + accelerate, on one checkpoint and one device map.

ferry rebuilds Accelerate's big-model inference in C++; this checks the claim against the original.
For each row (a device map) it runs, in a fresh child process each time:
  * Accelerate: transformers' AutoModelForCausalLM.from_pretrained(dir, device_map=MAP, dtype="auto" (the config's, as ferry),
    offload_folder=TMP), then greedy model.generate(ids, max_new_tokens=N, do_sample=False);
  * ferry: `ferry run dir --ids ... --max-new-tokens N --device-map MAP.json --json`.
Both get the same MAP.json and the same thread count. It prints load time, prefill time, ms per decode
token and peak RSS (plus peak GPU memory on a GPU) for both, and exits 1 unless the greedy tokens agree.

Mixtures of experts (Mixtral, Qwen3-MoE; bench/make_big_moe.py makes a 2.7 GB one) get other rows:
resident, experts-disk (every routed expert on disk, the rest in RAM; see moe_maps for why Accelerate's
map names each layer's fused experts) and experts-disk-cache (ferry only, --expert-cache with room for
every expert), and the expert bytes ferry read per decode token against the routed experts' bytes.
With a GPU also gpu (everything on 0) and experts-cpu (dense parts on 0, routed experts in CPU RAM:
Accelerate copies each layer's experts over, ferry chooses per call, --cpu-experts auto), with ferry's
two policies forced as experts-cpu-compute and experts-cpu-copy.
--drop-caches drops the page cache before every run (cold reads).
--memory-limit FRACTION adds a row that runs the disk row (disk, or experts-disk) again inside a memory
cgroup limit of FRACTION x the checkpoint's bytes, the page cache dropped first (root): a model larger
than the memory it may use, the case that makes experts come from storage token after token. Every row
reports the bytes the process read from storage per decode token (read_bytes of /proc/self/io).

Rows: resident (everything on "cpu") and disk (embeddings, final norm and lm_head on "cpu", every
decoder layer on "disk"); with a GPU also gpu (everything on 0), cpu-offload (layers on "cpu", the
rest on 0) and disk-gpu (layers on "disk", the rest on 0). An explicit map leaves nothing for
max_memory to decide, so it is not passed. transformers 5.x reads disk-placed safetensors weights in
place (the offload folder stays empty; its size is recorded as offload_folder_bytes), which is also
ferry's default, so both read the same files.

How the times compare:
  * load: from_pretrained's wall time vs ferry's load_s (neither counts process start or imports;
    "wall s" is the whole child process, imports included).
  * prefill: generate's start to the first token's logits vs ferry's prefill_s (start to first token).
  * ms/decode token: a LogitsProcessor timestamps every step's logits; the mean gap over the N-1 steps
    after the first. ferry times each of those steps the same way (forward + choosing the token).
  * peak RSS: getrusage's ru_maxrss of the child itself, the number ferry reports. Mapped checkpoint
    pages count in it, so "anon RSS" (RssAnon at the end) shows the process's own memory.
  * storage read per decode token: the growth of read_bytes in /proc/self/io (what the kernel fetched
    from storage for the process, mapped page faults and direct reads alike) over the same steps.
Rounds are interleaved (round r runs every row and tool once, the tool order alternating) so page
cache and machine noise hit both alike; the table shows medians and every round is printed.

Usage: vs_accelerate.py MODEL_DIR --ferry build/ferry [--rounds 3] [--max-new-tokens 16] [--drop-caches]
           [--memory-limit 0.45] [--out r.json]
"""
import argparse
import json
import os
import random
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from memory_cgroup import MemoryCgroup, drop_page_cache  # noqa: E402


def moe_maps(config, gpu=False):
    """Mixture-of-experts rows: row name -> (Accelerate's map, ferry's map, ferry's extra flags).

    Every routed expert on disk, the rest in RAM. transformers 5 fuses a layer's experts into one
    module (model.layers.i.mlp.experts, every expert's weights in one tensor), so that module is
    Accelerate's finest unit: it reads all of a layer's experts to run two. ferry's map puts each
    expert (the Hub's model.layers.i.block_sparse_moe.experts.j) on disk on its own.
    """
    layers = config["num_hidden_layers"]
    experts = config.get("num_local_experts") or config["num_experts"]
    block = "block_sparse_moe" if config["model_type"] == "mixtral" else "mlp"
    if config["model_type"] not in ("mixtral", "qwen3_moe"):
        sys.exit(f"vs_accelerate: MoE rows support mixtral and qwen3_moe, not {config['model_type']}")
    dense = {"model.embed_tokens": "cpu", "model.norm": "cpu", "lm_head": "cpu", "model.rotary_emb": "cpu"}
    accelerate, ferry = dict(dense), dict(dense)
    for i in range(layers):
        for part in ("self_attn", "input_layernorm", "post_attention_layernorm"):
            accelerate[f"model.layers.{i}.{part}"] = ferry[f"model.layers.{i}.{part}"] = "cpu"
        accelerate[f"model.layers.{i}.mlp.gate"] = "cpu"
        accelerate[f"model.layers.{i}.mlp.experts"] = "disk"
        ferry[f"model.layers.{i}.{block}.gate"] = "cpu"
        ferry.update({f"model.layers.{i}.{block}.experts.{e}": "disk" for e in range(experts)})
    rows = {"resident": ({"": "cpu"}, {"": "cpu"}, []),
            "experts-disk": (accelerate, ferry, []),
            # ferry only: an expert cache with room for every expert, so later picks are served from RAM
            "experts-disk-cache": (None, ferry, ["--expert-cache", "64GiB"])}
    if gpu:
        # The dense parts on GPU 0, the routed experts in CPU RAM. Accelerate copies a layer's fused
        # experts (all of them) to the GPU per forward; ferry chooses per call by its cost model
        # (auto), or is forced to run them on the CPU (compute) or to copy the picked ones (copy).
        on_gpu = lambda m: {k: 0 if v == "cpu" else "cpu" for k, v in m.items()}
        accelerate_gpu, ferry_gpu = on_gpu(accelerate), on_gpu(ferry)
        rows.update({"gpu": ({"": 0}, {"": 0}, []),
                     "experts-cpu": (accelerate_gpu, ferry_gpu, []),
                     "experts-cpu-compute": (None, ferry_gpu, ["--cpu-experts", "compute"]),
                     "experts-cpu-copy": (None, ferry_gpu, ["--cpu-experts", "copy"])})
    return rows


def routed_bytes_per_token(config, bytes_per_weight=4):
    """Bytes of the experts one token runs: top-k experts of every layer, three matrices each."""
    inter = config.get("moe_intermediate_size") or config["intermediate_size"]
    return config["num_hidden_layers"] * config["num_experts_per_tok"] * 3 * config["hidden_size"] * inter * bytes_per_weight


def device_maps(layers, gpu):
    """Row name -> hf_device_map-style dict, the same file for both tools."""
    def split(outer, inner):
        m = {"model.embed_tokens": outer, "model.norm": outer, "lm_head": outer}
        m.update({f"model.layers.{i}": inner for i in range(layers)})
        # transformers' Llama has a model-level rotary embedding module without weights; keep it with
        # the embeddings so accelerate does not complain about an unplaced module.
        m["model.rotary_emb"] = outer
        return m
    rows = {"resident": {"": "cpu"}, "disk": split("cpu", "disk")}
    if gpu:
        rows.update({"gpu": {"": 0}, "cpu-offload": split(0, "cpu"), "disk-gpu": split(0, "disk")})
    return rows


def storage_bytes_read():
    """Bytes the kernel has read from storage for this process (/proc/self/io), as ferry reports them."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    return -1


def rss_anon_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return -1


def folder_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def hf_child(spec):
    """Runs in the child process: load with transformers + accelerate, generate, print one JSON line."""
    import torch
    from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

    torch.set_num_threads(spec["threads"])
    device_map = spec["device_map"]
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], device_map=device_map, dtype="auto",
                                                 offload_folder=spec["offload_folder"])
    load_s = time.perf_counter() - t0

    class Stamp(LogitsProcessor):  # called once per step, right after the forward, with its logits
        def __init__(self):
            self.times, self.reads = [], []

        def __call__(self, input_ids, scores):
            if scores.is_cuda:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())
            self.reads.append(storage_bytes_read())
            return scores

    first = device_map.get("model.embed_tokens", device_map.get(""))
    device = f"cuda:{first}" if isinstance(first, int) else "cpu"
    # One prompt (a list of ids) or several of one length (a list of lists; bench/long_context.py).
    ids = torch.tensor(spec["ids"] if isinstance(spec["ids"][0], list) else [spec["ids"]], device=device)
    stamp = Stamp()
    n = spec["max_new_tokens"]
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             logits_processor=LogitsProcessorList([stamp]), pad_token_id=model.config.eos_token_id)
    steps = len(stamp.times) - 1
    gpu = any(isinstance(v, int) for v in device_map.values())
    print(json.dumps({
        "generated": out[:, ids.shape[1]:].tolist(),
        "timings": {
            "load_s": load_s,
            "prefill_s": stamp.times[0] - t0,
            "decode_ms_per_token": 1000 * (stamp.times[-1] - stamp.times[0]) / steps if steps > 0 else 0.0,
            "decode_steps": steps,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "rss_anon_bytes": rss_anon_bytes(),
            "peak_gpu_bytes": torch.cuda.max_memory_allocated() if gpu else None,
            "storage_bytes_read": storage_bytes_read(),
            "decode_storage_bytes_per_token": (stamp.reads[-1] - stamp.reads[0]) / steps if steps > 0 else 0.0,
        },
        "offload_folder_bytes": folder_bytes(spec["offload_folder"]) if os.path.isdir(spec["offload_folder"]) else 0,
    }))


def run_child(cmd, env, cgroup=None):
    """Runs one measurement (inside `cgroup`'s memory limit if given); returns its JSON (the last stdout
    line) with the process's wall time."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=cgroup.join if cgroup else None)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        killed = f" (the memory cgroup counts {cgroup.oom_kills()} OOM kill(s))" if cgroup else ""
        sys.exit(f"vs_accelerate: this command failed with exit code {p.returncode}{killed}:\n  {shlex.join(cmd)}\n"
                 f"{p.stderr[-4000:]}")
    result = json.loads(p.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def first_divergence(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i, x, y
    return (min(len(a), len(b)), None, None) if len(a) != len(b) else None


def fmt_bytes(b):
    return "n/a" if b is None else f"{b / 2**30:.2f} GiB"


def mib(b):
    return "n/a" if b is None or b < 0 else f"{b / 2**20:.1f} MiB"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--ferry", default="build-torch2/ferry", help="the ferry binary")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads for both (OMP_NUM_THREADS for ferry)")
    ap.add_argument("--rows", help="comma-separated subset of the rows, e.g. resident,disk")
    ap.add_argument("--work-dir", default=tempfile.gettempdir(), help="device maps, child specs and offload folders go under WORK_DIR/ferry-vs-accelerate")
    ap.add_argument("--out", help="write every measurement as JSON here")
    ap.add_argument("--drop-caches", action="store_true", help="drop the page cache before every run (root): cold reads")
    ap.add_argument("--memory-limit", type=float, metavar="FRACTION",
                    help="add a row: the disk row inside a memory cgroup limit of FRACTION x the checkpoint's bytes, cold (root)")
    ap.add_argument("--hf-child", metavar="SPEC.json", help="internal: run one Accelerate measurement described by SPEC.json")
    a = ap.parse_args()
    if a.hf_child:
        with open(a.hf_child) as f:
            return hf_child(json.load(f))

    import torch
    import transformers
    import accelerate

    with open(os.path.join(a.model_dir, "config.json")) as f:
        config = json.load(f)
    gpu = torch.cuda.is_available()
    moe = bool(config.get("num_local_experts") or config.get("num_experts"))
    if moe:  # (Accelerate's map or None, ferry's map, ferry's extra flags)
        rows = moe_maps(config, gpu)
    else:
        rows = {name: (m, m, []) for name, m in device_maps(config["num_hidden_layers"], gpu).items()}
    cgroup, limited = None, set()  # limited: the rows that run inside the memory limit
    if a.memory_limit:
        disk_row = "experts-disk" if moe else "disk"
        rows[f"{disk_row}-limit"] = rows[disk_row]
        limited.add(f"{disk_row}-limit")
        model_bytes = sum(os.path.getsize(os.path.join(a.model_dir, f)) for f in os.listdir(a.model_dir)
                          if f.endswith(".safetensors"))
        cgroup = MemoryCgroup(int(model_bytes * a.memory_limit))
        if cgroup.error:
            sys.exit(f"vs_accelerate: --memory-limit: {cgroup.error}")
        print(f"the -limit row runs in a memory limit of {fmt_bytes(cgroup.limit)} ({a.memory_limit:.0%} of the "
              f"checkpoint's {fmt_bytes(model_bytes)}), page cache dropped first", flush=True)
    if a.rows:
        rows = {name: rows[name] for name in a.rows.split(",")}
    rng = random.Random(0)
    ids = [config.get("bos_token_id") or 1] + [rng.randrange(3, config["vocab_size"]) for _ in range(a.prompt_len - 1)]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    # The device maps and child specs stay in the work folder so that the printed commands can be rerun.
    work = os.path.join(a.work_dir, "ferry-vs-accelerate")
    os.makedirs(work, exist_ok=True)

    commands, runs = {}, []  # runs: one dict per (round, row, tool)
    for name, (accelerate_map, ferry_map, ferry_flags) in rows.items():
        map_path = os.path.join(work, f"{name}.json")
        with open(map_path, "w") as f:
            json.dump(ferry_map, f)
        commands[(name, "ferry")] = [a.ferry, "run", a.model_dir, "--ids", " ".join(map(str, ids)), "--max-new-tokens",
                                     str(a.max_new_tokens), "--device-map", map_path, "--json"] + ferry_flags
        if accelerate_map is None:
            continue
        spec_path = os.path.join(work, f"{name}.accelerate.json")
        with open(spec_path, "w") as f:
            json.dump({"model_dir": a.model_dir, "device_map": accelerate_map, "offload_folder": os.path.join(work, f"offload-{name}"),
                       "ids": ids, "max_new_tokens": a.max_new_tokens, "threads": a.threads}, f)
        commands[(name, "accelerate")] = [sys.executable, os.path.abspath(__file__), a.model_dir, "--hf-child", spec_path]
    for r in range(a.rounds):
        for name in rows:
            for tool in (["accelerate", "ferry"] if r % 2 == 0 else ["ferry", "accelerate"]):
                if (name, tool) not in commands:
                    continue
                shutil.rmtree(os.path.join(work, f"offload-{name}"), ignore_errors=True)  # a fresh offload folder each run
                if a.drop_caches or name in limited:
                    drop_page_cache()
                result = run_child(commands[(name, tool)], env, cgroup if name in limited else None)
                runs.append({"round": r, "row": name, "tool": tool, **result})
                t = result["timings"]
                print(f"round {r + 1}/{a.rounds} {name:11} {tool:10} load {t['load_s']:6.2f} s  prefill {t['prefill_s']:6.3f} s  "
                      f"decode {t['decode_ms_per_token']:8.2f} ms/token  storage read {mib(t.get('decode_storage_bytes_per_token'))}/token  "
                      f"peak RSS {fmt_bytes(t['peak_rss_bytes'])}  "
                      f"wall {result['wall_s']:6.2f} s", flush=True)
    for name in rows:
        shutil.rmtree(os.path.join(work, f"offload-{name}"), ignore_errors=True)
    if cgroup:
        cgroup.remove()

    # Greedy tokens: every run (all rows, both tools) must reproduce the first Accelerate run's tokens.
    reference = next(x for x in runs if x["tool"] == "accelerate")
    expected = reference["generated"][0]
    disagreements = [(run, d) for run in runs if (d := first_divergence(expected, run["generated"][0]))]

    def median(name, tool, key):
        values = [x["timings"].get(key) if key != "wall_s" else x["wall_s"]
                  for x in runs if x["row"] == name and x["tool"] == tool]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    print(f"\nferry vs transformers {transformers.__version__} + accelerate {accelerate.__version__} (torch "
          f"{torch.__version__}), {config['num_hidden_layers']} layers, hidden {config['hidden_size']}, "
          f"{config.get('dtype', config.get('torch_dtype'))}; prompt {len(ids)} tokens, {a.max_new_tokens} new; "
          f"{a.threads} thread(s); median of {a.rounds} round(s)\n")
    gpu_col = " peak GPU |" if gpu else ""
    print(f"| row | tool | load s | prefill s | ms/decode token | storage read / decode token | peak RSS | anon RSS |{gpu_col} "
          f"wall s | decode ferry/Accelerate |")
    print("|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if gpu else "") + "---:|---:|")
    for name in rows:
        for tool in ["accelerate", "ferry"]:
            if (name, tool) not in commands:
                continue
            m = {k: median(name, tool, k) for k in ["load_s", "prefill_s", "decode_ms_per_token", "peak_rss_bytes",
                                                   "rss_anon_bytes", "peak_gpu_bytes", "wall_s",
                                                   "decode_storage_bytes_per_token"]}
            ratio = ""
            if tool == "ferry" and (name, "accelerate") in commands:
                ratio = f"{m['decode_ms_per_token'] / median(name, 'accelerate', 'decode_ms_per_token'):.2f}x"
            elif tool == "ferry" and ("resident", "ferry") in commands:
                ratio = f"{m['decode_ms_per_token'] / median('resident', 'ferry', 'decode_ms_per_token'):.2f}x resident"
            gpu_cell = f" {fmt_bytes(m['peak_gpu_bytes'])} |" if gpu else ""
            print(f"| {name} | {tool} | {m['load_s']:.2f} | {m['prefill_s']:.3f} | {m['decode_ms_per_token']:.2f} | "
                  f"{mib(m['decode_storage_bytes_per_token'])} | "
                  f"{fmt_bytes(m['peak_rss_bytes'])} | {fmt_bytes(m['rss_anon_bytes'])} |{gpu_cell} {m['wall_s']:.2f} | {ratio} |")
    if moe:  # what ferry read per token against what the routed experts weigh
        routed = routed_bytes_per_token(config)
        print(f"\nrouted experts per token (top-{config['num_experts_per_tok']} x {config['num_hidden_layers']} layers): "
              f"{routed / 2**20:.1f} MiB")
        for name in rows:
            mine = [x["experts"] for x in runs if x["row"] == name and x["tool"] == "ferry" and "experts" in x]
            if mine and "cpu_experts" in mine[0]:  # experts in RAM beside a GPU: where they ran
                runs_on_cpu = statistics.median(e.get("decode_runs_on_cpu_per_token", 0) for e in mine)
                copied = statistics.median(e["decode_bytes_loaded_per_token"] for e in mine)
                print(f"{name}: ferry ran {runs_on_cpu:.1f} expert Linear calls per decode token on the CPU and copied "
                      f"{copied / 2**20:.1f} MiB of experts per decode token; {mine[0]['cpu_experts']['explanation']}")
            elif mine:
                per_token = statistics.median(e["decode_bytes_loaded_per_token"] for e in mine)
                hit = statistics.median(e["decode_cache_hit_rate"] for e in mine)
                print(f"{name}: ferry read {per_token / 2**20:.1f} MiB of experts per decode token ({per_token / routed:.2f}x "
                      f"the routed bytes; the dense parts are in RAM), decode cache hit rate {hit:.1%}")
    print(f"\nbenchmark: {shlex.join([sys.executable] + sys.argv)}")
    for (name, tool), cmd in commands.items():
        print(f"{name} {tool}: {shlex.join(cmd)}")

    if a.out:
        with open(a.out, "w") as f:
            json.dump({"model_dir": a.model_dir, "ids": ids, "max_new_tokens": a.max_new_tokens, "threads": a.threads,
                       "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                                    "accelerate": accelerate.__version__},
                       "device_maps": rows, "runs": runs}, f, indent=1)
        print(f"\nresults written to {a.out}")

    if disagreements:
        print(f"\nexpected (round 1 {reference['row']} accelerate): {expected}")
        for run, (pos, want, got) in disagreements:
            print(f"tokens DIVERGE: round {run['round'] + 1} {run['row']} {run['tool']}: first difference at new token "
                  f"{pos}: expected {want}, got {got}\n  got {run['generated'][0]}")
        return 1
    print(f"\ntokens agree: all {len(runs)} runs generated {runs[0]['generated'][0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
