"""agentd configuration: a YAML file validated into fully resolved pydantic models (docs/configuration.md)."""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from supervisor.config.original_config import ORIGINAL_DAEMON_KEYS, apply_env, is_original, translate
from supervisor.config.units import Duration, OptionalDuration, OptionalSize, Size, describe_value, format_bytes

__all__ = [
    "AGENT_ID_PATTERN",
    "AgentDefaults",
    "AgentHeartbeat",
    "AgentSpec",
    "CollectorSettings",
    "CollectorsSettings",
    "Config",
    "ConfigError",
    "ControlSettings",
    "DaemonSettings",
    "HealthCheck",
    "HeartbeatSettings",
    "HistorySettings",
    "HttpIntake",
    "LogSettings",
    "ManagerAPISettings",
    "ManagerSettings",
    "MetadataSettings",
    "ResourcesSettings",
    "RestartPolicy",
    "ShutdownSettings",
    "TLSSettings",
    "UnixIntake",
    "check_binaries",
    "dump_effective",
    "load_config",
    "parse_config",
    "split_listen",
]

AGENT_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_AGENT_ID = re.compile(AGENT_ID_PATTERN)
AgentType = Literal["filebeat", "telegraf", "node_exporter", "custom"]
NON_HEARTBEAT_TYPES = frozenset({"filebeat", "telegraf", "node_exporter"})
NODE_EXPORTER_ENDPOINT = "http://127.0.0.1:9100/metrics"
# The original daemon's node_exporter command line (docs/migration.md): /proc and /sys are explicit.
NODE_EXPORTER_ARGS = ("--web.listen-address=:9100", "--path.procfs=/proc", "--path.sysfs=/sys")
STOP_SIGNALS = ("TERM", "INT", "HUP", "QUIT", "KILL", "USR1", "USR2")
RELOAD_SIGNALS = ("HUP", "USR1", "USR2")
IPC_PATH_LIMIT = 100  # ZeroMQ refuses longer ipc:// paths
UNIX_PATH_LIMIT = 107  # sun_path is 108 bytes including the trailing NUL
LEGACY_AGENT_ID = "legacy-agent"
LEGACY_WARNING = "the 'agent:' section is deprecated; use 'agents:' (a list) — see README"
NO_AGENTS_WARNING = "no agents configured; agentd will run and idle until agents are added"
_KIB, _MIB = 1024, 1024 * 1024


class ConfigError(Exception):
    """A config file is unusable; `.problems` lists every problem as "<file>: <path>: <problem>"."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


# ---------------------------------------------------------------------------------------------------------
# Field types


def _to_path(value: Any) -> Any:
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a path, got {describe_value(value)}")
    # Path("") is ".", which would silently mean "the config directory".
    if not value.strip():
        raise ValueError("must not be empty")
    if "\0" in value:
        raise ValueError("must not contain a NUL byte")
    return Path(value)


def _to_str(value: Any) -> Any:
    # YAML turns `PORT: 8080` and `DEBUG: yes` into int/bool; accept them where a string is meant.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # 1.10 would become "1.1": refuse rather than change the value behind the user's back.
        raise ValueError(f"expected a string, got {describe_value(value)} (put it in quotes)")
    return value


def split_listen(listen: str) -> tuple[str, int]:
    """Split a validated "host:port" (IPv6 as "[::1]:80") into host (without brackets) and port."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def _check_listen(value: Any) -> Any:
    expected = f"expected host:port (e.g. 127.0.0.1:8084), got {describe_value(value)}"
    if not isinstance(value, str):
        raise ValueError(expected)
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(expected)
    if not host:
        raise ValueError(f"host is missing in {value!r} (use 0.0.0.0:{port} to listen on all interfaces)")
    if host.startswith("[") or host.endswith("]"):
        bracketed = host.startswith("[") and host.endswith("]")
        try:
            ipaddress.IPv6Address(host[1:-1] if bracketed else "")
        except ValueError:
            raise ValueError(f"invalid IPv6 address in {value!r}") from None
    elif ":" in host:
        raise ValueError(f"IPv6 addresses need brackets, e.g. [::1]:{port}; got {value!r}")
    if int(port) > 65535:
        raise ValueError(f"port must be 0..65535, got {int(port)}")
    return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_cidr(value: Any) -> Any:
    # A bare address is that one host; host bits set (10.0.0.5/8) are refused rather than silently widened.
    if not isinstance(value, str):
        raise ValueError(f"expected an address or CIDR like 10.0.0.5/32, got {describe_value(value)}")
    try:
        return str(ipaddress.ip_network(value.strip(), strict=True))
    except ValueError as exc:
        raise ValueError(f"invalid CIDR {value!r}: {exc}") from None


def _check_ip(value: Any) -> Any:
    try:
        if not isinstance(value, str):
            raise ValueError
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError(f"expected an IP address, got {describe_value(value)}") from None


