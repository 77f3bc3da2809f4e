"""What prometheus_client costs an HTTP intake worker: RSS after import, and time per /metrics render.

Run by hand from a checkout: `.venv/bin/python bench/metrics_cost.py [--agents 1000]`; results go to
docs/decisions.md ("Metrics through prometheus_client").
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

RSS_PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
import workers.heartbeat_http  # everything the HTTP intake worker imports
with open('/proc/self/status') as f:
    print(next(int(line.split()[1]) for line in f if line.startswith('VmRSS:')))
"""


def import_rss(tree: str) -> int:
    """KiB resident after importing the worker module of the checkout at `tree` (median of 3)."""
    runs = sorted(int(subprocess.run([sys.executable, "-c", RSS_PROBE, tree], capture_output=True, text=True, check=True).stdout)
                  for _ in range(3))
    return runs[1]


def render_ms(agents: int, rounds: int) -> float:
    from supervisor.common.prometheus import Exposition

    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        m = Exposition()
        for i in range(agents):
            aid = f"agent-{i:05d}"
            for state in ("starting", "running", "stopping", "stopped", "failed", "backoff"):
                m.gauge("agentd_agent_state", "s", int(state == "running"), agent=aid, state=state)
            m.gauge("agentd_agent_healthy", "h", 1, agent=aid)
            m.counter("agentd_agent_restarts_total", "r", 3, agent=aid, reason="exit")
            m.gauge("agentd_agent_cpu_percent", "c", 1.25, agent=aid)
            m.gauge("agentd_agent_rss_bytes", "r", 12345678, agent=aid)
        m.text()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--baseline", metavar="TREE", help="another checkout (e.g. one from before prometheus_client) to compare RSS with")
    a = p.parse_args()
    print(f"worker module imported: RSS {import_rss('.')} KiB")
    if a.baseline:
        print(f"  baseline {a.baseline}: RSS {import_rss(a.baseline)} KiB")
    print(f"render {a.agents} agents x 10 samples: best of {a.rounds}: {render_ms(a.agents, a.rounds):.1f} ms")


if __name__ == "__main__":
    main()
