"""`snapshot`: the full agent view and its sequence number, for workers joining the state feed."""

from pydantic import BaseModel, ConfigDict

from supervisor.wire.messages import AgentView
from supervisor.parent.state_feed import agent_view

NAME = "snapshot"
HELP = "The state feed's snapshot (used by workers)."


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Result(BaseModel):
    seq: int
    agents: list[AgentView]
    last_heartbeat: dict[str, float]
    intake_restarted_at: float | None = None
    last_heartbeat_mono: dict[str, float] = {}
    intake_restarted_mono: float | None = None
    parent_stalled_until: float | None = None


async def handle(daemon, args: Args) -> Result:
    return Result(seq=daemon.state_feed.seq, agents=[agent_view(a) for a in daemon.registry], last_heartbeat=daemon.heartbeats.times(),
                  intake_restarted_at=daemon.grace.restarted_wall, last_heartbeat_mono=daemon.heartbeats.times_mono(),
                  intake_restarted_mono=daemon.grace.restarted_mono, parent_stalled_until=daemon.stalls.last_end)
