"""`state.ipc`: the parent publishes every agent change and the coalesced heartbeat times, each numbered.

Workers combine this feed with the `snapshot` verb (the ZeroMQ Guide's clone pattern). PUB drops
silently when a subscriber is slow; the sequence numbers make the loss visible so the worker
re-snapshots. The socket is a plain (non-async) one because PUB sends never block.

Messages are built at the change and sent, in order, once the current loop pass is over: stopping 200
agents then signals all 200 before the first send, and the sends go out in one burst (each lone send
wakes ZeroMQ's I/O thread, which a saturated box makes slow: ~0.3 ms each, measured in
docs/performance.md).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import zmq

from supervisor.wire.ipc import bind_private, close_private
from supervisor.parent.lifecycle import AgentProcess
from supervisor.wire.messages import STATE_TOPIC, AgentRemoved, AgentUpdate, AgentView, HeartbeatTimes
from supervisor.wire.states import PROCESS_STATES


def _secret(agent: AgentProcess) -> str | None:
    derive = getattr(agent.ops, "heartbeat_secret", None)
    if derive is None:
        return agent.spec.heartbeat.token
    return agent.spec.heartbeat.token or derive(agent.spec.id)


def agent_view(agent: AgentProcess) -> AgentView:
    """What workers are told about one agent."""
    h = agent.handle if agent.state in PROCESS_STATES else None
    return AgentView(
        id=agent.spec.id,
        type=agent.spec.type,
        state=agent.state.value,
        pid=h.pid if h else None,
        pgid=h.pgid if h else None,
        create_time=h.create_time if h else None,
        generation=agent.generation,
        token=agent.spec.heartbeat.token,
        secret=_secret(agent),
        expects_heartbeat=agent.spec.expects_heartbeat,
        operator_stopped=agent.operator_stopped,
        started_at=h.started_wall if h else None,
        started_mono=h.started_mono if h else None,
        version=agent.reported.get("version"),
        restarts=agent.total_restarts,
        health_check=agent.spec.health_check.model_dump(mode="json"),
        cgroup=h.cgroup if h else None,
    )


class StateFeed:
    """Sequence-numbered PUB socket of agent updates."""

    def __init__(self, ctx: zmq.Context, path: Path) -> None:
        self.sock = ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        bind_private(self.sock, path)
        self.path = path
        self.seq = 0
        self.published = 0
        self._pending: list = []

    def _send(self, msg) -> None:
        self._pending.append(msg)
        if len(self._pending) > 1:
            return  # a flush is already scheduled
        try:
            asyncio.get_running_loop().call_soon(self.flush)
        except RuntimeError:  # no loop (a test, shutdown): at once
            self.flush()

    def flush(self) -> None:
        """Send what is queued, oldest first."""
        pending, self._pending = self._pending, []
        for msg in pending:
            self.sock.send_multipart([STATE_TOPIC, msg.model_dump_json().encode()], flags=zmq.NOBLOCK)
        self.published += len(pending)

    def agent_changed(self, agent: AgentProcess) -> None:
        self.seq += 1
        self._send(AgentUpdate(seq=self.seq, agent=agent_view(agent)))

    def agent_removed(self, agent_id: str) -> None:
        self.seq += 1
        self._send(AgentRemoved(seq=self.seq, agent_id=agent_id))

    def heartbeat_times(self, times: dict[str, float], intake_restarted_at: float | None = None,
                        mono_times: dict[str, float] | None = None, intake_restarted_mono: float | None = None,
                        parent_stalled_until: float | None = None) -> None:
        """Also the feed's keep-alive: a subscriber that missed something sees the gap within a second."""
        self.seq += 1
        self._send(HeartbeatTimes(seq=self.seq, last_heartbeat=times, intake_restarted_at=intake_restarted_at,
                                  last_heartbeat_mono=mono_times or {}, intake_restarted_mono=intake_restarted_mono,
                                  parent_stalled_until=parent_stalled_until))

    def close(self) -> None:
        self.flush()
        close_private(self.sock, self.path)
