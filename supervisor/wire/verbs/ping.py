"""`ping`: is the daemon there and answering."""

from pydantic import BaseModel, ConfigDict

NAME = "ping"


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Result(BaseModel):
    pong: bool = True
    pid: int
    uptime_s: float
