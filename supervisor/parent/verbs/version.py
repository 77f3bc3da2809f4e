"""`version`: the daemon's version and control protocol version."""

from supervisor.wire.version import __version__
from supervisor.wire.protocol import PROTOCOL_VERSION
from supervisor.wire.verbs.version import NAME, Args, Result  # noqa: F401  (the verb's contract, for the dispatch)
from supervisor.parent.verbs.context import VerbContext


async def handle(ctx: VerbContext, args: Args) -> Result:
    return Result(version=__version__, protocol=PROTOCOL_VERSION)
