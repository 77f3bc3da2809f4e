"""`history ID [--since 1h]`: an agent's resource samples from the SQLite history."""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel, ConfigDict, Field

from ..messages import ResourceSample

NAME = "history"
HELP = "An agent's resource samples over time."


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    since: float = Field(default=3600.0, gt=0, description="seconds back from now")
    limit: int = Field(default=2000, ge=1, le=100_000)


class Result(BaseModel):
    agent_id: str
    since: float  # wall clock
    samples: list[ResourceSample]


async def handle(daemon, args: Args) -> Result:
    if not args.id.startswith("agentd/"):
        daemon.registry.get(args.id)
    since = time.time() - args.since
    samples = await asyncio.get_running_loop().run_in_executor(None, daemon.history.query, args.id, since, None, args.limit)
    return Result(agent_id=args.id, since=since, samples=samples)
