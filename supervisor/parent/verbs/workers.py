"""`workers`: each worker process with pid, uptime, restarts and their causes, and its counters."""

from supervisor.wire.verbs.workers import NAME, Args, Result  # noqa: F401  (the verb's contract, for the dispatch)
from supervisor.parent.verbs.context import VerbContext


async def handle(ctx: VerbContext, args: Args) -> Result:
    return Result(workers=ctx.pool.describe(), parent=ctx.intake_counters())
