"""An agent's settings: what to run, how to stop and restart it, its log and limits, and how `agent_defaults`
and the agent's type fill in what the agent leaves out (docs/configuration.md)."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from supervisor.config.fields import KIB, MIB, Lower, PathT, Section, Str
from supervisor.config.health_check import HealthCheck, default_startup_grace
from supervisor.config.units import Duration, OptionalDuration, OptionalSize, Size, describe_value, format_bytes

__all__ = [
    "AGENT_ID_PATTERN",
    "LEGACY_AGENT_ID",
    "AgentDefaults",
    "AgentHeartbeat",
    "AgentLimits",
    "AgentSpec",
    "LogSettings",
    "RestartPolicy",
    "apply_type_defaults",
    "is_agent_id",
    "node_exporter_endpoint",
]

AGENT_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_AGENT_ID = re.compile(AGENT_ID_PATTERN)
AgentType = Literal["filebeat", "telegraf", "node_exporter", "custom"]
NON_HEARTBEAT_TYPES = frozenset({"filebeat", "telegraf", "node_exporter"})
# The original daemon's node_exporter command line (docs/migration.md): /proc and /sys are explicit.
NODE_EXPORTER_ARGS = ("--web.listen-address=:9100", "--path.procfs=/proc", "--path.sysfs=/sys")
STOP_SIGNALS = ("TERM", "INT", "HUP", "QUIT", "KILL", "USR1", "USR2")
RELOAD_SIGNALS = ("HUP", "USR1", "USR2")
LEGACY_AGENT_ID = "legacy-agent"  # the one agent of the deprecated `agent:` section


def is_agent_id(value: Any) -> bool:
    """True for a string that is a valid agent id."""
    return isinstance(value, str) and _AGENT_ID.fullmatch(value) is not None


class AgentLimits(Section):
    """`limits:` written to the agent's cgroup where the controller is enabled."""

    memory_max: OptionalSize = Field(None, gt=0)
    cpu_max: float | None = Field(None, gt=0, le=1024)  # in CPUs: 0.5 is half of one CPU
    pids_max: int | None = Field(None, ge=1)



class RestartPolicy(Section):
    """`restart:` policy, backoff and retry limit."""

    policy: Literal["always", "on-failure", "never"] = "always"
    backoff_steps: list[Duration] = Field(default_factory=lambda: [0, 10, 10, 30, 30, 60], min_length=1)
    reset_after: Duration = 300.0
    max_retries: int = Field(10, ge=0)
    # The restart floor (issue 10): however short the backoff, two automatic starts of one agent are at
    # least min_interval apart, and more than start_limit_burst automatic starts within
    # start_limit_interval end in `failed` (as systemd's StartLimitBurst / StartLimitIntervalSec).
    min_interval: Duration = 1.0
    start_limit_burst: int = Field(20, ge=0)  # 0: no rate limit (the floor still applies)
    start_limit_interval: Duration = 60.0

    @field_validator("policy", mode="before")
    @classmethod
    def _normalise_policy(cls, value: Any) -> Any:
        return value.strip().lower().replace("_", "-") if isinstance(value, str) else value


class LogSettings(Section):
    """`log:` rotation of the agent's stdout/stderr file."""

    max_size: Size = 100 * MIB
    keep: int = Field(7, ge=0, le=100)
    compress: bool = True
    interval: OptionalDuration = Field(None, gt=0)  # also rotate when the live file's content is this old (daily: 24h)
    max_age: OptionalDuration = 30 * 86400.0  # rotated copies older than this are deleted (as the original: 30 days)
    # plain: the agent writes to the file itself (O_APPEND). stamped: a log writer outside the agent's tree
    # prefixes each line with the time and out|err, and outlives agentd (supervisor/parent/log_writer.py).
    format: Literal["plain", "stamped"] = "plain"

    @field_validator("max_size")
    @classmethod
    def _at_least_1kib(cls, value: int) -> int:
        if value < KIB:
            raise ValueError(f"must be ≥ 1KiB, got {format_bytes(value)}")
        return value


