"""What `agentctl status`, `ping` and `start`/`stop`/`restart` print, from the verbs' JSON results.

Free of click and pydantic: both the quick path (supervisor/ctl/agentctl_main.py) and the full CLI use it.
"""

from __future__ import annotations

from typing import Any

from supervisor.common.human_format import format_duration
from supervisor.ctl.tables import render_table
from supervisor.wire.states import UP_STATES


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{format_duration(seconds)} ago"


def _info(agent: dict[str, Any]) -> str:
    state = agent["state"]
    if state == "restarting" and agent.get("next_restart_in_s") is not None:
        return f"next try in {format_duration(agent['next_restart_in_s'])}: {agent.get('last_restart_reason') or ''}"
    if state in UP_STATES and agent.get("last_restart_reason") and agent["restarts"] and agent.get("started_by_restart", True):
        age = agent.get("last_restart_age_s")
        when = f"restarted {format_duration(age)} ago" if age is not None else "restarted"
        return f"{when}: {agent['last_restart_reason']}"
    if state == "starting" and agent.get("ready") == "notify":
        return "waiting for READY=1"
    if state == "starting" and agent.get("expects_heartbeat"):
        return "waiting for first heartbeat"
    if state in ("stopped", "failed", "stopping"):
        return agent["reason"]
    if agent.get("notify_status"):
        phase = f"[{agent['notify_phase']}] " if agent.get("notify_phase") else ""
        return f"{phase}{agent['notify_status']}"
    return ""


def render_status(result: dict[str, Any]) -> str:
    """The `agentctl status` table (and the Manager link and tracking lines) from the status verb's result."""
    rows = []
    named = any(a.get("name") for a in result["agents"])  # the NAME column only when the config gives names
    for a in result["agents"]:
        hb = _age(a["heartbeat_age_s"]) if a["expects_heartbeat"] or a["heartbeat_age_s"] is not None else "n/a"
        rows.append([
            a["id"], *([a.get("name")] if named else []), a["type"], a["state"], a["pid"],
            format_duration(a["uptime_s"]) if a["uptime_s"] is not None else None,
            a["restarts"], a["health"], hb, a["version"], _info(a),
        ])
    headers = ["ID", *(["NAME"] if named else []), "TYPE", "STATE", "PID", "UPTIME", "RESTARTS", "HEALTH", "HEARTBEAT", "VERSION", "INFO"]
    table = render_table(headers, rows, max_last=90) if rows else "no agents configured"
    link = result.get("manager")
    if link:
        state = "connected" if link["connected"] else "not connected"
        parts = [f"manager {link['address']}: {state}", f"last sync {link['last_sync'] or 'never'}"]
        if link["pending"]:
            parts.append(f"{link['pending']} states pending")
        if link["last_error"]:
            parts.append(f"last error: {link['last_error']}")
        table += "\n\n" + ", ".join(parts)
    tracking = result.get("daemon", {}).get("tracking_detail")
    if tracking:
        table += f"\n\ntracking: {tracking}"
    waiting = result.get("daemon", {}).get("restart_required")
    if waiting:
        table += f"\n\nrestart agentd to apply: {', '.join(waiting)} (changed in the config, not yet in force)"
    return table


def render_ping(result: dict[str, Any]) -> str:
    """The one line `agentctl ping` prints."""
    return f"agentd is running (pid {result['pid']}, up {format_duration(result['uptime_s'])})"


def render_action(result: dict[str, Any]) -> str:
    """The table `agentctl start|stop|restart` prints: one row per agent."""
    rows = [[r["id"], r["state"], r["pid"], ("ok" if r["ok"] else "FAILED") + ": " + r["message"]] for r in result["results"]]
    return render_table(["ID", "STATE", "PID", "RESULT"], rows)
