"""Every bad input gets a clear answer, a non-zero exit where a command failed, and loses nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import zmq

from tests.support.daemon import ROOT
from tests.support.wait import wait_until


def agentd_cli(*argv):
    return subprocess.run([sys.executable, "-m", "supervisor.parent.agentd_cli", *argv], cwd=ROOT, capture_output=True, text=True, timeout=30)


def test_check_config_reports_each_problem_with_file_and_path(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "agents:\n"
        "  - id: web\n    binary_path: /bin/sleep\n    helth_check: {}\n"
        "  - id: web\n    binary_path: /bin/sleep\n"
        "  - id: a/b\n    binary_path: /bin/sleep\n"
        "  - id: t\n    type: telegraf\n    binary_path: /bin/sleep\n    health_check: {cpu_threshold: -1}\n"
        "  - id: n\n    binary_path: /bin/sleep\n    stop_timeout: soon\n"
    )
    result = agentd_cli("check-config", str(cfg))
    assert result.returncode == 1
    err = result.stderr
    assert f"{cfg}:" in err
    assert "did you mean 'health_check'" in err
    assert "duplicate agent id 'web'" in err
    assert "invalid agent id 'a/b'" in err
    assert "agents[3] (t).health_check.cpu_threshold: must be > 0, got -1" in err
    assert "agents[4] (n).stop_timeout" in err
    assert "Traceback" not in err


def test_both_agent_and_agents_is_read_as_the_original_daemon_did(tmp_path):
    # The original's format: with agents: empty, the legacy agent: section is converted (docs/migration.md).
    cfg = tmp_path / "both.yaml"
    cfg.write_text("agent:\n  binary_path: /bin/sleep\nagents: []\n")
    result = agentd_cli("check-config", str(cfg))
    assert result.returncode == 0, result.stderr
    assert "read as the original daemon's config format" in result.stderr
    assert "id: legacy-agent" in result.stdout


def test_missing_or_non_executable_binary_fails_that_agent_only(agentd, tmp_path):
    not_exec = agentd.base / "not-exec.sh"
    not_exec.write_text("#!/bin/sh\nsleep 100\n")
    retry = {"backoff_steps": [0.2], "max_retries": 2}  # a failed spawn is retried under the policy first
    agentd.write_config([
        {"id": "ghost", "binary_path": "/no/such/binary", "restart": retry},
        {"id": "noexec", "binary_path": str(not_exec), "restart": retry},
        agentd.helper_agent("fine", "well-behaved"),
    ])
    agentd.start()
    ghost = agentd.wait_state("ghost", "failed")
    assert "binary_path /no/such/binary does not exist" in ghost["reason"] and "gave up after 2 restarts" in ghost["reason"]
    assert "is not executable" in agentd.wait_state("noexec", "failed")["reason"]
    agentd.wait_state("fine", "running")
    result = agentd.agentctl("start", "ghost")
    assert result.returncode == 1 and "does not exist" in result.stdout


def test_agentctl_against_a_stopped_daemon_says_so_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "supervisor.ctl.agentctl", "--run-dir", str(tmp_path), "status"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 3
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith(f"agentctl: agentd is not running: no socket at {tmp_path}/control.ipc")
    assert f"--run-dir {tmp_path}" in line  # says where it looked, and why there


def test_agentctl_with_a_stale_socket_after_kill_9(agentd):
    agentd.write_config([])
    agentd.start()
    agentd.kill9()
    result = agentd.agentctl("status")
    assert result.returncode == 3
    assert "agentd is not running: stale socket" in result.stderr


def test_unknown_agent_id_lists_known_ones(agentd):
    agentd.write_config([agentd.helper_agent("a", "well-behaved")])
    agentd.start()
    for argv in (["stop", "nope"], ["status", "nope"], ["logs", "nope"]):
        result = agentd.agentctl(*argv)
        assert result.returncode == 1, argv
        assert "no agent 'nope'; known: a" in result.stderr
    assert agentd.agentctl("start").returncode == 2


def test_garbage_on_the_control_socket_is_answered_and_the_daemon_carries_on(agentd):
    agentd.write_config([agentd.helper_agent("a", "well-behaved")])
    agentd.start()
    agentd.wait_state("a", "running")
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"ipc://{agentd.run_dir / 'control.ipc'}")
    try:
        for payload in ([b"\xff\xfe garbage"], [b"[1,2,3]"], [b'{"verb": "status"}'], [b"a", b"b", b"c"],
                        [b'{"id": "x", "verb": "nope"}'], [b'{"id": "y", "verb": "stop", "args": {"ids": 5}}']):
            sock.send_multipart(payload)
            assert sock.poll(10_000), f"no answer to {payload}"
            reply = sock.recv_json()
            assert reply["ok"] is False and reply["error"]["code"] in ("bad_request", "unknown_verb")
            assert "Traceback" not in reply["error"]["message"]
    finally:
        sock.close()
    assert agentd.status("a")["state"] == "running"
    assert "control: rejected a message" in agentd.log_text()


def test_metadata_truncated_to_half_is_moved_aside_and_the_daemon_runs(agentd):
    agentd.write_config([agentd.helper_agent("a", "well-behaved"), agentd.helper_agent("b", "well-behaved")])
    agentd.start()
    agentd.wait_state("a", "running")
    agentd.wait_state("b", "running")
    agentd.call("stop", {"all": True})
    agentd.terminate()
    meta = agentd.data_dir / "metadata" / "a.json"
    text = meta.read_text()
    meta.write_text(text[: len(text) // 2])
    agentd.start()
    wait_until(lambda: list(meta.parent.glob("a.json.corrupt-*")))
    assert "a.json" in agentd.log_text() and "corrupt" in agentd.log_text()
    # a's record is lost, so it starts fresh; b's operator stop survives.
    agentd.wait_state("a", "running")
    assert agentd.status("b")["state"] == "stopped"


def test_unknown_control_group_is_a_clear_start_up_error(agentd):
    """Regression: this used to hang agentd at start-up with no message."""
    agentd.write_config([], control={"group": "no-such-group-xyz"})
    result = agentd_cli("run", "-c", str(agentd.config_path))
    assert result.returncode == 1
    assert "control.group 'no-such-group-xyz' does not exist" in result.stderr


def test_huge_timeout_is_accepted_without_a_traceback(agentd):
    """Regression: --timeout above the server's cap printed a pydantic traceback."""
    agentd.write_config([agentd.helper_agent("a", "well-behaved")])
    agentd.start()
    agentd.wait_state("a", "running")
    result = agentd.agentctl("--timeout", "5000", "stop", "a")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_agentctl_with_a_broken_config_still_reaches_the_daemon(agentd):
    """Regression: -c with an invalid file exited 2, so `reload` could not even show the error."""
    agentd.write_config([])
    agentd.start()
    agentd.config_path.write_text(agentd.config_path.read_text() + "\nbogus: 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "supervisor.ctl.agentctl", "-c", str(agentd.config_path), "reload"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 1
    assert "has errors; using its daemon.run_dir" in result.stderr
    assert "unknown top-level key 'bogus'" in result.stderr


def test_version_against_a_stopped_daemon_exits_3(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "supervisor.ctl.agentctl", "--run-dir", str(tmp_path), "version"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 3 and "agentctl 0.1.0" in result.stdout


def test_unsupported_protocol_version_gets_a_typed_error(agentd):
    agentd.write_config([])
    agentd.start()
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"ipc://{agentd.run_dir / 'control.ipc'}")
    try:
        sock.send_json({"v": 99, "id": "q", "verb": "ping", "args": {}})
        assert sock.poll(10_000)
        reply = sock.recv_json()
    finally:
        sock.close()
    assert reply["error"]["code"] == "unsupported_version" and reply["id"] == "q"
