"""`status [ID...]`: every agent's state, served from memory so it answers even when agents misbehave."""

from __future__ import annotations

import time

from supervisor.parent.lifecycle import AgentProcess
from supervisor.common.metadata_store import iso_utc
from supervisor.wire.states import AgentState
from supervisor.wire.verbs.status import NAME, AgentStatus, Args, ManagerLink, Result  # noqa: F401  (the verb's contract, for the dispatch)
from supervisor.parent.verbs.context import VerbContext


def manager_link(ctx: VerbContext) -> ManagerLink | None:
    """Read the sync worker's reported link info; None when no Manager is configured."""
    address = ctx.manager_address()
    if not address:
        return None
    worker = next((w for w in ctx.pool.describe() if w.name == "sync"), None)
    info = worker.info if worker else {}
    pending = info.get("pending")
    return ManagerLink(
        address=address,
        worker_state=worker.state if worker else "stopped",
        connected=info.get("connected") == "yes",
        registered=info.get("registered") == "yes",
        last_sync=info.get("last_sync") or None,
        pending=int(pending) if pending and pending.isdigit() else None,
        # last_error is sticky in the worker; it matters while the link is down.
        last_error=(info.get("last_error") if info.get("connected") != "yes" else None) or (worker.last_exit if worker and worker.state != "running" else None),
    )


def _stop_elapsed(agent: AgentProcess, now: float) -> float | None:
    if agent.state != AgentState.STOPPING or agent.stop_deadline is None:
        return None
    return round(max(0.0, now - (agent.stop_deadline - agent.spec.stop_timeout)), 3)


def agent_status(agent: AgentProcess, now: float) -> AgentStatus:
    """Build the status view of one agent at monotonic time `now`."""
    h = agent.handle
    live = h is not None and agent.state in (AgentState.STARTING, AgentState.RUNNING, AgentState.STOPPING)
    hb_age = agent.heartbeat_age(now)
    next_restart = None
    if agent.state == AgentState.RESTARTING and agent.backoff_until is not None:
        next_restart = round(max(0.0, agent.backoff_until - now), 3)
    uptime = agent.uptime(now)
    return AgentStatus(
        id=agent.spec.id,
        type=agent.spec.type,
        name=agent.spec.name,
        enabled=agent.spec.enabled,
        state=agent.state.value,
        reason=agent.reason,
        pid=h.pid if live else None,
        health=agent.health,
        health_detail=agent.health_detail,
        restarts=agent.total_restarts,
        restarts_by_reason=dict(agent.restarts_by_kind),
        restart_count=agent.restart_count,
        uptime_s=round(uptime, 3) if uptime is not None else None,
        started_at=iso_utc(h.started_wall) if live else None,
        last_heartbeat=iso_utc(agent.last_heartbeat_wall) if agent.last_heartbeat_wall else None,
        heartbeat_age_s=round(hb_age, 3) if hb_age is not None else None,
        version=agent.reported.get("version"),
        last_exit=agent.last_exit,
        last_restart=iso_utc(agent.last_restart_wall) if agent.last_restart_wall else None,
        last_restart_age_s=round(max(0.0, time.time() - agent.last_restart_wall), 3) if agent.last_restart_wall else None,
        last_restart_reason=agent.last_restart_reason,
        next_restart_in_s=next_restart,
        operator_stopped=agent.operator_stopped,
        expects_heartbeat=agent.spec.expects_heartbeat,
        config_file_problem=agent.config_problem,
        started_by_restart=agent.started_by_restart,
        stop_note=agent.stop_note,
        stop_elapsed_s=_stop_elapsed(agent, now),
        generation=agent.generation,
        ready=agent.spec.ready,
        notify_status=agent.notify_status if live else None,
        notify_phase=agent.notify_phase if live else None,
        cgroup=h.cgroup if live else None,
    )


async def handle(ctx: VerbContext, args: Args) -> Result:
    agents = ctx.registry.select(args.ids, all_agents=not args.ids)
    if args.types:
        wanted = {t.strip().lower() for t in args.types}
        agents = [a for a in agents if a.spec.type in wanted]
    now = ctx.now()
    return Result(daemon=ctx.status_info(), agents=[agent_status(a, now) for a in agents], manager=manager_link(ctx))
