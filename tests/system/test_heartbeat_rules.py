"""Heartbeat field rules, agent resolution, tokens and process-tree checks, against real processes."""

from __future__ import annotations

import os
import subprocess
import time
from datetime import datetime, timezone

import pytest

from supervisor.wire.messages import AgentView, Heartbeat
from tests.support.processes import descendants, kill_tree
from tests.support.wait import wait_until
from workers.agent_directory import AgentDirectory
from workers.heartbeat_rules import NCPU, HeartbeatRejected, parse_heartbeat

NOW = 1_700_000_000.5


def parse(obj: object, required: bool = True) -> dict:
    return parse_heartbeat(obj, agent_id_required=required, received_at=NOW)


def rejected(obj: object, required: bool = True) -> HeartbeatRejected:
    with pytest.raises(HeartbeatRejected) as info:
        parse(obj, required)
    return info.value


def view(agent_id: str, pid: int | None, state: str = "running", **extra) -> AgentView:
    return AgentView(id=agent_id, type="custom", state=state, pid=pid, **extra)


# ----------------------------------------------------------------------------------------------- fields


def test_minimal_http_heartbeat_gets_server_time():
    assert parse({"agent_id": "web", "pid": 42}) == {"agent_id": "web", "pid": 42, "timestamp": NOW}


def test_all_fields_cleaned_and_unknown_fields_ignored():
    got = parse({
        "agent_id": "db-shipper.1", "pid": 7, "timestamp": "2024-03-01T12:00:00Z", "status": "running",
        "version": "1.2.3", "cpu": 12, "memory": 1024, "extra": {"anything": [1, 2]},
    })
    assert got == {
        "agent_id": "db-shipper.1", "pid": 7, "timestamp": datetime(2024, 3, 1, 12, tzinfo=timezone.utc).timestamp(),
        "status": "running", "version": "1.2.3", "cpu": 12.0, "memory": 1024,
    }
    assert isinstance(got["cpu"], float)
    assert set(got) <= set(Heartbeat.model_fields)


def test_nulls_mean_absent():
    assert parse({"agent_id": "a", "pid": 1, "timestamp": None, "status": None, "cpu": None, "memory": None}) == {
        "agent_id": "a", "pid": 1, "timestamp": NOW,
    }


@pytest.mark.parametrize("obj", [[], "x", 1, None, True])
def test_non_object_is_400(obj):
    exc = rejected(obj)
    assert (exc.status, exc.reason, exc.message) == (400, "invalid", "expected a JSON object")


def test_agent_id_and_pid_required_on_http_only():
    exc = rejected({})
    assert exc.status == 400 and exc.reason == "invalid"
    assert "agent_id: required" in exc.message and "pid: required" in exc.message
    assert parse({}, required=False) == {"timestamp": NOW}


@pytest.mark.parametrize(
    "agent_id, problem",
    [(5, "agent_id: expected a string, got 5"), ("", "agent_id: not a valid agent id"), ("-x", "not a valid agent id"),
     ("a/b", "not a valid agent id"), ("a" * 65, "not a valid agent id"), ("a b", "not a valid agent id")],
)
def test_agent_id_rules(agent_id, problem):
    assert problem in rejected({"agent_id": agent_id, "pid": 1}).message
    assert problem in rejected({"agent_id": agent_id}, required=False).message


def test_agent_id_longest_valid():
    assert parse({"agent_id": "a" * 64, "pid": 1})["agent_id"] == "a" * 64


