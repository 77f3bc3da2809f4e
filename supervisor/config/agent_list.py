"""The agents of a config file: the `agents:` list or the legacy `agent:` section, each agent merged over
`agent_defaults` field by field and validated (docs/configuration.md, "Agents")."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from supervisor.config.agent import LEGACY_AGENT_ID, AgentDefaults, AgentSpec, apply_type_defaults, is_agent_id
from supervisor.config.errors import Problems, clean_loc
from supervisor.config.units import describe_value

__all__ = ["LEGACY_WARNING", "agent_entries", "validate_agents", "validate_defaults"]

LEGACY_WARNING = "the 'agent:' section is deprecated; use 'agents:' (a list) — see README"


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


def agent_entries(data: dict, section_raw: dict, problems: Problems, warnings: list[str]) -> list:
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


def validate_agents(entries: list, defaults_raw: dict, defaults_bad: list[tuple], problems: Problems) -> list:
    """Each entry of agent_entries merged over `defaults_raw` and validated; ids must be unique."""
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
        if is_agent_id(agent_id):
            label = f"{base_label} ({agent_id})"
            if agent_id in first_seen:
                problems.add(key, f"{label}.id", f"duplicate agent id {agent_id!r} (also {first_seen[agent_id]})")
            else:
                first_seen[agent_id] = base_label
        merged = _deep_merge(defaults_raw, own)
        apply_type_defaults(merged, own)

        def inherited_and_reported(loc: tuple, own=own) -> bool:
            # A bad value inherited from agent_defaults is reported there once, not again per agent.
            return not _has_path(own, loc) and any(_overlaps(loc, bad) for bad in defaults_bad)

        try:
            specs.append(AgentSpec.model_validate(merged))
        except ValidationError as exc:
            problems.add_validation(key, label, AgentSpec, exc, skip=inherited_and_reported)
    return specs



def validate_defaults(data: dict, problems: Problems) -> tuple[dict, AgentDefaults, list[tuple]]:
    """`agent_defaults` raw (for merging) and validated, and the locations of its bad values."""
    defaults_raw = data.get("agent_defaults")
    if defaults_raw is None:
        defaults_raw = {}
    elif not isinstance(defaults_raw, dict):
        problems.add("agent_defaults", "agent_defaults", f"expected a mapping, got {describe_value(defaults_raw)}")
        defaults_raw = {}
    try:
        return defaults_raw, AgentDefaults.model_validate(defaults_raw), []
    except ValidationError as exc:
        problems.add_validation("agent_defaults", "agent_defaults", AgentDefaults, exc)
        return defaults_raw, AgentDefaults(), [clean_loc(tuple(e["loc"])) for e in exc.errors(include_url=False)]
