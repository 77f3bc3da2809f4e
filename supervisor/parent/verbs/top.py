"""`top`: every agent's state, health and latest resource sample, plus agentd's own processes."""

from __future__ import annotations

from supervisor.parent.verbs.status import agent_status
from supervisor.wire.states import PROCESS_STATES
from supervisor.wire.verbs.top import NAME, AgentTop, Args, Result  # noqa: F401  (the verb's contract, for the dispatch)
from supervisor.parent.verbs.context import VerbContext


async def handle(ctx: VerbContext, args: Args) -> Result:
    latest = ctx.history.latest()
    now = ctx.now()
    agents = []
    for agent in ctx.registry:
        sample = latest.get(agent.spec.id)
        if sample is not None and sample.generation is not None and sample.generation != agent.generation:
            sample = None  # belongs to a process that has since been replaced
        if agent.state not in PROCESS_STATES:
            sample = None  # nothing runs (failed, stopped, waiting to restart): the last figures are history
        agents.append(AgentTop(status=agent_status(agent, now), sample=sample))
    own = sorted((s for k, s in latest.items() if k.startswith("agentd/")), key=lambda s: s.agent_id)
    return Result(agents=agents, agentd=own)
