"""`metrics`: the parent's Prometheus text; the HTTP intake appends it to its own at GET /metrics."""

from supervisor.common.prometheus import render_parent_metrics
from supervisor.wire.verbs.metrics import NAME, Args, Result  # noqa: F401  (the verb's contract, for the dispatch)
from supervisor.parent.verbs.context import VerbContext


async def handle(ctx: VerbContext, args: Args) -> Result:
    return Result(text=render_parent_metrics(ctx))
