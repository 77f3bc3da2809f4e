"""`history ID [--since 1h]`: an agent's resource samples from the SQLite history."""

from __future__ import annotations

import asyncio
import time

from supervisor.wire.verbs.history import NAME, Args, Result, Window  # noqa: F401  (the verb's contract, for the dispatch)
from supervisor.parent.verbs.context import VerbContext


async def handle(ctx: VerbContext, args: Args) -> Result:
    if not args.id.startswith("agentd/"):
        ctx.registry.get(args.id)
    since = time.time() - args.since
    loop = asyncio.get_running_loop()
    if args.every is not None:
        rows = await loop.run_in_executor(None, ctx.history.aggregate, args.id, since, None, args.every)
        windows = [Window(**dict(zip(Window.model_fields, row))) for row in rows]
        return Result(agent_id=args.id, since=since, samples=[], every=args.every, windows=windows)
    samples = await loop.run_in_executor(None, ctx.history.query, args.id, since, None, args.limit)
    return Result(agent_id=args.id, since=since, samples=samples)
