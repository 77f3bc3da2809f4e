"""`stop ID...|--all`: stop agents' whole process trees; they stay down until an operator starts them."""

from supervisor.parent.verbs.agent_actions import run_action
from supervisor.wire.states import DOWN_STATES
from supervisor.wire.verbs.stop import NAME, Args, Result  # noqa: F401  (the verb's contract, for the dispatch)
from supervisor.parent.verbs.context import VerbContext


def _settled(agent) -> bool:
    return agent.state in DOWN_STATES


def _describe(agent, res):
    if res.message.startswith("already") and not res.message.startswith("already stopping"):
        return True, res.message  # nothing was stopped now: an old stop's note does not apply
    return True, f"stopped ({agent.stop_note})" if agent.stop_note else "stopped"


async def handle(ctx: VerbContext, args: Args) -> Result:
    return await run_action(ctx, args, lambda a, now: a.stop(now, force=args.force), _settled, _describe)
