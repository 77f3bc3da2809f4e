"""`restart ID...|--all`: stop each agent's tree, then start it again."""

from supervisor.parent.verbs.agent_actions import describe_start, is_up_or_settled, run_action
from supervisor.wire.states import AgentState
from supervisor.wire.verbs.restart import NAME, Args, Result  # noqa: F401  (the verb's contract, for the dispatch)
from supervisor.parent.verbs.context import VerbContext


def _settled(agent) -> bool:
    return agent.state != AgentState.STOPPING and is_up_or_settled(agent)


async def handle(ctx: VerbContext, args: Args) -> Result:
    return await run_action(ctx, args, lambda a, now: a.restart(now), _settled, describe_start)
