"""The original node daemon's config format: recognise it, translate it to agentd's own, apply its env overrides.

A file in the original's format behaves as it did under the original daemon. Where the file's text and
the original's behaviour differ (zero means "unset", agents without `enabled: true` never ran, `args`
was ignored), agentd follows the behaviour and says so once. docs/migration.md lists every key.
"""

from __future__ import annotations

import posixpath
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from supervisor.config.units import describe_value, format_duration, parse_duration

__all__ = ["Note", "Translation", "apply_env", "backoff_steps", "is_original", "original_args", "render", "translate"]

ORIGINAL_WORK_DIR = "/var/lib/daemon"  # the original's default daemon.work_dir
ORIGINAL_BACKOFF = (10.0, 60.0)  # its backoff_base / backoff_max defaults
LEGACY_ID, LEGACY_NAME = "legacy-agent", "Legacy Agent"
HEARTBEAT_LESS = ("filebeat", "telegraf", "node_exporter")
FORMAT_WARNING = (
    "read as the original daemon's config format: it behaves as it did there "
    "(`agentd migrate-config FILE` prints agentd's native form; docs/migration.md)"
)

# Keys agentd's native form does not have: any of them marks a file as the original's.
_DAEMON_ONLY = frozenset({"work_dir", "grpc_port", "http_port", "pprof_port", "pprof_address", "max_procs"})
ORIGINAL_DAEMON_KEYS = _DAEMON_ONLY | {"id", "log_level", "log_file", "pid_file"}
_HC_ZERO_UNSET = ("interval", "heartbeat_timeout", "cpu_threshold", "memory_threshold", "threshold_duration")
_DURATION_KEYS = frozenset({"interval", "heartbeat_timeout", "threshold_duration"})
_COLLECTORS = ("cpu", "memory", "disk", "network")

# The original's environment overrides (viper BindEnv); DAEMON_<KEY> comes from its AutomaticEnv.
SHORT_ENV = {"NODE_NAME": ("daemon", "id"), "LOG_LEVEL": ("daemon", "log_level"), "MANAGER_ADDRESS": ("manager", "address")}
DAEMON_ENV_PREFIX = "DAEMON_"


@dataclass(frozen=True)
class Note:
    """What became of one key: `warn` when agentd ignores it or does something other than the file says."""

    path: str
    text: str
    warn: bool = False


@dataclass
class Translation:
    """agentd's native raw config for an original-format file, with a note per changed key and the problems."""

    data: dict
    notes: list[Note] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return [FORMAT_WARNING, *(f"{n.path}: {n.text}" for n in self.notes if n.warn)]


def _restart_sections(data: dict):
    legacy = data.get("agent")
    if isinstance(legacy, dict):
        yield legacy
    defaults = data.get("agent_defaults")
    if isinstance(defaults, dict):
        yield defaults
    listed = data.get("agents")
    if isinstance(listed, list):
        yield from (item for item in listed if isinstance(item, dict))


def is_original(data: Any) -> bool:
    """True when the parsed YAML uses a key only the original daemon's format has."""
    if not isinstance(data, dict):
        return False
    if "update" in data or ("agent" in data and "agents" in data):
        return True
    daemon, manager = data.get("daemon"), data.get("manager")
    if isinstance(daemon, dict) and _DAEMON_ONLY & set(daemon):
        return True
    if isinstance(manager, dict) and "reconnect_interval" in manager:
        return True
    for section in _restart_sections(data):
        restart = section.get("restart")
        if isinstance(restart, dict) and {"backoff_base", "backoff_max"} & set(restart):
            return True
        if section is not data.get("agent") and "socket_path" in section:
            return True
    return False


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _zero(value: Any, duration: bool) -> bool:
    """The original's "unset": Go's zero value (0, 0s, "", null)."""
    if _empty(value):
        return True
    try:
        return (parse_duration(value) if duration else float(value)) == 0
    except (TypeError, ValueError):
        return False


def backoff_steps(base: float, maximum: float) -> list[float]:
    """agentd's steps for backoff_base/backoff_max: at once, base, base, 3×base, 3×base, then max.

    With the original's defaults (10s, 60s) this is exactly its fixed schedule 0, 10, 10, 30, 30, 60.
    """
    b, t = min(base, maximum), min(3 * base, maximum)
    return [0.0, b, b, t, t, maximum]


def original_args(kind: str, config_file: str | None, work_dir: str | None) -> list[str]:
    """The arguments the original generated for an agent type (it ignored `args`)."""
    if kind == "filebeat":
        args = ["-c", config_file or ""]
        return args + ["-path.home", work_dir] if work_dir else args
    if kind == "node_exporter":
        return ["--web.listen-address=:9100", "--path.procfs=/proc", "--path.sysfs=/sys"]
    return ["-config", config_file] if config_file else []


