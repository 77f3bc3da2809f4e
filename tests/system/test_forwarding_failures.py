"""An intake that cannot forward does not say 200 (issue 8): the link breaks and refuses, and the parent
replaces a worker whose beats show accepted heartbeats that never arrive."""

from __future__ import annotations

import asyncio
import time


from supervisor.wire.messages import WorkerBeat
from supervisor.parent.worker_pool import FORWARD_STALL, WorkerPool, WorkerSpec
from tests.support.processes import pid_alive
from workers.link import WorkerLink

HEARTBEAT = {"agent_id": "a", "pid": 1, "timestamp": 1.0, "generation": 0}


def test_a_link_whose_socket_fails_breaks_refuses_and_says_why(tmp_path):
    async def run() -> None:
        link = WorkerLink(tmp_path, "heartbeat-test", want_state=False)
        try:
            assert link.submit(dict(HEARTBEAT))
            link.push.close(linger=0)  # the socket is gone under the link: every send now raises ENOTSOCK
            link._send_batches(partial=True)
            assert link.broken.is_set() and "sending heartbeats to the parent failed" in link.broken_reason
            assert not link.has_room(1) and not link.submit(dict(HEARTBEAT))  # the intake answers 503 from now on
            assert link.counters["dropped_link_broken"] == 1
        finally:
            link._closed = True
            link.ctx.term()

    asyncio.run(run())


def test_a_heartbeat_that_cannot_be_encoded_is_refused_alone(tmp_path):
    async def run() -> None:
        link = WorkerLink(tmp_path, "heartbeat-test", want_state=False)
        try:
            assert not link.submit({**HEARTBEAT, "version": "\ud800"})
            assert link.submit(dict(HEARTBEAT)) and link.queue_depth == 1 and not link.broken.is_set()
        finally:
            link._closed = True
            link.push.close(linger=0)
            link.ctx.term()

    asyncio.run(run())


def _stalled_worker_is_replaced(tmp_path, arriving: bool) -> tuple[bool, str | None]:
    """Beat for a live worker process as a wedged intake would (accepted grows, nothing arrives) or as a
    healthy one (its heartbeats arrive); whether the pool killed it within FORWARD_STALL + a margin."""

    async def run() -> tuple[bool, str | None]:
        # A real worker process that stays up (it waits for a parent snapshot that never comes).
        spec = WorkerSpec("heartbeat-test", "health", ["--run-dir", str(tmp_path)])
        pool = WorkerPool(asyncio.get_running_loop(), tmp_path, [spec], "warning", "text")
        pool.start_all()
        worker = pool.workers["heartbeat-test"]
        pid = worker.popen.pid
        try:
            accepted = 0
            end = time.monotonic() + FORWARD_STALL + 3
            while time.monotonic() < end and worker.killing_cause is None:
                accepted += 10
                if arriving:
                    pool.on_heartbeats("heartbeat-test", 10)
                pool.on_beat(WorkerBeat(worker="heartbeat-test", pid=pid, counters={"accepted": accepted}))
                await asyncio.sleep(0.25)  # the beat interval of the simulated worker
            cause = worker.killing_cause
            deadline = time.monotonic() + 10
            while cause and pid_alive(pid) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return not pid_alive(pid), cause
        finally:
            await pool.stop_all()

    return asyncio.run(run())


def test_parent_replaces_an_intake_that_accepts_but_forwards_nothing(tmp_path):
    killed, cause = _stalled_worker_is_replaced(tmp_path, arriving=False)
    assert killed and cause.startswith("forwarding stalled"), cause


def test_parent_leaves_an_intake_whose_heartbeats_arrive(tmp_path):
    killed, cause = _stalled_worker_is_replaced(tmp_path, arriving=True)
    assert not killed and cause is None, cause
