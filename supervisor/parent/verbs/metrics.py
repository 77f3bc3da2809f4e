"""`metrics`: the parent's Prometheus text; the HTTP intake appends it to its own at GET /metrics."""

from supervisor.common.prometheus import render_parent_metrics
from supervisor.wire.verbs.metrics import NAME, Args, Result  # noqa: F401  (the verb's contract, for the dispatch)


async def handle(daemon, args: Args) -> Result:
    return Result(text=render_parent_metrics(daemon))