@pytest.mark.parametrize(
    "pid, problem",
    [(True, "pid: expected an integer, got true"), (1.0, "pid: expected an integer, got 1"), ("12", "pid: expected an integer, got '12'"),
     (0, "pid: must be a positive process id, got 0"), (-5, "got -5"), (2**31, "pid: must be a positive process id")],
)
def test_pid_rules(pid, problem):
    exc = rejected({"agent_id": "a", "pid": pid})
    assert exc.status == 400 and problem in exc.message


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2024-03-01T12:00:00Z", datetime(2024, 3, 1, 12, tzinfo=timezone.utc).timestamp()),
        ("2024-03-01t12:00:00z", datetime(2024, 3, 1, 12, tzinfo=timezone.utc).timestamp()),
        ("2024-03-01 12:00:00Z", datetime(2024, 3, 1, 12, tzinfo=timezone.utc).timestamp()),
        ("2024-03-01T12:00:00.25Z", datetime(2024, 3, 1, 12, tzinfo=timezone.utc).timestamp() + 0.25),
        ("2024-03-01T14:30:00+02:30", datetime(2024, 3, 1, 12, tzinfo=timezone.utc).timestamp()),
        ("2024-03-01T07:00:00-05:00", datetime(2024, 3, 1, 12, tzinfo=timezone.utc).timestamp()),
        ("2024-03-01T12:00:00", datetime(2024, 3, 1, 12, tzinfo=timezone.utc).timestamp()),  # naive is UTC
        ("2016-12-31T23:59:60Z", datetime(2017, 1, 1, tzinfo=timezone.utc).timestamp()),  # leap second
    ],
)
def test_timestamp_accepted(text, expected):
    assert parse({"agent_id": "a", "pid": 1, "timestamp": text})["timestamp"] == pytest.approx(expected)


@pytest.mark.parametrize(
    "text",
    ["yesterday", "2024-03-01", "2024-13-01T00:00:00Z", "2024-02-30T00:00:00Z", "2024-03-01T24:00:00Z",
     "2024-03-01T12:00:00+0200", "2024-03-01T12:00:00+25:00", "2024-03-01T12:00Z", "2024-03-01T12:00:00Z\n", ""],
)
def test_unparsable_timestamp_is_replaced_by_receipt_time(text):
    # As in the original daemon: not a rejection; the caller counts and logs what it was given.
    bad: list[str] = []
    fields = parse_heartbeat({"agent_id": "a", "pid": 1, "timestamp": text}, agent_id_required=True, received_at=NOW, bad_timestamps=bad)
    assert fields["timestamp"] == NOW and bad == [repr(text)]


def test_non_string_timestamp_is_replaced_too():
    bad: list[str] = []
    fields = parse_heartbeat({"agent_id": "a", "pid": 1, "timestamp": 1700000000}, agent_id_required=True, received_at=NOW, bad_timestamps=bad)
    assert fields["timestamp"] == NOW and bad == ["1700000000"]


def test_directory_reports_a_replaced_timestamp_with_the_agent():
    directory = AgentDirectory(lambda: {"a": view("a", 10)})
    seen = []
    directory.on_bad_timestamp = lambda agent_id, value: seen.append((agent_id, value))
    fields = directory.check({"agent_id": "a", "pid": 10, "timestamp": "soon"}, agent_id_required=True, token=None, received_at=NOW)
    assert fields["timestamp"] == NOW and seen == [("a", "'soon'")]
    directory.check({"agent_id": "a", "pid": 10, "timestamp": "2024-03-01T12:00:00Z"}, agent_id_required=True, token=None, received_at=NOW)
    assert len(seen) == 1


@pytest.mark.parametrize("key", ["status", "version"])
def test_text_fields(key):
    assert parse({"agent_id": "a", "pid": 1, key: "x" * 256})[key] == "x" * 256
    assert rejected({"agent_id": "a", "pid": 1, key: "x" * 257}).message == f"{key}: longer than 256 characters (257)"
    assert rejected({"agent_id": "a", "pid": 1, key: 3}).message == f"{key}: expected a string, got 3"


