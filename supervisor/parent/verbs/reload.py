"""`reload [--dry-run]`: re-read the config file and touch only agents that were added, removed or changed."""

from supervisor.wire.verbs.reload import NAME, Args, Result  # noqa: F401  (the verb's contract, for the dispatch)


async def handle(daemon, args: Args) -> Result:
    plan = daemon.reload(dry_run=args.dry_run)
    return Result(applied=not args.dry_run, config=str(daemon.config_path), plan=plan)
