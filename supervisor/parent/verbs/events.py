"""`events [-f]`: agent state transitions with their reasons; long-polls so `-f` sees them as they happen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from supervisor.parent.event_log import AgentEvent

NAME = "events"
HELP = "Show agent state changes (with -f, as they happen)."


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[str] = Field(default_factory=list)
    after: int | None = Field(default=None, ge=0)
    limit: int = Field(default=100, ge=1, le=10_000)
    wait: float = Field(default=0.0, ge=0, le=60)  # seconds to wait for something newer than `after`


class Result(BaseModel):
    events: list[AgentEvent]
    last_seq: int


async def handle(daemon, args: Args) -> Result:
    for agent_id in args.ids:
        daemon.registry.get(agent_id)
    wanted = set(args.ids) or None
    if args.after is not None and args.wait:
        await daemon.events.wait_after(args.after, args.wait)
    events = daemon.events.since(args.after, args.limit, wanted)
    # A page cut by `limit` resumes after its last event; otherwise everything up to now was seen.
    last = events[-1].seq if len(events) == args.limit else max(daemon.events.last_seq, args.after or 0)
    return Result(events=events, last_seq=last)
