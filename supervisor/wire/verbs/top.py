"""`top`: every agent's state, health and latest resource sample, plus agentd's own processes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from supervisor.wire.messages import ResourceSample
from supervisor.wire.verbs.status import AgentStatus

NAME = "top"


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AgentTop(BaseModel):
    status: AgentStatus
    sample: ResourceSample | None  # None until the health worker has sampled this agent


class Result(BaseModel):
    agents: list[AgentTop]
    agentd: list[ResourceSample]  # "agentd/parent", "agentd/<worker>"
