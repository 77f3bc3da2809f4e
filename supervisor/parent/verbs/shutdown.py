"""`shutdown [--stop-agents]`: stop agentd; agents keep running unless asked (or configured) to stop."""

from supervisor.wire.verbs.shutdown import NAME, Args, Result  # noqa: F401  (the verb's contract, for the dispatch)


async def handle(daemon, args: Args) -> Result:
    stop_agents = args.stop_agents or daemon.config.shutdown.stop_agents
    daemon.request_shutdown(stop_agents, why="agentctl shutdown")
    what = "stopping every agent, then exiting" if stop_agents else "exiting; agents keep running"
    return Result(stop_agents=stop_agents, message=what)
