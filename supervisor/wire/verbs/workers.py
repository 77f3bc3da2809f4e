"""`workers`: each worker process with pid, uptime, restarts and their causes, and its counters."""

from pydantic import BaseModel, ConfigDict

NAME = "workers"


class WorkerInfo(BaseModel):
    """One worker as `agentctl workers` shows it."""

    name: str
    kind: str
    state: str  # running | restarting | stopped
    pid: int | None
    uptime_s: float | None
    restarts: int
    restart_causes: dict[str, int]
    last_exit: str | None
    last_exit_time: str | None  # ISO 8601
    last_beat_age_s: float | None
    beat_every_s: float | None = None  # when its latest beat said the next one is due (workers/link.py)
    counters: dict[str, int]
    queue_depth: int
    info: dict[str, str]


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Result(BaseModel):
    workers: list[WorkerInfo]
    parent: dict[str, int]  # the parent's own intake counters
