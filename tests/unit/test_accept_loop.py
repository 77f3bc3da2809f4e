"""The intakes' shared accept loop and per-peer limits (workers/accept_loop.py), on real sockets, no processes."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections import Counter

from supervisor.common.rate_limited_log import RateLimitedLog
from workers.accept_loop import AcceptLoop, PeerLimits


class _FailingListener(socket.socket):
    """A real listening socket whose accept fails with `error` (how EMFILE or EPROTO reach the loop)."""

    error = 0

    def accept(self):  # type: ignore[override]
        raise OSError(self.error, "injected")


def _run_failing(error: int, caplog) -> tuple[Counter, AcceptLoop, list[str]]:
    async def main() -> tuple[Counter, AcceptLoop]:
        listener = _FailingListener(socket.AF_INET, socket.SOCK_STREAM)
        listener.error = error
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        counters: Counter = Counter()
        loop = AcceptLoop(listener, lambda conn: None, batch=4, counters=counters, limited=RateLimitedLog(logging.getLogger("t.accept")))
        loop.start()
        client = socket.create_connection(listener.getsockname())
        try:
            deadline = asyncio.get_running_loop().time() + 10
            while not counters and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # a spinning loop would count many more meanwhile
            return counters, loop
        finally:
            loop.stop()
            client.close()
            listener.close()

    with caplog.at_level(logging.WARNING, "t.accept"):
        counters, loop = asyncio.run(main())
    return counters, loop, [r.getMessage() for r in caplog.records]


def test_out_of_fds_pauses_and_logs_once(caplog):
    counters, _loop, lines = _run_failing(errno.EMFILE, caplog)
    assert counters == Counter({"accept_errors_EMFILE": 1})  # paused for a second, not retried on every wake-up
    assert len(lines) == 1 and lines[0].startswith("cannot accept connections for now"), lines


def test_other_accept_error_is_counted_and_logged_once_without_pausing(caplog):
    counters, _loop, lines = _run_failing(errno.EPROTO, caplog)
    assert counters["accept_errors_EPROTO"] >= 1
    assert len(lines) == 1 and lines[0].startswith("accept failed"), lines


def test_accepts_at_most_a_batch_per_wake_up():
    async def main() -> list[list[socket.socket]]:
        listener = socket.create_server(("127.0.0.1", 0), backlog=16)
        wakes: list[list[socket.socket]] = [[]]
        loop = AcceptLoop(listener, wakes[-1].append, batch=2, counters=Counter(), limited=RateLimitedLog(logging.getLogger("t.accept")))
        clients = [socket.create_connection(listener.getsockname()) for _ in range(5)]
        try:
            loop.start()
            loop._accept()  # one wake-up by hand, before the loop runs its reader: the batch bounds it
            first = list(wakes[0])
            deadline = asyncio.get_running_loop().time() + 10
            while len(wakes[0]) < 5 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
            return [first, list(wakes[0])]
        finally:
            loop.stop()
            for conn in wakes[0]:
                conn.close()
            for client in clients:
                client.close()
            listener.close()

    first, everything = asyncio.run(main())
    assert len(first) == 2 and len(everything) == 5
    assert all(not conn.getblocking() for conn in everything)


def test_peer_limits_unverified_per_peer_and_in_all():
    limits = PeerLimits(max_unverified_per_peer=2, max_unverified=3)
    assert limits.admit("uid:1") is None and limits.admit("uid:1") is None
    assert limits.admit("uid:1") == "uid:1 already has 2 open connections that sent no valid heartbeat"
    assert limits.admit("uid:2") is None
    assert limits.admit("uid:3") == "3 connections that sent no valid heartbeat are open; the rest is kept for agents"
    limits.release("uid:1")
    assert limits.unverified == 2 and limits.admit("uid:3") is None
    assert limits.open == Counter({"uid:1": 1, "uid:2": 1, "uid:3": 1})


def test_peer_limits_verified_connections_meet_only_their_own_limit():
    limits = PeerLimits(max_unverified_per_peer=1, max_unverified=1)
    assert limits.admit("uid:1") is None
    assert limits.admit("agent:a", verified=True, limit=2) is None  # the unverified share is full; agents still get in
    assert limits.admit("agent:a", verified=True, limit=2) is None
    assert limits.admit("agent:a", verified=True, limit=2) == "agent:a already has 2 open connections"
    limits.release("agent:a", verified=True)
    limits.release("agent:a", verified=True)
    assert limits.unverified == 1 and "agent:a" not in limits.open