PathT = Annotated[Path, BeforeValidator(_to_path)]
Cidr = Annotated[str, BeforeValidator(_check_cidr)]
IPAddress = Annotated[str, BeforeValidator(_check_ip)]
Str = Annotated[str, BeforeValidator(_to_str)]
Listen = Annotated[str, BeforeValidator(_check_listen)]
PositiveDuration = Annotated[Duration, Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_empty(cls, data: Any) -> Any:
        # `daemon:` with nothing under it parses as null; it means "all defaults".
        return {} if data is None else data


# ---------------------------------------------------------------------------------------------------------
# Daemon-wide sections


class DaemonSettings(_Section):
    """`daemon:` identity, directories and logging of agentd itself."""

    id: Str | None = None
    run_dir: PathT = Path("/run/agentd")
    data_dir: PathT = Path("/var/lib/agentd")
    log_dir: PathT = Path("/var/log/agentd")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    log_file: PathT | None = None  # agentd's own log, also written here and rotated (stderr stays)
    pid_file: PathT | None = None  # a plain pid file for scripts; the lock stays run_dir/agentd.pid

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("id")
    @classmethod
    def _id_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty (leave it out to use the generated node id)")
        return value


class ControlSettings(_Section):
    """`control:` the control socket."""

    group: Str | None = None
    request_timeout: PositiveDuration = 10.0


class HttpIntake(_Section):
    """`heartbeat.http:` the HTTP heartbeat intake."""

    enabled: bool = True
    listen: Listen = "127.0.0.1:8084"
    processes: int = Field(1, ge=1, le=64)
    max_body: Size = Field(64 * _KIB, gt=0)
    request_timeout: PositiveDuration = 10.0
    # Fair capacity (docs/threat-model.md): open connections that have not delivered a valid heartbeat yet,
    # per peer (uid on loopback, else address), and how long such a connection may take to deliver one.
    max_unverified_per_peer: int = Field(32, ge=1)
    unverified_timeout: PositiveDuration = 3.0
    # A heartbeat for agent A is accepted only from A's own process tree, or with A's token (docs/decisions.md).
    # Off only for load tests and test harnesses that send for agents from outside them.
    verify_sender: bool = True


class UnixIntake(_Section):
    """`heartbeat.unix:` the Unix-socket heartbeat intake; `path` is always set in a loaded Config."""

    enabled: bool = True
    path: PathT | None = None
    max_connections: int = Field(1024, ge=1)
    idle_timeout: PositiveDuration = 300.0
    max_line: Size = Field(64 * _KIB, gt=0)
    max_unverified_per_peer: int = Field(8, ge=1)  # per uid, from processes in no agent's tree
    unverified_timeout: PositiveDuration = 3.0


class HeartbeatSettings(_Section):
    """`heartbeat:` both intake paths."""

    http: HttpIntake = Field(default_factory=HttpIntake)
    unix: UnixIntake = Field(default_factory=UnixIntake)


class ResourcesSettings(_Section):
    """`resources:` resource sampling."""

    interval: PositiveDuration = 10.0


class HistorySettings(_Section):
    """`history:` resource history retention."""

    retention: PositiveDuration = 86400.0


class MetadataSettings(_Section):
    """`metadata:` metadata store write coalescing."""

    flush_interval: Duration = 1.0


class TLSSettings(_Section):
    """TLS files for the Manager link or the Manager API; existence is checked by their user at start."""

    enabled: bool = False
    ca_file: PathT | None = None
    cert_file: PathT | None = None
    key_file: PathT | None = None
    server_name: Str | None = None

    @model_validator(mode="after")
    def _pairs(self) -> TLSSettings:
        if self.enabled and (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be set together")
        return self


_GRPC_SCHEMES = ("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:", "vsock:")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?$")


def _check_manager_address(value: str) -> None:
    """host:port (a DNS name, an IPv4 address or [IPv6]) or a gRPC target with a scheme (dns:, unix:, ...)."""
    if value.startswith(_GRPC_SCHEMES):
        return
    expected = f"expected host:port (e.g. manager.example.com:9090) or a gRPC target such as dns:///host:port, got {value!r}"
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(expected)
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(expected) from None
    elif not _HOSTNAME.match(host):
        raise ValueError(expected)


class ManagerSettings(_Section):
    """`manager:` the link to the central Manager; no address means standalone."""

    address: Str | None = None
    tls: TLSSettings = Field(default_factory=TLSSettings)
    heartbeat_interval: PositiveDuration = 60.0
    sync_interval: PositiveDuration = 30.0
    timeout: PositiveDuration = 10.0
    labels: dict[str, Str] = Field(default_factory=dict)
    # The Manager re-creates a node it lost as "unknown" on the next heartbeat and still answers success,
    # so registering again on a schedule is the only way its facts come back (docs/manager.md).
    register_interval: PositiveDuration = 300.0
    # The address registered as the node's IP; the Manager dials it (port 9091) to operate agents.
    advertise_ip: IPAddress | None = None

    @field_validator("address")
    @classmethod
    def _address_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty (leave it out to run standalone)")
        if value is not None:
            _check_manager_address(value.strip())
        return value


class ManagerAPISettings(_Section):
    """`manager_api:` the optional gRPC API the Manager calls; off unless `listen` is set."""

    listen: Listen | None = None
    token: Str | None = None
    tls: TLSSettings = Field(default_factory=TLSSettings)
    # Peers allowed to connect at all (CIDRs), checked on every call whatever the auth; empty = any peer.
    allow_from: list[Cidr] = Field(default_factory=list)
    # Plaintext without a token, as the original Manager dials: only together with allow_from (docs/manager.md).
    insecure: bool = False
    # The original Manager pings every 45 s on idle connections; gRPC's default policy answers GOAWAY.
    min_ping_interval: PositiveDuration = 10.0

    @model_validator(mode="after")
    def _protected(self) -> ManagerAPISettings:
        if self.tls.enabled and (self.tls.cert_file is None or self.tls.key_file is None):
            raise ValueError("tls.enabled needs tls.cert_file and tls.key_file to serve TLS")
        if self.insecure and not self.allow_from:
            raise ValueError("insecure: true needs allow_from: the Manager's addresses (CIDRs) that may connect")
        if self.listen is not None and not _is_loopback(split_listen(self.listen)[0]):
            # Anyone who can reach this port could stop every agent on the node.
            if not self.tls.enabled and not self.token and not self.insecure:
                raise ValueError(
                    f"listen {self.listen!r} is not loopback: set manager_api.token or enable manager_api.tls"
                    " (or, for the original Manager, insecure: true with allow_from)"
                )
        return self


class CollectorSettings(_Section):
    """One node-metrics collector of `collectors:` (the original daemon's section)."""

    enabled: bool = True
    interval: PositiveDuration = 60.0


class DiskCollectorSettings(CollectorSettings):
    mount_points: list[Str] = Field(default_factory=list)  # empty = every mounted filesystem


class NetworkCollectorSettings(CollectorSettings):
    interfaces: list[Str] = Field(default_factory=list)  # empty = every interface


class CollectorsSettings(_Section):
    """`collectors:` node metrics for the Manager. Without the section all four run; with it, only those listed."""

    cpu: CollectorSettings
    memory: CollectorSettings
    disk: DiskCollectorSettings
    network: NetworkCollectorSettings

    @model_validator(mode="before")
    @classmethod
    def _unlisted_are_off(cls, data: Any) -> Any:
        # As in the original daemon, a collector left out of a written section does not run.
        if isinstance(data, dict):
            return {name: {"enabled": False} for name in ("cpu", "memory", "disk", "network")} | data
        return data

    @classmethod
    def all_on(cls) -> CollectorsSettings:
        return cls(cpu=CollectorSettings(), memory=CollectorSettings(), disk=DiskCollectorSettings(),
                   network=NetworkCollectorSettings())


class CgroupSettings(_Section):
    """`cgroups:` a cgroup v2 per agent where the kernel allows it (docs/architecture.md, "Process tracking")."""

    # auto: use a delegated cgroup or `root` when writable, else process groups; required: refuse to
    # start without one; off: always process groups.
    mode: Literal["auto", "required", "off"] = "auto"
    root: PathT | None = None  # a directory inside a cgroup2 mount, created if missing

    @field_validator("mode", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("root")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError(f"must be an absolute path inside a cgroup2 mount, got {str(value)!r}")
        return value


class AgentLimits(_Section):
    """`limits:` written to the agent's cgroup where the controller is enabled."""

    memory_max: OptionalSize = Field(None, gt=0)
    cpu_max: float | None = Field(None, gt=0, le=1024)  # in CPUs: 0.5 is half of one CPU
    pids_max: int | None = Field(None, ge=1)


class ShutdownSettings(_Section):
    """`shutdown:` what happens to agents when agentd stops."""

    stop_agents: bool = False


# ---------------------------------------------------------------------------------------------------------
# Agents


class HealthCheck(_Section):
    """`health_check:` liveness and threshold rules (docs/health.md)."""

    interval: PositiveDuration = 30.0
    heartbeat_timeout: OptionalDuration = 90.0
    # Percent of one core summed over the process tree: a busy multi-threaded agent may use several cores.
    cpu_threshold: float | None = Field(50.0, gt=0, le=100 * 4096)
    memory_threshold: OptionalSize = Field(500 * _MIB, gt=0)
    threshold_duration: Duration = 60.0
    # Open descriptors of the whole tree: a leak ends in EMFILE long after it starts (as the original's fd monitor).
    open_files_threshold: int | None = Field(None, ge=1)
    http_endpoint: str | None = None
    http_timeout: PositiveDuration = 5.0
    # https:// endpoints are verified against the system's CAs, or only this file (a self-signed agent's CA);
    # http_tls_verify: false turns verification off for this agent, explicitly (docs/operations.md).
    http_ca_file: PathT | None = None
    http_tls_verify: bool = True
    endpoint_failures: int = Field(3, ge=1)
    startup_grace: OptionalDuration = None

    @field_validator("heartbeat_timeout")
    @classmethod
    def _zero_disables(cls, value: float | None) -> float | None:
        return None if value == 0 else value

    @field_validator("http_ca_file")
    @classmethod
    def _ca_file(cls, value: Path | None) -> Path | None:
        if value is None:
            return value
        if not value.is_absolute():
            raise ValueError(f"must be an absolute path, got {str(value)!r}")
        if not value.is_file():
            raise ValueError(f"{value} is not a file" if value.exists() else f"{value} does not exist")
        return value

    @model_validator(mode="after")
    def _ca_or_no_verify(self) -> "HealthCheck":
        if self.http_ca_file is not None and not self.http_tls_verify:
            raise ValueError("http_ca_file and http_tls_verify: false contradict each other: keep one")
        return self

    @field_validator("http_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            parts = urlsplit(value)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        return value


class RestartPolicy(_Section):
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


class LogSettings(_Section):
    """`log:` rotation of the agent's stdout/stderr file."""

    max_size: Size = 100 * _MIB
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
        if value < _KIB:
            raise ValueError(f"must be ≥ 1KiB, got {format_bytes(value)}")
        return value


class AgentHeartbeat(_Section):
    """`heartbeat:` per-agent heartbeat settings."""

    token: Str | None = None


class _AgentFields(_Section):
    """Fields shared by an agent and `agent_defaults`."""

    type: AgentType = "custom"
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
    on_config_change: Literal["reload", "restart", "none"] | None = None
    stop_timeout: Duration = 30.0
    start_seconds: Duration = 1.0
    health_check: HealthCheck = Field(default_factory=HealthCheck)
    restart: RestartPolicy = Field(default_factory=RestartPolicy)
    log: LogSettings = Field(default_factory=LogSettings)
    heartbeat: AgentHeartbeat = Field(default_factory=AgentHeartbeat)
    # auto: running after start_seconds (or the first heartbeat); notify: only after sd_notify READY=1.
    ready: Literal["auto", "notify"] = "auto"
    limits: AgentLimits = Field(default_factory=AgentLimits)

    @field_validator("type", mode="before")
    @classmethod
    def _lower_type(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

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

    @field_validator("on_config_change", mode="before")
    @classmethod
    def _lower_change(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


class AgentDefaults(_AgentFields):
    """`agent_defaults:` every agent field except `id`, inherited field by field by each agent."""


def _apply_type_defaults(merged: dict, own: dict) -> None:
    """Give non-heartbeating types their defaults unless the agent itself (not agent_defaults) set them."""
    kind = merged.get("type")
    kind = kind.strip().lower() if isinstance(kind, str) else kind
    if kind not in NON_HEARTBEAT_TYPES:
        return
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
        if not _AGENT_ID.fullmatch(value):
            raise ValueError(f"invalid agent id {value!r}: must match {AGENT_ID_PATTERN}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _type_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            _apply_type_defaults(data, data)
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
            grace = max(hc.heartbeat_timeout or 0.0, 30.0)
            self.health_check = hc.model_copy(update={"startup_grace": grace})
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


class Config(_Section):
    """The whole agentd configuration; every path in a loaded Config is absolute."""

    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    control: ControlSettings = Field(default_factory=ControlSettings)
    heartbeat: HeartbeatSettings = Field(default_factory=HeartbeatSettings)
    resources: ResourcesSettings = Field(default_factory=ResourcesSettings)
    history: HistorySettings = Field(default_factory=HistorySettings)
    metadata: MetadataSettings = Field(default_factory=MetadataSettings)
    manager: ManagerSettings = Field(default_factory=ManagerSettings)
    manager_api: ManagerAPISettings = Field(default_factory=ManagerAPISettings)
    collectors: CollectorsSettings = Field(default_factory=CollectorsSettings.all_on)
    shutdown: ShutdownSettings = Field(default_factory=ShutdownSettings)
    cgroups: CgroupSettings = Field(default_factory=CgroupSettings)
    agent_defaults: AgentDefaults = Field(default_factory=AgentDefaults)
    agents: list[AgentSpec] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    source: Path | None = None


_AGENT_KEYS = ("agent", "agents", "agent_defaults")
_SECTIONS: dict[str, type[_Section]] = {
    name: field.annotation
    for name, field in Config.model_fields.items()
    if name not in _AGENT_KEYS and name not in ("warnings", "source")
}
_TOP_LEVEL_KEYS = [*_SECTIONS, *_AGENT_KEYS]


# ---------------------------------------------------------------------------------------------------------
# Turning pydantic errors into one-line problems

_TYPE_WORDS = {
    "float": "a number",
    "int": "an integer",
    "bool": "true or false",
    "string": "a string",
    "list": "a list",
    "dict": "a mapping",
    "model": "a mapping",
    "model_attributes": "a mapping",
    "path": "a path",
}
_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", "≥"),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "≤"),
}
_UNION_TAG = re.compile(r"^[a-z][a-z0-9_-]*\[.*\]$")


def _clean_loc(loc: tuple) -> tuple:
    # pydantic adds tags such as "[key]" or "function-after[...]" that mean nothing to a user.
    return tuple(p for p in loc if isinstance(p, int) or (p != "[key]" and not _UNION_TAG.match(p)))


def _join_path(prefix: str, loc: tuple) -> str:
    path = prefix
    for part in loc:
        path = f"{path}[{part}]" if isinstance(part, int) else (f"{path}.{part}" if path else str(part))
    return path


def _unwrap(tp: Any) -> Any:
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, UnionType):
            rest = [a for a in get_args(tp) if a is not NoneType]
            if len(rest) != 1:
                return tp
            tp = rest[0]
        else:
            return tp


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the model found at `loc` below `model`, for "did you mean" suggestions."""
    tp: Any = model
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return []
            tp = field.annotation
        elif get_origin(tp) is list and isinstance(part, int):
            tp = get_args(tp)[0]
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        else:
            return []
    tp = _unwrap(tp)
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def _unknown_key(key: Any, known: list[str]) -> str:
    message = f"unknown key {describe_value(str(key))}"
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    if close:
        return f"{message} (did you mean {close[0]!r}?)"
    if known and len(known) <= 10:
        return f"{message} (known keys: {', '.join(known)})"
    return message


def _explain(model: type[BaseModel], prefix: str, err: dict) -> tuple[str, str]:
    """(path, problem) for one pydantic error."""
    loc = _clean_loc(tuple(err["loc"]))
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind == "extra_forbidden":
        if model is AgentDefaults and loc == ("id",):
            return prefix, "'id' cannot be set in agent_defaults (each agent needs its own)"
        return _join_path(prefix, loc[:-1]), _unknown_key(loc[-1], _fields_at(model, loc[:-1]))
    path = _join_path(prefix, loc)
    if kind == "missing":
        return path, "is required"
    if value is None:
        return path, "must not be null"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return path, str(ctx["error"])
    if kind in _BOUNDS:
        key, symbol = _BOUNDS[kind]
        return path, f"must be {symbol} {describe_value(ctx.get(key))}, got {describe_value(value)}"
    if kind == "int_from_float":
        return path, f"expected an integer, got {describe_value(value)}"
    if kind == "literal_error":
        return path, f"must be one of {ctx.get('expected')}, got {describe_value(value)}"
    if kind == "too_short":
        minimum = ctx.get("min_length", 1)
        return path, "must not be empty" if minimum == 1 else f"needs at least {minimum} items"
    if kind == "too_long":
        return path, f"allows at most {ctx.get('max_length')} items"
    if kind == "finite_number":
        return path, "must be a finite number"
    base = kind.removesuffix("_type").removesuffix("_parsing")
    if base != kind and base in _TYPE_WORDS:
        return path, f"expected {_TYPE_WORDS[base]}, got {describe_value(value)}"
    return path, str(err.get("msg", kind)).splitlines()[0]


class _Problems:
    """Problems grouped by top-level key, so they come out in the order of the file."""

    def __init__(self, source: str):
        self.source = source
        self.by_key: dict[str, list[str]] = {}

    def add(self, key: str, path: str, problem: str) -> None:
        line = f"{self.source}: {path}: {problem}" if path else f"{self.source}: {problem}"
        self.by_key.setdefault(key, []).append(line)

    def add_validation(self, key: str, prefix: str, model: type[BaseModel], error: ValidationError, skip=None):
        for err in error.errors(include_url=False):
            if skip is None or not skip(_clean_loc(tuple(err["loc"]))):
                self.add(key, *_explain(model, prefix, err))

    def __bool__(self) -> bool:
        return bool(self.by_key)

    def ordered(self, key_order: list[str]) -> list[str]:
        keys = [k for k in key_order if k in self.by_key] + [k for k in self.by_key if k not in key_order]
        return [line for k in keys for line in self.by_key[k]]


# ---------------------------------------------------------------------------------------------------------
# Loading


def _deep_merge(base: Any, override: Any) -> Any:
    """Override wins key by key, recursing into mappings; lists and explicit nulls replace wholesale."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return override
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _deep_merge(base[key], value) if key in base else value
    return merged


def _has_path(raw: Any, loc: tuple) -> bool:
    for part in loc:
        if isinstance(part, int) or not isinstance(raw, dict):
            return True
        if part not in raw:
            return False
        raw = raw[part]
    return True


def _overlaps(a: tuple, b: tuple) -> bool:
    n = min(len(a), len(b))
    return a[:n] == b[:n]


class _Loader(yaml.SafeLoader):
    """SafeLoader that records duplicate mapping keys instead of letting the last one win silently."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.duplicates: list[str] = []


def _construct_mapping(loader: _Loader, node: yaml.MappingNode):
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node)
        line = key_node.start_mark.line + 1
        if key in seen:
            loader.duplicates.append(
                f"line {line}, column {key_node.start_mark.column + 1}: duplicate key "
                f"{describe_value(key)} (first on line {seen[key]})"
            )
        else:
            seen[key] = line
    return (yield from yaml.SafeLoader.construct_yaml_map(loader, node))


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def _read_yaml(text: str, label: str) -> tuple[Any, list[str]]:
    loader = None
    try:
        loader = _Loader(text)
        return loader.get_single_data(), [f"{label}: {d}" for d in loader.duplicates]
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        problem = f"character #x{exc.character:04x} is not allowed in YAML"
        raise ConfigError([f"{label}: line {line}, column {column}: {problem}"]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or "invalid YAML"
        if exc.context:
            context = exc.context
            if exc.context_mark is not None and exc.context_mark is not mark:
                context += f" on line {exc.context_mark.line + 1}"
            problem = f"{problem} ({context})"
        raise ConfigError([f"{label}: {where}{problem}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{label}: invalid YAML: {' '.join(str(exc).split())}"]) from None
    finally:
        if loader is not None:
            loader.dispose()


def load_config(path: str | os.PathLike, env: Mapping[str, str] | None = None) -> Config:
    """Read, validate and resolve a config file; raises ConfigError listing every problem found.

    `env` (default: os.environ) supplies the original daemon's overrides, see original_config.apply_env.
    """
    path = Path(path)
    label = str(path)
    data, duplicates = read_config_file(path)
    absolute = Path(os.path.abspath(path))
    try:
        config = parse_config(data, label, absolute.parent, os.environ if env is None else env)
    except ConfigError as exc:
        raise ConfigError(duplicates + exc.problems) from None
    if duplicates:
        raise ConfigError(duplicates)
    config.source = absolute
    return config


def read_config_file(path: Path) -> tuple[Any, list[str]]:
    """The parsed YAML of a config file and its duplicate-key problems; ConfigError if it cannot be read."""
    label = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([f"{label}: cannot read config: no such file"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{label}: cannot read config: it is a directory"]) from None
    except PermissionError:
        raise ConfigError([f"{label}: cannot read config: permission denied"]) from None
    except OSError as exc:
        raise ConfigError([f"{label}: cannot read config: {exc.strerror or exc}"]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{label}: not valid UTF-8 (bad byte at offset {exc.start})"]) from None
    return _read_yaml(text, label)


def parse_config(data: dict, source: str, base_dir: Path, env: Mapping[str, str] | None = None) -> Config:
    """Validate already-parsed YAML; relative paths are taken from base_dir. `source` labels problems.

    A file in the original daemon's format is translated first (original_config.py, docs/migration.md);
    `env` holds the environment overrides to apply (none by default).
    """
    source = str(source)
    base_dir = Path(os.path.abspath(base_dir))
    if data is None or data == {}:
        raise ConfigError([f"{source}: config is empty"])
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: expected a mapping of sections at the top level, got {describe_value(data)}"])

    problems = _Problems(source)
    warnings: list[str] = []
    original = is_original(data)
    if env:
        daemon_keys = frozenset(DaemonSettings.model_fields) | (ORIGINAL_DAEMON_KEYS if original else frozenset())
        data, applied = apply_env(data, env, daemon_keys)
        warnings += applied
    if original:
        translation = translate(data, frozenset(_SECTIONS))
        for path, problem in translation.problems:
            problems.add(path.split(".")[0].split("[")[0], path, problem)
        data = translation.data
        warnings += translation.warnings
    section_raw: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SECTIONS:
            section_raw[key] = value
        elif key not in _AGENT_KEYS:
            problems.add(str(key), "", _unknown_key(key, _TOP_LEVEL_KEYS).replace("unknown key", "unknown top-level key", 1))

    entries = _agent_entries(data, section_raw, problems, warnings)

    sections: dict[str, Any] = {}
    for name, model in _SECTIONS.items():
        if name in section_raw:
            try:
                sections[name] = model.model_validate(section_raw[name])
            except ValidationError as exc:
                problems.add_validation(name, name, model, exc)

    defaults_raw = data.get("agent_defaults")
    if defaults_raw is None:
        defaults_raw = {}
    elif not isinstance(defaults_raw, dict):
        problems.add("agent_defaults", "agent_defaults", f"expected a mapping, got {describe_value(defaults_raw)}")
        defaults_raw = {}
    defaults_bad: list[tuple] = []
    try:
        defaults = AgentDefaults.model_validate(defaults_raw)
    except ValidationError as exc:
        defaults = AgentDefaults()
        problems.add_validation("agent_defaults", "agent_defaults", AgentDefaults, exc)
        defaults_bad = [_clean_loc(tuple(e["loc"])) for e in exc.errors(include_url=False)]

    specs = _validate_agents(entries, defaults_raw, defaults_bad, problems)

    config = Config(**sections, agent_defaults=defaults, agents=specs)
    _resolve_paths(config, base_dir)
    _check_socket_paths(config, section_raw, problems)
    _check_manager_api_auth(config, problems)
    if problems:
        raise ConfigError(problems.ordered([str(k) for k in data]))

    if not config.agents:
        warnings.append(NO_AGENTS_WARNING)
    intake = config.heartbeat
    if not intake.http.enabled and not intake.unix.enabled:
        silent = [a.id for a in config.agents if a.enabled and a.expects_heartbeat]
        if silent:
            warnings.append(
                "heartbeat.http and heartbeat.unix are both disabled, but these agents expect heartbeats "
                f"and will be restarted for no_heartbeat: {', '.join(silent)}"
            )
    api = config.manager_api
    if api.listen and api.insecure and not api.token and not _tls_on(api.tls):
        warnings.append(
            f"manager_api is insecure: plaintext without a token on {api.listen}; whoever can connect from "
            f"{', '.join(api.allow_from)} can list, start and stop every agent (docs/manager.md)"
        )
        wide = [c for c in api.allow_from if ipaddress.ip_network(c).num_addresses > 256]
        if wide:
            warnings.append(f"manager_api.allow_from admits whole networks ({', '.join(wide)}), not just the Manager's addresses")
    config.warnings = warnings
    return config


def _tls_on(tls: TLSSettings) -> bool:
    return tls.enabled or any(getattr(tls, k) is not None for k in ("ca_file", "cert_file", "key_file"))


def _agent_entries(data: dict, section_raw: dict, problems: _Problems, warnings: list[str]) -> list:
    """(label, raw agent, top-level key) for every agent, converting the legacy `agent:` section."""
    legacy, listed = data.get("agent"), data.get("agents")
    if legacy is not None and listed is not None:
        problems.add("agent", "", "'agent' and 'agents' cannot both be set")
    if listed is not None:
        if not isinstance(listed, list):
            problems.add("agents", "agents", f"expected a list of agents, got {describe_value(listed)}")
            return []
        return [(f"agents[{i}]", raw, "agents") for i, raw in enumerate(listed)]
    if legacy is None:
        return []
    warnings.append(LEGACY_WARNING)
    if not isinstance(legacy, dict):
        problems.add("agent", "agent", f"expected a mapping, got {describe_value(legacy)}")
        return []
    own = dict(legacy)
    if own.get("id") is None:
        own["id"] = LEGACY_AGENT_ID
    socket_path = own.pop("socket_path", None)
    if socket_path is not None:
        if not isinstance(socket_path, str) or not socket_path.strip():
            problems.add("agent", "agent.socket_path", f"expected a path, got {describe_value(socket_path)}")
        else:
            heartbeat = section_raw.get("heartbeat") or {}
            unix = (heartbeat.get("unix") or {}) if isinstance(heartbeat, dict) else None
            # An explicit heartbeat.unix.path wins over the legacy socket_path.
            if isinstance(unix, dict) and unix.get("path") is None:
                section_raw["heartbeat"] = {**heartbeat, "unix": {**unix, "path": socket_path}}
    return [("agent", own, "agent")]


def _validate_agents(entries: list, defaults_raw: dict, defaults_bad: list[tuple], problems: _Problems) -> list:
    specs: list[AgentSpec] = []
    first_seen: dict[str, str] = {}
    for base_label, own, key in entries:
        if not isinstance(own, dict):
            problems.add(key, base_label, f"expected a mapping, got {describe_value(own)}")
            continue
        agent_id = own.get("id")
        if isinstance(agent_id, int) and not isinstance(agent_id, bool):
            agent_id = str(agent_id)
        label = base_label
        if isinstance(agent_id, str) and _AGENT_ID.fullmatch(agent_id):
            label = f"{base_label} ({agent_id})"
            if agent_id in first_seen:
                problems.add(key, f"{label}.id", f"duplicate agent id {agent_id!r} (also {first_seen[agent_id]})")
            else:
                first_seen[agent_id] = base_label
        merged = _deep_merge(defaults_raw, own)
        _apply_type_defaults(merged, own)

        def inherited_and_reported(loc: tuple, own=own) -> bool:
            # A bad value inherited from agent_defaults is reported there once, not again per agent.
            return not _has_path(own, loc) and any(_overlaps(loc, bad) for bad in defaults_bad)

        try:
            specs.append(AgentSpec.model_validate(merged))
        except ValidationError as exc:
            problems.add_validation(key, label, AgentSpec, exc, skip=inherited_and_reported)
    return specs


def _resolve_paths(config: Config, base_dir: Path) -> None:
    def absolute(path: Path | None) -> Path | None:
        return None if path is None else Path(os.path.normpath(base_dir / path))

    daemon = config.daemon
    daemon.run_dir = absolute(daemon.run_dir)
    daemon.data_dir = absolute(daemon.data_dir)
    daemon.log_dir = absolute(daemon.log_dir)
    unix = config.heartbeat.unix
    unix.path = absolute(unix.path) if unix.path is not None else daemon.run_dir / "heartbeat.sock"
    for tls in (config.manager.tls, config.manager_api.tls):
        tls.ca_file, tls.cert_file, tls.key_file = map(absolute, (tls.ca_file, tls.cert_file, tls.key_file))
    for fields in (config.agent_defaults, *config.agents):
        for name in ("binary_path", "config_file", "work_dir"):
            if getattr(fields, name) is not None:
                setattr(fields, name, absolute(getattr(fields, name)))
    for spec in config.agents:
        if spec.work_dir is None:
            spec.work_dir = daemon.data_dir / "work" / spec.id


def _check_manager_api_auth(config: Config, problems: _Problems) -> None:
    """A token or TLS on every address, loopback too: the control socket is owner-only, and the API must
    not let any local user do what the socket does not (stop every agent). insecure: true says otherwise."""
    api = config.manager_api
    if api.listen is None or api.token or _tls_on(api.tls) or api.insecure:
        return
    if _is_loopback(split_listen(api.listen)[0]):  # elsewhere, ManagerAPISettings already refused it
        problems.add(
            "manager_api", "manager_api.listen",
            f"{api.listen!r} has neither a token nor TLS: any local user could stop every agent through it; set "
            "manager_api.token or manager_api.tls (or insecure: true with allow_from, in so many words)",
        )


def check_accounts(config: Config) -> list[str]:
    """Agents whose user or group does not exist on this machine (they would end in `failed`); for check-config."""
    import grp
    import pwd

    found = []
    for spec in config.agents:
        for kind, name, lookup in (("user", spec.user, pwd.getpwnam), ("group", spec.group, grp.getgrnam)):
            if name and not name.isdigit():
                try:
                    lookup(name)
                except KeyError:
                    found.append(f"agent {spec.id}: {kind} {name!r} does not exist on this machine; the agent will fail to start")
    return found


def _check_socket_paths(config: Config, section_raw: dict, problems: _Problems) -> None:
    ipc = str(config.daemon.run_dir / "control.ipc")
    size = len(os.fsencode(ipc))
    run_dir_ok = size <= IPC_PATH_LIMIT
    if not run_dir_ok:
        problems.add(
            "daemon", "daemon.run_dir",
            f"too long: {ipc!r} is {size} bytes, but ZeroMQ ipc paths are limited to {IPC_PATH_LIMIT}; "
            "choose a shorter run_dir",
        )
    unix = config.heartbeat.unix
    heartbeat_raw = section_raw.get("heartbeat")
    unix_raw = heartbeat_raw.get("unix") if isinstance(heartbeat_raw, dict) else None
    explicit = isinstance(unix_raw, dict) and unix_raw.get("path") is not None
    # A socket path derived from an over-long run_dir would only repeat the run_dir problem.
    if unix.enabled and (run_dir_ok or explicit):
        size = len(os.fsencode(str(unix.path)))
        if size > UNIX_PATH_LIMIT:
            problems.add(
                "heartbeat", "heartbeat.unix.path",
                f"too long: {str(unix.path)!r} is {size} bytes, but Unix socket paths are limited to "
                f"{UNIX_PATH_LIMIT}; choose a shorter path",
            )


def check_binaries(config: Config) -> list[str]:
    """Warnings for agent binaries that are missing or not executable (used by `agentd check-config`)."""
    warnings = []
    for spec in config.agents:
        path = spec.binary_path
        note = " (agent is disabled)" if not spec.enabled else ""
        if not path.exists():
            warnings.append(f"agent {spec.id!r}: binary {path} does not exist{note}")
        elif path.is_dir():
            warnings.append(f"agent {spec.id!r}: binary {path} is a directory{note}")
        elif not os.access(path, os.X_OK):
            warnings.append(f"agent {spec.id!r}: binary {path} is not executable{note}")
    return warnings


def check_tls_files(config: Config) -> list[str]:
    """Problems with configured TLS files of an active Manager link or API: missing or unreadable.

    docs/manager-link.md: a configured certificate file that is missing is a start-up error, never a
    silent downgrade to plaintext, so agentd refuses to start on any of these.
    """
    problems = []
    sections = []
    if config.manager.address:
        sections.append(("manager.tls", config.manager.tls))
    if config.manager_api.listen:
        sections.append(("manager_api.tls", config.manager_api.tls))
    for name, tls in sections:
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(tls, key)
            if path is None:
                continue
            if not path.is_file():
                problems.append(f"{name}.{key}: {path} does not exist" if not path.exists() else f"{name}.{key}: {path} is not a file")
            elif not os.access(path, os.R_OK):
                problems.append(f"{name}.{key}: {path} is not readable")
    return problems


def _tidy(value: Any) -> Any:
    # 30.0 reads better as 30 in a file people look at; parse_config treats both the same.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _tidy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tidy(v) for v in value]
    return value


def dump_effective(config: Config) -> str:
    """The effective config as YAML (durations in seconds, paths as strings); parse_config reads it back."""
    data: dict[str, Any] = {name: getattr(config, name).model_dump(mode="json") for name in _SECTIONS}
    data["agent_defaults"] = config.agent_defaults.model_dump(mode="json", exclude_unset=True)
    data["agents"] = []
    inherited_env = config.agent_defaults.env
    for spec in config.agents:
        fields = spec.model_dump(mode="json")
        # env is the one mapping merged key by key; spell out removed defaults so a re-parse keeps them removed.
        fields["env"] = {**{k: None for k in inherited_env if k not in spec.env}, **fields["env"]}
        data["agents"].append({"id": fields.pop("id"), **fields})
    return yaml.safe_dump(_tidy(data), sort_keys=False, allow_unicode=True, default_flow_style=False)
