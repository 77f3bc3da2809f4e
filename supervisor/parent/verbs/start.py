"""`start ID...|--all`: start agents; revives failed ones and clears an operator stop."""

from supervisor.parent.verbs.agent_actions import describe_start, is_up_or_settled, run_action
from supervisor.wire.verbs.start import NAME, Args, Result  # noqa: F401  (the verb's contract, for the dispatch)
from supervisor.parent.verbs.context import VerbContext


async def handle(ctx: VerbContext, args: Args) -> Result:
    return await run_action(ctx, args, lambda a, now: a.start(now), is_up_or_settled, describe_start)
