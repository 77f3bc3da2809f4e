"""`workers`: each worker process with pid, uptime, restarts and their causes, and its counters."""

from pydantic import BaseModel, ConfigDict

from supervisor.parent.worker_pool import WorkerInfo

NAME = "workers"
HELP = "Show agentd's worker processes and their counters."


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Result(BaseModel):
    workers: list[WorkerInfo]
    parent: dict[str, int]  # the parent's own intake counters


async def handle(daemon, args: Args) -> Result:
    return Result(workers=daemon.pool.describe(), parent=daemon.intake_counters())
