"""Which agent a heartbeat belongs to: by id and token (HTTP) or by the sender's process tree, process group
or cgroup (Unix socket, HTTP on loopback); docs/heartbeat-api.md."""

from __future__ import annotations

import hmac
import os
from functools import lru_cache
from typing import Callable

from supervisor.common.cgroups import MOUNTINFO, Mount, cgroup2_mounts
from supervisor.common.proc_stat import ZOMBIE_STATES, read_stat_fields
from supervisor.wire.messages import AgentView, Heartbeat
from supervisor.wire.states import UP_STATES
from workers.heartbeat_rules import HeartbeatRejected, _invalid, parse_heartbeat

__all__ = ["AgentDirectory", "report_bad_timestamps"]

MAX_TREE_DEPTH = 256  # a ppid chain longer than this is treated as "not in tree" rather than walked on


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, pgid) of a live pid from /proc/<pid>/stat, or None if it is gone or a zombie."""
    fields = read_stat_fields(pid)
    if not fields or fields[0] in ZOMBIE_STATES:
        return None
    return int(fields[1]), int(fields[2])


def _cgroup_of(pid: int) -> str | None:
    """The cgroup v2 path of a live pid, or None."""
    try:
        with open(f"/proc/{pid}/cgroup", "rb", buffering=0) as f:
            raw = f.read()
    except OSError:
        return None
    for line in raw.split(b"\n"):
        if line.startswith(b"0::"):
            return line[3:].decode("utf-8", "replace")
    return None


@lru_cache(maxsize=1)
def _cgroup2_mounts() -> tuple[Mount, ...]:
    try:
        with open(MOUNTINFO) as f:
            return tuple(cgroup2_mounts(f.read()))
    except OSError:
        return ()


def _in_cgroup(agent: AgentView, name: str | None) -> bool:
    """In cgroup mode, membership of the agent's cgroup (or one below it): no fork or setsid escapes it.
    AgentView.cgroup is the directory; a process's cgroup path is that directory below its mount."""
    if not agent.cgroup or not name:
        return False
    for mount in _cgroup2_mounts():
        top = str(mount.path).rstrip("/") + "/"
        if agent.cgroup.startswith(top):
            own = mount.root.rstrip("/") + "/" + agent.cgroup[len(top):]
            return name == own or name.startswith(own + "/")
    return False


def _group_of(agent: AgentView) -> int | None:
    """The process group whose members count as the agent's, or None when that would be too broad."""
    pgid = agent.pgid if agent.pgid is not None else agent.pid
    # Our own group is the daemon's: matching it would let every daemon process speak for the agent.
    if pgid is None or pgid <= 1 or pgid == os.getpgrp():
        return None
    return pgid


def report_bad_timestamps(directory: AgentDirectory, counters, limited) -> None:
    """Count (`timestamp_replaced`) and log, rate-limited, each heartbeat whose timestamp was replaced by receipt time."""
    counters["timestamp_replaced"] += 0  # present from the first beat, so a zero shows as a zero

    def report(agent_id: str, value: str) -> None:
        counters["timestamp_replaced"] += 1
        limited.warning("timestamp", f"heartbeat of {agent_id}: timestamp {value} is not RFC 3339; used the time of receipt")

    directory.on_bad_timestamp = report


