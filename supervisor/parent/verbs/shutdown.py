"""`shutdown [--stop-agents]`: stop agentd; agents keep running unless asked (or configured) to stop."""

from supervisor.wire.verbs.shutdown import NAME, Args, Result  # noqa: F401  (the verb's contract, for the dispatch)
from supervisor.parent.verbs.context import VerbContext


async def handle(ctx: VerbContext, args: Args) -> Result:
    stop_agents = args.stop_agents or ctx.stop_agents_on_shutdown()
    ctx.request_shutdown(stop_agents, "agentctl shutdown")
    what = "stopping every agent, then exiting" if stop_agents else "exiting; agents keep running"
    return Result(stop_agents=stop_agents, message=what)