def _steps_text(steps: list[float]) -> str:
    return ", ".join(format_duration(s) for s in steps)


class _Translator:
    def __init__(self) -> None:
        self.notes: list[Note] = []
        self.problems: list[tuple[str, str]] = []
        self.work_dir = ORIGINAL_WORK_DIR
        self.unix_path: str | None = None
        self.relative: list[str] = []
        self.default_backoff = ORIGINAL_BACKOFF

    def note(self, path: str, text: str, warn: bool = False) -> None:
        self.notes.append(Note(path, text, warn))

    def problem(self, path: str, text: str) -> None:
        self.problems.append((path, text))

    def path(self, where: str, value: Any) -> Any:
        if isinstance(value, str) and value.strip() and not value.startswith("/"):
            self.relative.append(where)
        return value

    def duration(self, where: str, value: Any) -> float | None:
        try:
            return parse_duration(value)
        except (TypeError, ValueError) as exc:
            self.problem(where, str(exc))
            return None

    def port(self, where: str, value: Any) -> int | None:
        try:
            port = int(str(value).strip() or "0")
        except ValueError:
            self.problem(where, f"expected a port number, got {describe_value(value)}")
            return None
        if not 0 <= port <= 65535:
            self.problem(where, f"must be 0..65535, got {port}")
            return None
        return port

    def mapping(self, where: str, value: Any) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(where, f"expected a mapping, got {describe_value(value)}")
            return {}
        return value

    # ------------------------------------------------------------------------------------------ sections

    def run(self, data: dict, native_sections: frozenset[str]) -> dict:
        out: dict[str, Any] = {}
        out["daemon"], ports = self.daemon(self.mapping("daemon", data.get("daemon")))
        heartbeat = self.mapping("heartbeat", data.get("heartbeat"))
        legacy = self.mapping("agent", data.get("agent"))
        socket = legacy.get("socket_path")
        if not _empty(socket):
            self.unix_path = self.path("agent.socket_path", socket)
        out["heartbeat"] = self.heartbeat(heartbeat, ports.get("http_port"))
        if "manager" in data:
            out["manager"] = self.manager(self.mapping("manager", data["manager"]))
        if ports.get("grpc_port"):
            api = self.mapping("manager_api", data.get("manager_api"))
            if "listen" in api:
                self.note("daemon.grpc_port", f"manager_api.listen {api['listen']} is set and wins")
            else:
                # Serving it as the original did (plaintext, no token, to anyone) would let anyone who can
                # connect stop every agent: that needs the operator's explicit `insecure` + `allow_from`.
                self.note(
                    "daemon.grpc_port",
                    f"the Manager API is not served: the original served it on :{ports['grpc_port']} without "
                    "authentication to anyone. For the original Manager add manager_api: {listen: "
                    f"'0.0.0.0:{ports['grpc_port']}', insecure: true, allow_from: [<the Manager's IP>/32]}} "
                    "(docs/manager.md)",
                    warn=True,
                )
            if api:
                out["manager_api"] = api
        for key, value in data.items():
            if key in ("daemon", "heartbeat", "manager", "agent", "agents", "agent_defaults", "update", "collectors"):
                continue
            if key == "manager_api" and "manager_api" in out:
                continue
            out[key] = value  # native sections pass through; validation reports unknown ones
        if "collectors" in data:
            collectors = self.collectors(data["collectors"], "collectors" in native_sections)
            if collectors is not None:
                out["collectors"] = collectors
        if "update" in data:
            self.note("update", "ignored: the original did not use this section either (agentd is upgraded by its package)", warn=True)
        defaults = self.mapping("agent_defaults", data.get("agent_defaults"))
        self.default_backoff = self.backoff_pair("agent_defaults.restart", self.mapping("agent_defaults.restart", defaults.get("restart")), ORIGINAL_BACKOFF)
        if "agent_defaults" in data:
            out["agent_defaults"] = self.agent_fields(defaults, "agent_defaults", kind=None, is_defaults=True)
        out["agents"] = self.agents(legacy, data.get("agents"), "agent" in data)
        if self.relative:
            self.note(
                ", ".join(self.relative),
                "relative paths are taken from the config file's directory, not from the working directory "
                "as the original did",
                warn=True,
            )
        return out

    def daemon(self, raw: dict) -> tuple[dict, dict]:
        out: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in raw.items():
            where = f"daemon.{key}"
            if key == "id":
                if _empty(value):
                    self.note(where, "empty: agentd uses its generated node id (data_dir/node_id), as the original generated one")
                else:
                    out["id"] = value
            elif key == "log_level":
                if isinstance(value, str) and value.strip().lower() == "warn":
                    out["log_level"] = "warning"
                    self.note(where, "warn is agentd's 'warning'")
                else:
                    out["log_level"] = value
            elif key in ("log_file", "pid_file"):
                if _empty(value):
                    self.note(where, "empty: not written")
                else:
                    out[key] = self.path(where, value)
                    self.note(where, "agentd's own log goes there too, rotated" if key == "log_file"
                              else "agentd writes its pid there too; its lock stays run_dir/agentd.pid")
            elif key == "work_dir":
                if not _empty(value):
                    if isinstance(value, str):
                        self.work_dir = self.path(where, value)
                    else:
                        self.problem(where, f"expected a path, got {describe_value(value)}")
            elif key in ("grpc_port", "http_port"):
                extra[key] = self.port(where, value)
            elif key == "pprof_port":
                if not _empty(value) and str(value).strip() != "0":
                    self.note(where, "ignored: the Go profiler has no counterpart in agentd (use py-spy on its pid)", warn=True)
            elif key == "pprof_address":
                pass  # meaningful only with pprof_port, which is reported
            elif key == "max_procs":
                if not _zero(value, duration=False):
                    self.note(where, "ignored: a Go runtime setting; agentd's parallelism is its worker processes", warn=True)
            else:
                out[key] = value
        wd = self.work_dir.rstrip("/") or "/"
        out.setdefault("data_dir", wd)
        out.setdefault("log_dir", posixpath.join(wd, "logs"))
        self.note("daemon.work_dir", f"data_dir {out['data_dir']}, log_dir {out['log_dir']}, agents' work dirs {posixpath.join(wd, 'agents', '<id>')}")
        return out, extra

    def heartbeat(self, raw: dict, http_port: int | None) -> dict:
        out = dict(raw)
        http = self.mapping("heartbeat.http", out.get("http"))
        if "listen" not in http and "enabled" not in http:
            if http_port:
                http = {**http, "listen": f"127.0.0.1:{http_port}"}
                self.note("daemon.http_port", f"HTTP heartbeats on 127.0.0.1:{http_port} (agents are local; the original bound every interface)")
            else:
                http = {**http, "enabled": False}
                self.note("daemon.http_port", "0 or unset: no HTTP heartbeat intake, as the original")
        out["http"] = http
        if self.unix_path is not None:
            unix = self.mapping("heartbeat.unix", out.get("unix"))
            if "path" not in unix:
                out["unix"] = {**unix, "path": self.unix_path}
                self.note("agent.socket_path", "agentd's heartbeat socket (heartbeat.unix.path), so the original's agents find it")
            else:
                self.unix_path = unix["path"]
        return out

    def manager(self, raw: dict) -> dict:
        out: dict[str, Any] = {}
        for key, value in raw.items():
            where = f"manager.{key}"
            if key == "address":
                if _empty(value):
                    self.note(where, "empty: standalone, as the original")
                else:
                    out["address"] = value
            elif key == "tls":
                tls = {k: v for k, v in self.mapping(where, value).items() if not _empty(v)}
                if tls:
                    out["tls"] = tls
                    self.note(where, "a configured file that is missing stops agentd at start (the original fell back to plaintext)")
                else:
                    self.note(where, "empty paths: no TLS, as the original")
            elif key == "reconnect_interval":
                self.note(where, "ignored: the original did not use it either; agentd reconnects with its own backoff", warn=True)
            else:
                out[key] = value
        return out

    def collectors(self, raw: Any, native: bool) -> dict | None:
        raw = self.mapping("collectors", raw)
        if not native:
            self.note("collectors", "ignored: this agentd build has no node-metrics collectors settings", warn=True)
            return None
        out = {}
        for name, value in raw.items():
            value = self.mapping(f"collectors.{name}", value)
            if name in _COLLECTORS and "enabled" not in value:
                value = {**value, "enabled": False}
                self.note(f"collectors.{name}", "no 'enabled: true': off, as the original (its default is false)")
            out[name] = value
        return out

    # ------------------------------------------------------------------------------------------ agents

    def backoff_pair(self, where: str, restart: dict, inherited: tuple[float, float]) -> tuple[float, float]:
        base, maximum = inherited
        for key in ("backoff_base", "backoff_max"):
            if key in restart and not _zero(restart[key], duration=True):
                seconds = self.duration(f"{where}.{key}", restart[key])
                if seconds is not None:
                    base, maximum = (seconds, maximum) if key == "backoff_base" else (base, seconds)
        return base, maximum

    def agents(self, legacy: dict, listed: Any, has_legacy: bool) -> list:
        if listed is not None and not isinstance(listed, list):
            self.problem("agents", f"expected a list of agents, got {describe_value(listed)}")
            listed = []
        items = [(f"agents[{i}]", item) for i, item in enumerate(listed or [])]
        if has_legacy:
            rest = sorted(k for k in legacy if k != "socket_path")
            if items:
                if [k for k in rest if not (k == "binary_path" and _empty(legacy[k]))]:
                    self.note("agent", f"{', '.join(rest)} ignored because agents: is set (the original then used only agent.socket_path)", warn=True)
            elif _empty(legacy.get("binary_path")):
                self.note("agent.binary_path", "empty: no agent to manage, as the original")
            else:
                item = {"id": LEGACY_ID, "type": "custom", "name": LEGACY_NAME, "enabled": True}
                item.update({k: legacy[k] for k in ("binary_path", "config_file", "work_dir", "health_check", "restart") if k in legacy})
                self.note("agent", f"converted to one agent with id {LEGACY_ID!r}, type custom, as the original")
                items = [("agent", item)]
        out = []
        for label, item in items:
            if not isinstance(item, dict):
                out.append(item)  # validation reports it
                continue
            agent_id = item.get("id")
            named = f"{label} ({agent_id})" if isinstance(agent_id, str) else label
            kind = item.get("type")
            kind = kind.strip().lower() if isinstance(kind, str) else kind
            out.append(self.agent_fields(item, named, kind=kind, is_defaults=False))
        return out

    def agent_fields(self, raw: dict, label: str, kind: str | None, is_defaults: bool) -> dict:
        out: dict[str, Any] = {}
        for key, value in raw.items():
            where = f"{label}.{key}"
            if key in ("config_file", "work_dir") and _empty(value):
                continue  # "" is the original's "unset"
            if key == "name":
                if not _empty(value):
                    out["name"] = value
            elif key == "socket_path":
                if not _empty(value):
                    self.socket_note(where, value)
            elif key == "args":
                pass  # judged below, once the work dir is known
            elif key == "health_check":
                out["health_check"] = self.health_check(self.mapping(where, value), where, kind)
            elif key == "restart":
                out["restart"] = self.restart(self.mapping(where, value), where, is_defaults)
            elif key in ("binary_path", "config_file", "work_dir"):
                out[key] = self.path(where, value)
            else:
                out[key] = value
        if is_defaults:
            return out
        agent_id = raw.get("id")
        if "enabled" not in raw:
            out["enabled"] = False
            self.note(label, "no 'enabled: true', so the original never started it: it stays stopped (agentctl start starts it)", warn=True)
        if "name" not in out and isinstance(kind, str):
            out["name"] = kind  # the original shows the type when the name is empty
        if "work_dir" not in out and isinstance(agent_id, str):
            out["work_dir"] = posixpath.join(self.work_dir, "agents", agent_id)
        if isinstance(kind, str):
            generated = original_args(kind, out.get("config_file"), out.get("work_dir"))
            listed = raw.get("args")
            if listed is not None and listed != generated:
                self.note(
                    f"{label}.args",
                    f"ignored, as the original did: it runs with {generated} (the original's arguments for {kind})",
                    warn=True,
                )
        return out

    def socket_note(self, where: str, value: Any) -> None:
        if self.unix_path is not None and posixpath.normpath(str(value)) == posixpath.normpath(str(self.unix_path)):
            self.note(where, "the socket agentd listens on (agent.socket_path)")
        else:
            listening = self.unix_path or "run_dir/heartbeat.sock"
            self.note(where, f"not listened on (neither did the original); agentd's heartbeat socket is {listening}", warn=True)

    def health_check(self, raw: dict, where: str, kind: str | None) -> dict:
        out = {}
        for key, value in raw.items():
            if key in _HC_ZERO_UNSET and _zero(value, duration=key in _DURATION_KEYS):
                self.note(f"{where}.{key}", f"{value!r} means 'unset' in the original's format: the default applies",
                          warn=key == "heartbeat_timeout" and kind not in HEARTBEAT_LESS)
                continue
            if key == "heartbeat_timeout" and kind in HEARTBEAT_LESS:
                # The original checked heartbeat_timeout only after a first heartbeat, which these never send.
                self.note(f"{where}.{key}", f"{kind} sends no heartbeats, so this never applied: agentd expects none")
                continue
            out[key] = value
        return out

    def restart(self, raw: dict, where: str, is_defaults: bool) -> dict:
        out = {}
        for key, value in raw.items():
            if key in ("backoff_base", "backoff_max"):
                continue
            if key == "max_retries" and _zero(value, duration=False):
                self.note(f"{where}.{key}", "0 means 'unset' in the original's format: the default applies")
                continue
            if key == "policy" and _empty(value):
                continue
            out[key] = value
        if {"backoff_base", "backoff_max"} & set(raw):
            inherited = ORIGINAL_BACKOFF if is_defaults else self.default_backoff
            steps = backoff_steps(*self.backoff_pair(where, raw, inherited))
            out["backoff_steps"] = [f"{s:g}s" for s in steps]
            fixed = backoff_steps(*ORIGINAL_BACKOFF)
            self.note(
                f"{where}.backoff_base/backoff_max",
                f"backoff_steps [{_steps_text(steps)}]" + ("" if steps == fixed else
                f" (the original read neither key and always waited {_steps_text(fixed)})"),
            )
        return out


