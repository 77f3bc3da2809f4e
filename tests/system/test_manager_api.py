"""The Manager API worker over real gRPC on loopback, driving a real agentd: list, operate, metrics, auth, refusals."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.config.manager_sections import ManagerAPISettings, TLSSettings
from supervisor.wire.proto import daemon_pb2, daemon_pb2_grpc
from tests.support.daemon import TestDaemon, processes_tagged
from tests.support.wait import wait_until
from tests.system.test_sync_worker import make_cert
from workers.manager_api import StartupError, check_exposure

ROOT = Path(__file__).resolve().parents[2]
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


def test_serves_tls_when_configured(tmp_path, standalone):
    cert, key = make_cert(tmp_path, "api", "IP:127.0.0.1")
    api = standalone(token=TOKEN, tls={"enabled": True, "cert_file": str(cert), "key_file": str(key)})
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{api.port}", credentials) as channel:
        assert api.answer(channel, AUTH) == grpc.StatusCode.UNIMPLEMENTED
    with grpc.insecure_channel(f"127.0.0.1:{api.port}") as channel:
        plain = daemon_pb2_grpc.DaemonServiceStub(channel)
        assert code_of(plain.GetConfig, daemon_pb2.ConfigRequest()) == grpc.StatusCode.UNAVAILABLE
    api.stop()


# ------------------------------------------------------------------------------------------- the original Manager's way in


def _free_port() -> int:
    with socket.socket() as probe:  # the worker reports a port-0 choice only to its parent: pick one here
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class StandaloneAPI:
    """The manager-api worker on its own (no parent): enough for calls that are refused or UNIMPLEMENTED."""

    def __init__(self, tmp_path: Path, listen_host: str = "127.0.0.1", **api) -> None:
        self.port = _free_port()
        settings = {"manager_api": {"listen": f"{listen_host}:{self.port}", **api}}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workers.manager_api", "--run-dir", str(tmp_path), "--settings", json.dumps(settings)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )

    def answer(self, channel, metadata=None) -> grpc.StatusCode:
        stub = daemon_pb2_grpc.DaemonServiceStub(channel)

        def answered():
            try:
                stub.GetConfig(daemon_pb2.ConfigRequest(), metadata=metadata, timeout=1)
            except grpc.RpcError as exc:
                return exc.code() if exc.code() != grpc.StatusCode.UNAVAILABLE else None

        return wait_until(answered, timeout=30, message="an answer from the manager-api worker")

    def stop(self) -> str:
        self.proc.terminate()
        code = self.proc.wait(timeout=10)
        err = self.proc.stderr.read()
        assert code == 0, err
        return err


@pytest.fixture
def standalone(tmp_path):
    started: list[StandaloneAPI] = []

    def start(**kw) -> StandaloneAPI:
        api = StandaloneAPI(tmp_path, **kw)
        started.append(api)
        return api

    yield start
    for api in started:
        if api.proc.poll() is None:
            api.proc.kill()
            api.proc.wait(timeout=10)


def test_plaintext_without_a_token_on_all_interfaces_serves_only_allow_from(standalone):
    # The original Manager's way: 0.0.0.0, no token, no TLS, stated as insecure and limited to its address.
    allowed = standalone(listen_host="0.0.0.0", insecure=True, allow_from=["127.0.0.0/8"])
    denied = standalone(listen_host="0.0.0.0", insecure=True, allow_from=["192.0.2.0/24", "2001:db8::/32"])
    with grpc.insecure_channel(f"127.0.0.1:{allowed.port}") as channel:
        assert allowed.answer(channel) == grpc.StatusCode.UNIMPLEMENTED
    with grpc.insecure_channel(f"127.0.0.1:{denied.port}") as channel:
        assert denied.answer(channel) == grpc.StatusCode.PERMISSION_DENIED
    assert "insecure: plaintext without a token" in allowed.stop()
    denied.stop()


def test_allow_from_applies_before_the_token(standalone):
    api = standalone(token=TOKEN, allow_from=["192.0.2.7/32"])
    with grpc.insecure_channel(f"127.0.0.1:{api.port}") as channel:
        assert api.answer(channel, AUTH) == grpc.StatusCode.PERMISSION_DENIED
    api.stop()


@pytest.mark.parametrize("min_ping_interval, survives", [(0.5, True), (10, False)], ids=["accepting", "default-vs-1s"])
def test_keepalive_pings_between_calls_keep_the_connection(standalone, min_ping_interval, survives):
    """A client pinging every second while idle, as the Manager does every 45 s against the default 10 s floor.
    With the floor above the ping rate, the server's GOAWAY too_many_pings shows the check bites."""
    api = standalone(min_ping_interval=min_ping_interval, token=TOKEN)
    states: list[str] = []
    options = [("grpc.keepalive_time_ms", 1000), ("grpc.keepalive_timeout_ms", 5000),
               ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)]
    with grpc.insecure_channel(f"127.0.0.1:{api.port}", options=options) as channel:
        channel.subscribe(lambda state: states.append(state.name), try_to_connect=False)
        assert api.answer(channel, AUTH) == grpc.StatusCode.UNIMPLEMENTED
        ready = states.index("READY")
        if survives:
            time.sleep(6)
            assert states[ready:] == ["READY"], states
        else:
            wait_until(lambda: "IDLE" in states[ready:] or "TRANSIENT_FAILURE" in states[ready:], timeout=20,
                       message="the GOAWAY of a server that refuses pings this frequent")
    api.stop()


