"""The original node daemon's config format: recognise it, translate it to agentd's own, apply its env overrides.

A file in the original's format behaves as it did under the original daemon. Where the file's text and
the original's behaviour differ (zero means "unset", agents without `enabled: true` never ran, `args`
was ignored), agentd follows the behaviour and says so once. docs/migration.md lists every key.
"""

from __future__ import annotations

import posixpath
import textwrap
from collections.abc import Mapping
from typing import Any

import yaml

from supervisor.config.original_agents import ORIGINAL_BACKOFF, AgentTranslator
from supervisor.config.original_notes import Note, Translation, empty, zero
from supervisor.config.units import describe_value

__all__ = ["ORIGINAL_DAEMON_KEYS", "apply_env", "is_original", "render", "translate"]

# Keys agentd's native form does not have: any of them marks a file as the original's.
_DAEMON_ONLY = frozenset({"work_dir", "grpc_port", "http_port", "pprof_port", "pprof_address", "max_procs"})
ORIGINAL_DAEMON_KEYS = _DAEMON_ONLY | {"id", "log_level", "log_file", "pid_file"}
_COLLECTORS = ("cpu", "memory", "disk", "network")

# The original's environment overrides (viper BindEnv); DAEMON_<KEY> comes from its AutomaticEnv.
SHORT_ENV = {"NODE_NAME": ("daemon", "id"), "LOG_LEVEL": ("daemon", "log_level"), "MANAGER_ADDRESS": ("manager", "address")}
DAEMON_ENV_PREFIX = "DAEMON_"


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


class _Translator(AgentTranslator):
    """The daemon-wide sections; the agents are AgentTranslator's."""

    def run(self, data: dict, native_sections: frozenset[str]) -> dict:
        out: dict[str, Any] = {}
        out["daemon"], ports = self.daemon(self.mapping("daemon", data.get("daemon")))
        heartbeat = self.mapping("heartbeat", data.get("heartbeat"))
        legacy = self.mapping("agent", data.get("agent"))
        socket = legacy.get("socket_path")
        if not empty(socket):
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
        for key, value, where in self.entries("daemon", raw):
            if key == "id":
                self.keep(out, "id", value, where, "empty: agentd uses its generated node id (data_dir/node_id), as the original generated one")
            elif key == "log_level":
                if isinstance(value, str) and value.strip().lower() == "warn":
                    out["log_level"] = "warning"
                    self.note(where, "warn is agentd's 'warning'")
                else:
                    out["log_level"] = value
            elif key in ("log_file", "pid_file"):
                if empty(value):
                    self.note(where, "empty: not written")
                else:
                    out[key] = self.path(where, value)
                    self.note(where, "agentd's own log goes there too, rotated" if key == "log_file"
                              else "agentd writes its pid there too; its lock stays run_dir/agentd.pid")
            elif key == "work_dir":
                if not empty(value):
                    if isinstance(value, str):
                        self.work_dir = self.path(where, value)
                    else:
                        self.problem(where, f"expected a path, got {describe_value(value)}")
            elif key in ("grpc_port", "http_port"):
                extra[key] = self.port(where, value)
            elif key == "pprof_port":
                if not empty(value) and str(value).strip() != "0":
                    self.note(where, "ignored: the Go profiler has no counterpart in agentd (use py-spy on its pid)", warn=True)
            elif key == "pprof_address":
                pass  # meaningful only with pprof_port, which is reported
            elif key == "max_procs":
                if not zero(value, duration=False):
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
        for key, value, where in self.entries("manager", raw):
            if key == "address":
                self.keep(out, "address", value, where, "empty: standalone, as the original")
            elif key == "tls":
                tls = {k: v for k, v in self.mapping(where, value).items() if not empty(v)}
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
