"""How much memory a worker costs: plain subprocess (`python -m`) vs multiprocessing forkserver with
the shared modules preloaded. Prints PSS/RSS per worker; run by hand: `.venv/bin/python bench/worker_memory.py`.
"""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
import time

MODULES = ["zmq", "zmq.asyncio", "pydantic", "psutil", "supervisor.wire.messages", "supervisor.config.loading", "workers.link"]
N = 4


def pss_kib(pid: int) -> tuple[int, int]:
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if parts[0] in ("Pss:", "Rss:"):
                fields[parts[0]] = int(parts[1])
    return fields["Pss:"], fields["Rss:"]


def idle_worker() -> None:
    import importlib

    for name in MODULES:
        importlib.import_module(name)
    time.sleep(60)


def measure(pids: list[int]) -> tuple[float, float]:
    time.sleep(3)  # let imports finish
    values = [pss_kib(p) for p in pids]
    return sum(v[0] for v in values) / len(values) / 1024, sum(v[1] for v in values) / len(values) / 1024


def main() -> None:
    code = "import importlib,time\n" + "".join(f"importlib.import_module({m!r})\n" for m in MODULES) + "time.sleep(60)\n"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(N)]
    t0 = time.monotonic()
    sub = measure([p.pid for p in procs])
    for p in procs:
        p.kill()
        p.wait()

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(MODULES)
    workers = [ctx.Process(target=idle_worker) for _ in range(N)]
    for w in workers:
        w.start()
    fork = measure([w.pid for w in workers])
    for w in workers:
        w.kill()
        w.join()
    print(f"{N} idle workers importing {', '.join(MODULES)}")
    print(f"subprocess (python -m):     PSS {sub[0]:6.1f} MiB  RSS {sub[1]:6.1f} MiB per worker")
    print(f"forkserver + preload:       PSS {fork[0]:6.1f} MiB  RSS {fork[1]:6.1f} MiB per worker")
    del t0


if __name__ == "__main__":
    main()
