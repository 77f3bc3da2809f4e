"""Messages between the parent and its workers on `events.ipc` (PUSH -> PULL) and `state.ipc` (PUB -> SUB).

Both sides import these models; nothing else defines a wire shape. Every message carries the
protocol version `v` and a `kind` that selects its model.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from supervisor.wire.protocol import PROTOCOL_VERSION

# ----------------------------------------------------------------------------- worker -> parent (events.ipc)


class Heartbeat(BaseModel):
    """One validated heartbeat as an intake worker hands it to the parent (docs/heartbeat-api.md)."""

    model_config = ConfigDict(extra="ignore")
    agent_id: str
    pid: int | None = None  # the process that sent it (claimed on HTTP, peer credentials on the socket)
    timestamp: float  # wall clock seconds: the agent's own timestamp, or receipt time when it gave none
    status: str | None = None
    version: str | None = None
    cpu: float | None = None
    memory: int | None = None
    generation: int | None = None  # the agent generation the worker validated against, if known


class HeartbeatBatch(BaseModel):
    """Heartbeats travel in batches: one message per flush, not one per heartbeat."""

    v: int = PROTOCOL_VERSION
    kind: Literal["heartbeats"] = "heartbeats"
    worker: str
    items: list[Heartbeat]


class WorkerBeat(BaseModel):
    """A worker's liveness beat with its counters; silence means the worker is stuck."""

    v: int = PROTOCOL_VERSION
    kind: Literal["worker_beat"] = "worker_beat"
    worker: str
    pid: int
    counters: dict[str, int] = Field(default_factory=dict)  # received, accepted, rejected_<reason>, dropped, ...
    queue_depth: int = 0
    info: dict[str, str] = Field(default_factory=dict)  # e.g. {"listen": "127.0.0.1:8084"}
    every: float = Field(default=1.0, gt=0, le=60)  # seconds until the worker's next beat (workers/link.py)


VerdictKind = Literal["dead", "no_heartbeat", "over_threshold", "endpoint_failed"]
HealthState = Literal["healthy", "dead", "no_heartbeat", "over_threshold", "endpoint_failed", "stopped", "operator_stopped", "starting", "unknown"]


class Verdict(BaseModel):
    """The health worker asks the parent to act on an unhealthy agent; the parent applies policy."""

    v: int = PROTOCOL_VERSION
    kind: Literal["verdict"] = "verdict"
    worker: str
    agent_id: str
    generation: int  # the process generation judged; a verdict about a replaced process is ignored
    verdict: VerdictKind
    detail: str  # for people: "no heartbeat for 95 s (timeout 90 s)", "rss 612 MiB > 500 MiB for 60 s"
    time: float  # wall clock, for people
    # Monotonic (CLOCK_MONOTONIC is one clock for every process of the node): when the evidence began
    # and when the verdict was formed. The parent refuses a verdict whose evidence spans its own stall.
    since: float | None = None
    formed: float | None = None


class AgentHealth(BaseModel):
    """One agent's health as last judged."""

    health: HealthState
    generation: int
    detail: str = ""


class HealthReport(BaseModel):
    """Every agent's current health after a judging round (so status shows 'healthy' too)."""

    v: int = PROTOCOL_VERSION
    kind: Literal["health"] = "health"
    worker: str
    agents: dict[str, AgentHealth]


class ResourceSample(BaseModel):
    """Resource use of one agent's whole process tree (or of one agentd process), at one time."""

    agent_id: str  # agent id, or "agentd/<process>" for agentd's own processes ("agentd/parent", "agentd/health")
    ts: float  # wall clock
    mono: float | None = None  # monotonic time of the sample: threshold durations are measured on it
    cpu: float | None = None  # percent of one core, summed over the tree; None on the first sample
    rss: int = 0
    vms: int = 0
    read_bytes: int | None = None
    write_bytes: int | None = None
    fds: int | None = None
    threads: int = 0
    procs: int = 0
    generation: int | None = None


class ResourceSamples(BaseModel):
    """A round of samples, one per agent tree and agentd process."""

    v: int = PROTOCOL_VERSION
    kind: Literal["resources"] = "resources"
    worker: str
    samples: list[ResourceSample]


EventMessage = Annotated[Union[HeartbeatBatch, WorkerBeat, Verdict, HealthReport, ResourceSamples], Field(discriminator="kind")]
EVENT_ADAPTER: TypeAdapter[EventMessage] = TypeAdapter(EventMessage)


# ----------------------------------------------------------------------------- parent -> workers (state.ipc)


class AgentView(BaseModel):
    """What a worker needs to know about one agent to validate heartbeats and judge health."""

    id: str
    type: str
    state: str
    pid: int | None = None
    pgid: int | None = None
    create_time: float | None = None
    generation: int = 0
    token: str | None = None  # per-agent heartbeat bearer token
    secret: str | None = None  # the agent's own heartbeat secret, from its environment: proof of an HTTP sender
    expects_heartbeat: bool = False
    operator_stopped: bool = False
    started_at: float | None = None  # wall clock start of the current process (for display)
    started_mono: float | None = None  # monotonic start: what deadlines count from
    version: str | None = None  # as last reported by the agent's heartbeats
    restarts: int = 0
    health_check: dict[str, Any] = Field(default_factory=dict)
    cgroup: str | None = None  # the agent's cgroup directory in cgroup mode: membership and figures come from it


class AgentUpdate(BaseModel):
    """An agent was added or changed state (or its view changed)."""

    v: int = PROTOCOL_VERSION
    kind: Literal["agent"] = "agent"
    seq: int
    agent: AgentView


class AgentRemoved(BaseModel):
    """An agent left the configuration."""

    v: int = PROTOCOL_VERSION
    kind: Literal["agent_removed"] = "agent_removed"
    seq: int
    agent_id: str


class HeartbeatTimes(BaseModel):
    """Coalesced last-heartbeat wall times, published about once a second for the health worker."""

    v: int = PROTOCOL_VERSION
    kind: Literal["heartbeat_times"] = "heartbeat_times"
    seq: int
    last_heartbeat: dict[str, float]
    # Wall time an intake worker last came back after dying: heartbeats missed during the outage
    # are the daemon's fault, so heartbeat deadlines count from here at the earliest.
    intake_restarted_at: float | None = None
    # The same on the monotonic clock, which is what deadlines use (wall times are for display and the
    # Manager). intake_restarted_mono also moves to the end of each stall of the parent: heartbeats it
    # could not take in are not the agents' fault.
    last_heartbeat_mono: dict[str, float] = Field(default_factory=dict)
    intake_restarted_mono: float | None = None
    parent_stalled_until: float | None = None  # monotonic end of the parent's latest stall


StateMessage = Annotated[Union[AgentUpdate, AgentRemoved, HeartbeatTimes], Field(discriminator="kind")]
STATE_ADAPTER: TypeAdapter[StateMessage] = TypeAdapter(StateMessage)
STATE_TOPIC = b"state"
