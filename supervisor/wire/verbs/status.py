"""`status [ID...]`: every agent's state, served from memory so it answers even when agents misbehave."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

NAME = "status"


class ExitRecord(BaseModel):
    """How an agent process ended (also kept in its metadata file, supervisor/common/metadata_store.py)."""

    model_config = ConfigDict(extra="ignore")

    code: int | None = None
    signal: str | None = None
    time: str
    reason: str | None = None


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
