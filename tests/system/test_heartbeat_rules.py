"""Heartbeat field rules, agent resolution, tokens and process-tree checks, against real processes.

The tests here use real processes; the unit ones are in tests/unit/test_heartbeat_rules.py."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from supervisor.wire.messages import AgentView
from tests.support.processes import descendants, kill_tree
from tests.support.wait import wait_until
from workers.agent_directory import AgentDirectory
from workers.heartbeat_rules import HeartbeatRejected


NOW = 1_700_000_000.5


def view(agent_id: str, pid: int | None, state: str = "running", **extra) -> AgentView:
    return AgentView(id=agent_id, type="custom", state=state, pid=pid, **extra)


@pytest.fixture
def tree():
    """An agent `sh` in its own session, its child `sh`, and a grandchild `sleep`; plus an unrelated `sleep`."""
    agent = subprocess.Popen(["sh", "-c", "sh -c 'sleep 30 & wait' & wait"], start_new_session=True)
    outsider = subprocess.Popen(["sleep", "30"])
    try:
        found = wait_until(lambda: (lambda d: d if len(d) == 2 else None)(descendants(agent.pid)), timeout=30)
        (child,) = _children(agent.pid)
        (grandchild,) = set(found) - {child}
        yield agent.pid, child, grandchild, outsider.pid
    finally:
        kill_tree(agent.pid)
        outsider.kill()
        outsider.wait()
        agent.wait()


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def test_pid_in_tree(tree):
    agent_pid, child, grandchild, outsider = tree
    agent = view("web", agent_pid)
    directory = AgentDirectory(lambda: {"web": agent})
    for pid in (agent_pid, child, grandchild):
        directory.check_pid(agent, pid)
    with pytest.raises(HeartbeatRejected) as info:
        directory.check_pid(agent, outsider)
    assert (info.value.status, info.value.reason) == (400, "pid_not_in_tree")
    assert info.value.message == f"pid {outsider} is not agent 'web' (pid {agent_pid}) or one of its descendants"
    with pytest.raises(HeartbeatRejected):
        directory.check_pid(agent, os.getpid())  # the agent's parent is not part of its tree
    with pytest.raises(HeartbeatRejected):
        directory.check_pid(agent, 4_000_000)  # no such process


def test_agent_not_running(tree):
    agent_pid = tree[0]
    for state in ("stopped", "stopping", "restarting", "failed"):
        agent = view("web", agent_pid, state=state)
        with pytest.raises(HeartbeatRejected) as info:
            AgentDirectory(lambda: {"web": agent}).check_pid(agent, agent_pid)
        assert (info.value.status, info.value.reason, info.value.message) == (
            400, "agent_not_running", f"agent 'web' is not running (state {state})",
        )
    starting = view("web", agent_pid, state="starting")
    AgentDirectory(lambda: {"web": starting}).check_pid(starting, agent_pid)


def test_orphan_in_agent_group_counts():
    # The subshell exits at once, so `sleep` is reparented away from the agent but stays in its group.
    agent = subprocess.Popen(["sh", "-c", "(sleep 30 &); exec sleep 30"], start_new_session=True)
    try:
        def orphan():
            for name in os.listdir("/proc"):
                if name.isdigit() and int(name) != agent.pid:
                    try:
                        fields = open(f"/proc/{name}/stat").read().rpartition(")")[2].split()
                    except OSError:
                        continue
                    if int(fields[2]) == agent.pid and int(fields[1]) != agent.pid:
                        return int(name)
            return None

        pid = wait_until(orphan, timeout=30)
        grouped = view("web", agent.pid, pgid=agent.pid)
        directory = AgentDirectory(lambda: {"web": grouped})
        directory.check_pid(grouped, pid)
        assert directory.agent_for_pid(pid) is grouped
    finally:
        kill_tree(agent.pid)
        agent.wait()


def test_our_own_group_is_never_an_agent_group():
    # An agent view that (wrongly) names the test's own group must not vouch for every process in it.
    sibling, stranger = subprocess.Popen(["sleep", "30"]), subprocess.Popen(["sleep", "30"])
    try:
        agent = view("web", sibling.pid, pgid=os.getpgrp())
        directory = AgentDirectory(lambda: {"web": agent})
        with pytest.raises(HeartbeatRejected):
            directory.check_pid(agent, stranger.pid)
        assert directory.agent_for_pid(stranger.pid) is None
    finally:
        for proc in (sibling, stranger):
            proc.kill()
            proc.wait()


def test_agent_for_pid_and_validate_by_peer(tree):
    agent_pid, child, grandchild, outsider = tree
    agents = {"web": view("web", agent_pid, generation=5), "other": view("other", outsider + 10**6)}
    directory = AgentDirectory(lambda: agents)
    assert directory.agent_for_pid(grandchild).id == "web"
    assert directory.agent_for_pid(agent_pid).id == "web"
    assert directory.agent_for_pid(outsider) is None
    # On the socket the peer pid counts, whatever pid the message claims; no token is asked for.
    hb = directory.validate({"pid": 1, "status": "ok"}, agent_id_required=False, token=None, peer_pid=grandchild, received_at=NOW)
    assert (hb.agent_id, hb.pid, hb.status, hb.generation) == ("web", grandchild, "ok", 5)
    hb = directory.validate({"agent_id": "web"}, agent_id_required=False, token=None, peer_pid=child, received_at=NOW)
    assert hb.agent_id == "web"
    with pytest.raises(HeartbeatRejected) as info:
        directory.validate({"agent_id": "other"}, agent_id_required=False, token=None, peer_pid=child, received_at=NOW)
    assert info.value.status == 400
    assert info.value.message == f"agent_id: the sender (pid {child}) belongs to agent 'web', not 'other'"
    with pytest.raises(HeartbeatRejected) as info:
        directory.validate({}, agent_id_required=False, token=None, peer_pid=outsider, received_at=NOW)
    assert (info.value.status, info.value.reason) == (404, "unknown_agent")


def test_agent_for_pid_cache_follows_the_agent_map(tree):
    agent_pid, child, grandchild, outsider = tree
    agents = {"web": view("web", agent_pid)}
    directory = AgentDirectory(lambda: agents)
    assert directory.agent_for_pid(grandchild).id == "web"
    assert directory.cached == 1
    # A restarted agent (new generation) never answers from a stale entry, even without invalidate().
    agents["web"] = view("web", agent_pid, generation=1)
    assert directory.agent_for_pid(grandchild).generation == 1
    # The same tree now belongs to another agent id: after invalidate() the new owner is found.
    agents.clear()
    agents["api"] = view("api", child)
    directory.invalidate()
    assert directory.cached == 0
    assert directory.agent_for_pid(grandchild).id == "api"
    assert directory.agent_for_pid(agent_pid) is None
    agents.clear()
    assert directory.agent_for_pid(grandchild) is None  # removed agent, stale entry dropped


def test_cache_is_bounded(tree):
    agent_pid, child, grandchild, _ = tree
    agents = {"web": view("web", agent_pid)}
    directory = AgentDirectory(lambda: agents, cache_size=2)
    for pid in (agent_pid, child, grandchild):
        directory.agent_for_pid(pid)
    assert directory.cached == 2


def test_lookups_are_fast(tree):
    agent_pid, child, grandchild, _ = tree
    agents = {f"a{i}": view(f"a{i}", 10**6 + i) for i in range(500)}
    agents["web"] = view("web", agent_pid)
    directory = AgentDirectory(lambda: agents)
    obj = {"status": "running", "timestamp": "2024-03-01T12:00:00.123Z", "cpu": 1.0, "memory": 1}
    start = time.perf_counter()
    for _ in range(20_000):
        directory.validate(obj, agent_id_required=False, token=None, peer_pid=grandchild, received_at=NOW)
    per_item = (time.perf_counter() - start) / 20_000
    assert per_item < 100e-6, f"{per_item * 1e6:.1f} µs per heartbeat"
