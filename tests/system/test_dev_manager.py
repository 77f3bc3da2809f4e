"""The development Manager (examples/dev_manager.py): every method over real gRPC on loopback, SQLite, TLS and mTLS."""

from __future__ import annotations

import importlib.util
import io
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from supervisor.wire.proto import daemon_pb2, daemon_pb2_grpc, manager_pb2, manager_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
DEV_MANAGER = ROOT / "examples" / "dev_manager.py"
RPC_TIMEOUT = 5.0


def _load_dev_manager():
    """Import examples/dev_manager.py (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("dev_manager", DEV_MANAGER)
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class is being built.
    sys.modules["dev_manager"] = module
    spec.loader.exec_module(module)
    return module


dev_manager = _load_dev_manager()


class ManagerProcess:
    """examples/dev_manager.py as a subprocess on a free port, with its stdout read line by line."""

    def __init__(self, tmp_path: Path, *extra: str):
        self.db = tmp_path / "dev-manager.db"
        self.stderr_path = tmp_path / "dev-manager.stderr"
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        with open(self.stderr_path, "w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, str(DEV_MANAGER), "--listen", "127.0.0.1:0", "--db", str(self.db), *extra],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        threading.Thread(target=self._read, daemon=True).start()
        first = self.next_line(timeout=15)
        assert first.startswith("LISTENING 127.0.0.1:"), f"first line: {first!r}; stderr: {self.stderr()}"
        self.address = first.split()[1]

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def next_line(self, timeout: float = RPC_TIMEOUT) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output line within {timeout}s; so far: {self.output}") from None
        if line is None:
            raise AssertionError(f"dev manager exited; output: {self.output}; stderr: {self.stderr()}")
        self.output.append(line)
        return line

    def expect(self, text: str, timeout: float = RPC_TIMEOUT) -> str:
        """Read lines until one contains text; return it."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.next_line(timeout=max(0.05, deadline - time.monotonic()))
            if text in line:
                return line

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)


@pytest.fixture
def start_manager(tmp_path):
    """Starts dev managers as subprocesses; kills whatever is still running afterwards."""
    started: list[ManagerProcess] = []

    def start(*extra: str) -> ManagerProcess:
        mp = ManagerProcess(tmp_path, *extra)
        started.append(mp)
        return mp

    yield start
    for mp in started:
        mp.kill()


def _register(stub, node_id="n1", **labels):
    return stub.RegisterNode(
        manager_pb2.RegisterNodeRequest(
            node_id=node_id, hostname="host1", ip="10.1.2.3", os="linux", arch="x86_64",
            labels=labels, daemon_version="0.1.0", agent_version="",
        ),
        timeout=RPC_TIMEOUT,
    )


def _register_quick(stub):
    return stub.RegisterNode(manager_pb2.RegisterNodeRequest(node_id="x"), timeout=2)


def _state(agent_id, status, pid, **kw):
    return daemon_pb2.AgentState(agent_id=agent_id, status=status, pid=pid, **kw)


