"""What the HTTP intake reports about itself: `GET /heartbeat/stats` (with the original daemon's field names)
and this worker's part of `GET /metrics` (docs/heartbeat-api.md, docs/metrics.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from supervisor.common.prometheus import Exposition
from supervisor.wire.states import AgentState
from workers.http_replies import REJECT_REASONS, _go_time

if TYPE_CHECKING:
    from workers.http_intake import HeartbeatHttpServer


def intake_stats(server: HeartbeatHttpServer) -> dict:
    """Counters for `GET /heartbeat/stats`."""
    c = server.counters
    rejected = {key.removeprefix("rejected_"): value for key, value in c.items() if key.startswith("rejected_")}
    responses = {key.removeprefix("http_"): value for key, value in c.items() if key.startswith("http_")}
    return {
        "worker": server.link.name,
        "received": c["received"],
        "accepted": c["accepted"],
        "rejected": rejected,
        "dropped": c["dropped"],
        "queue_depth": server.link.queue_depth,
        "forwarded": c["forwarded"],
        "connections_open": len(server.connections),
        "responses": responses,
        "timestamp_replaced": c["timestamp_replaced"],
        # The original daemon's fields, under its names and units, for its dashboards and scripts.
        "total_received": c["received"],
        "total_processed": c["accepted"],
        "total_errors": sum(rejected.values()) + c["dropped"],
        "last_received_time": _go_time(server.last_received_at),
        "average_latency": server.latency_ns // c["accepted"] if c["accepted"] else 0,  # ns, as Go's Duration
    }

def intake_metrics(server: HeartbeatHttpServer) -> bytes:
    """Prometheus text for `GET /metrics`: this worker's counters and every agent's state."""
    c, w, out = server.counters, {"worker": server.link.name}, Exposition()
    prefix = "agentd_heartbeat_http_"
    out.counter(prefix + "heartbeats_received_total", "Heartbeats received by this HTTP intake worker.", c["received"], **w)
    out.counter(prefix + "heartbeats_accepted_total", "Heartbeats accepted and queued for the daemon.", c["accepted"], **w)
    for r in sorted({*REJECT_REASONS, *(k.removeprefix("rejected_") for k in c if k.startswith("rejected_"))}):
        out.counter(prefix + "heartbeats_rejected_total", "Heartbeats refused, by reason.", c[f"rejected_{r}"], **w, reason=r)
    out.counter(prefix + "heartbeats_dropped_total", "Heartbeats refused with 503 because the daemon was not keeping up.", c["dropped"], **w)
    out.counter(prefix + "heartbeats_forwarded_total", "Heartbeats sent on to the daemon.", c["forwarded"], **w)
    out.declare("counter", prefix + "responses_total", "HTTP responses sent, by status code.", "worker", "code")
    for code in sorted(k.removeprefix("http_") for k in c if k.startswith("http_")):
        out.counter(prefix + "responses_total", "HTTP responses sent, by status code.", c[f"http_{code}"], **w, code=code)
    out.counter(prefix + "timeouts_total", "Connections cut off by request_timeout.", c["timeouts"], **w)
    out.gauge(prefix + "queue_depth", "Heartbeats waiting to be sent to the daemon.", server.link.queue_depth, **w)
    out.gauge(prefix + "connections_open", "Open client connections.", len(server.connections), **w)
    out.gauge(prefix + "resident_memory_bytes", "Resident memory of this worker process.", server._process.memory_info().rss, **w)
    agents = sorted(server.link.agents.values(), key=lambda a: a.id)
    # No state label: that would start a new series on every state change (agentd_agent_state has the state).
    out.declare("gauge", "agentd_agent_up", "1 while the agent is running, else 0.", "agent", "type")
    for a in agents:
        out.gauge("agentd_agent_up", "1 while the agent is running, else 0.", int(a.state == AgentState.RUNNING), agent=a.id, type=a.type)
    beats = server.link.last_heartbeat
    out.declare("gauge", "agentd_agent_last_heartbeat_timestamp_seconds", "Wall-clock time of the agent's last accepted heartbeat.", "agent")
    for a in agents:
        out.gauge("agentd_agent_last_heartbeat_timestamp_seconds", "Wall-clock time of the agent's last accepted heartbeat.", beats.get(a.id), agent=a.id)
    return out.text() + server.parent_metrics