def translate(data: dict, native_sections: frozenset[str] = frozenset()) -> Translation:
    """agentd's native raw config for the original-format `data`; `native_sections` are the top-level sections agentd knows."""
    translator = _Translator()
    native = translator.run(data, native_sections)
    return Translation(native, translator.notes, translator.problems)


def apply_env(data: dict, env: Mapping[str, str], daemon_keys: frozenset[str]) -> tuple[dict, list[str]]:
    """The original's environment overrides on the raw config; returns it and one line per override applied.

    Precedence, lowest first: file, NODE_NAME / LOG_LEVEL / MANAGER_ADDRESS, DAEMON_<KEY>; empty values are
    ignored (as viper did). Only DAEMON_ variables naming a known daemon key count: DAEMON_OPTS and the like
    belong to init scripts.
    """
    applied: list[str] = []
    sets: dict[tuple[str, str], tuple[str, str]] = {}
    for var, target in SHORT_ENV.items():
        if env.get(var, "").strip():
            sets[target] = (var, env[var])
    for var, value in env.items():
        if var.startswith(DAEMON_ENV_PREFIX) and value.strip():
            key = var[len(DAEMON_ENV_PREFIX):].lower()
            if key in daemon_keys:
                sets[("daemon", key)] = (var, value)
    if not sets:
        return data, applied
    data = dict(data)
    for (section, key), (var, value) in sets.items():
        current = data.get(section)
        data[section] = {**(current if isinstance(current, dict) else {}), key: value}
        applied.append(f"environment: {var} sets {section}.{key}")
    return data, applied


