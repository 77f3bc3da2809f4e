"""`snapshot`: the full agent view and its sequence number, for workers joining the state feed."""

from supervisor.parent.state_feed import agent_view
from supervisor.wire.verbs.snapshot import NAME, Args, Result  # noqa: F401  (the verb's contract, for the dispatch)


async def handle(daemon, args: Args) -> Result:
    return Result(seq=daemon.state_feed.seq, agents=[agent_view(a) for a in daemon.registry], last_heartbeat=daemon.heartbeats.times(),
                  intake_restarted_at=daemon.grace.restarted_wall, last_heartbeat_mono=daemon.heartbeats.times_mono(),
                  intake_restarted_mono=daemon.grace.restarted_mono, parent_stalled_until=daemon.stalls.last_end)
