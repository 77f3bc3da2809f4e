"""The Manager API worker over real gRPC on loopback, driving a real agentd: list, operate, metrics, auth, refusals."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

from supervisor.config import ManagerAPISettings, TLSSettings
from supervisor.proto import daemon_pb2, daemon_pb2_grpc
from tests.support.daemon import TestDaemon, processes_tagged
from tests.support.wait import wait_until
from tests.test_sync_worker import make_cert
from workers.manager_api import StartupError, check_exposure

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "t0ken-for-tests"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
RPC_TIMEOUT = 10


@pytest.fixture(scope="module")
def api():
    """One agentd with the API on a free loopback port, shared by this module's tests (each uses its own agents)."""
    d = TestDaemon()
    channel = None
    try:
        d.write_config(
            [d.helper_agent(name, "well-behaved") for name in ("listed", "ops", "sampled")],
            daemon={"id": "api-node"},
            resources={"interval": 0.5},
            manager_api={"listen": "127.0.0.1:0", "token": TOKEN},
        )
        d.start()

        def listen_address():
            worker = next(w for w in d.call("workers")["workers"] if w["name"] == "manager-api")
            return worker["info"].get("listen")

        listen = wait_until(listen_address, timeout=20, message="the manager-api worker to report its port")
        for name in ("listed", "ops", "sampled"):
            d.wait_state(name, "running")
        channel = grpc.insecure_channel(listen)
        yield SimpleNamespace(agentd=d, stub=daemon_pb2_grpc.DaemonServiceStub(channel), listen=listen)
    finally:
        if channel is not None:
            channel.close()
        d.cleanup()
        assert not processes_tagged(d.tag), "processes left behind"


def code_of(call, request, metadata=AUTH) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(request, metadata=metadata, timeout=RPC_TIMEOUT)
    return info.value.code()


def test_list_agents_reports_what_agentd_knows(api):
    response = api.stub.ListAgents(daemon_pb2.ListAgentsRequest(), metadata=AUTH, timeout=RPC_TIMEOUT)
    listed = {a.id: a for a in response.agents}
    status = {a["id"]: a for a in api.agentd.call("status")["agents"]}
    assert set(listed) == set(status)
    one = listed["listed"]
    assert one.type == "custom" and one.status == status["listed"]["state"] and one.pid == status["listed"]["pid"]
    assert abs(one.start_time - time.time()) < 120 and one.restart_count == status["listed"]["restarts"]
    assert one.last_heartbeat == 0  # this helper never heartbeats


def test_operate_agent_stop_start_restart_end_to_end(api):
    d = api.agentd

    def operate(operation: str) -> daemon_pb2.AgentOperationResponse:
        request = daemon_pb2.AgentOperationRequest(agent_id="ops", operation=operation)
        return api.stub.OperateAgent(request, metadata=AUTH, timeout=RPC_TIMEOUT)

    assert operate("stop").success
    assert d.wait_state("ops", "stopped")["operator_stopped"]
    assert operate("start").success
    pid = d.wait_state("ops", "running")["pid"]
    reply = operate("restart")
    assert reply.success and reply.error_message == ""
    wait_until(lambda: (st := d.status("ops"))["state"] == "running" and st["pid"] not in (None, pid), timeout=30,
               message="ops running again with a new pid")


def test_unknown_agent_or_operation_and_empty_ids_are_refused(api):
    op = api.stub.OperateAgent
    assert code_of(op, daemon_pb2.AgentOperationRequest(agent_id="nobody", operation="stop")) == grpc.StatusCode.NOT_FOUND
    assert code_of(op, daemon_pb2.AgentOperationRequest(agent_id="listed", operation="reboot")) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(op, daemon_pb2.AgentOperationRequest(agent_id="", operation="stop")) == grpc.StatusCode.INVALID_ARGUMENT
    metrics = api.stub.GetAgentMetrics
    assert code_of(metrics, daemon_pb2.AgentMetricsRequest(agent_id="nobody", duration_seconds=60)) == grpc.StatusCode.NOT_FOUND
    assert api.agentd.status("listed")["state"] == "running"  # nothing was done to it


@pytest.mark.parametrize("metadata", [None, (("authorization", "Bearer wrong"),), (("authorization", f"Basic {TOKEN}"),)],
                         ids=["no-token", "wrong-token", "wrong-scheme"])
