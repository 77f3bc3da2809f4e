"""`events [-f]`: agent state transitions with their reasons; long-polls so `-f` sees them as they happen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

NAME = "events"


class AgentEvent(BaseModel):
    """One state transition of one agent, as shown by `agentctl events`."""

    seq: int
    time: str
    agent_id: str
    old: str
    new: str
    reason: str


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[str] = Field(default_factory=list)
    after: int | None = Field(default=None, ge=0)
    limit: int = Field(default=100, ge=1, le=10_000)
    wait: float = Field(default=0.0, ge=0, le=60)  # seconds to wait for something newer than `after`


class Result(BaseModel):
    events: list[AgentEvent]
    last_seq: int