def test_the_defaults_accept_the_original_manager_s_45_s_pings():
    from workers.manager_api import server_options

    options = dict(server_options(ManagerAPISettings()))
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.http2.min_ping_interval_without_data_ms"] * 4 <= 45_000  # a wide margin below 45 s


def test_insecure_needs_allow_from_and_is_warned_about(tmp_path):
    from supervisor.config.errors import ConfigError
    from supervisor.config.loading import load_config

    path = tmp_path / "agentd.yaml"
    path.write_text("manager_api: {listen: '0.0.0.0:9091', insecure: true}\n")
    with pytest.raises(ConfigError, match="insecure: true needs allow_from"):
        load_config(path)
    path.write_text("manager_api: {listen: '0.0.0.0:9091', insecure: true, allow_from: ['10.0.0.5', '10.8.0.0/16']}\n")
    checked = subprocess.run([sys.executable, "-m", "supervisor.parent.agentd_cli", "check-config", str(path)],
                             cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    assert ("warning: manager_api is insecure: plaintext without a token on 0.0.0.0:9091; whoever can connect from"
            " 10.0.0.5/32, 10.8.0.0/16 can list, start and stop every agent") in checked.stderr
    assert "warning: manager_api.allow_from admits whole networks (10.8.0.0/16)" in checked.stderr
    path.write_text("manager_api: {listen: '0.0.0.0:9091', insecure: true, allow_from: ['10.0.0.5', '0.0.0.0/0']}\n")
    assert "manager_api.allow_from admits whole networks (0.0.0.0/0)" in " ".join(load_config(path).warnings)
    path.write_text("manager_api: {listen: '0.0.0.0:9091', insecure: true, allow_from: ['10.0.0.5/8']}\n")
    with pytest.raises(ConfigError, match=r"allow_from\[0\]: invalid CIDR '10.0.0.5/8'"):
        load_config(path)
    for bad in ("0.0.0.0:0", "insecure"):  # the worker repeats the rule for settings that skipped validation
        with pytest.raises(StartupError):
            check_exposure(ManagerAPISettings.model_construct(
                listen=bad if ":" in bad else "0.0.0.0:1", token=None, tls=TLSSettings(), insecure=bad == "insecure",
                allow_from=[]))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_peer_strings_never_crash_the_filter(peer):
    from workers.manager_api import PeerFilter

    assert PeerFilter(["127.0.0.0/8"], Counter()).allowed(peer) in (True, False)


@settings(max_examples=300, deadline=None)
@given(st.ip_addresses(), st.integers(min_value=1, max_value=65535))
def test_peer_addresses_are_read_back_exactly(addr, port):
    from workers.manager_api import peer_ip

    peer = f"ipv4:{addr}:{port}" if addr.version == 4 else f"ipv6:[{addr}]:{port}"
    expected = addr.ipv4_mapped if addr.version == 6 and addr.ipv4_mapped is not None else addr
    assert peer_ip(peer) == expected


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=40), st.integers(), st.none(), st.ip_addresses().map(str)))
def test_allow_from_entries_are_a_cidr_or_a_one_line_error(entry):
    from pydantic import ValidationError

    try:
        parsed = ManagerAPISettings(allow_from=[entry]).allow_from[0]
    except ValidationError as exc:
        assert exc.error_count() == 1 and "\n" not in exc.errors()[0]["msg"]
    else:
        import ipaddress

        assert ipaddress.ip_network(parsed) == ipaddress.ip_network(str(entry).strip())
