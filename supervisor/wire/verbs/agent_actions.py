"""The models start, stop and restart share: which agents, how long to wait, and each agent's outcome."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ActionArgs(BaseModel):
    """Which agents, and whether (and how long) to wait for them to settle."""

    model_config = ConfigDict(extra="forbid")
    ids: list[str] = Field(default_factory=list)
    all: bool = False
    wait: bool = True
    timeout: float = Field(default=50.0, ge=0, le=3600)
    force: bool = False  # stop: SIGKILL the tree at once instead of stop_signal and stop_timeout


class AgentOutcome(BaseModel):
    """One agent's result: did the action succeed, where is it now, in words."""

    id: str
    ok: bool
    state: str
    pid: int | None
    message: str


class ActionResultList(BaseModel):
    results: list[AgentOutcome]
    pending: bool = False  # some agent had not settled within the timeout: still working
