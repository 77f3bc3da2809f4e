"""`start ID...|--all`: start agents; revives failed ones and clears an operator stop."""

from supervisor.parent.verbs.agent_actions import ActionArgs, ActionResultList, describe_start, is_up_or_settled, run_action

NAME = "start"
HELP = "Start agents (also revives failed ones)."
Args = ActionArgs
Result = ActionResultList


async def handle(daemon, args: Args) -> Result:
    return await run_action(daemon, args, lambda a, now: a.start(now), is_up_or_settled, describe_start)
