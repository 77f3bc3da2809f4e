"""`ping`: is the daemon there and answering."""

from pydantic import BaseModel, ConfigDict

NAME = "ping"
HELP = "Check that agentd answers."


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Result(BaseModel):
    pong: bool = True
    pid: int
    uptime_s: float


async def handle(daemon, args: Args) -> Result:
    return Result(pid=daemon.pid, uptime_s=round(daemon.uptime(), 3))
