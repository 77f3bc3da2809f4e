"""The worker pool with real worker processes: heartbeats flow into the parent, workers are respawned
when they die or go silent, and they die with the parent."""

from __future__ import annotations

import os
import signal

from tests.support.processes import pid_alive
from tests.support.wait import read_markers, wait_until


def hb_agent(agentd, agent_id, mode, **spec):
    return agentd.helper_agent(agent_id, mode, "--interval", "0.2", health_check={"heartbeat_timeout": "30s"}, **spec)


def test_heartbeats_over_http_and_socket_make_agents_running(agentd):
    agentd.write_config([hb_agent(agentd, "via-http", "heartbeat-http"), hb_agent(agentd, "via-sock", "heartbeat-socket")])
    agentd.start()
    agentd.wait_workers_running("heartbeat-http-0", "heartbeat-unix")
    for agent_id in ("via-http", "via-sock"):
        st = agentd.wait_state(agent_id, "running", timeout=30)
        assert st["last_heartbeat"] is not None
        assert st["heartbeat_age_s"] is not None and st["heartbeat_age_s"] < 30
    events = agentd.call("events", {"ids": ["via-http"]})["events"]
    assert any(e["new"] == "running" and e["reason"] == "first heartbeat received" for e in events)
    # The age keeps being refreshed while heartbeats flow.
    wait_until(lambda: agentd.status("via-sock")["heartbeat_age_s"] < 1.0, timeout=30)
    result = agentd.agentctl("status")
    assert result.returncode == 0 and "via-http" in result.stdout and "ago" in result.stdout
    # Counters arrive with the workers' 1 s liveness beat.
    wait_until(lambda: all(agentd.workers()[n]["counters"].get("accepted", 0) > 0 for n in ("heartbeat-http-0", "heartbeat-unix")),
               timeout=20, message="both intake workers count accepted heartbeats")
    assert agentd.call("workers")["parent"]["applied"] > 0


def test_heartbeat_from_a_script_with_agentctl_heartbeat(agentd):
    script = agentd.base / "script-agent.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"cd {os.getcwd()}\n"
        f"exec 3>>{agentd.marker('script')}\n"
        "echo START $$ >&3\n"
        f"while true; do {os.sys.executable} -m supervisor.ctl.agentctl heartbeat --status ok --agent-version 9.9 && echo BEAT >&3; sleep 0.5; done\n"
    )
    script.chmod(0o755)
    agentd.write_config([{"id": "script", "binary_path": str(script), "health_check": {"heartbeat_timeout": "30s"}}])
    agentd.start()
    st = agentd.wait_state("script", "running", timeout=40)
    wait_until(lambda: agentd.status("script")["version"] == "9.9", timeout=20)
    assert st["pid"] is not None


def test_killed_worker_is_back_within_seconds_and_workers_shows_why(agentd):
    agentd.write_config([hb_agent(agentd, "a", "heartbeat-http")])
    agentd.start()
    before = agentd.wait_workers_running("heartbeat-http-0", "heartbeat-unix")
    agentd.wait_state("a", "running", timeout=30)
    old_pid = before["heartbeat-http-0"]["pid"]
    os.kill(old_pid, signal.SIGKILL)
    back = wait_until(
        lambda: (w := agentd.workers()["heartbeat-http-0"])["state"] == "running" and w["pid"] != old_pid and w,
        timeout=10, message="http worker respawned",
    )
    assert back["restarts"] == 1 and "killed by SIGKILL" in back["last_exit"]
    # The agent was not touched, and its heartbeats get through the new worker.
    assert agentd.status("a")["restarts"] == 0
    count = len([m for m in read_markers(agentd.marker("a")) if m[0] == "HEARTBEAT" and m[2] == "200"])
    wait_until(lambda: len([m for m in read_markers(agentd.marker("a")) if m[0] == "HEARTBEAT" and m[2] == "200"]) > count + 3, timeout=20)
    out = agentd.agentctl("workers")
    assert out.returncode == 0 and "killed by SIGKILL" in out.stdout
    assert agentd.workers()["heartbeat-unix"]["restarts"] == 0