class AgentDirectory:
    """Ties heartbeats to agents: by id and token (HTTP) or by the sender's process tree (Unix socket)."""

    def __init__(self, agents: Callable[[], dict[str, AgentView]], *, cache_size: int = 4096) -> None:
        self._agents = agents
        self._cache_size = cache_size
        # pid -> (agent id, agent pid, generation): verified against the live map on every hit, so a stale
        # entry can only miss, never answer for a restarted or removed agent.
        self._cache: dict[int, tuple[str, int, int]] = {}
        # Called with (agent id, described value) for each accepted heartbeat whose timestamp was replaced.
        self.on_bad_timestamp: Callable[[str, str], None] | None = None
        self._bad: list[str] = []

    @property
    def cached(self) -> int:
        return len(self._cache)

    def invalidate(self) -> None:
        """Forget cached pid lookups; call it whenever the agent map changes (`link.on_change`)."""
        self._cache.clear()

    def _remember(self, pid: int, agent: AgentView) -> None:
        if len(self._cache) >= self._cache_size:
            del self._cache[next(iter(self._cache))]
        self._cache[pid] = (agent.id, agent.pid, agent.generation)  # type: ignore[assignment]

    def _cached(self, pid: int) -> AgentView | None:
        entry = self._cache.get(pid)
        if entry is None:
            return None
        agent = self._agents().get(entry[0])
        if agent is None or agent.pid != entry[1] or agent.generation != entry[2]:
            del self._cache[pid]
            return None
        return agent

    def get(self, agent_id: str) -> AgentView:
        """The agent with this id; 404 `unknown_agent` if there is none."""
        agent = self._agents().get(agent_id)
        if agent is None:
            raise HeartbeatRejected(404, "unknown_agent", f"no agent {agent_id!r}")
        return agent

    def authorize(self, agent_id: str, token: str | None) -> AgentView:
        """The agent, if it exists (404) and `token` matches its heartbeat token when it has one (401)."""
        agent = self.get(agent_id)
        if agent.token:
            if token is None:
                raise HeartbeatRejected(401, "unauthorized", f"agent {agent_id!r} requires a bearer token")
            if not hmac.compare_digest(token.encode("utf-8", "surrogateescape"), agent.token.encode("utf-8")):
                raise HeartbeatRejected(401, "unauthorized", f"wrong token for agent {agent_id!r}")
        return agent

    def check_pid(self, agent: AgentView, pid: int) -> None:
        """Accept pid if it is the agent's live pid, a descendant of it, or in its process group."""
        if agent.state not in UP_STATES or agent.pid is None:
            raise HeartbeatRejected(400, "agent_not_running", f"agent {agent.id!r} is not running (state {agent.state})")
        if pid == agent.pid:
            return
        hit = self._cached(pid)
        if hit is not None and hit.id == agent.id:
            return
        if agent.cgroup and _in_cgroup(agent, _cgroup_of(pid)):
            self._remember(pid, agent)
            return
        group = _group_of(agent)
        current = pid
        for _ in range(MAX_TREE_DEPTH):
            stat = _stat(current)
            if stat is None:
                break
            ppid, pgid = stat
            if ppid == agent.pid or (group is not None and pgid == group):
                self._remember(pid, agent)
                return
            if ppid <= 1:
                break
            current = ppid
        raise HeartbeatRejected(
            400, "pid_not_in_tree", f"pid {pid} is not agent {agent.id!r} (pid {agent.pid}) or one of its descendants"
        )

    def agent_for_pid(self, pid: int) -> AgentView | None:
        """The agent whose process tree (or process group) holds pid: the Unix socket's sender lookup."""
        hit = self._cached(pid)
        if hit is not None:
            return hit
        by_pid: dict[int, AgentView] = {}
        by_group: dict[int, AgentView] = {}
        agents = self._agents()
        name = _cgroup_of(pid)
        if name and "/agent-" in name:
            for part in name.split("/"):
                agent = agents.get(part[len("agent-"):]) if part.startswith("agent-") else None
                if agent is not None and _in_cgroup(agent, name):
                    self._remember(pid, agent)
                    return agent
        for agent in agents.values():
            if agent.pid is not None:
                by_pid[agent.pid] = agent
                group = _group_of(agent)
                if group is not None:
                    by_group[group] = agent
        current = pid
        for _ in range(MAX_TREE_DEPTH):
            agent = by_pid.get(current)
            stat = _stat(current)
            if agent is None and stat is not None:
                agent = by_group.get(stat[1])
            if agent is not None:
                self._remember(pid, agent)
                return agent
            if stat is None or stat[0] <= 1:
                return None
            current = stat[0]
        return None

    def check(
        self,
        obj: object,
        *,
        agent_id_required: bool,
        token: str | None,
        peer_pid: int | None = None,
        received_at: float,
    ) -> dict:
        """One heartbeat through every rule: fields, agent, token (HTTP only), process tree.

        Returns the fields of the `Heartbeat` the parent gets, absent ones left out, as a plain dict: the
        intake workers hand it to the link, which serializes batches of them (building and then dumping a
        pydantic model per heartbeat cost more than all the rules together).
        With `peer_pid` (socket) the peer's tree names the agent and its pid counts, whatever the message claims."""
        bad = self._bad
        bad.clear()
        fields = parse_heartbeat(obj, agent_id_required=agent_id_required, received_at=received_at, bad_timestamps=bad)
        named = fields.get("agent_id")
        if peer_pid is not None:
            agent = self.agent_for_pid(peer_pid)
            if agent is None:
                raise HeartbeatRejected(404, "unknown_agent", f"pid {peer_pid} is not in any agent's process tree")
            if named is not None and named != agent.id:
                raise HeartbeatRejected(
                    400, "pid_not_in_tree", f"agent_id: the sender (pid {peer_pid}) belongs to agent {agent.id!r}, not {named!r}"
                )
            if token is not None:
                agent = self.authorize(agent.id, token)
            pid = peer_pid
        else:
            if named is None:
                raise _invalid("agent_id: required")
            agent = self._agents().get(named)
            if agent is None or agent.token:
                agent = self.authorize(named, token)  # 404, or the token check with its 401 messages
            pid = fields.get("pid")
            if pid is None:
                raise _invalid("pid: required")
        # The agent's own pid is the common case and needs no tree walk; check_pid decides everything else.
        if pid != agent.pid or agent.state not in UP_STATES:
            self.check_pid(agent, pid)
        fields["agent_id"] = agent.id
        fields["pid"] = pid
        fields["generation"] = agent.generation
        if bad and self.on_bad_timestamp is not None:
            self.on_bad_timestamp(agent.id, bad[0])
        return fields

    def validate(self, obj: object, **rules) -> Heartbeat:
        """`check` (with the same keywords), returned as a validated `Heartbeat` model."""
        return Heartbeat(**self.check(obj, **rules))
