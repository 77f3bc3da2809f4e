"""`ping`: is the daemon there and answering."""

from supervisor.wire.verbs.ping import NAME, Args, Result  # noqa: F401  (the verb's contract, for the dispatch)


async def handle(daemon, args: Args) -> Result:
    return Result(pid=daemon.pid, uptime_s=round(daemon.uptime(), 3))