def test_every_method_over_loopback(start_manager):
    mp = start_manager("--fail-sync", "1", "--unknown-node-once")
    with grpc.insecure_channel(mp.address) as channel:
        mstub = manager_pb2_grpc.ManagerServiceStub(channel)
        dstub = daemon_pb2_grpc.DaemonServiceStub(channel)

        resp = mstub.Heartbeat(manager_pb2.HeartbeatRequest(node_id="n1", timestamp=1), timeout=RPC_TIMEOUT)
        assert (resp.success, resp.message) == (False, "unknown node")
        mp.expect("node n1 heartbeat refused: unknown node")

        assert _register(mstub, env="dev", rack="r1").success
        line = mp.expect("node n1 registered")
        assert line.startswith(
            "node n1 registered: host=host1, ip=10.1.2.3, os=linux/x86_64, labels={env=dev, rack=r1}"
        )

        # --unknown-node-once: the first heartbeat after registering is refused, the re-registration sticks.
        resp = mstub.Heartbeat(manager_pb2.HeartbeatRequest(node_id="n1", timestamp=2), timeout=RPC_TIMEOUT)
        assert (resp.success, resp.message) == (False, "unknown node")
        mp.expect("forgetting every node registration once")
        assert _register(mstub, env="dev", rack="r1").success
        mp.expect("node n1 re-registered")
        for ts in (3, 4):
            resp = mstub.Heartbeat(manager_pb2.HeartbeatRequest(node_id="n1", timestamp=ts), timeout=RPC_TIMEOUT)
            assert resp.success

        resp = mstub.ReportMetrics(
            manager_pb2.ReportMetricsRequest(
                node_id="n1",
                metrics=[
                    manager_pb2.MetricData(type="cpu", timestamp=10, values={"usage": 12.5}),
                    manager_pb2.MetricData(type="memory", timestamp=10, values={"used": 1024.0, "total": 4096.0}),
                ],
            ),
            timeout=RPC_TIMEOUT,
        )
        assert resp.success
        assert mp.expect("node n1 metrics:") == "node n1 metrics: cpu{usage=12.5} memory{total=4096, used=1024}"

        # --fail-sync 1: the first sync is refused and not recorded.
        first = daemon_pb2.SyncAgentStatesRequest(node_id="n1", states=[_state("web", "running", 123)])
        assert not dstub.SyncAgentStates(first, timeout=RPC_TIMEOUT).success
        mp.expect("refused on purpose")
        assert dstub.SyncAgentStates(first, timeout=RPC_TIMEOUT).success
        assert mp.expect("n1/web:") == "n1/web: new -> running (pid 123)"

        stopped = daemon_pb2.SyncAgentStatesRequest(
            node_id="n1",
            states=[
                _state("web", "stopped", 0, last_heartbeat=50),
                _state("db", "running", 77, type="custom", version="2"),
            ],
        )
        assert dstub.SyncAgentStates(stopped, timeout=RPC_TIMEOUT).success
        changes = {mp.next_line(), mp.next_line()}
        assert changes == {
            "n1/web: running -> stopped (pid 123)",
            "n1/db: new -> running (pid 77), type custom, version 2",
        }
        # The same states again: recorded in the history, but nothing changed, so nothing is printed.
        assert dstub.SyncAgentStates(stopped, timeout=RPC_TIMEOUT).success

        with pytest.raises(grpc.RpcError) as err:
            dstub.SyncAgentStates(daemon_pb2.SyncAgentStatesRequest(node_id=""), timeout=RPC_TIMEOUT)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        unimplemented = [
            (dstub.Register, daemon_pb2.RegisterRequest()),
            (dstub.Heartbeat, daemon_pb2.HeartbeatRequest()),
            (dstub.ReportMetrics, daemon_pb2.MetricsRequest()),
            (dstub.GetConfig, daemon_pb2.ConfigRequest()),
            (dstub.PushUpdate, daemon_pb2.UpdateRequest()),
            (dstub.ListAgents, daemon_pb2.ListAgentsRequest()),
            (dstub.OperateAgent, daemon_pb2.AgentOperationRequest(agent_id="web", operation="stop")),
            (dstub.GetAgentMetrics, daemon_pb2.AgentMetricsRequest(agent_id="web")),
        ]
        for method, request in unimplemented:
            with pytest.raises(grpc.RpcError) as err:
                method(request, timeout=RPC_TIMEOUT)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED, method

    # Read the database while the server still runs (WAL), through the library's query helpers.
    db = dev_manager.DevManager(mp.db, out=io.StringIO())
    try:
        [node] = db.nodes()
        assert node["node_id"] == "n1" and node["registrations"] == 2
        assert node["labels"] == {"env": "dev", "rack": "r1"}
        assert (node["hostname"], node["ip"], node["os"], node["arch"]) == ("host1", "10.1.2.3", "linux", "x86_64")
        assert db.heartbeats("n1") == 2
        assert [(m["type"], m["timestamp"], m["values"]) for m in db.metrics("n1")] == [
            ("cpu", 10, {"usage": 12.5}),
            ("memory", 10, {"used": 1024.0, "total": 4096.0}),
        ]
        latest = db.latest_states("n1")
        assert set(latest) == {"web", "db"}
        assert {k: latest["web"][k] for k in ("status", "pid", "last_heartbeat")} == {
            "status": "stopped", "pid": 0, "last_heartbeat": 50,
        }
        assert (latest["db"]["type"], latest["db"]["version"]) == ("custom", "2")
        history = db.state_history("n1", "web")
        assert [(h["status"], h["pid"]) for h in history] == [("running", 123), ("stopped", 0), ("stopped", 0)]
        assert all(h["received_at"] > 0 for h in history)
    finally:
        db.close()

    mp.proc.send_signal(signal.SIGTERM)
    assert mp.proc.wait(timeout=10) == 0
    mp.expect("stopped")


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for localhost/127.0.0.1 (its own CA) and its key; skip without a way to make one."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    try:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("neither the cryptography package nor the openssl CLI is available to make a certificate")
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
             "-addext", "basicConstraints=critical,CA:TRUE"],
            check=True, capture_output=True, timeout=30,
        )
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key


