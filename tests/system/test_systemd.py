"""agentd under systemd's eyes: READY=1 and WATCHDOG=1 on a NOTIFY_SOCKET the test owns, pings that stop
when the supervision loop stops, systemd's variables kept from workers and agents, and the shipped unit."""

from __future__ import annotations

import configparser
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from supervisor.parent.sd_notify import MIN_PING_INTERVAL, Watchdog, watchdog_interval
from tests.support.daemon import is_zygote_forked
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "etc" / "agentd.service"


class Receiver:
    """The test's end of NOTIFY_SOCKET: every datagram, with the monotonic time it was read."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, str]] = []

    def drain(self) -> list[tuple[float, str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            self.messages.append((time.monotonic(), data.decode()))

    def pings(self) -> list[float]:
        return [t for t, m in self.drain() if "WATCHDOG=1" in m.split("\n")]

    def close(self) -> None:
        self.sock.close()


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def test_watchdog_pings_while_supervising_and_stops_when_the_parent_stops(agentd, monkeypatch):
    receiver = Receiver(agentd.base / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(agentd.base / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # WatchdogSec=1: a ping every 0.5 s
    agentd.write_config([agentd.helper_agent("a", "well-behaved")])
    try:
        agentd.start()
        wait_until(lambda: len(receiver.pings()) >= 4, timeout=30, message="periodic WATCHDOG=1")
        texts = [m for _, m in receiver.messages]
        assert "READY=1" in texts[0].split("\n")  # ready first, then the pings
        pings = receiver.pings()
        assert all(b - a < 5 for a, b in zip(pings, pings[1:]))
        # systemd's variables are agentd's alone: neither workers nor agents get them.
        agent_pid = agentd.wait_state("a", "running")["pid"]
        for w in agentd.call("workers")["workers"]:
            if is_zygote_forked(w["pid"]):
                continue  # never exec'd: /proc shows agentd's environment; test_zygote.py checks what it runs with
            env = environ_of(w["pid"])
            assert "NOTIFY_SOCKET" not in env and "WATCHDOG_USEC" not in env, w["name"]
        env = environ_of(agent_pid)
        assert env.get("NOTIFY_SOCKET") != str(agentd.base / "notify.sock") and "WATCHDOG_USEC" not in env

        pid = agentd.proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            wait_until(lambda: process_state(pid) == "T", timeout=10)
            stopped_at = len(receiver.pings())  # anything sent before the stop is read now
            quiet_until = time.monotonic() + 3.0  # six ping intervals
            wait_until(lambda: time.monotonic() > quiet_until or len(receiver.pings()) > stopped_at, timeout=30)
            assert len(receiver.pings()) == stopped_at, "WATCHDOG=1 sent while agentd was stopped"
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_until(lambda: len(receiver.pings()) > stopped_at, timeout=30, message="pings again after SIGCONT")
    finally:
        receiver.close()


def test_watchdog_interval_follows_sd_watchdog_enabled():
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None  # meant for another process
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "999"}) == MIN_PING_INTERVAL  # never a busy loop


def test_watchdog_pings_at_half_the_timeout():
    sent = []
    w = Watchdog({"WATCHDOG_USEC": "4000000"}, send=sent.append)
    w.tick(100.0)
    w.tick(101.0)
    assert sent == ["WATCHDOG=1"] and w.due_in(101.0) == 1.0
    w.tick(102.0)
    assert sent == ["WATCHDOG=1"] * 2
    quiet = Watchdog({}, send=sent.append)
    quiet.tick(0)
    assert quiet.due_in(0) is None and len(sent) == 2


# ----------------------------------------------------------------------------------------------- the unit


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str
    parser.read_string(UNIT.read_text())
    return parser


def test_unit_uses_the_entry_point_watchdog_and_agentctl_reload():
    service = unit()["Service"]
    for key in ("ExecStart", "ExecStartPre", "ExecReload"):
        assert ".venv" not in service[key] and "/opt/" not in service[key], f"{key} hard-codes an install path"
    assert service["ExecStart"].split()[0:2] == ["agentd", "run"]
    assert service["ExecReload"].split()[0] == "agentctl" and service["ExecReload"].split()[-1] == "reload"
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert int(service["WatchdogSec"].rstrip("s")) >= 10
    assert service["KillMode"] == "process"
    assert UNIT.read_text().count("LimitNOFILE=") == 1


def unit_command(key: str, config: Path) -> list[str]:
    """The unit's command line, with this checkout's entry points and the test's config file."""
    argv = unit()["Service"][key].replace("/etc/agentd/agentd.yaml", str(config)).split()
    return [str(Path(sys.executable).parent / argv[0]), *argv[1:]]


def test_exec_reload_reports_a_rejected_config(agentd):
    agentd.write_config([agentd.helper_agent("a", "well-behaved")])
    agentd.start()
    pid = agentd.wait_state("a", "running")["pid"]
    good = agentd.config_path.read_text()
    agentd.config_path.write_text(good.replace("agents:", "agents: 7\nbogus:", 1))
    done = subprocess.run(unit_command("ExecReload", agentd.config_path), capture_output=True, text=True, timeout=60)
    assert done.returncode != 0, done.stdout + done.stderr  # `systemctl reload agentd` fails, visibly
    assert "agents" in done.stderr or "agents" in done.stdout
    assert agentd.status("a")["pid"] == pid  # the running config stays
    agentd.config_path.write_text(good)
    done = subprocess.run(unit_command("ExecReload", agentd.config_path), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "no agent changes" in done.stdout, done.stdout + done.stderr


@pytest.mark.skipif(not Path("/usr/bin/systemd-analyze").exists(), reason="systemd-analyze is not installed (Debian package systemd)")
def test_unit_passes_systemd_analyze_verify(tmp_path):
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(UNIT)], capture_output=True, text=True, timeout=60)
    problems = [line for line in done.stderr.splitlines() if "agentd.service" in line and "not executable" not in line and "No such file" not in line]
    assert not problems, done.stderr