def _place(path: str) -> str:
    """Where a note's comment goes in agentd's native form: a top-level key, `agents[i]`, or "" (the header)."""
    if path.startswith(("daemon.http_port", "agent.socket_path")):
        return "heartbeat"
    if path.startswith("daemon.grpc_port"):
        return "manager_api"
    if path.startswith("agents["):
        return path.split(" ")[0].split(".")[0]
    if path == "agent" or path.startswith("agent."):
        return "agents"
    head = path.split(".")[0].split(",")[0]
    return head if head in ("daemon", "manager", "agent_defaults", "collectors") else ""


def _comments(notes: list[Note], indent: str) -> list[str]:
    lines = []
    for n in notes:
        text = f"{n.path}: {n.text}"
        lines += [f"{indent}# {part}" for part in textwrap.wrap(text, 100 - len(indent), subsequent_indent="  ")]
    return lines


def render(translation: Translation, source: str) -> str:
    """agentd's native YAML for a translated file, with a comment on every key that changed meaning."""
    places: dict[str, list[Note]] = {}
    for n in translation.notes:
        places.setdefault(_place(n.path), []).append(n)
    lines = [
        f"# agentd's native config, translated by `agentd migrate-config` from {source}",
        "# (the original daemon's format). Each comment says what became of a key; docs/migration.md has the details.",
        *_comments(places.pop("", []), ""),
        "",
    ]
    for key, value in translation.data.items():
        lines += _comments(places.pop(key, []), "")
        if key == "agents" and isinstance(value, list) and value:
            lines.append("agents:")
            for i, item in enumerate(value):
                lines += _comments(places.pop(f"agents[{i}]", []), "  ")
                dumped = yaml.safe_dump([item], sort_keys=False, default_flow_style=False, allow_unicode=True)
                lines += [f"  {line}" for line in dumped.splitlines()]
        else:
            dumped = yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=False, allow_unicode=True)
            lines += dumped.splitlines()
        lines.append("")
    for rest in places.values():  # a note whose key produced nothing in the native form
        lines += _comments(rest, "")
    return "\n".join(lines).rstrip("\n") + "\n"
