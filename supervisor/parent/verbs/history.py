"""`history ID [--since 1h]`: an agent's resource samples from the SQLite history."""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel, ConfigDict, Field

from supervisor.wire.messages import ResourceSample

NAME = "history"
HELP = "An agent's resource samples over time."


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


async def handle(daemon, args: Args) -> Result:
    if not args.id.startswith("agentd/"):
        daemon.registry.get(args.id)
    since = time.time() - args.since
    loop = asyncio.get_running_loop()
    if args.every is not None:
        rows = await loop.run_in_executor(None, daemon.history.aggregate, args.id, since, None, args.every)
        windows = [Window(**dict(zip(Window.model_fields, row))) for row in rows]
        return Result(agent_id=args.id, since=since, samples=[], every=args.every, windows=windows)
    samples = await loop.run_in_executor(None, daemon.history.query, args.id, since, None, args.limit)
    return Result(agent_id=args.id, since=since, samples=samples)
