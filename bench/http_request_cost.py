"""CPU per HTTP heartbeat in the intake's own Python, without sockets: the real HeartbeatHttpServer and
HttpConnection fed canned keep-alive requests, as bench/heartbeat_load.py's wrk sends them (50 agents, each
with its Bearer secret, the sender check on). The transport is a stand-in that keeps nothing; batches go to
the real WorkerLink's PUSH socket and a thread drains them. Prints µs per request (minimum of the rounds).

    .venv/bin/python bench/http_request_cost.py [--requests 200000] [--rounds 5] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import sys
import tempfile
import shutil
import subprocess
import time
from pathlib import Path

import uvloop
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from supervisor.config.daemon_sections import HttpIntake  # noqa: E402
from supervisor.wire.messages import AgentView  # noqa: E402
from workers.http_connection import HttpConnection  # noqa: E402
from workers.http_intake import HeartbeatHttpServer  # noqa: E402
from workers.link import WorkerLink  # noqa: E402

TIMESTAMP = "2026-01-01T00:00:00Z"
DRAIN = """
import sys, zmq
pull = zmq.Context().socket(zmq.PULL)
pull.bind(sys.argv[1])
print("bound", flush=True)
while True:
    pull.recv()
"""


class NullTransport:
    """Takes every reply and keeps nothing; counts bytes so a refusal would show."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def get_extra_info(self, name: str, default=None):
        return default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        raise AssertionError("the connection was closed: a request was refused")

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def canned(agents: int) -> tuple[list[AgentView], list[bytes]]:
    views, requests = [], []
    for i in range(agents):
        pid = 100_000 + i
        secret = f"secret-{i:04d}-" + "x" * 30
        views.append(AgentView(id=f"a{i:04d}", type="custom", state="running", pid=pid, pgid=pid, secret=secret, generation=1))
        body = json.dumps({"agent_id": f"a{i:04d}", "pid": pid, "timestamp": TIMESTAMP, "status": "running",
                           "version": "1.0.0", "cpu": 1.5, "memory": 12_345_678}, separators=(",", ":")).encode()
        requests.append(b"POST /heartbeat HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
                        b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s" % (secret.encode(), len(body), body))
    return views, requests


async def measure(n: int, rounds: int, agents: int, profile: bool) -> list[float]:
    run_dir = Path(tempfile.mkdtemp(prefix="hrc", dir="/tmp"))
    # The stand-in parent drains events.ipc in its own process, so that it takes no GIL from the measured loop.
    drainer = subprocess.Popen([sys.executable, "-c", DRAIN, f"ipc://{run_dir}/events.ipc"], stdout=subprocess.PIPE)
    assert drainer.stdout is not None and drainer.stdout.readline() == b"bound\n"
    link = WorkerLink(run_dir, "heartbeat-http-bench", want_state=False)
    link.push.connect(f"ipc://{run_dir}/events.ipc")
    views, requests = canned(agents)
    link.agents = {v.id: v for v in views}
    server = HeartbeatHttpServer(link, HttpIntake(listen="127.0.0.1:0", verify_sender=True))
    conns = []
    for _ in range(64):  # wrk's 64 connections, each already past its first (proving) request per agent
        conn = HttpConnection(server)
        conn.transport = NullTransport()
        server.connections.add(conn)
        conns.append(conn)
    results = []
    for r in range(rounds + 1):  # the first round warms the caches (and proves each connection for each agent)
        prof = cProfile.Profile() if profile and r == rounds else None
        t0 = time.process_time()
        if prof:
            prof.enable()
        for i in range(n):
            conn = conns[i % 64]
            conn.data_received(requests[i % agents])
            if i % 40 == 39:  # one loop pass over ~40 ready connections, as strace showed under wrk
                server._flush_unsent()
                link._send_batches(partial=True)
                while link._blocked:  # the drainer is behind (it runs on the other core, as the parent does)
                    link._send_batches(partial=True)
        if prof:
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        elapsed = time.process_time() - t0
        if r:
            results.append(elapsed / n * 1e6)
    accepted = link.counters["accepted"]
    drainer.kill()
    drainer.wait()
    shutil.rmtree(run_dir, ignore_errors=True)
    assert accepted == n * (rounds + 1), f"only {accepted} of {n * (rounds + 1)} accepted: {dict(link.counters)}"
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--profile", action="store_true", help="cProfile one more round (slower; for where, not how much)")
    args = ap.parse_args()
    results = uvloop.run(measure(args.requests, args.rounds, args.agents, args.profile))
    print(f"HTTP heartbeat, intake Python only: {min(results):.2f} µs per request (min of {args.rounds}; "
          f"all: {', '.join(f'{r:.2f}' for r in results)}), pid {os.getpid()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