def test_workers_beat_every_second_only_while_their_silence_matters(agentd):
    # No agent expects heartbeats: nobody's deadline depends on the intakes, so every worker beats every 3 s
    # (IDLE_BEAT_INTERVAL, well inside the pool's 10 s) and says so.
    quiet = {"id": "quiet", "binary_path": "/bin/sleep", "args": ["1000"], "health_check": {"heartbeat_timeout": None}}
    agentd.write_config([quiet])
    agentd.start()
    names = ("heartbeat-http-0", "heartbeat-unix", "health")
    agentd.wait_workers_running(*names)
    wait_until(lambda: all(agentd.workers()[n]["beat_every_s"] == 3.0 for n in names), timeout=20, message="idle beats")
    assert agentd.call("workers")["parent"].get("stalls", 0) == 0
    # An agent that expects heartbeats makes the intakes beat every second (INTAKE_SILENCE counts from it).
    agentd.write_config([quiet, {"id": "hb", "binary_path": "/bin/sleep", "args": ["1000"]}])  # heartbeat_timeout 90 s by default
    agentd.call("reload")
    wait_until(lambda: all(agentd.workers()[n]["beat_every_s"] == 1.0 for n in names[:2]), timeout=20, message="intakes beat every second")
    assert agentd.workers()["health"]["beat_every_s"] == 3.0
    for name in names:
        assert agentd.workers()[name]["restarts"] == 0


def test_silent_worker_is_killed_and_respawned(agentd):
    agentd.write_config([])
    agentd.start()
    before = agentd.wait_workers_running("heartbeat-unix")
    pid = before["heartbeat-unix"]["pid"]
    os.kill(pid, signal.SIGSTOP)  # alive but mute: only the missing liveness beat shows it
    try:
        back = wait_until(
            lambda: (w := agentd.workers()["heartbeat-unix"])["pid"] not in (None, pid) and w,
            timeout=40, message="stopped worker replaced",
        )
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert "silent" in back["last_exit"]


def test_workers_die_with_the_parent(agentd):
    agentd.write_config([hb_agent(agentd, "a", "heartbeat-socket")])
    agentd.start()
    ws = agentd.wait_workers_running("heartbeat-http-0", "heartbeat-unix")
    agent_pid = agentd.wait_state("a", "running", timeout=30)["pid"]
    agentd.kill9()
    for w in ws.values():
        wait_until(lambda p=w["pid"]: not pid_alive(p), timeout=30, message=f"worker {w['name']} to exit")
    assert pid_alive(agent_pid)  # agents, unlike workers, outlive the daemon
    agentd.start()
    assert agentd.wait_state("a", "running", timeout=30)["pid"] == agent_pid
    wait_until(lambda: agentd.status("a")["heartbeat_age_s"] is not None and agentd.status("a")["heartbeat_age_s"] < 2, timeout=20)


def test_metrics_endpoint_serves_intake_and_parent_metrics(agentd):
    import re
    import urllib.request

    agentd.write_config([hb_agent(agentd, "a", "heartbeat-http")])
    agentd.start()
    ws = agentd.wait_workers_running("heartbeat-http-0")
    agentd.wait_state("a", "running", timeout=30)
    listen = ws["heartbeat-http-0"]["info"]["listen"]

    def scrape():
        with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as resp:
            return resp.read().decode()

    def scraped_with_parent_metrics():
        text = scrape()
        # The parent's part is refreshed every few seconds: wait for one taken after "a" was running.
        return text if 'agentd_agent_state{agent="a",state="running"} 1' in text else None

    text = wait_until(scraped_with_parent_metrics, timeout=30, message="parent metrics in /metrics")
    sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? -?[0-9.e+-]+(inf|nan)?$', re.IGNORECASE)
    for line in text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or sample.match(line), line
    assert 'agentd_agent_state{agent="a",state="running"} 1' in text
    assert "agentd_heartbeat_http_heartbeats_accepted_total" in text
    assert 'agentd_worker_up{worker="health"} 1' in text
    names = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(names) == len(set(names)), "a metric family is declared twice"


def test_prometheus_values_are_exact_and_families_typed_once():
    from supervisor.common.prometheus import Exposition

    m = Exposition()
    m.counter("agentd_x_total", "x", 22540312, worker="w")
    m.counter("agentd_x_total", "x", 7, worker="v")
    m.gauge("agentd_y", "y", 0.125)
    m.gauge("agentd_z", "z", None)  # not known: left out, never a made-up 0
    text = m.text().decode()
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if not line.startswith("#")}
    assert values == {'agentd_x_total{worker="w"}': 22540312, 'agentd_x_total{worker="v"}': 7, "agentd_y": 0.125}  # not 2.25403e+07
    assert text.count("# TYPE agentd_x_total counter") == 1 and "agentd_z" not in text


def test_heartbeat_socket_path_that_is_a_directory_is_a_clear_error(tmp_path):
    import pytest

    from supervisor.parent.listeners import ListenError, unix_listener

    with pytest.raises(ListenError, match="is a directory"):
        unix_listener(tmp_path)
