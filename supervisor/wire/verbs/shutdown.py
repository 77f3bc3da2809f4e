"""`shutdown [--stop-agents]`: stop agentd; agents keep running unless asked (or configured) to stop."""

from pydantic import BaseModel, ConfigDict

NAME = "shutdown"


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stop_agents: bool = False


class Result(BaseModel):
    stop_agents: bool
    message: str
