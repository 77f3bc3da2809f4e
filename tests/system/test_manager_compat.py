"""agentd as a drop-in for the original daemon, seen from the development Manager over real gRPC.

The DevManager reads node metrics as the original Manager's overview does, re-creates a lost node as
"unknown", and dials the node API at <registered ip>:<port> in plaintext, without a token, with keepalive
pings (every second here, standing in for the Manager's 45 s against a policy scaled down to match).
"""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from tests.support.wait import wait_until
from tests.system.test_sync_worker import dev_manager
from workers.node_facts import go_arch

NODE = "compat-node"
ROOT = Path(__file__).resolve().parents[2]
OVERVIEW_TIMEOUT = 40


@pytest.fixture
def manager(tmp_path):
    mgr = dev_manager.DevManager(tmp_path / "manager.db", out=io.StringIO(), keepalive=1.0)
    _server, port = mgr.serve("127.0.0.1:0")
    mgr.address = f"127.0.0.1:{port}"
    yield mgr
    mgr.stop(grace=0)


ALL_COLLECTORS = {name: {"enabled": True, "interval": 1} for name in ("cpu", "memory", "disk", "network")}


def start(agentd, manager, agents, collectors=ALL_COLLECTORS, **api):
    """agentd reporting to the dev Manager, its node API plaintext on loopback for the Manager's address."""
    agentd.write_config(
        agents,
        daemon={"id": NODE},
        manager={"address": manager.address, "heartbeat_interval": 1, "sync_interval": 2, "timeout": 5,
                 "register_interval": 2, "advertise_ip": "127.0.0.1"},
        manager_api={"listen": "127.0.0.1:0", "insecure": True, "allow_from": ["127.0.0.1/32"],
                     "min_ping_interval": 0.5, **api},
        collectors=collectors,
    )
    agentd.start()

    def api_port():
        worker = next((w for w in agentd.call("workers")["workers"] if w["name"] == "manager-api"), None)
        listen = worker and worker["info"].get("listen")
        return listen and int(listen.rpartition(":")[2])

    # The Manager dials a fixed port (9091); here it learns the one agentd picked.
    manager.daemon_port = wait_until(api_port, timeout=30, message="the manager-api worker's port")
    wait_until(lambda: [n for n in manager.nodes() if n["node_id"] == NODE], timeout=30, message="the registration")


def latest(manager, kind: str) -> dict:
    rows = [m for m in manager.metrics(NODE) if m["type"] == kind]
    return rows[-1]["values"] if rows else {}


def test_the_manager_overview_shows_real_node_metrics(agentd, manager):
    start(agentd, manager, [agentd.helper_agent("web", "well-behaved")])

    def overview():
        ov = manager.overview(NODE)
        net = latest(manager, "network")
        ready = ov["memory_usage"] > 0 and ov["disk_total"] > 0 and net.get("interval_seconds", 0) > 0
        return ready and ov

    ov = wait_until(overview, timeout=OVERVIEW_TIMEOUT, message="non-zero memory and disk, and a network delta")
    assert 0 < ov["memory_usage"] < 100 and ov["memory_total"] > 2**20
    assert 0 < ov["disk_usage"] < 100 and ov["disk_total"] > 2**20
    cpu = latest(manager, "cpu")
    assert 0 <= cpu["usage_percent"] <= 100 and cpu["cores"] >= 1 and ov["cpu_usage"] == cpu["usage_percent"]
    # The link to the Manager runs over loopback itself, so lo has moved between two collections.
    net = latest(manager, "network")
    assert net["rx_bytes"] > 0 and ov["network_rx"] == net["rx_bytes"] and net["details[lo].rx_bytes"] > 0
    assert net["interface_count"] >= 1 and net["bytes_recv"] >= net["rx_bytes"]
    disk = latest(manager, "disk")
    assert disk["partition_count"] >= 1 and "details[/].total" in disk
    assert {m["type"] for m in manager.metrics(NODE)} >= {"cpu", "memory", "disk", "network", "system"}
    assert not [line for line in manager._out.getvalue().splitlines() if "metrics refused" in line]


def test_the_manager_dials_the_registered_ip_in_plaintext_and_its_pings_keep_the_connection(agentd, manager):
    start(agentd, manager, [agentd.helper_agent("web", "well-behaved"), agentd.helper_agent("db", "well-behaved")])
    agentd.wait_state("web", "running")
    [node] = [n for n in manager.nodes() if n["node_id"] == NODE]
    assert node["ip"] == "127.0.0.1" and node["arch"] == go_arch(__import__("platform").machine())
    assert {a.id: a.status for a in manager.list_agents(NODE)} == {"web": "running", "db": "running"}
    # Idle between calls, the channel pings every second; a GOAWAY too_many_pings would show as READY -> IDLE.
    time.sleep(6)
    assert manager.list_agents(NODE)
    states = manager.connection_states(NODE)
    assert "READY" in states and states[states.index("READY"):] == ["READY"], states
    workers = {w["name"]: w for w in agentd.call("workers")["workers"]}
    assert workers["manager-api"]["info"]["allow_from"] == "127.0.0.1/32"


