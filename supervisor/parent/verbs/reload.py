"""`reload [--dry-run]`: re-read the config file and touch only agents that were added, removed or changed."""

from supervisor.wire.verbs.reload import NAME, Args, Result  # noqa: F401  (the verb's contract, for the dispatch)
from supervisor.parent.verbs.context import VerbContext


async def handle(ctx: VerbContext, args: Args) -> Result:
    plan = ctx.reload(args.dry_run)
    return Result(applied=not args.dry_run, config=str(ctx.config_path), plan=plan)
