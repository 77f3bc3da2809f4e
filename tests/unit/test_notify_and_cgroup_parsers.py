"""Unit tests (no processes): the sd_notify message parser, the cgroup file parsers, tracking-mode
decisions, and the state machine's reaction to sd_notify messages."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, strategies as st

from supervisor.common.cgroups import Mount, Tracking, cgroup2_mounts, cgroup_name, detect, flat_keyed, limit_values, unified_path
from supervisor.parent.notify_socket import NotifyMessage, parse_notify
from supervisor.wire.states import AgentState as S
from tests.unit.test_lifecycle import FakeOps, new_agent

HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""


# ----------------------------------------------------------------------------- parsers


def test_cgroup2_mount_found_in_a_hybrid_layout_and_escapes_decoded():
    assert cgroup2_mounts(HYBRID) == [Mount(Path("/sys/fs/cgroup/unified"), "/")]
    odd = "50 1 0:40 /sub /mnt/cg\\040two rw - cgroup2 none rw\n"
    assert cgroup2_mounts(odd) == [Mount(Path("/mnt/cg two"), "/sub")]
    assert cgroup2_mounts("garbage\n\n - cgroup2\n") == []


@given(st.text())
def test_mountinfo_parser_never_raises(text):
    for m in cgroup2_mounts(text):
        assert isinstance(m.path, Path)


def test_unified_path_and_flat_keyed():
    assert unified_path("4:memory:/x\n0::/system.slice/agentd.service\n") == "/system.slice/agentd.service"
    assert unified_path("4:memory:/x\n") is None
    assert flat_keyed("populated 1\nfrozen 0\nbad line\nx y\n") == {"populated": 1, "frozen": 0}


@given(st.text())
def test_cgroup_text_parsers_never_raise(text):
    unified_path(text)
    assert all(isinstance(v, int) for v in flat_keyed(text).values())


def test_cgroup_name_follows_the_mount_root():
    assert cgroup_name(Mount(Path("/sys/fs/cgroup"), "/"), Path("/sys/fs/cgroup/a/agent-x")) == "/a/agent-x"
    assert cgroup_name(Mount(Path("/cg"), "/ns"), Path("/cg/agent-x")) == "/ns/agent-x"


def test_limit_values():
    assert limit_values(64 << 20, 0.5, 10) == {"memory.max": str(64 << 20), "cpu.max": "50000 100000", "pids.max": "10"}
    assert limit_values(None, None, None) == {}


def test_parse_notify_understands_systemd_assignments():
    msg = parse_notify(b"READY=1\nSTATUS=up: 3 jobs\nMAINPID=42\nWATCHDOG=1\nEXTEND_TIMEOUT_USEC=5000000\nFDSTORE=1\n")
    assert (msg.ready, msg.status, msg.mainpid, msg.watchdog, msg.extend_timeout_usec) == (True, "up: 3 jobs", 42, True, 5_000_000)
    assert parse_notify(b"WATCHDOG=trigger").watchdog_trigger
    assert parse_notify(b"STOPPING=1").stopping and parse_notify(b"RELOADING=1").reloading
    assert parse_notify(b"READY=0").empty()
    bad = parse_notify(b"MAINPID=-3\nEXTEND_TIMEOUT_USEC=soon\nnonsense")
    assert bad.mainpid is None and bad.extend_timeout_usec is None and len(bad.problems) == 3
    assert parse_notify(b"STATUS=a\x1bb" + b"x" * 2000).status.startswith("a b") and len(parse_notify(b"STATUS=" + b"x" * 2000).status) == 512


@given(st.binary(max_size=600))
def test_parse_notify_never_raises_and_status_is_printable(data):
    msg = parse_notify(data)
    assert isinstance(msg, NotifyMessage)
    assert msg.status is None or msg.status.isprintable()
    assert msg.mainpid is None or msg.mainpid > 0


# ----------------------------------------------------------------------------- tracking decisions


def test_tracking_decisions_without_touching_the_machine(tmp_path):
    assert detect("off", None).mode == "process-group"
    none = detect("auto", None, mountinfo="", self_cgroup="0::/\n")
    assert none.mode == "process-group" and "no cgroup v2" in none.reason
    outside = detect("auto", tmp_path / "x", mountinfo=HYBRID, self_cgroup="0::/\n")
    assert outside.mode == "process-group" and "not inside a cgroup v2 mount" in outside.reason
    # A cgroup v2 "mount" that is a plain directory: a cgroup of our own that systemd never delegated.
    fake = f"41 31 0:38 / {tmp_path} rw - cgroup2 cgroup2 rw\n"
    (tmp_path / "svc").mkdir()
    undelegated = detect("auto", None, mountinfo=fake, self_cgroup="0::/svc\n")
    assert undelegated.mode == "process-group" and "not delegated" in undelegated.reason and "Delegate=yes" in undelegated.reason
    not_cgroup = detect("auto", tmp_path / "svc", mountinfo=fake, self_cgroup="0::/\n")
    assert not_cgroup.mode == "process-group" and "not a cgroup directory" in not_cgroup.reason
    # One rule for start-up and check-config: `required` is unmet by anything but a cgroup.
    assert none.unmet("required") == f"cgroups.mode is required, but {none.reason}"
    assert none.unmet("auto") is None and Tracking("cgroup", "delegated").unmet("required") is None


# ----------------------------------------------------------------------------- the state machine and sd_notify


def test_ready_notify_agent_waits_for_ready_not_for_start_seconds_or_heartbeats():
    ops = FakeOps()
    agent = new_agent(ops, ready="notify", health_check={"startup_grace": 20})
    agent.start(0.0)
    assert agent.tick(5.0) == 20.0 and agent.state == S.STARTING
    agent.on_heartbeat(6.0, 1.0)
    assert agent.state == S.STARTING
    agent.on_notify(7.0, 1.0, parse_notify(b"STATUS=warming up\nEXTEND_TIMEOUT_USEC=30000000"))
    assert agent.notify_status == "warming up" and agent.tick(8.0) == 37.0
    agent.on_notify(9.0, 1.0, parse_notify(b"READY=1"))
    assert agent.state == S.RUNNING and agent.reason == "READY=1 received"


def test_no_ready_within_startup_grace_restarts_as_not_ready():
    ops = FakeOps()
    agent = new_agent(ops, ready="notify", health_check={"startup_grace": 5})
    agent.start(0.0)
    agent.tick(5.0)
    assert agent.state == S.STOPPING and agent.pending_kind == "not_ready"
    ops.alive.discard(agent.handle.generation)
    agent.on_exit(5.1, agent.handle.generation, None, 15)
    agent.tick(5.1)
    assert agent.state == S.RESTARTING and agent.restarts_by_kind == {"not_ready": 1}


def test_watchdog_is_a_heartbeat_and_trigger_restarts():
    ops = FakeOps()
    agent = new_agent(ops, health_check={"heartbeat_timeout": 10})
    agent.start(0.0)
    agent.on_notify(1.0, 100.0, parse_notify(b"WATCHDOG=1"))
    assert agent.state == S.RUNNING and agent.last_heartbeat_wall == 100.0
    agent.on_notify(2.0, 101.0, parse_notify(b"RELOADING=1"))
    assert agent.notify_phase == "reloading"
    agent.on_notify(3.0, 102.0, parse_notify(b"READY=1"))
    assert agent.notify_phase is None
    agent.on_notify(4.0, 103.0, parse_notify(b"WATCHDOG=trigger"))
    assert agent.state == S.STOPPING and agent.pending_kind == "watchdog"


def test_stopping_announcement_is_named_in_the_exit_reason():
    ops = FakeOps()
    agent = new_agent(ops)
    agent.start(0.0)
    agent.tick(2.0)
    agent.on_notify(3.0, 1.0, parse_notify(b"STOPPING=1"))
    ops.alive.discard(agent.handle.generation)
    agent.on_exit(4.0, agent.handle.generation, 0, None)
    assert "STOPPING=1" in agent.last_exit.reason


def test_extend_timeout_while_stopping_delays_the_kill():
    ops = FakeOps()
    agent = new_agent(ops, stop_timeout=5)
    agent.start(0.0)
    agent.tick(2.0)
    agent.stop(10.0)
    agent.on_notify(11.0, 1.0, parse_notify(b"EXTEND_TIMEOUT_USEC=20000000"))
    agent.tick(16.0)
    assert agent.kill_sent_at is None
    agent.tick(31.5)
    assert agent.kill_sent_at == 31.5