class AgentHeartbeat(Section):
    """`heartbeat:` per-agent heartbeat settings."""

    token: Str | None = None


class _AgentFields(Section):
    """Fields shared by an agent and `agent_defaults`."""

    type: Annotated[AgentType, Lower] = "custom"
    name: Str | None = None  # a display name for people (agentctl shows it); the id stays the key
    enabled: bool = True
    binary_path: PathT | None = None
    args: list[Str] | None = None
    config_file: PathT | None = None
    work_dir: PathT | None = None
    env: dict[str, Str] = Field(default_factory=dict)
    user: Str | None = None
    group: Str | None = None
    stop_signal: str = "TERM"
    # What a change of config_file does (agentd watches it): send reload_signal to the main process, restart
    # the agent, or nothing. Unset: reload when reload_signal is set, else nothing (docs/agent-config-files.md).
    reload_signal: str | None = None
    on_config_change: Annotated[Literal["reload", "restart", "none"] | None, Lower] = None
    stop_timeout: Duration = 30.0
    start_seconds: Duration = 1.0
    health_check: HealthCheck = Field(default_factory=HealthCheck)
    restart: RestartPolicy = Field(default_factory=RestartPolicy)
    log: LogSettings = Field(default_factory=LogSettings)
    heartbeat: AgentHeartbeat = Field(default_factory=AgentHeartbeat)
    # auto: running after start_seconds (or the first heartbeat); notify: only after sd_notify READY=1.
    ready: Literal["auto", "notify"] = "auto"
    limits: AgentLimits = Field(default_factory=AgentLimits)

    @field_validator("env", mode="before")
    @classmethod
    def _drop_null_env(cls, value: Any) -> Any:
        # `VAR: null` in an agent removes a variable inherited from agent_defaults; `env: null` removes them all.
        if value is None:
            return {}
        return {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) else value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not name or "=" in name or "\0" in name:
                raise ValueError(f"invalid environment variable name {name!r}")
        return value

    @field_validator("stop_signal", mode="before")
    @classmethod
    def _signal_name(cls, value: Any) -> Any:
        if not isinstance(value, str):
            raise ValueError(f"expected a signal name like TERM, got {describe_value(value)}")
        name = value.strip().upper()
        name = name.removeprefix("SIG")
        if name not in STOP_SIGNALS:
            raise ValueError(f"unknown stop signal {value!r}: use one of {', '.join(STOP_SIGNALS)}")
        return name

    @field_validator("reload_signal", mode="before")
    @classmethod
    def _reload_signal_name(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError(f"expected a signal name like HUP, got {describe_value(value)}")
        name = value.strip().upper().removeprefix("SIG")
        if name not in RELOAD_SIGNALS:
            raise ValueError(f"unknown reload signal {value!r}: use one of {', '.join(RELOAD_SIGNALS)}")
        return name


class AgentDefaults(_AgentFields):
    """`agent_defaults:` every agent field except `id`, inherited field by field by each agent."""

    # What errors.py says instead of "unknown key" for a key that belongs elsewhere.
    refused_keys: ClassVar[dict[str, str]] = {"id": "'id' cannot be set in agent_defaults (each agent needs its own)"}


def apply_type_defaults(merged: dict, own: dict) -> None:
    """Give non-heartbeating types their defaults unless the agent itself (not agent_defaults) set them."""
    kind = merged.get("type")
    # A list or mapping here is the type field's error to report, not a set lookup's TypeError.
    if not isinstance(kind, str) or kind.strip().lower() not in NON_HEARTBEAT_TYPES:
        return
    kind = kind.strip().lower()
    wanted: dict[str, Any] = {"heartbeat_timeout": None}
    if kind == "node_exporter":
        wanted["http_endpoint"] = node_exporter_endpoint(merged.get("args"))
    own_hc = own.get("health_check")
    if isinstance(own_hc, HealthCheck):
        explicit = set(own_hc.model_fields_set)
    else:
        explicit = set(own_hc) if isinstance(own_hc, dict) else set()
    wanted = {k: v for k, v in wanted.items() if k not in explicit}
    if not wanted:
        return
    hc = merged.get("health_check")
    if isinstance(hc, HealthCheck):
        merged["health_check"] = hc.model_copy(update=wanted)
    elif hc is None or isinstance(hc, dict):
        merged["health_check"] = {**(hc or {}), **wanted}


def node_exporter_endpoint(args: Any) -> str:
    """node_exporter's /metrics URL on the port of its last --web.listen-address in `args` (default :9100)."""
    host, port = "127.0.0.1", 9100
    if isinstance(args, list):
        words = [str(a) for a in args]
        for i, word in enumerate(words):
            if word.startswith("--web.listen-address="):
                address = word.split("=", 1)[1]
            elif word == "--web.listen-address" and i + 1 < len(words):
                address = words[i + 1]
            else:
                continue
            bind, _, tail = address.rpartition(":")
            if tail.isdigit() and 0 < int(tail) <= 65535:
                port = int(tail)
                # A wildcard bind answers on loopback; a specific address only there.
                host = "127.0.0.1" if bind in ("", "0.0.0.0", "[::]") else bind
    return f"http://{host}:{port}/metrics"


class AgentSpec(_AgentFields):
    """One supervised agent, fully resolved: defaults merged, paths absolute, startup_grace computed."""

    id: str
    binary_path: PathT

    @field_validator("id", mode="before")
    @classmethod
    def _check_id(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ValueError(f"expected an agent id, got {describe_value(value)}")
        if not is_agent_id(value):
            raise ValueError(f"invalid agent id {value!r}: must match {AGENT_ID_PATTERN}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _type_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            apply_type_defaults(data, data)
        return data

    @model_validator(mode="after")
    def _config_change(self) -> AgentSpec:
        if self.on_config_change == "reload" and self.reload_signal is None:
            raise ValueError("on_config_change: reload needs reload_signal (e.g. HUP)")
        if self.on_config_change in ("reload", "restart") and self.config_file is None:
            raise ValueError(f"on_config_change: {self.on_config_change} needs config_file (the file to watch)")
        return self

    @property
    def config_change_action(self) -> str:
        """What a change of config_file does: "reload" (send reload_signal), "restart" or "none"."""
        if self.on_config_change is not None:
            return self.on_config_change
        return "reload" if self.reload_signal is not None and self.config_file is not None else "none"

    @model_validator(mode="after")
    def _resolve_startup_grace(self) -> AgentSpec:
        hc = self.health_check
        if hc.startup_grace is None:
            self.health_check = hc.model_copy(update={"startup_grace": default_startup_grace(hc.heartbeat_timeout)})
        return self

    @property
    def expects_heartbeat(self) -> bool:
        """True when the agent must heartbeat (its heartbeat_timeout is set)."""
        return self.health_check.heartbeat_timeout is not None

    def effective_args(self) -> list[str]:
        """The argument list to run the binary with: `args`, else the defaults for the agent type."""
        if self.args is not None:
            return list(self.args)
        config = ["-config", str(self.config_file)] if self.config_file is not None else []
        if self.type == "filebeat":
            args = ["-c", str(self.config_file)] if self.config_file is not None else []
            if self.work_dir is not None:
                args += ["-path.home", str(self.work_dir)]
            return args
        if self.type == "node_exporter":
            return list(NODE_EXPORTER_ARGS)
        return config

    def fingerprint(self) -> str:
        """A stable hash of the spec; reload restarts an agent only when this changes.

        Settings the running process never sees (display name, what a config_file change does) are left out."""
        canonical = json.dumps(self.model_dump(mode="json", exclude={"name", "reload_signal", "on_config_change"}), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