def test_calls_without_the_right_token_are_unauthenticated(api, metadata):
    assert code_of(api.stub.ListAgents, daemon_pb2.ListAgentsRequest(), metadata) == grpc.StatusCode.UNAUTHENTICATED
    request = daemon_pb2.AgentOperationRequest(agent_id="listed", operation="stop")
    assert code_of(api.stub.OperateAgent, request, metadata) == grpc.StatusCode.UNAUTHENTICATED
    assert api.agentd.status("listed")["state"] == "running"


def test_the_other_methods_are_unimplemented(api):
    s = api.stub
    for call, request in [
        (s.Register, daemon_pb2.RegisterRequest(hostname="h")),
        (s.Heartbeat, daemon_pb2.HeartbeatRequest(node_id="n")),
        (s.ReportMetrics, daemon_pb2.MetricsRequest(node_id="n")),
        (s.GetConfig, daemon_pb2.ConfigRequest(node_id="n")),
        (s.PushUpdate, daemon_pb2.UpdateRequest(node_id="n")),
        (s.SyncAgentStates, daemon_pb2.SyncAgentStatesRequest(node_id="n")),
    ]:
        assert code_of(call, request) == grpc.StatusCode.UNIMPLEMENTED


def test_get_agent_metrics_returns_the_resource_history(api):
    request = daemon_pb2.AgentMetricsRequest(agent_id="sampled", duration_seconds=300)

    def points():
        response = api.stub.GetAgentMetrics(request, metadata=AUTH, timeout=RPC_TIMEOUT)
        assert response.agent_id == "sampled"
        return [p for p in response.data_points if p.memory_rss > 0] if len(response.data_points) >= 2 else []

    data = wait_until(points, timeout=30, message="resource samples of 'sampled'")
    newest = data[-1]
    assert abs(newest.timestamp - time.time()) < 60
    assert newest.memory_vms >= newest.memory_rss > 0 and newest.open_files > 0 and newest.cpu >= 0
    assert [p.timestamp for p in data] == sorted(p.timestamp for p in data)
    workers = {w["name"]: w for w in api.agentd.call("workers")["workers"]}
    assert workers["manager-api"]["info"]["auth"] == "token" and workers["manager-api"]["info"]["listen"] == api.listen


def _run_worker(tmp_path: Path, settings: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "workers.manager_api", "--run-dir", str(tmp_path), "--settings", json.dumps(settings)],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )


def test_refuses_to_start_when_exposed_or_when_tls_files_are_missing(tmp_path):
    exposed = _run_worker(tmp_path, {"manager_api": {"listen": "0.0.0.0:0"}, "node_id": "n"})
    assert exposed.returncode == 2 and "is not loopback" in exposed.stderr
    missing = tmp_path / "missing-cert.pem"
    tls = {"enabled": True, "cert_file": str(missing), "key_file": str(missing)}
    no_files = _run_worker(tmp_path, {"manager_api": {"listen": "127.0.0.1:0", "tls": tls}, "node_id": "n"})
    assert no_files.returncode == 2
    assert f"manager_api.tls.cert_file: cannot read {missing}: No such file or directory" in no_files.stderr
    # The start-up check repeats the config rule, for settings that did not come through validation.
    with pytest.raises(StartupError, match="not loopback"):
        check_exposure(ManagerAPISettings.model_construct(listen="0.0.0.0:1", token=None, tls=TLSSettings()))
    check_exposure(ManagerAPISettings.model_construct(listen="0.0.0.0:1", token="x", tls=TLSSettings()))


def test_serves_tls_when_configured(tmp_path):
    cert, key = make_cert(tmp_path, "api", "IP:127.0.0.1")
    with socket.socket() as probe:  # the worker reports a port-0 choice only to its parent: pick one here
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = {"manager_api": {"listen": f"127.0.0.1:{port}", "token": TOKEN,
                                "tls": {"enabled": True, "cert_file": str(cert), "key_file": str(key)}}}
    # Standalone, without a parent: enough for a call that needs no control verb.
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.manager_api", "--run-dir", str(tmp_path), "--settings", json.dumps(settings)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            stub = daemon_pb2_grpc.DaemonServiceStub(channel)

            def answered():
                try:
                    stub.GetConfig(daemon_pb2.ConfigRequest(), metadata=AUTH, timeout=1)
                except grpc.RpcError as exc:
                    return exc.code() if exc.code() != grpc.StatusCode.UNAVAILABLE else None

            assert wait_until(answered, timeout=30, message="a TLS answer") == grpc.StatusCode.UNIMPLEMENTED
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            plain = daemon_pb2_grpc.DaemonServiceStub(channel)
            assert code_of(plain.GetConfig, daemon_pb2.ConfigRequest()) == grpc.StatusCode.UNAVAILABLE
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0, proc.stderr.read()
