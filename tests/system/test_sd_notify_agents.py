"""sd_notify for agents: READY=1 gates `running`, WATCHDOG=1 is a heartbeat, STATUS= is shown, outsiders are ignored."""

from __future__ import annotations

import os
import shutil
import socket
import stat

import pytest

from tests.support.processes import pid_alive
from tests.support.wait import read_markers, wait_for_marker, wait_until

HEALTH = {"interval": 0.5, "heartbeat_timeout": "2s", "startup_grace": "10s", "cpu_threshold": None, "memory_threshold": None}


def notify_agent(agentd, agent_id, *args, health=None, **spec):
    return agentd.helper_agent(agent_id, "sd-notify", *args, ready="notify", health_check={**HEALTH, **(health or {})}, **spec)


def test_notify_agent_is_running_only_after_ready_kept_alive_by_watchdog_and_restarted_when_it_stops(agentd):
    agentd.extra = {"resources": {"interval": 0.5}}
    # READY once the test creates the file (not after a fixed time: on a busy machine the checks of the
    # starting state can take longer than any such delay), then WATCHDOG=1 every 0.3 s for 20 beats (~6 s,
    # three heartbeat timeouts), then silence.
    go = agentd.base / "send-ready"
    agentd.write_config([notify_agent(agentd, "svc", "--after", "0", "--ready-file", str(go), "--interval", "0.3", "--beats", "20",
                                      "--status-text", "42 clients", health={"startup_grace": "60s"})])
    agentd.start()
    env = wait_for_marker(agentd.marker("svc"), "NOTIFY_ENV")[0]
    assert env[1] == str(agentd.run_dir / "notify" / "svc") and env[2] == "2000000"
    st = agentd.status("svc")
    assert st["state"] == "starting" and not any(m[0] == "READY" for m in read_markers(agentd.marker("svc")))
    assert "waiting for READY=1" in agentd.agentctl("status", "svc").stdout
    go.touch()
    st = agentd.wait_state("svc", "running")
    assert any(m[0] == "READY" for m in read_markers(agentd.marker("svc")))
    assert st["reason"] == "READY=1 received"
    assert st["notify_status"] == "serving 42 clients"
    assert "serving 42 clients" in agentd.agentctl("status").stdout
    # Alive on WATCHDOG=1 alone, well past the 2 s heartbeat timeout.
    wait_until(lambda: agentd.status("svc")["heartbeat_age_s"] is not None, timeout=10)
    wait_until(lambda: any(m[0] == "STALLED" for m in read_markers(agentd.marker("svc"))), timeout=30, message="20 watchdog beats")
    assert agentd.status("svc")["restarts"] == 0
    # Silence: restarted for no_heartbeat.
    wait_until(lambda: agentd.status("svc")["restarts"] >= 1, timeout=30, message="a restart after the watchdog stopped")
    assert agentd.status("svc")["restarts_by_reason"] == {"no_heartbeat": 1}
    assert agentd.call("workers")["parent"]["notify_watchdog"] >= 20


def test_ready_never_sent_is_a_failed_start(agentd):
    agentd.write_config([notify_agent(agentd, "mute", "--after", "3600", health={"heartbeat_timeout": None, "startup_grace": "2s"})])
    agentd.start()
    wait_until(lambda: agentd.status("mute")["restarts"] >= 1, timeout=30, message="restart for a missing READY=1")
    st = agentd.status("mute")
    assert st["restarts_by_reason"] == {"not_ready": 1}
    assert "no READY=1 within" in st["last_restart_reason"]


def test_notify_from_a_process_outside_the_agent_is_ignored(agentd):
    agentd.write_config([notify_agent(agentd, "guarded", "--after", "3600")])
    agentd.start()
    wait_for_marker(agentd.marker("guarded"), "NOTIFY_ENV")
    path = agentd.run_dir / "notify" / "guarded"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:  # this test process: alive, not the agent's
        sock.sendto(b"READY=1\nSTATUS=forged", str(path))
    wait_until(lambda: agentd.call("workers")["parent"].get("notify_dropped_foreign_sender", 0) >= 1, timeout=10)
    st = agentd.status("guarded")
    assert st["state"] == "starting" and st["notify_status"] is None


def test_agentd_own_notify_socket_is_not_passed_to_agents(agentd, monkeypatch):
    own = agentd.base / "systemd-notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(own))
    receiver.settimeout(30)
    monkeypatch.setenv("NOTIFY_SOCKET", str(own))
    monkeypatch.setenv("WATCHDOG_USEC", "999")
    agentd.write_config([agentd.helper_agent("env", "print-env", "--show", "NOTIFY_SOCKET", "--show", "WATCHDOG_USEC")])
    try:
        agentd.start()
        assert b"READY=1" in receiver.recv(4096)  # agentd itself still reports to its own manager
        wait_until(lambda: any(m[0] == "CWD" for m in read_markers(agentd.marker("env"))))
        env = [m[1] for m in read_markers(agentd.marker("env")) if m[0] == "ENV"]
        assert f"NOTIFY_SOCKET={agentd.run_dir / 'notify' / 'env'}" in env
        assert not any(e.startswith("WATCHDOG_USEC=") for e in env)  # no heartbeat timeout: no watchdog
    finally:
        receiver.close()


