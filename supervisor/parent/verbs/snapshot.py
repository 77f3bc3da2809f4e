"""`snapshot`: the full agent view and its sequence number, for workers joining the state feed."""

from supervisor.parent.state_feed import agent_view
from supervisor.wire.verbs.snapshot import NAME, Args, Result  # noqa: F401  (the verb's contract, for the dispatch)
from supervisor.parent.verbs.context import VerbContext


async def handle(ctx: VerbContext, args: Args) -> Result:
    return Result(seq=ctx.feed_seq(), agents=[agent_view(a) for a in ctx.registry], last_heartbeat=ctx.heartbeats.times(),
                  intake_restarted_at=ctx.grace.restarted_wall, last_heartbeat_mono=ctx.heartbeats.times_mono(),
                  intake_restarted_mono=ctx.grace.restarted_mono, parent_stalled_until=ctx.stalls.last_end)
