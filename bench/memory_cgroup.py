"""A memory cgroup (v1, else v2) with a limit that benchmark child processes join: a model larger than
the memory it may use, on a machine that has more (bench/larger_than_ram.py, bench/vs_accelerate.py
--memory-limit, bench/pipeline.py --memory-limit). Needs root."""
import os
import subprocess


def drop_page_cache():
    """Cold reads: write back, then drop the page cache (root only)."""
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


class MemoryCgroup:
    """A memory cgroup with a limit that child processes join (v1, else v2); `error` says why not."""

    made = 0  # cgroups made by this process: each its own name

    def __init__(self, limit):
        self.path, self.error, self.limit = None, None, limit
        MemoryCgroup.made += 1
        name = f"ferry-bench-{os.getpid()}-{MemoryCgroup.made}"
        try:
            if os.path.exists("/sys/fs/cgroup/memory/memory.limit_in_bytes"):
                self.path = f"/sys/fs/cgroup/memory/{name}"
                os.makedirs(self.path, exist_ok=True)
                with open(f"{self.path}/memory.limit_in_bytes", "w") as f:
                    f.write(str(limit))
            elif os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
                self.path = f"/sys/fs/cgroup/{name}"
                os.makedirs(self.path, exist_ok=True)
                with open(f"{self.path}/memory.max", "w") as f:
                    f.write(str(limit))
            else:
                self.error = "no cgroup memory controller is mounted"
        except OSError as e:
            self.error = f"cannot create a memory cgroup ({e}); run as root"
            self.path = None

    def join(self):  # runs in the child, before exec
        if self.path:
            with open(f"{self.path}/cgroup.procs", "w") as f:
                f.write(str(os.getpid()))

    def oom_kills(self):
        for file, key in (("memory.oom_control", "oom_kill"), ("memory.events", "oom_kill")):
            try:
                with open(f"{self.path}/{file}") as f:
                    for line in f:
                        k, _, v = line.partition(" ")
                        if k == key:
                            return int(v)
            except OSError:
                pass
        return 0

    def remove(self):
        if self.path:
            try:
                os.rmdir(self.path)
            except OSError:
                pass
