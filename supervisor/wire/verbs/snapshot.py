"""`snapshot`: the full agent view and its sequence number, for workers joining the state feed."""

from pydantic import BaseModel, ConfigDict

from supervisor.wire.messages import AgentView

NAME = "snapshot"


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Result(BaseModel):
    seq: int
    agents: list[AgentView]
    last_heartbeat: dict[str, float]
    intake_restarted_at: float | None = None
    last_heartbeat_mono: dict[str, float] = {}
    intake_restarted_mono: float | None = None
    parent_stalled_until: float | None = None
