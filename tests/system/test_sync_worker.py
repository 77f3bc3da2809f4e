"""The sync worker against the development Manager over real gRPC: registration, states, outages, refusals, kill -9, TLS."""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent import futures
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import grpc
import grpc.aio
import pytest

from supervisor.wire.version import __version__ as agentd_version
from supervisor.config.manager_sections import ManagerSettings
from supervisor.wire.messages import AgentView
from supervisor.wire.proto import daemon_pb2, manager_pb2, manager_pb2_grpc
from tests.support.certs import make_cert
from tests.support.daemon import ROOT
from tests.support.wait import wait_until
from workers.node_facts import go_arch
from workers.manager_channel import backoff_for
from workers.manager_sync import ManagerSync

ROOT = Path(__file__).resolve().parents[2]
NODE = "node-under-test"


def _load_dev_manager():
    """Import examples/dev_manager.py (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("dev_manager", ROOT / "examples" / "dev_manager.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("dev_manager", module)  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


dev_manager = _load_dev_manager()


class Manager:
    """A DevManager served in this process; `restart()` brings a fresh one back on the same port and db."""

    def __init__(self, db: Path, port: int = 0, **options) -> None:
        self.db = db
        self.mgr = dev_manager.DevManager(db, out=io.StringIO(), **options)
        _server, self.port = self.mgr.serve(f"127.0.0.1:{port}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.mgr is not None:
            self.mgr.stop(grace=0)
            self.mgr = None

    def restart(self, **options) -> None:
        self.stop()
        self.mgr = dev_manager.DevManager(self.db, out=io.StringIO(), **options)
        self.mgr.serve(f"127.0.0.1:{self.port}")

    def states(self) -> dict[str, dict]:
        return self.mgr.latest_states(NODE)

    def __getattr__(self, name):
        return getattr(self.mgr, name)


@pytest.fixture
def manager(tmp_path):
    m = Manager(tmp_path / "manager.db")
    yield m
    m.stop()


def manager_section(address: str, **extra) -> dict:
    return {"address": address, "heartbeat_interval": 1, "sync_interval": 2, "timeout": 2, **extra}


def start_agentd(agentd, agents, address, **manager_extra):
    agentd.write_config(agents, daemon={"id": NODE}, manager=manager_section(address, **manager_extra))
    agentd.start()


def sync_worker(agentd) -> dict:
    return next(w for w in agentd.call("workers")["workers"] if w["name"] == "sync")


def agentd_states(agentd) -> dict[str, tuple[str, int]]:
    return {a["id"]: (a["state"], a["pid"] or 0) for a in agentd.call("status")["agents"]}


def manager_matches(manager, agentd) -> bool:
    want = agentd_states(agentd)
    have = {k: (v["status"], v["pid"]) for k, v in manager.states().items()}
    return have == want


# ------------------------------------------------------------------------------------------- unit level


def test_backoff_doubles_to_its_cap_with_bounded_jitter():
    # The doubling itself is tested in test_backoff.py; here, the Manager link's own settings.
    b = backoff_for(ManagerSettings(heartbeat_interval=60))
    b.rng = lambda: 0.5  # no jitter at the midpoint
    assert [b.next_delay() for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    b.reset()
    b.rng = lambda: 0.0
    assert b.next_delay() == pytest.approx(0.8)
    b.reset()
    b.rng = lambda: 1.0
    assert b.next_delay() == pytest.approx(1.2)
    # The cap follows the node heartbeat interval (at most 60 s): a recovered Manager gets states within one beat.
    assert backoff_for(ManagerSettings(heartbeat_interval=60)).cap == 60
    assert backoff_for(ManagerSettings(heartbeat_interval=300)).cap == 60
    assert backoff_for(ManagerSettings(heartbeat_interval=1)).cap == 1


def test_a_state_that_changes_during_a_send_stays_pending_and_goes_next():
    """Newest wins: a send in flight never clears a newer state, and no older state follows a newer one."""

    def view(state: str, pid: int | None) -> AgentView:
        return AgentView(id="a", type="custom", state=state, pid=pid)

    async def scenario():
        link = SimpleNamespace(agents={"a": view("running", 10)}, last_heartbeat={"a": 1700000000.7},
                               counters=Counter(), info={}, on_change=[])
        channel = grpc.aio.insecure_channel("127.0.0.1:9")  # never used: the stub is replaced
        sync = ManagerSync(link, ManagerSettings(address="127.0.0.1:9"), "n", channel)
        sent: list[list[tuple]] = []
        release = asyncio.Event()

        async def fake_sync(request, timeout):
            sent.append([(s.agent_id, s.status, s.pid, s.last_heartbeat) for s in request.states])
            if len(sent) == 1:
                await release.wait()
            return daemon_pb2.SyncAgentStatesResponse(success=True)

        sync.daemon = SimpleNamespace(SyncAgentStates=fake_sync)
        link.on_change[0]()
        first = asyncio.create_task(sync._send_pending())
        await asyncio.sleep(0.01)
        link.agents["a"] = view("stopping", 10)
        link.on_change[0]()
        link.agents["a"] = view("stopped", None)
        link.on_change[0]()
        release.set()
        assert await first
        assert sync.pending["a"].status == "stopped"  # still pending: the flight carried an older state
        assert await sync._send_pending()
        assert not sync.pending
        del link.agents["a"]
        link.on_change[0]()
        assert await sync._send_pending()
        await channel.close()
        return sent, link

    sent, link = asyncio.run(scenario())
    assert sent == [
        [("a", "running", 10, 1700000000)],  # last_heartbeat is the agent's own, in whole unix seconds
        [("a", "stopped", 0, 1700000000)],  # "stopping" was overwritten while waiting: never sent
        [("a", "stopped", 0, 1700000000)],  # removed: the Manager cannot show "removed" nor delete the row
    ]
    assert link.counters["states_sent"] == 3 and link.info["pending"] == "0"


# ------------------------------------------------------------------------------------------- with agentd


def test_registers_with_real_facts_and_syncs_changes(agentd, tmp_path):
    # unknown_node_once: the Manager forgets the node at its first heartbeat, so the worker must register again.
    manager = Manager(tmp_path / "manager.db", unknown_node_once=True)
    try:
        stalled = agentd.helper_agent("stalled", "heartbeat-then-stall", "--beats", "1", health_check={"heartbeat_timeout": "60s"})
        agents = [agentd.helper_agent("web", "well-behaved"), agentd.helper_agent("db", "well-behaved"), stalled]
        start_agentd(agentd, agents, manager.address, labels={"env": "test", "rack": "r1"})
        agentd.wait_state("web", "running")
        node = wait_until(lambda: [n for n in manager.nodes() if n["registrations"] >= 2], timeout=30,
                          message="a registration and a re-registration after 'unknown node'")[0]
        assert node["node_id"] == NODE
        assert node["hostname"] == socket.gethostname()
        assert node["arch"] == go_arch(platform.machine()) and node["os"] == platform.system().lower()
        assert node["labels"] == {"env": "test", "rack": "r1"}
        assert node["daemon_version"] == agentd_version
        assert node["ip"] and node["ip"] != "0.0.0.0"
        wait_until(lambda: manager_matches(manager, agentd), timeout=30, message="initial states in the Manager")
        assert manager.states()["web"]["type"] == "custom"

        # How fast a change reaches the Manager (within 2 s, docs/manager-link.md) is a benchmark figure, not a test's
        # deadline: on a busy machine the worker's debounce alone can take longer.
        agentd.call("stop", {"ids": ["web"]})
        wait_until(lambda: [h for h in manager.state_history(NODE, "web") if h["status"] == "stopped"],
                   timeout=30, message="web stopped in the Manager")
        assert manager.states()["web"]["pid"] == 0

        # The cpu collector samples for 1 s, so the first reports may come without it.
        every_type = {"cpu", "memory", "disk", "network", "system"}
        metrics = wait_until(lambda: every_type <= {m["type"] for m in manager.metrics(NODE)} and manager.metrics(NODE),
                             timeout=30, message="node metrics of every type")
        memory = next(m for m in metrics if m["type"] == "memory")["values"]
        assert memory["total_bytes"] > 0 and 0 <= memory["usage_percent"] <= 100
        wait_until(lambda: manager.heartbeats(NODE) >= 1, timeout=30, message="an accepted node heartbeat")
        info = sync_worker(agentd)["info"]
        assert info["connected"] == "yes" and info["node_id"] == NODE and info["manager"] == manager.address

        # last_heartbeat is the agent's own last heartbeat, unchanged by later syncs, not the time of sending.
        beat = datetime.fromisoformat(agentd.wait_state("stalled", "running")["last_heartbeat"]).timestamp()
        later = wait_until(lambda: (st := manager.states()["stalled"])["updated_at"] > beat + 2.5 and st, timeout=30,
                           message="a full sync well after the stalled agent's only heartbeat")
        assert later["last_heartbeat"] == int(beat)
    finally:
        manager.stop()


def test_manager_outage_delivers_exactly_the_final_state_of_each_agent(agentd, manager):
    agents = [
        agentd.helper_agent("steady", "well-behaved"),
        agentd.helper_agent("to-stop", "well-behaved"),
        agentd.helper_agent("to-start", "well-behaved", enabled=False),
        agentd.helper_agent("crashy", "well-behaved"),
    ]
    start_agentd(agentd, agents, manager.address)
    for agent_id in ("steady", "to-stop", "crashy"):
        agentd.wait_state(agent_id, "running")
    wait_until(lambda: manager_matches(manager, agentd), timeout=30, message="initial states in the Manager")
    old_crashy_pid = agentd.status("crashy")["pid"]

    # The outage lasts 20 s (issue 5). With heartbeat_interval 1 s the worker's backoff is capped at 1 s
    # (the cap is min(60 s, heartbeat_interval)), so the retries reach the cap early and keep failing there
    # while states coalesce per agent.
    failed_before = wait_until(lambda: (w := sync_worker(agentd))["info"].get("last_sync") and w)["counters"]["sync_failed"]
    manager.stop()
    outage_began = time.monotonic()
    agentd.call("stop", {"ids": ["to-stop"]})
    agentd.call("start", {"ids": ["to-start"]})
    os.kill(old_crashy_pid, signal.SIGKILL)
    wait_until(lambda: agentd.status("crashy")["state"] == "running" and agentd.status("crashy")["pid"] not in (None, old_crashy_pid),
               timeout=30, message="crashy restarted with a new pid")
    agentd.wait_state("to-start", "running")
    during = wait_until(lambda: (w := sync_worker(agentd))["counters"]["sync_failed"] >= failed_before + 4 and w,
                        timeout=30, message="sync retries failing up to the backoff cap during the outage")
    assert during["info"]["connected"] == "no" and int(during["info"]["pending"]) >= 3
    assert during["info"]["last_error"]
    wait_until(lambda: time.monotonic() - outage_began >= 20, timeout=40, interval=0.5, message="20 s of Manager outage")
    final = agentd_states(agentd)
    assert final["to-stop"] == ("stopped", 0) and final["to-start"][0] == "running" and final["crashy"][0] == "running"

    reconnect_mark = time.time()
    manager.restart()
    wait_until(lambda: manager_matches(manager, agentd), timeout=30, message="the Manager to catch up after the outage")
    assert agentd_states(agentd) == final  # nothing moved meanwhile, so this is the state of the outage's end
    # Newest wins: what arrived after the outage is only the final state, never an intermediate one
    # (crashy went restarting -> starting -> running while the Manager was away).
    for agent_id, (state, pid) in final.items():
        after = [(h["status"], h["pid"]) for h in manager.state_history(NODE, agent_id) if h["received_at"] >= reconnect_mark]
        assert after and set(after) == {(state, pid)}, f"{agent_id}: received after the outage {after}"

    wait_until(lambda: sync_worker(agentd)["info"]["pending"] == "0", timeout=20, message="pending to drop to 0")
    result = agentd.agentctl("workers", "--json")
    assert result.returncode == 0, result.stderr
    sync = next(w for w in json.loads(result.stdout)["workers"] if w["name"] == "sync")
    # pending was 0 above; it is not asserted again: a full sync (every sync_interval, 2 s) may queue all meanwhile.
    assert sync["info"]["connected"] == "yes" and sync["info"]["last_sync"]
    assert sync["counters"]["sync_failed"] >= 4 and sync["counters"]["sync_ok"] >= 2
    assert sync["restarts"] == 0


def test_refused_syncs_are_retried_until_accepted(agentd, tmp_path):
    manager = Manager(tmp_path / "manager.db", fail_sync=3)
    try:
        start_agentd(agentd, [agentd.helper_agent("solo", "well-behaved")], manager.address)
        agentd.wait_state("solo", "running")
        wait_until(lambda: manager_matches(manager, agentd), timeout=30, message="solo accepted after three refusals")
        # Counters travel with the worker's liveness beat, once a second.
        worker = wait_until(lambda: (w := sync_worker(agentd))["counters"].get("sync_ok", 0) >= 1 and w, timeout=30)
        assert worker["counters"]["sync_failed"] == 3
        assert "injected failure" in worker["info"]["last_error"]
    finally:
        manager.stop()


def test_sync_worker_killed_with_9_is_respawned_and_loses_nothing(agentd, manager):
    start_agentd(agentd, [agentd.helper_agent("one", "well-behaved"), agentd.helper_agent("two", "well-behaved")], manager.address)
    agentd.wait_state("one", "running")
    agentd.wait_state("two", "running")
    wait_until(lambda: manager_matches(manager, agentd), timeout=30, message="initial states in the Manager")
    old = sync_worker(agentd)
    os.kill(old["pid"], signal.SIGKILL)
    # Changed while no sync worker listens to the state feed: only the new worker's snapshot can carry it.
    agentd.call("stop", {"ids": ["two"], "wait": False})
    agentd.wait_state("two", "stopped")
    wait_until(lambda: (w := sync_worker(agentd))["pid"] not in (None, old["pid"]) and w["state"] == "running",
               timeout=30, message="the sync worker respawned")
    wait_until(lambda: manager_matches(manager, agentd), timeout=30, message="the stop to reach the Manager")
    assert manager.states()["two"]["status"] == "stopped"
    new = sync_worker(agentd)
    assert new["restarts"] == 1 and "SIGKILL" in (new["last_exit"] or "")


def test_missing_tls_file_refuses_agentd_start(agentd, manager):
    """docs/manager-link.md: a configured certificate file that is missing is a start-up error."""
    missing = agentd.base / "no-such-ca.pem"
    agentd.write_config([agentd.helper_agent("solo", "well-behaved")], daemon={"id": NODE},
                        manager=manager_section(manager.address, tls={"enabled": True, "ca_file": str(missing)}))
    result = subprocess.run([sys.executable, "-m", "supervisor.parent.agentd_cli", "run", "-c", str(agentd.config_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"manager.tls.ca_file: {missing} does not exist" in result.stderr
    assert manager.nodes() == [] and manager.states() == {}  # never a plaintext fallback


def test_tls_file_vanishing_later_stops_only_the_sync_worker(agentd, manager):
    ca = agentd.base / "ca.pem"
    ca.write_text("not a certificate yet\n")
    start_agentd(agentd, [agentd.helper_agent("solo", "well-behaved")], manager.address,
                 tls={"enabled": True, "ca_file": str(ca)})
    agentd.wait_state("solo", "running")
    ca.unlink()
    first = sync_worker(agentd)
    if first["pid"]:
        os.kill(first["pid"], signal.SIGKILL)
    worker = wait_until(lambda: (w := sync_worker(agentd))["last_exit"] == "exit code 2" and w, timeout=60, message="the sync worker to exit 2")
    table = agentd.agentctl("workers")
    assert table.returncode == 0 and "last exit: exit code 2" in table.stdout
    assert f"manager.tls.ca_file: cannot read {ca}: No such file or directory" in agentd.log_text()
    assert agentd.call("ping") is not None and agentd.status("solo")["state"] == "running"
    assert manager.nodes() == [] and manager.states() == {}  # never a plaintext fallback
    del worker


def test_shutdown_with_stop_agents_reports_the_final_stops_to_the_manager(agentd, manager):
    """Regression: workers used to stop before the agents, so the Manager never heard of the stops."""
    start_agentd(agentd, [agentd.helper_agent("solo", "well-behaved")], manager.address)
    agentd.wait_state("solo", "running")
    wait_until(lambda: manager.states().get("solo", {}).get("status") == "running", timeout=30)
    assert agentd.agentctl("shutdown", "--stop-agents").returncode == 0
    agentd.proc.wait(timeout=60)
    assert manager.states()["solo"]["status"] == "stopped"


def test_mtls_with_a_server_name_override(agentd, tmp_path):
    # The Manager's certificate names only manager.test while we dial 127.0.0.1: server_name must be used.
    server_cert, server_key = make_cert(tmp_path, "server", "DNS:manager.test")
    client_cert, client_key = make_cert(tmp_path, "client", "DNS:node.test")
    mgr = dev_manager.DevManager(tmp_path / "manager.db", out=io.StringIO())
    _server, port = mgr.serve("127.0.0.1:0", dev_manager.TLSFiles(str(server_cert), str(server_key), client_ca=str(client_cert)))
    try:
        tls = {"enabled": True, "ca_file": str(server_cert), "cert_file": str(client_cert), "key_file": str(client_key),
               "server_name": "manager.test"}
        start_agentd(agentd, [agentd.helper_agent("solo", "well-behaved")], f"127.0.0.1:{port}", tls=tls)
        agentd.wait_state("solo", "running")
        wait_until(lambda: mgr.latest_states(NODE).get("solo", {}).get("status") == "running", timeout=30,
                   message="solo's state over mTLS")
        assert [n["node_id"] for n in mgr.nodes()] == [NODE]
        assert sync_worker(agentd)["info"]["tls"] == "mtls"
    finally:
        mgr.stop(grace=0)



def test_a_manager_that_never_answers_costs_only_deadlines(agentd):
    release = threading.Event()

    class Stuck(manager_pb2_grpc.ManagerServiceServicer):
        # A Manager that accepts every call and hangs. Every call, not only RegisterNode: metrics go out on their own
        # schedule, and an UNIMPLEMENTED answer to one of them once overwrote the last error this test reads.
        def RegisterNode(self, request, context):
            release.wait(30)
            return manager_pb2.RegisterNodeResponse(success=True)

        def Heartbeat(self, request, context):
            release.wait(30)
            return manager_pb2.HeartbeatResponse(success=True)

        def ReportMetrics(self, request, context):
            release.wait(30)
            return manager_pb2.ReportMetricsResponse(success=True)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))  # room for every call left hanging
    manager_pb2_grpc.add_ManagerServiceServicer_to_server(Stuck(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        start_agentd(agentd, [agentd.helper_agent("solo", "well-behaved")], f"127.0.0.1:{port}", timeout=0.5)
        agentd.wait_state("solo", "running")
        worker = wait_until(lambda: (w := sync_worker(agentd))["counters"].get("register_failed", 0) >= 2 and w, timeout=30,
                            message="registrations timing out")
        assert re.fullmatch(r"(RegisterNode|ReportMetrics): DEADLINE_EXCEEDED.*", worker["info"]["last_error"])
        assert worker["info"]["connected"] == "no" and worker["info"]["registered"] == "no"
        assert "RegisterNode: DEADLINE_EXCEEDED" in agentd.log_text()
        assert worker["restarts"] == 0 and worker["last_beat_age_s"] < 10  # still beating (the pool kills at 10 s of silence)
        agentd.call("stop", {"ids": ["solo"]})  # agentd itself is unaffected
    finally:
        release.set()
        server.stop(0)
