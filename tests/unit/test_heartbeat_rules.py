"""Heartbeat field rules, agent resolution, tokens and process-tree checks, against real processes.

The tests here start no process; the ones with real processes are in tests/system/test_heartbeat_rules.py."""

from __future__ import annotations

import os
from datetime import datetime, timezone

import pytest

from supervisor.wire.messages import AgentView, Heartbeat
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
