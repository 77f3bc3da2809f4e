"""Health verdicts with real agents: each problem leads to one restart with the right reason, and a
health worker killed with -9 restarts no agent."""

from __future__ import annotations

import http.server
import os
import signal
import sys
import threading

import pytest

from tests.support.daemon import HELPER
from tests.support.wait import wait_until

FAST_HEALTH = {"interval": 0.5, "heartbeat_timeout": "2s", "startup_grace": "2s", "threshold_duration": "2s",
               "cpu_threshold": None, "memory_threshold": None}


@pytest.fixture
def fast(agentd):
    """A daemon config with short health and sampling intervals."""
    agentd.extra = {"resources": {"interval": 0.5}}
    return agentd


def agent(agentd, agent_id, mode, *args, health=None, **spec):
    return agentd.helper_agent(agent_id, mode, *args, health_check={**FAST_HEALTH, **(health or {})}, **spec)


def first_restart(agentd, agent_id, timeout=60):
    """Wait for the agent's first restart and return its status once the new process runs."""
    wait_until(lambda: agentd.status(agent_id)["restarts"] >= 1, timeout=timeout, message=f"{agent_id} restarted")
    return agentd.status(agent_id)


def restarting_events(agentd, agent_id):
    return [e for e in agentd.call("events", {"ids": [agent_id], "limit": 1000})["events"] if e["new"] == "restarting"]


def test_agent_that_stops_heartbeating_is_restarted_for_no_heartbeat(fast):
    fast.write_config([agent(fast, "stall", "heartbeat-then-stall", "--beats", "3")])
    fast.start()
    fast.wait_state("stall", "running", timeout=30)
    st = first_restart(fast, "stall")
    assert st["restarts_by_reason"] == {"no_heartbeat": 1}
    assert st["last_restart_reason"].startswith("no_heartbeat: ")
    events = restarting_events(fast, "stall")
    assert len(events) == 1 and "no_heartbeat" in events[0]["reason"]


def test_agent_that_never_heartbeats_is_restarted_after_startup_grace(fast):
    fast.write_config([agent(fast, "mute", "well-behaved")])
    fast.start()
    assert fast.status("mute")["state"] == "starting"
    st = first_restart(fast, "mute")
    assert st["restarts_by_reason"] == {"no_heartbeat": 1}
    assert "never" in st["last_restart_reason"] or "no heartbeat" in st["last_restart_reason"]


def test_cpu_over_threshold_for_longer_than_duration_restarts_and_a_short_spike_does_not(fast):
    fast.write_config([
        # 10 %: a spinner gets at least that much of a core even on a machine kept busy by other work.
        agent(fast, "burn", "cpu-burn", health={"heartbeat_timeout": None, "cpu_threshold": 10}),
        agent(fast, "spike", "cpu-burn", "--seconds", "0.6", health={"heartbeat_timeout": None, "cpu_threshold": 10, "threshold_duration": "4s"}),
    ])
    fast.start()
    st = first_restart(fast, "burn")
    assert st["restarts_by_reason"] == {"over_threshold": 1}
    assert "cpu" in st["last_restart_reason"]
    # The spike agent burned for 0.6 s only: judged many times meanwhile, never restarted.
    wait_until(lambda: fast.status("spike")["health"] == "healthy", timeout=30)
    assert fast.status("spike")["restarts"] == 0


def test_memory_growth_over_threshold_restarts(fast):
    fast.write_config([agent(fast, "balloon", "memory-balloon", "--mb", "120", "--step-mb", "40",
                             health={"heartbeat_timeout": None, "memory_threshold": "60MiB"})])
    fast.start()
    st = first_restart(fast, "balloon")
    assert st["restarts_by_reason"] == {"over_threshold": 1}
    assert "rss" in st["last_restart_reason"] and "60MiB" in st["last_restart_reason"].replace(" ", "")