@pytest.mark.skipif(shutil.which("systemd-notify") is None, reason="systemd-notify is not installed (Debian package systemd)")
def test_systemd_notify_from_a_shell_agent(agentd):
    script = agentd.base / "notify-agent.sh"
    script.write_text(
        "#!/bin/sh\n"
        "trap 'exit 0' TERM\n"
        "sleep 1\n"
        "systemd-notify --ready --status='shell agent up'\n"
        "while :; do sleep 0.3; systemd-notify WATCHDOG=1; done\n"
    )
    script.chmod(0o755)
    agentd.write_config([{
        "id": "sh", "binary_path": str(script), "args": [], "ready": "notify", "stop_timeout": 3,
        "health_check": HEALTH, "restart": {"backoff_steps": [0.2], "max_retries": 5},
    }])
    agentd.start()
    st = agentd.wait_state("sh", "running", timeout=30)
    assert st["reason"] == "READY=1 received" and st["notify_status"] == "shell agent up"
    wait_until(lambda: agentd.call("workers")["parent"].get("notify_watchdog", 0) >= 8, timeout=30, message="watchdog pings from systemd-notify")
    assert agentd.status("sh")["restarts"] == 0 and agentd.status("sh")["state"] == "running"
    assert "shell agent up" in agentd.agentctl("status").stdout


def test_mainpid_hands_the_agent_over_to_a_forked_daemon(agentd):
    agentd.write_config([agentd.helper_agent("fork", "notify-forking", ready="notify")])
    agentd.start()
    st = agentd.wait_state("fork", "running")
    daemon_pid = int(wait_for_marker(agentd.marker("fork"), "DAEMON")[0][1])
    launcher = int(wait_for_marker(agentd.marker("fork"), "START")[0][1])
    wait_until(lambda: any(m[0] == "EXIT" and int(m[1]) == launcher for m in read_markers(agentd.marker("fork"))), message="the launcher to exit")
    st = agentd.status("fork")
    assert st["state"] == "running" and st["pid"] == daemon_pid and st["restarts"] == 0
    assert st["notify_status"] == "forked daemon up"
    assert agentd.agentctl("stop", "fork").returncode == 0
    st = agentd.status("fork")
    assert st["state"] == "stopped" and not pid_alive(daemon_pid)


@pytest.mark.skipif(os.geteuid() != 0, reason="running an agent as another user needs root")
def test_notify_and_cgroup_placement_work_for_an_agent_running_as_another_user(agentd):
    """The notify socket is owned by the agent's user; the cgroup move happens after the uid change."""
    from tests.system.test_cgroup_agents import MOUNT, remove_tree

    from tests.support.daemon import HELPER

    if not all(os.stat(d).st_mode & 0o001 for d in HELPER.parents) or not os.stat(HELPER).st_mode & 0o004:
        pytest.skip(f"{HELPER} cannot be run by another user")
    os.chmod(agentd.base, 0o755)
    os.chmod(agentd.markers, 0o777)
    root = None
    cgroups = {"mode": "off"}
    if MOUNT is not None:
        import uuid
        root = MOUNT / f"agentd-test-{uuid.uuid4().hex[:10]}"
        cgroups = {"root": str(root)}
    try:
        agentd.write_config([notify_agent(agentd, "nob", "--after", "0.5", user="nobody", health={"heartbeat_timeout": None})], cgroups=cgroups)
        agentd.start()
        st = agentd.wait_state("nob", "running")
        assert st["reason"] == "READY=1 received"
        assert os.stat(agentd.run_dir / "notify" / "nob").st_uid == os.stat(f"/proc/{st['pid']}").st_uid != 0
        if root is not None:
            assert st["cgroup"] == str(root / "agent-nob")
            assert (root / "agent-nob" / "cgroup.procs").read_text().split() == [str(st["pid"])]
    finally:
        agentd.cleanup()
        if root is not None:
            remove_tree(root)


def test_a_non_socket_at_an_agents_notify_path_is_left_alone(agentd):
    """Whatever sits at run_dir/notify/<id> that is not a socket is not removed; the agent runs without NOTIFY_SOCKET."""
    (agentd.run_dir / "notify").mkdir(parents=True)
    keep = agentd.run_dir / "notify" / "plain"
    keep.write_text("not a socket\n")
    agentd.write_config([agentd.helper_agent("plain", "print-env", "--show", "NOTIFY_SOCKET")])
    agentd.start()
    agentd.wait_state("plain", "running")
    wait_until(lambda: any(m[0] == "CWD" for m in read_markers(agentd.marker("plain"))))
    assert keep.read_text() == "not a socket\n"
    assert not any(m[1].startswith("NOTIFY_SOCKET=") for m in read_markers(agentd.marker("plain")) if m[0] == "ENV")
    assert "is not a socket; not replacing it" in agentd.log_text()