def test_cpu_range_scales_with_cpus():
    limit = 100 * NCPU
    assert parse({"agent_id": "a", "pid": 1, "cpu": 0})["cpu"] == 0.0
    assert parse({"agent_id": "a", "pid": 1, "cpu": limit})["cpu"] == float(limit)
    exc = rejected({"agent_id": "a", "pid": 1, "cpu": limit + 50})
    assert exc.message == f"cpu: must be between 0 and {limit} (100 × {NCPU} CPUs), got {limit + 50}"
    for bad in (-0.5, float("nan"), float("inf")):
        assert rejected({"agent_id": "a", "pid": 1, "cpu": bad}).message.startswith("cpu: must be between 0 and")
    assert rejected({"agent_id": "a", "pid": 1, "cpu": "5"}).message == "cpu: expected a number, got '5'"
    assert rejected({"agent_id": "a", "pid": 1, "cpu": False}).message == "cpu: expected a number, got false"


def test_memory_rules():
    assert parse({"agent_id": "a", "pid": 1, "memory": 0})["memory"] == 0
    assert rejected({"agent_id": "a", "pid": 1, "memory": -1}).message.startswith("memory: must be between 0 and")
    assert rejected({"agent_id": "a", "pid": 1, "memory": 2**63}).message.startswith("memory: must be between 0 and")
    assert rejected({"agent_id": "a", "pid": 1, "memory": 1.5}).message == "memory: expected an integer number of bytes, got 1.5"
    assert rejected({"agent_id": "a", "pid": 1, "memory": True}).message == "memory: expected an integer number of bytes, got true"


def test_every_problem_is_named():
    exc = rejected({"agent_id": "a", "pid": "x", "cpu": -1, "memory": "big"})
    assert exc.message.count(";") == 2
    assert [part.split(":")[0] for part in exc.message.split("; ")] == ["pid", "cpu", "memory"]


# ----------------------------------------------------------------------------------------------- agents and tokens


def test_authorize():
    agents = {"web": view("web", 10), "db": view("db", 11, token="s3cret")}
    directory = AgentDirectory(lambda: agents)
    assert directory.authorize("web", None).id == "web"
    assert directory.authorize("web", "anything").id == "web"  # no token configured: none checked
    assert directory.authorize("db", "s3cret").id == "db"
    for token, message in ((None, "agent 'db' requires a bearer token"), ("wrong", "wrong token for agent 'db'"), ("", "wrong token for agent 'db'"), ("s3crét", "wrong token for agent 'db'")):
        with pytest.raises(HeartbeatRejected) as info:
            directory.authorize("db", token)
        assert (info.value.status, info.value.reason, info.value.message) == (401, "unauthorized", message)
    with pytest.raises(HeartbeatRejected) as info:
        directory.authorize("x", None)
    assert (info.value.status, info.value.reason, info.value.message) == (404, "unknown_agent", "no agent 'x'")


def test_validate_http_pipeline_order():
    me = os.getpid()
    agents = {"self": view("self", me, token="t", generation=3), "down": view("down", None, state="stopped")}
    directory = AgentDirectory(lambda: agents)
    hb = directory.validate({"agent_id": "self", "pid": me, "cpu": 1.5, "junk": 1}, agent_id_required=True, token="t", received_at=NOW)
    assert hb.model_dump() == {
        "agent_id": "self", "pid": me, "timestamp": NOW, "status": None, "version": None, "cpu": 1.5, "memory": None, "generation": 3,
    }
    cases = [
        ({"agent_id": "self", "pid": "x"}, "t", 400, "invalid"),  # fields are checked first
        ({"agent_id": "nobody", "pid": me}, "t", 404, "unknown_agent"),
        ({"agent_id": "self", "pid": me}, "bad", 401, "unauthorized"),
        ({"agent_id": "self", "pid": 1}, "t", 400, "pid_not_in_tree"),
        ({"agent_id": "down", "pid": me}, None, 400, "agent_not_running"),
    ]
    for obj, token, status, reason in cases:
        with pytest.raises(HeartbeatRejected) as info:
            directory.validate(obj, agent_id_required=True, token=token, received_at=NOW)
        assert (info.value.status, info.value.reason) == (status, reason), obj


# ----------------------------------------------------------------------------------------------- process trees


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
