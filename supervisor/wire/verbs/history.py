"""`history ID [--since 1h]`: an agent's resource samples from the SQLite history."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from supervisor.wire.messages import ResourceSample

NAME = "history"


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    since: float = Field(default=3600.0, gt=0, description="seconds back from now")
    limit: int = Field(default=2000, ge=1, le=100_000)
    every: float | None = Field(default=None, ge=1, description="aggregate into windows of this many seconds")


class Window(BaseModel):
    """Average and maximum of the samples in one window (`history --every`); None where no sample had a value."""

    start: float  # wall clock, a multiple of `every`
    samples: int
    cpu_avg: float | None
    cpu_max: float | None
    rss_avg: float | None
    rss_max: int | None
    fds_avg: float | None
    fds_max: int | None
    threads_max: int | None
    procs_max: int | None


class Result(BaseModel):
    agent_id: str
    since: float  # wall clock
    samples: list[ResourceSample]
    every: float | None = None
    windows: list[Window] | None = None  # with `every`, instead of samples
