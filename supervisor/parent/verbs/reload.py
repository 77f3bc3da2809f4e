"""`reload [--dry-run]`: re-read the config file and touch only agents that were added, removed or changed."""

from pydantic import BaseModel, ConfigDict

from supervisor.parent.reload_plan import ReloadPlan

NAME = "reload"
HELP = "Re-read the configuration; add, remove and restart only what changed."


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dry_run: bool = False


class Result(BaseModel):
    applied: bool
    config: str
    plan: ReloadPlan


async def handle(daemon, args: Args) -> Result:
    plan = daemon.reload(dry_run=args.dry_run)
    return Result(applied=not args.dry_run, config=str(daemon.config_path), plan=plan)
