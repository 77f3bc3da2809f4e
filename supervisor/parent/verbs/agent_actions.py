"""What start, stop and restart share: selecting agents, acting on all at once, waiting for them to settle."""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from supervisor.parent.lifecycle import ActionResult, AgentProcess
from supervisor.wire.states import AgentState
from supervisor.wire.verbs.agent_actions import ActionArgs, ActionResultList, AgentOutcome
from supervisor.parent.verbs.context import VerbContext

log = logging.getLogger(__name__)
# How long a reply waits for the agents' records to reach the disk; a full disk must not hang agentctl.
RECORD_WAIT = 5.0


async def run_action(
    ctx: VerbContext,
    args: ActionArgs,
    act: Callable[[AgentProcess, float], ActionResult],
    settled: Callable[[AgentProcess], bool],
    describe: Callable[[AgentProcess, ActionResult], tuple[bool, str]],
) -> ActionResultList:
    """Apply `act` to every selected agent at once, then wait (in parallel) until each is `settled`."""
    agents = ctx.registry.select(args.ids, args.all)
    now = ctx.now()
    immediate = {a.spec.id: act(a, now) for a in agents}
    ctx.after_action()
    if args.wait:
        await ctx.wait_for_agents([a for a in agents if immediate[a.spec.id].ok], settled, args.timeout)
        ctx.after_action()  # what settled meanwhile is persisted before the reply, not at the next loop pass
    ids = [a.spec.id for a in agents]
    if not await asyncio.get_running_loop().run_in_executor(None, ctx.records_written, ids, RECORD_WAIT):
        log.warning("%s: replying before the agents' records reached the disk (still pending after %.0fs)",
                    ", ".join(ids), RECORD_WAIT)
    out, pending = [], False
    for a in agents:
        res = immediate[a.spec.id]
        if not res.ok:
            ok, msg = False, res.message
        elif args.wait and not settled(a):
            ok, msg, pending = True, f"still {a.state.value} after {args.timeout:g}s ({a.reason})", True
        else:
            ok, msg = describe(a, res) if args.wait else (True, res.message)
        pid = a.handle.pid if a.handle is not None and a.state in (AgentState.STARTING, AgentState.RUNNING, AgentState.STOPPING) else None
        out.append(AgentOutcome(id=a.spec.id, ok=ok, state=a.state.value, pid=pid, message=msg))
    return ActionResultList(results=out, pending=pending)


def is_up_or_settled(agent: AgentProcess) -> bool:
    """A start has settled once the agent runs, or is waiting for its first heartbeat, or has failed."""
    return agent.state in (AgentState.RUNNING, AgentState.FAILED, AgentState.STOPPED, AgentState.RESTARTING) or (
        agent.state == AgentState.STARTING and agent.spec.expects_heartbeat
    )


def describe_start(agent: AgentProcess, res: ActionResult) -> tuple[bool, str]:
    """Say where a started agent ended up; an agent that died or failed is not a success."""
    state = agent.state
    old = f"; the old process needed {agent.stop_note}" if agent.stop_note and agent.started_by_restart else ""
    if state == AgentState.RUNNING:
        return True, f"running (pid {agent.handle.pid}){old}"
    if state == AgentState.STARTING:
        return True, f"started (pid {agent.handle.pid}), waiting for its first heartbeat"
    if state == AgentState.RESTARTING:
        return False, f"exited during start: {agent.reason}"
    return False, f"{state.value}: {agent.reason}"
