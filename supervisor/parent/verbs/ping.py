"""`ping`: is the daemon there and answering."""

from supervisor.wire.verbs.ping import NAME, Args, Result  # noqa: F401  (the verb's contract, for the dispatch)
from supervisor.parent.verbs.context import VerbContext


async def handle(ctx: VerbContext, args: Args) -> Result:
    return Result(pid=ctx.pid, uptime_s=round(ctx.uptime(), 3))
