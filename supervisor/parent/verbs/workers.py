"""`workers`: each worker process with pid, uptime, restarts and their causes, and its counters."""

from supervisor.wire.verbs.workers import NAME, Args, Result  # noqa: F401  (the verb's contract, for the dispatch)


async def handle(daemon, args: Args) -> Result:
    return Result(workers=daemon.pool.describe(), parent=daemon.intake_counters())
