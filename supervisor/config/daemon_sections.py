"""The sections about agentd itself: identity and directories, control socket, heartbeat intake, sampling,
stores, cgroups and shutdown (docs/configuration.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from supervisor.config.fields import KIB, Listen, Lower, PathT, PositiveDuration, Section, Str
from supervisor.config.units import Duration, Size

__all__ = [
    "CgroupSettings",
    "ControlSettings",
    "DaemonSettings",
    "HeartbeatSettings",
    "HistorySettings",
    "HttpIntake",
    "MetadataSettings",
    "ResourcesSettings",
    "ShutdownSettings",
    "UnixIntake",
]


class DaemonSettings(Section):
    """`daemon:` identity, directories and logging of agentd itself."""

    id: Str | None = None
    run_dir: PathT = Path("/run/agentd")
    data_dir: PathT = Path("/var/lib/agentd")
    log_dir: PathT = Path("/var/log/agentd")
    log_level: Annotated[Literal["debug", "info", "warning", "error"], Lower] = "info"
    log_format: Annotated[Literal["text", "json"], Lower] = "text"
    log_file: PathT | None = None  # agentd's own log, also written here and rotated (stderr stays)
    pid_file: PathT | None = None  # a plain pid file for scripts; the lock stays run_dir/agentd.pid

    @field_validator("id")
    @classmethod
    def _id_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty (leave it out to use the generated node id)")
        return value


class ControlSettings(Section):
    """`control:` the control socket."""

    group: Str | None = None
    request_timeout: PositiveDuration = 10.0


class HttpIntake(Section):
    """`heartbeat.http:` the HTTP heartbeat intake."""

    enabled: bool = True
    listen: Listen = "127.0.0.1:8084"
    processes: int = Field(1, ge=1, le=64)
    max_body: Size = Field(64 * KIB, gt=0)
    request_timeout: PositiveDuration = 10.0
    # Fair capacity (docs/threat-model.md): open connections that have not delivered a valid heartbeat yet,
    # per peer (uid on loopback, else address), and how long such a connection may take to deliver one.
    max_unverified_per_peer: int = Field(32, ge=1)
    unverified_timeout: PositiveDuration = 3.0
    # A heartbeat for agent A is accepted only from A's own process tree, or with A's token (docs/decisions.md).
    # Off only for load tests and test harnesses that send for agents from outside them.
    verify_sender: bool = True


class UnixIntake(Section):
    """`heartbeat.unix:` the Unix-socket heartbeat intake; `path` is always set in a loaded Config."""

    enabled: bool = True
    path: PathT | None = None
    max_connections: int = Field(1024, ge=1)
    idle_timeout: PositiveDuration = 300.0
    max_line: Size = Field(64 * KIB, gt=0)
    max_unverified_per_peer: int = Field(8, ge=1)  # per uid, from processes in no agent's tree
    unverified_timeout: PositiveDuration = 3.0


class HeartbeatSettings(Section):
    """`heartbeat:` both intake paths."""

    http: HttpIntake = Field(default_factory=HttpIntake)
    unix: UnixIntake = Field(default_factory=UnixIntake)


class ResourcesSettings(Section):
    """`resources:` resource sampling."""

    interval: PositiveDuration = 10.0


class HistorySettings(Section):
    """`history:` resource history retention."""

    retention: PositiveDuration = 86400.0


class MetadataSettings(Section):
    """`metadata:` metadata store write coalescing."""

    flush_interval: Duration = 1.0


class CgroupSettings(Section):
    """`cgroups:` a cgroup v2 per agent where the kernel allows it (docs/architecture.md, "Process tracking")."""

    # auto: use a delegated cgroup or `root` when writable, else process groups; required: refuse to
    # start without one; off: always process groups.
    mode: Annotated[Literal["auto", "required", "off"], Lower] = "auto"
    root: PathT | None = None  # a directory inside a cgroup2 mount, created if missing

    @field_validator("root")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError(f"must be an absolute path inside a cgroup2 mount, got {str(value)!r}")
        return value


class ShutdownSettings(Section):
    """`shutdown:` what happens to agents when agentd stops."""

    stop_agents: bool = False
