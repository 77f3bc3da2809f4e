"""`events [-f]`: agent state transitions with their reasons; long-polls so `-f` sees them as they happen."""

from __future__ import annotations

from supervisor.wire.verbs.events import NAME, Args, Result  # noqa: F401  (the verb's contract, for the dispatch)
from supervisor.parent.verbs.context import VerbContext


async def handle(ctx: VerbContext, args: Args) -> Result:
    for agent_id in args.ids:
        ctx.registry.get(agent_id)
    wanted = set(args.ids) or None
    if args.after is not None and args.wait:
        await ctx.events.wait_after(args.after, args.wait)
    events = ctx.events.since(args.after, args.limit, wanted)
    # A page cut by `limit` resumes after its last event; otherwise everything up to now was seen.
    last = events[-1].seq if len(events) == args.limit else max(ctx.events.last_seq, args.after or 0)
    return Result(events=events, last_seq=last)