def test_operate_agent_answers_when_the_action_is_done_and_reports_failures(agentd, manager):
    agents = [
        agentd.helper_agent("stubborn", "ignore-term", stop_timeout=2),
        agentd.helper_agent("slow", "ignore-term", stop_timeout=30),
        agentd.helper_agent("broken", "crash-on-start", enabled=False, start_seconds=10, restart={"max_retries": 0}),
        agentd.helper_agent("web", "well-behaved"),
    ]
    start(agentd, manager, agents)
    for agent_id in ("stubborn", "slow", "web"):
        agentd.wait_state(agent_id, "running")
    wait_until(lambda: set(manager.latest_states(NODE)) >= {"stubborn", "web"}, timeout=30, message="states synced")

    began = time.monotonic()
    assert manager.operate_agent(NODE, "stubborn", "stop") == (True, "")
    # It ignores SIGTERM: the answer came only after stop_timeout and the SIGKILL, with the agent down.
    assert time.monotonic() - began >= 2.0
    assert agentd.status("stubborn")["state"] == "stopped"
    assert manager.latest_states(NODE)["stubborn"]["status"] == "stopped"

    assert manager.operate_agent(NODE, "web", "restart") == (True, "")
    assert agentd.status("web")["state"] == "running"
    assert manager.operate_agent(NODE, "stubborn", "start") == (True, "")
    assert agentd.status("stubborn")["state"] == "running"

    ok, message = manager.operate_agent(NODE, "broken", "start")
    assert not ok and message, message
    assert agentd.status("broken")["state"] in ("failed", "restarting", "stopped")

    # A stop that outlasts the caller's deadline is answered, in time, as not done; agentd carries on.
    began = time.monotonic()
    ok, message = manager.operate_agent(NODE, "slow", "stop", timeout=5)
    assert not ok and "still stopping" in message and time.monotonic() - began < 5
    assert agentd.status("slow")["state"] == "stopping"
    ok, message = manager.operate_agent(NODE, "nobody", "stop")
    assert not ok and message.startswith("NOT_FOUND")


def test_a_lost_node_comes_back_with_its_facts_and_a_removed_agent_ends_as_stopped(agentd, manager):
    keep, drop = agentd.helper_agent("keep", "well-behaved"), agentd.helper_agent("drop", "well-behaved")
    # Only the collectors listed run, with their filters: no disk rows, network of lo alone.
    start(agentd, manager, [keep, drop], collectors={"cpu": {"interval": 1}, "memory": {"interval": 1},
                                                     "network": {"interval": 1, "interfaces": ["lo"]}})
    wait_until(lambda: {s["status"] for s in manager.latest_states(NODE).values()} == {"running"}
               and len(manager.latest_states(NODE)) == 2, timeout=30, message="both agents running in the Manager")

    manager.forget_node(NODE)
    wait_until(lambda: [n for n in manager.nodes() if n["node_id"] == NODE and n["hostname"] == "unknown"],
               timeout=30, message="the heartbeat re-creating the node as unknown")
    node = wait_until(lambda: [n for n in manager.nodes() if n["node_id"] == NODE and n["hostname"] != "unknown"],
                      timeout=30, message="a periodic registration restoring the node's facts")[0]
    assert node["ip"] == "127.0.0.1" and node["arch"] != "unknown" and node["daemon_version"] != "unknown"

    agentd.write_config([keep])
    agentd.call("reload")
    wait_until(lambda: manager.latest_states(NODE)["drop"]["status"] == "stopped", timeout=30,
               message="the removed agent's last state")
    row = manager.latest_states(NODE)["drop"]
    assert row["pid"] == 0
    assert {h["status"] for h in manager.state_history(NODE, "drop")} <= dev_manager.AGENT_STATUSES
    assert "not one the Manager can show" not in manager._out.getvalue()
    assert manager.latest_states(NODE)["keep"]["status"] == "running"
    kinds = {m["type"] for m in manager.metrics(NODE)}
    assert kinds == {"cpu", "memory", "network", "system"}, kinds
    net = latest(manager, "network")
    assert net["interface_count"] == 1 and not [k for k in net if k.startswith("details[") and not k.startswith("details[lo].")]


def test_the_dev_manager_command_line_operates_a_node_as_the_manager_does(agentd, manager):
    start(agentd, manager, [agentd.helper_agent("web", "well-behaved")])
    agentd.wait_state("web", "running")
    base = [sys.executable, str(ROOT / "examples" / "dev_manager.py"), "--db", manager.db_path,
            "--daemon-port", str(manager.daemon_port)]
    listed = subprocess.run([*base, "--list-agents", NODE], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and listed.stdout.startswith("web\tcustom\trunning\tpid "), listed
    stopped = subprocess.run([*base, "--operate", NODE, "web", "stop"], capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0 and f"{NODE}/web: stop done in" in stopped.stdout, stopped
    assert agentd.status("web")["state"] == "stopped"
    unknown = subprocess.run([*base, "--operate", NODE, "nobody", "start"], capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stdout, unknown
