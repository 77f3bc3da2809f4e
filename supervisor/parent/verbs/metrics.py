"""`metrics`: the parent's Prometheus text; the HTTP intake appends it to its own at GET /metrics."""

from pydantic import BaseModel, ConfigDict

from supervisor.common.prometheus import render_parent_metrics

NAME = "metrics"
HELP = "Prometheus text for agents, workers and the parent (used by GET /metrics)."


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Result(BaseModel):
    text: str


async def handle(daemon, args: Args) -> Result:
    return Result(text=render_parent_metrics(daemon))
