"""agentctl while agentd is down: status, logs and history come from the files agentd left, clearly marked."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support.daemon import ROOT
from tests.support.processes import pid_alive
from tests.support.wait import wait_for_marker, wait_until


def agentctl(agentd, *argv, env=None):
    """agentctl found through the config file, as an operator runs it (not --run-dir)."""
    return subprocess.run([sys.executable, "-m", "supervisor.ctl.agentctl", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=env or os.environ)


def test_status_logs_and_history_while_agentd_is_down(agentd):
    agentd.write_config([agentd.helper_agent("a", "well-behaved"), agentd.helper_agent("b", "well-behaved")])
    agentd.start()
    pids = {i: agentd.wait_state(i, "running")["pid"] for i in ("a", "b")}
    wait_for_marker(agentd.marker("a"), "START")
    log = agentd.log_dir / "a" / "agent.log"
    wait_until(lambda: log.exists() and "START" in log.read_text(errors="replace"), message="a's first log line")
    assert agentd.agentctl("stop", "b").returncode == 0
    agentd.kill9()
    cfg = str(agentd.config_path)

    status = agentctl(agentd, "status", "-c", cfg)  # global option after the subcommand
    assert status.returncode == 3, status.stdout + status.stderr
    assert "agentd is not running" in status.stderr and "OFFLINE" in status.stderr and f"config {cfg} from -c" in status.stderr
    line_a = [ln for ln in status.stdout.splitlines() if ln.startswith("a ")][0]
    assert str(pids["a"]) in line_a and "running" in line_a
    line_b = [ln for ln in status.stdout.splitlines() if ln.startswith("b ")][0]
    assert "stopped (recorded)" in line_b
    doc = json.loads(agentctl(agentd, "--json", "-c", cfg, "status").stdout)
    assert doc["offline"] is True and {a["id"]: a["process"] for a in doc["agents"]} == {"a": "running", "b": "-"}

    logs = agentctl(agentd, "-c", cfg, "logs", "a", "-n", "5")
    assert logs.returncode == 0, logs.stderr
    assert "START mode=well-behaved" in logs.stdout and "directly" in logs.stderr

    history = agentctl(agentd, "history", "a", "--since", "1h", "-c", cfg)
    assert history.returncode == 0, history.stderr
    assert "read-only" in history.stderr

    env = dict(os.environ, AGENTD_CONFIG=cfg)
    assert "OFFLINE" in agentctl(agentd, "status", env=env).stderr  # found through $AGENTD_CONFIG too
    assert pid_alive(pids["a"])  # looking disturbed nothing
    assert not (agentd.data_dir / "metadata" / "a.json.broken").exists()


def test_without_a_config_the_message_says_where_it_looked(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("AGENTD_CONFIG", "AGENTD_RUN_DIR")}
    env["AGENTD_RUN_DIR"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-m", "supervisor.ctl.agentctl", "status"], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 3
    assert f"no socket at {tmp_path}/control.ipc" in result.stderr and "from $AGENTD_RUN_DIR" in result.stderr
    assert "give -c FILE" in result.stderr


def test_stale_socket_right_after_kill_9_is_reported_at_once(agentd):
    """Regression: in the moment after kill -9 (pid not yet reaped) agentctl waited 10 s and exited 4."""
    agentd.write_config([])
    agentd.start()
    agentd.proc.send_signal(9)
    # Not reaped (Popen.poll would reap it): the pid still exists, as a zombie, as in the moment after a kill -9.
    wait_until(lambda: open(f"/proc/{agentd.proc.pid}/stat").read().rpartition(")")[2].split()[0] == "Z",
               timeout=30, message="agentd a zombie, not yet reaped")
    result = agentd.agentctl("--timeout", "30", "status", timeout=20)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "not running" in result.stderr
    agentd.proc.wait()


def test_rough_edges_are_usage_errors(agentd):
    bad_url = subprocess.run([sys.executable, "-m", "supervisor.ctl.agentctl", "heartbeat", "x", "--url", "notaurl"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    assert bad_url.returncode == 1 and "not a heartbeat URL" in bad_url.stderr and "Traceback" not in bad_url.stderr
    agentd.write_config([agentd.helper_agent("a", "well-behaved")])
    agentd.start()
    zero = agentd.agentctl("history", "a", "--since", "0s")
    assert zero.returncode == 2 and "--since" in zero.stderr and "longer than 0" in zero.stderr
