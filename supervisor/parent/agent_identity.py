"""Agents carry their identity in their environment, so a live copy is found even without metadata.

agentd starts every agent with AGENTD_AGENT_ID and AGENTD_NODE_ID; children inherit both, even those
that leave the process group. When an agent's metadata is missing, corrupt or stale (a full or
read-only data_dir before a crash), agentd looks for live processes carrying that identity before it
starts the agent, and adopts or stops them first: never a second copy (docs/operations.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from supervisor.common.proc_table import read_stat

ID_VAR = "AGENTD_AGENT_ID"
NODE_VAR = "AGENTD_NODE_ID"


@dataclass(frozen=True)
class Marked:
    """A live process that carries one agent's identity."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    start_ticks: int


def _identity(pid: int) -> tuple[str, str] | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read()
    except OSError:
        return None
    agent = node = None
    id_prefix, node_prefix = f"{ID_VAR}=".encode(), f"{NODE_VAR}=".encode()
    for item in data.split(b"\0"):
        if item.startswith(id_prefix):
            agent = item[len(id_prefix):].decode(errors="replace")
        elif item.startswith(node_prefix):
            node = item[len(node_prefix):].decode(errors="replace")
    return (agent, node) if agent is not None and node is not None else None


def find_marked(node_id: str, agent_ids: set[str]) -> dict[str, list[Marked]]:
    """Every live process of this node marked with one of `agent_ids`, by agent (one /proc scan)."""
    found: dict[str, list[Marked]] = {}
    own = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        pid = int(entry.name)
        ident = _identity(pid)
        if ident is None or ident[1] != node_id or ident[0] not in agent_ids:
            continue
        info = read_stat(pid)
        if info is None or info.zombie:
            continue
        try:
            sid = os.getsid(pid)
        except OSError:
            continue
        found.setdefault(ident[0], []).append(Marked(pid, info.ppid, info.pgid, sid, info.start_ticks))
    return found


def main_process(marked: list[Marked]) -> Marked | None:
    """The agent's main process among its marked ones: a session leader (agentd starts every agent in a
    session of its own) whose parent is not marked, the earliest started if several; None if none is."""
    pids = {m.pid for m in marked}
    leaders = [m for m in marked if m.pid == m.sid and m.ppid not in pids]
    return min(leaders, key=lambda m: m.start_ticks) if leaders else None
