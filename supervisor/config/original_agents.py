"""The original daemon's agents, `agent_defaults` and legacy `agent:` section translated to agentd's native
form: its zero-means-unset keys, its backoff pair, the arguments it generated (docs/migration.md)."""

from __future__ import annotations

import posixpath
from typing import Any

from supervisor.config.agent import LEGACY_AGENT_ID, NODE_EXPORTER_ARGS, NON_HEARTBEAT_TYPES
from supervisor.config.original_notes import Recorder, empty, zero
from supervisor.config.units import describe_value, format_duration

__all__ = ["ORIGINAL_BACKOFF", "ORIGINAL_WORK_DIR", "AgentTranslator", "backoff_steps", "original_args"]

ORIGINAL_WORK_DIR = "/var/lib/daemon"  # the original's default daemon.work_dir
ORIGINAL_BACKOFF = (10.0, 60.0)  # its backoff_base / backoff_max defaults
LEGACY_NAME = "Legacy Agent"
_HC_ZERO_UNSET = ("interval", "heartbeat_timeout", "cpu_threshold", "memory_threshold", "threshold_duration")
_DURATION_KEYS = frozenset({"interval", "heartbeat_timeout", "threshold_duration"})


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
        return list(NODE_EXPORTER_ARGS)
    return ["-config", config_file] if config_file else []


def _steps_text(steps: list[float]) -> str:
    return ", ".join(format_duration(s) for s in steps)



class AgentTranslator(Recorder):
    """The agent half of the translation; `work_dir` and `unix_path` are the daemon's, set before agents()."""

    def __init__(self) -> None:
        super().__init__()
        self.work_dir = ORIGINAL_WORK_DIR
        self.unix_path: str | None = None
        self.default_backoff = ORIGINAL_BACKOFF

    def backoff_pair(self, where: str, restart: dict, inherited: tuple[float, float]) -> tuple[float, float]:
        base, maximum = inherited
        for key in ("backoff_base", "backoff_max"):
            if key in restart and not zero(restart[key], duration=True):
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
                if [k for k in rest if not (k == "binary_path" and empty(legacy[k]))]:
                    self.note("agent", f"{', '.join(rest)} ignored because agents: is set (the original then used only agent.socket_path)", warn=True)
            elif empty(legacy.get("binary_path")):
                self.note("agent.binary_path", "empty: no agent to manage, as the original")
            else:
                item = {"id": LEGACY_AGENT_ID, "type": "custom", "name": LEGACY_NAME, "enabled": True}
                item.update({k: legacy[k] for k in ("binary_path", "config_file", "work_dir", "health_check", "restart") if k in legacy})
                self.note("agent", f"converted to one agent with id {LEGACY_AGENT_ID!r}, type custom, as the original")
                items = [("agent", item)]
        out = []
        for label, item in items:
            if not isinstance(item, dict):
                out.append(item)  # validation reports it
                continue
            agent_id = item.get("id")
            named = f"{label} ({agent_id})" if isinstance(agent_id, str) else label
            kind = item.get("type")
            kind = kind.strip().lower() if isinstance(kind, str) else None  # a non-string is validation's to report
            out.append(self.agent_fields(item, named, kind=kind, is_defaults=False))
        return out

    def agent_fields(self, raw: dict, label: str, kind: str | None, is_defaults: bool) -> dict:
        out: dict[str, Any] = {}
        for key, value, where in self.entries(label, raw):
            if key in ("config_file", "work_dir") and empty(value):
                continue  # "" is the original's "unset"
            if key == "name":
                if not empty(value):
                    out["name"] = value
            elif key == "socket_path":
                if not empty(value):
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
            if key in _HC_ZERO_UNSET and zero(value, duration=key in _DURATION_KEYS):
                self.note(f"{where}.{key}", f"{value!r} means 'unset' in the original's format: the default applies",
                          warn=key == "heartbeat_timeout" and kind not in NON_HEARTBEAT_TYPES)
                continue
            if key == "heartbeat_timeout" and kind in NON_HEARTBEAT_TYPES:
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
            if key == "max_retries" and zero(value, duration=False):
                self.note(f"{where}.{key}", "0 means 'unset' in the original's format: the default applies")
                continue
            if key == "policy" and empty(value):
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