def test_tls_subprocess(start_manager, tmp_path):
    cert, key = _self_signed(tmp_path, "server")
    mp = start_manager("--tls-cert", str(cert), "--tls-key", str(key))
    mp.expect("serving TLS")
    creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with grpc.secure_channel(mp.address, creds) as channel:
        assert _register(manager_pb2_grpc.ManagerServiceStub(channel)).success
    mp.expect("node n1 registered")
    with grpc.insecure_channel(mp.address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            _register_quick(manager_pb2_grpc.ManagerServiceStub(channel))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE



def test_mtls_in_process(tmp_path):
    server_cert, server_key = _self_signed(tmp_path, "server")
    client_cert, client_key = _self_signed(tmp_path, "client")
    out = io.StringIO()
    mgr = dev_manager.DevManager(tmp_path / "m.db", out=out)
    tls = dev_manager.TLSFiles(str(server_cert), str(server_key), client_ca=str(client_cert))
    _, port = mgr.serve("127.0.0.1:0", tls)
    try:
        address = f"127.0.0.1:{port}"
        anonymous = grpc.ssl_channel_credentials(root_certificates=server_cert.read_bytes())
        with grpc.secure_channel(address, anonymous) as channel:
            with pytest.raises(grpc.RpcError):
                _register_quick(manager_pb2_grpc.ManagerServiceStub(channel))
        with_client_cert = grpc.ssl_channel_credentials(
            root_certificates=server_cert.read_bytes(),
            private_key=client_key.read_bytes(),
            certificate_chain=client_cert.read_bytes(),
        )
        with grpc.secure_channel(address, with_client_cert) as channel:
            assert _register(manager_pb2_grpc.ManagerServiceStub(channel), node_id="n2").success
        assert [n["node_id"] for n in mgr.nodes()] == ["n2"]
        assert "node n2 registered: host=host1" in out.getvalue()
    finally:
        mgr.stop(grace=0)


def test_missing_tls_file_is_an_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(DEV_MANAGER), "--listen", "127.0.0.1:0", "--db", str(tmp_path / "x.db"),
         "--tls-cert", str(tmp_path / "nope.crt"), "--tls-key", str(tmp_path / "nope.key")],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2
    assert "--tls-cert: no such file" in proc.stderr
    assert "LISTENING" not in proc.stdout


