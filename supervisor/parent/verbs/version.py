"""`version`: the daemon's version and control protocol version."""

from pydantic import BaseModel, ConfigDict

from supervisor.wire.version import __version__
from supervisor.wire.protocol import PROTOCOL_VERSION

NAME = "version"
HELP = "Show the daemon's version."


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Result(BaseModel):
    version: str
    protocol: int


async def handle(daemon, args: Args) -> Result:
    return Result(version=__version__, protocol=PROTOCOL_VERSION)
