"""`status [ID...]`: every agent's state, served from memory so it answers even when agents misbehave."""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field

from supervisor.parent.lifecycle import AgentProcess
from supervisor.common.metadata_store import ExitRecord, iso_utc
from supervisor.wire.states import AgentState

NAME = "status"
HELP = "Show agents' state, pid, uptime, restarts and health."


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[str] = Field(default_factory=list)
    types: list[str] = Field(default_factory=list)  # only agents of these types (filebeat, telegraf, ...)


class AgentStatus(BaseModel):
    """One agent as `status --json` prints it: stable snake_case keys, ISO times, bytes."""

    id: str
    type: str
    name: str | None = None  # display name from the config
    enabled: bool
    state: str
    reason: str
    pid: int | None
    health: str | None
    health_detail: str
    restarts: int
    restarts_by_reason: dict[str, int]
    restart_count: int
    uptime_s: float | None
    started_at: str | None
    last_heartbeat: str | None
    heartbeat_age_s: float | None
    version: str | None
    last_exit: ExitRecord | None
    last_restart: str | None
    last_restart_age_s: float | None
    last_restart_reason: str | None
    stop_note: str = ""  # how the current or last stop went beyond the stop signal, e.g. "SIGKILL after 10s (...)"
    stop_elapsed_s: float | None = None  # while stopping: seconds since the stop signal
    started_by_restart: bool  # the current process came from a restart, so last_restart_reason describes it
    next_restart_in_s: float | None
    operator_stopped: bool
    expects_heartbeat: bool
    config_file_problem: str | None = None  # why the last change of config_file was refused, until a valid one
    generation: int  # which process of this agent verdicts and heartbeats are about; never repeats in one agentd
    ready: str = "auto"  # auto | notify (sd_notify READY=1)
    notify_status: str | None = None  # the agent's last sd_notify STATUS=
    notify_phase: str | None = None  # reloading | stopping, as the agent announced
    cgroup: str | None = None  # the agent's cgroup directory in cgroup mode


class DaemonStatus(BaseModel):
    pid: int
    version: str
    uptime_s: float
    config: str | None
    run_dir: str
    tracking: str = "process-group"  # cgroup | process-group
    tracking_detail: str = ""  # where and why, e.g. "cgroup v2 under ... : cgroups.root is configured"
    restart_required: list[str] = []  # config sections changed by reload that take effect only after an agentd restart


class ManagerLink(BaseModel):
    """The Manager link as the sync worker last reported it."""

    address: str
    worker_state: str  # running | restarting | stopped
    connected: bool
    registered: bool
    last_sync: str | None
    pending: int | None
    last_error: str | None


class Result(BaseModel):
    daemon: DaemonStatus
    agents: list[AgentStatus]
    manager: ManagerLink | None = None  # None when manager.address is not set


def manager_link(daemon) -> ManagerLink | None:
    """Read the sync worker's reported link info; None when no Manager is configured."""
    address = daemon.config.manager.address
    if not address:
        return None
    worker = next((w for w in daemon.pool.describe() if w.name == "sync"), None)
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


async def handle(daemon, args: Args) -> Result:
    agents = daemon.registry.select(args.ids, all_agents=not args.ids)
    if args.types:
        wanted = {t.strip().lower() for t in args.types}
        agents = [a for a in agents if a.spec.type in wanted]
    now = daemon.now()
    return Result(daemon=daemon.status_info(), agents=[agent_status(a, now) for a in agents], manager=manager_link(daemon))
