"""`shutdown [--stop-agents]`: stop agentd; agents keep running unless asked (or configured) to stop."""

from pydantic import BaseModel, ConfigDict

NAME = "shutdown"
HELP = "Stop agentd (agents keep running unless --stop-agents)."


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stop_agents: bool = False


class Result(BaseModel):
    stop_agents: bool
    message: str


async def handle(daemon, args: Args) -> Result:
    stop_agents = args.stop_agents or daemon.config.shutdown.stop_agents
    daemon.request_shutdown(stop_agents, why="agentctl shutdown")
    what = "stopping every agent, then exiting" if stop_agents else "exiting; agents keep running"
    return Result(stop_agents=stop_agents, message=what)