def test_reads_and_stores_metrics_as_the_original_manager_does(tmp_path):
    """The overview keys of the newest row per type, 0 when absent; batches its MySQL storage would refuse."""
    mgr = dev_manager.DevManager(tmp_path / "m.db", out=io.StringIO())
    try:
        def report(*metrics):
            return mgr.report_metrics(manager_pb2.ReportMetricsRequest(node_id="n1", metrics=list(metrics)))

        assert mgr.overview("n1") == dict.fromkeys(dev_manager.OVERVIEW_KEYS, 0.0)
        # The keys agentd used to send read as zero: the Manager's overview knows only the original's keys.
        assert report(manager_pb2.MetricData(type="cpu", timestamp=5, values={"percent": 50.0})).success
        assert mgr.overview("n1")["cpu_usage"] == 0
        assert report(
            manager_pb2.MetricData(type="cpu", timestamp=20, values={"usage_percent": 12.5}),
            manager_pb2.MetricData(type="memory", timestamp=20, values={"usage_percent": 40.0, "total_bytes": 8e9}),
            manager_pb2.MetricData(type="network", timestamp=20, values={"rx_bytes": 10.0, "tx_bytes": 20.0}),
        ).success
        assert report(manager_pb2.MetricData(type="cpu", timestamp=10, values={"usage_percent": 99.0})).success  # older
        ov = mgr.overview("n1")
        assert (ov["cpu_usage"], ov["memory_usage"], ov["memory_total"]) == (12.5, 40.0, 8e9)
        assert (ov["network_rx"], ov["network_tx"], ov["disk_usage"]) == (10.0, 20.0, 0.0)
        assert "node n1 overview: cpu 12.5%, memory 40.0% of 7.5 GiB" in mgr._out.getvalue()

        rows = len(mgr.metrics("n1"))
        too_long = report(manager_pb2.MetricData(type="cpu", timestamp=30, values={"usage_percent": 1.0}),
                          manager_pb2.MetricData(type="x" * 21, timestamp=30, values={}))
        assert not too_long.success and "longer than 20" in too_long.message
        nan = report(manager_pb2.MetricData(type="cpu", timestamp=30, values={"usage_percent": float("nan")}))
        assert not nan.success and "usage_percent" in nan.message
        assert len(mgr.metrics("n1")) == rows  # a refused batch stores nothing
    finally:
        mgr.close()


def test_a_lost_node_is_recreated_as_unknown_by_its_heartbeat(tmp_path):
    mgr = dev_manager.DevManager(tmp_path / "m.db", out=io.StringIO())
    try:
        beat = manager_pb2.HeartbeatRequest(node_id="n1", timestamp=1)
        assert mgr.heartbeat(beat).success  # never registered: created, as the real Manager does
        [node] = mgr.nodes()
        assert (node["hostname"], node["ip"], node["arch"], node["registrations"]) == ("unknown",) * 3 + (0,)
        assert mgr.register_node(manager_pb2.RegisterNodeRequest(node_id="n1", hostname="h", ip="10.0.0.1", arch="amd64")).success
        assert mgr.nodes()[0]["hostname"] == "h"
        mgr.forget_node("n1")
        assert mgr.nodes() == []
        assert mgr.heartbeat(beat).success and mgr.nodes()[0]["hostname"] == "unknown"
        assert "heartbeat from an unknown node: created it with unknown facts" in mgr._out.getvalue()
    finally:
        mgr.close()
    refusing = dev_manager.DevManager(tmp_path / "r.db", out=io.StringIO(), refuse_unknown=True)
    try:
        resp = refusing.heartbeat(manager_pb2.HeartbeatRequest(node_id="n2", timestamp=1))
        assert (resp.success, resp.message) == (False, "unknown node") and refusing.nodes() == []
    finally:
        refusing.close()


def test_statuses_the_manager_cannot_show_are_pointed_out(tmp_path):
    mgr = dev_manager.DevManager(tmp_path / "m.db", out=io.StringIO())
    try:
        request = daemon_pb2.SyncAgentStatesRequest(node_id="n1", states=[_state("a", "removed", 0), _state("b", "failed", 0)])
        assert mgr.sync_agent_states(request).success
        out = mgr._out.getvalue()
        assert "n1/a: status 'removed' is not one the Manager can show" in out and "n1/b: status" not in out
    finally:
        mgr.close()
