"""`metrics`: the parent's Prometheus text; the HTTP intake appends it to its own at GET /metrics."""

from pydantic import BaseModel, ConfigDict

NAME = "metrics"


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Result(BaseModel):
    text: str
