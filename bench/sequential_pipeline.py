#!/usr/bin/env python3
"""A model of one's own as a pipeline (SequentialPipeline, issue 17), rounds interleaved.

Rows, each a fresh run of build/bench_sequential_pipeline (the same model and inputs):
  * 1 process: the whole model;
  * N ranks, one input at a time: SequentialPipeline::forward per input (one rank busy at a time);
  * N ranks, all inputs in flight: SequentialPipeline::forward_in_flight (rank 0 on input i + 1
    while rank 1 is on input i);
  * N processes side by side, each the whole model on all inputs, not talking: what this machine
    gives N processes at once (its cores, caches and memory shared), the ceiling for the pipeline;
    their ms per input is the pair's (a process's time / N).
--threads T sets OMP_NUM_THREADS for every process (default 1: N ranks of 1 thread against 1
process of 1 thread, the issue's comparison).

  python3 bench/sequential_pipeline.py [--ferry build/ferry] [--program build/bench_sequential_pipeline]
         [--nproc 2] [--rounds 3] [--inputs 16] [--rows 64] [--width 2048] [--blocks 8] [--threads 1]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys


def result(p, cmd):
    out, err = p.communicate()
    if p.returncode != 0:
        sys.exit(f"sequential_pipeline.py: failed ({p.returncode}): {' '.join(cmd)}\n{out[-2000:]}{err[-2000:]}")
    line = out.strip().splitlines()[-1]
    return json.loads(line[len("[rank 0] "):] if line.startswith("[rank 0] ") else line)


def run(cmd, env, copies=1):
    """Runs `copies` of cmd at once; returns the first one's JSON, its ms per input divided by copies."""
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(copies)]
    js = [result(p, cmd) for p in procs]
    js[0]["ms_per_input"] = sum(j["ms_per_input"] for j in js) / copies / copies
    return js[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ferry", default="build/ferry")
    ap.add_argument("--program", default="build/bench_sequential_pipeline")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    for name, default in (("inputs", 16), ("rows", 64), ("width", 2048), ("blocks", 8)):
        ap.add_argument(f"--{name}", type=int, default=default)
    a = ap.parse_args()
    program = os.path.abspath(a.program)  # ferry launch runs a program given by a path
    shape = ["--inputs", str(a.inputs), "--rows", str(a.rows), "--width", str(a.width), "--blocks", str(a.blocks)]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    launch = [a.ferry, "launch", "--nproc", str(a.nproc), "--", program] + shape
    rows = {"1 process": [program] + shape,
            f"{a.nproc} ranks, one input at a time": launch,
            f"{a.nproc} ranks, all inputs in flight": launch + ["--in-flight"],
            f"{a.nproc} processes side by side": [program] + shape}
    copies = {f"{a.nproc} processes side by side": a.nproc}
    results = {name: [] for name in rows}
    for r in range(a.rounds):
        for name in (list(rows) if r % 2 == 0 else list(reversed(rows))):
            j = run(rows[name], env, copies.get(name, 1))
            results[name].append(j)
            print(f"round {r + 1} {name:34} {j['ms_per_input']:9.2f} ms/input", flush=True)
    print(f"\n{a.blocks} blocks of Linear({a.width}, {a.width}) + GELU, {a.inputs} inputs of [{a.rows}, {a.width}], "
          f"{a.threads} thread(s) per process, median of {a.rounds} rounds\n")
    base = statistics.median(j["ms_per_input"] for j in results["1 process"])
    print("| row | ms per input | inputs/s | vs 1 process | rank 0 sent, MiB |")
    print("|---|---:|---:|---:|---:|")
    for name, js in results.items():
        ms = statistics.median(j["ms_per_input"] for j in js)
        print(f"| {name} | {ms:.2f} | {1e3 / ms:.1f} | {base / ms:.2f}x | {js[-1]['bytes_sent'] / 2**20:.1f} |")


if __name__ == "__main__":
    main()
