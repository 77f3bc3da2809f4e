"""Messages between the parent and its workers on `events.ipc` (PUSH -> PULL) and `state.ipc` (PUB -> SUB).

Both sides import these models; nothing else defines a wire shape. Every message carries the
protocol version `v` and a `kind` that selects its model.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from .protocol import PROTOCOL_VERSION

# ----------------------------------------------------------------------------- worker -> parent (events.ipc)


class Heartbeat(BaseModel):
    """One validated heartbeat as an intake worker hands it to the parent (DESIGN section 4)."""

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


EventMessage = Annotated[Union[HeartbeatBatch, WorkerBeat], Field(discriminator="kind")]
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
    expects_heartbeat: bool = False
    operator_stopped: bool = False
    started_at: float | None = None  # wall clock start of the current process
    health_check: dict[str, Any] = Field(default_factory=dict)


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


StateMessage = Annotated[Union[AgentUpdate, AgentRemoved, HeartbeatTimes], Field(discriminator="kind")]
STATE_ADAPTER: TypeAdapter[StateMessage] = TypeAdapter(StateMessage)
STATE_TOPIC = b"state"