def test_child_eating_memory_counts_against_the_agent_tree(fast):
    script = fast.base / "parent.sh"
    script.write_text(f"#!/bin/sh\n{sys.executable} {HELPER} memory-balloon --marker {fast.marker('tree')} --mb 120 --step-mb 40 &\nwait\n")
    script.chmod(0o755)
    fast.write_config([{"id": "tree", "binary_path": str(script), "stop_timeout": 3, "start_seconds": 0.3,
                        "health_check": {**FAST_HEALTH, "heartbeat_timeout": None, "memory_threshold": "60MiB"},
                        "restart": {"backoff_steps": [0.5]}}])
    fast.start()
    st = first_restart(fast, "tree")
    assert st["restarts_by_reason"] == {"over_threshold": 1}


class _Flaky(http.server.BaseHTTPRequestHandler):
    healthy = True

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.send_response(200 if _Flaky.healthy else 500)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_failing_http_endpoint_restarts(fast):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        fast.write_config([agent(fast, "web", "well-behaved", health={"heartbeat_timeout": None, "http_endpoint": url, "http_timeout": 1, "endpoint_failures": 3})])
        fast.start()
        wait_until(lambda: fast.status("web")["health"] == "healthy", timeout=30)
        _Flaky.healthy = False
        st = first_restart(fast, "web")
        assert st["restarts_by_reason"] == {"endpoint_failed": 1}
    finally:
        _Flaky.healthy = True
        server.shutdown()


def test_health_worker_killed_with_9_restarts_no_agent(fast):
    fast.write_config([agent(fast, "hb", "heartbeat-socket", "--interval", "0.2")])
    fast.start()
    fast.wait_state("hb", "running", timeout=30)
    wait_until(lambda: fast.status("hb")["health"] == "healthy", timeout=30)
    workers = {w["name"]: w for w in fast.call("workers")["workers"]}
    os.kill(workers["health"]["pid"], signal.SIGKILL)
    wait_until(lambda: (w := {x["name"]: x for x in fast.call("workers")["workers"]}["health"])["state"] == "running"
               and w["pid"] != workers["health"]["pid"] and w["last_beat_age_s"] is not None, timeout=20)
    # The new health worker judges from the parent's snapshot: still healthy, never restarted.
    wait_until(lambda: fast.call("workers")["workers"] and fast.status("hb")["health"] == "healthy", timeout=20)
    assert fast.status("hb")["restarts"] == 0


def test_operator_stopped_agent_is_reported_as_such_not_healthy(fast):
    fast.write_config([agent(fast, "a", "heartbeat-socket", "--interval", "0.2")])
    fast.start()
    wait_until(lambda: fast.status("a")["health"] == "healthy", timeout=30)
    fast.call("stop", {"ids": ["a"]})
    st = fast.status("a")
    assert st["state"] == "stopped" and st["health"] != "healthy"


def test_top_and_history_against_a_running_daemon(fast):
    fast.write_config([agent(fast, "a", "heartbeat-socket", "--interval", "0.2")])
    fast.start()
    wait_until(lambda: any(i["sample"] for i in fast.call("top")["agents"]), timeout=30)
    top = fast.agentctl("top", "--once")
    assert top.returncode == 0 and "a" in top.stdout and "parent" in top.stdout
    wait_until(lambda: len(fast.call("history", {"id": "a", "since": 600})["samples"]) >= 2, timeout=30)
    hist = fast.agentctl("history", "a", "--since", "10m")
    assert hist.returncode == 0 and "rss" in hist.stdout
    assert fast.agentctl("history", "nope").returncode == 1
    # Aggregated: one window per 5 minutes with average and maximum.
    windows = fast.call("history", {"id": "a", "since": 600, "every": 300})["windows"]
    assert windows and sum(w["samples"] for w in windows) >= 2 and all(w["start"] % 300 == 0 for w in windows)
    agg = fast.agentctl("history", "a", "--since", "10m", "--every", "5m")
    assert agg.returncode == 0 and "CPU AVG" in agg.stdout and "RSS MAX" in agg.stdout, agg.stdout + agg.stderr
