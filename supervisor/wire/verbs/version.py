"""`version`: the daemon's version and control protocol version."""

from pydantic import BaseModel, ConfigDict

NAME = "version"


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Result(BaseModel):
    version: str
    protocol: int
