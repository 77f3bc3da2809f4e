#!/usr/bin/env python3
"""A development Manager: the Manager side of docs/manager-link.md, recording what it receives in SQLite.

It behaves as the original project's Manager does where agentd can tell (docs/manager.md): it reads node
metrics by the original daemon's keys, re-creates a lost node as "unknown" on its next heartbeat, and dials
the node API at `<registered ip>:<daemon port>` in plaintext, without a token, pinging every 45 s.

Run `python examples/dev_manager.py --help`; its first stdout line is "LISTENING host:port".
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sqlite3
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

# Run as a script, sys.path[0] is examples/: put this checkout's root first so its supervisor package is used.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import grpc  # noqa: E402

from supervisor.wire.proto import daemon_pb2, daemon_pb2_grpc, manager_pb2, manager_pb2_grpc  # noqa: E402

UNKNOWN_NODE = "unknown node"
UNKNOWN = "unknown"  # the Manager's placeholder for the facts of a node it re-creates from a heartbeat
# How the original Manager dials a node's DaemonService (manager/internal/grpc/daemon_client.go).
DAEMON_PORT = 9091
KEEPALIVE_SECONDS = 45.0
KEEPALIVE_TIMEOUT_SECONDS = 15.0
LIST_TIMEOUT = 30.0
OPERATE_TIMEOUT = 90.0
METRIC_TYPE_MAX = 20  # the Manager's metrics.type column is VARCHAR(20): a longer type fails the whole batch
# Agent statuses the Manager's UI has a colour for; anything else shows as an unknown grey badge.
AGENT_STATUSES = frozenset({"running", "stopped", "error", "failed", "starting", "stopping", "restarting"})
# The Manager's cluster overview: per node, these keys of the latest row of each type, 0 when missing.
OVERVIEW_KEYS = {
    "cpu_usage": ("cpu", "usage_percent"), "memory_usage": ("memory", "usage_percent"),
    "memory_total": ("memory", "total_bytes"), "disk_usage": ("disk", "usage_percent"),
    "disk_total": ("disk", "total_bytes"), "network_rx": ("network", "rx_bytes"), "network_tx": ("network", "tx_bytes"),
}
# What the Manager writes into an agent's row after a successful OperateAgent, before any sync.
EXPECTED_AFTER = {"start": "running", "stop": "stopped", "restart": "running"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    ip TEXT NOT NULL,
    os TEXT NOT NULL,
    arch TEXT NOT NULL,
    labels TEXT NOT NULL,
    daemon_version TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    first_registered REAL NOT NULL,
    last_registered REAL NOT NULL,
    registrations INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS node_heartbeats (
    id INTEGER PRIMARY KEY,
    node_id TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    accepted INTEGER NOT NULL,
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS metrics (
    id INTEGER PRIMARY KEY,
    node_id TEXT NOT NULL,
    type TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    values_json TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS agent_states (
    node_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    status TEXT NOT NULL,
    pid INTEGER NOT NULL,
    last_heartbeat INTEGER NOT NULL,
    type TEXT NOT NULL,
    version TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (node_id, agent_id)
);
CREATE TABLE IF NOT EXISTS agent_state_history (
    id INTEGER PRIMARY KEY,
    node_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    status TEXT NOT NULL,
    pid INTEGER NOT NULL,
    last_heartbeat INTEGER NOT NULL,
    type TEXT NOT NULL,
    version TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS agent_state_history_node ON agent_state_history (node_id, agent_id, id);
"""

STATE_COLUMNS = ("status", "pid", "last_heartbeat", "type", "version")


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for serving TLS; with client_ca set, clients must present a certificate it signed (mTLS)."""

    cert: str
    key: str
    client_ca: str | None = None


def _labels_text(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}"


def _pid_text(old_pid: int, new_pid: int) -> str:
    # A stopped agent reports pid 0; naming the pid that went away is what a reader wants to see.
    if old_pid and new_pid and old_pid != new_pid:
        return f" (pid {old_pid} -> {new_pid})"
    pid = new_pid or old_pid
    return f" (pid {pid})" if pid else ""


class DevManager:
    """The recording Manager: one SQLite file, thread-safe, usable in-process or through main()."""

    def __init__(
        self,
        db_path: str | Path,
        *,
        fail_sync: int = 0,
        unknown_node_once: bool = False,
        refuse_unknown: bool = False,
        daemon_port: int = DAEMON_PORT,
        keepalive: float = KEEPALIVE_SECONDS,
        out: TextIO | None = None,
    ):
        self.db_path = str(db_path)
        self._out = out if out is not None else sys.stdout
        self._lock = threading.Lock()
        self._out_lock = threading.Lock()
        # One connection shared by the server threads under _lock; WAL lets other processes read meanwhile.
        self._db = sqlite3.connect(self.db_path, check_same_thread=False, timeout=5.0)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._db.commit()
        # Like the real Manager, nodes registered before a restart are still known.
        self._registered = {row["node_id"] for row in self._db.execute("SELECT node_id FROM nodes")}
        self._fail_sync_left = fail_sync
        self._forget_pending = unknown_node_once
        # The real Manager re-creates an unknown node from its heartbeat; refusing instead is for other Managers.
        self._refuse_unknown = refuse_unknown or unknown_node_once
        self.daemon_port = daemon_port
        self.keepalive = keepalive
        self._channels: dict[str, tuple[str, grpc.Channel]] = {}  # node_id -> (address, channel)
        self._channel_states: dict[str, list[str]] = {}
        self._server: grpc.Server | None = None

    # -- output -------------------------------------------------------------------------------------

    def say(self, line: str) -> None:
        """Print one line and flush it, so a reader on a pipe sees it at once."""
        with self._out_lock:
            self._out.write(line + "\n")
            self._out.flush()

    # -- ManagerService -----------------------------------------------------------------------------

    def register_node(self, req: manager_pb2.RegisterNodeRequest) -> manager_pb2.RegisterNodeResponse:
        """Record a node registration (insert or refresh)."""
        if not req.node_id:
            return manager_pb2.RegisterNodeResponse(success=False, message="node_id is required")
        now = time.time()
        labels = dict(req.labels)
        with self._lock, self._db:
            row = self._db.execute("SELECT registrations FROM nodes WHERE node_id = ?", (req.node_id,)).fetchone()
            count = (row["registrations"] if row else 0) + 1
            self._db.execute(
                "INSERT INTO nodes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (node_id) DO UPDATE SET"
                " hostname = excluded.hostname, ip = excluded.ip, os = excluded.os, arch = excluded.arch,"
                " labels = excluded.labels, daemon_version = excluded.daemon_version,"
                " agent_version = excluded.agent_version, last_registered = excluded.last_registered,"
                " registrations = excluded.registrations",
                (req.node_id, req.hostname, req.ip, req.os, req.arch, json.dumps(labels, sort_keys=True),
                 req.daemon_version, req.agent_version, now, now, count),
            )
            self._registered.add(req.node_id)
        verb = "registered" if count == 1 else f"re-registered (#{count})"
        self.say(
            f"node {req.node_id} {verb}: host={req.hostname}, ip={req.ip}, os={req.os}/{req.arch},"
            f" labels={_labels_text(labels)}, daemon={req.daemon_version or '-'}, agent={req.agent_version or '-'}"
        )
        return manager_pb2.RegisterNodeResponse(success=True, message="node registered")

    def heartbeat(self, req: manager_pb2.HeartbeatRequest) -> manager_pb2.HeartbeatResponse:
        """Accept a node heartbeat. An unknown node is re-created with "unknown" facts and accepted, as the
        real Manager does; with refuse_unknown it is answered "unknown node" instead."""
        forgot = created = False
        with self._lock, self._db:
            if self._forget_pending and req.node_id in self._registered:
                self._forget_pending = False
                self._registered.clear()
                forgot = True
            if req.node_id and req.node_id not in self._registered and not self._refuse_unknown:
                now = time.time()
                self._db.execute(
                    "INSERT INTO nodes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (node_id) DO NOTHING",
                    (req.node_id, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, "{}", UNKNOWN, UNKNOWN, now, now, 0),
                )
                self._registered.add(req.node_id)
                created = True
            accepted = req.node_id in self._registered
            self._db.execute(
                "INSERT INTO node_heartbeats (node_id, timestamp, accepted, received_at) VALUES (?, ?, ?, ?)",
                (req.node_id, req.timestamp, int(accepted), time.time()),
            )
        if forgot:
            self.say("forgetting every node registration once (--unknown-node-once)")
        if created:
            self.say(f"node {req.node_id} heartbeat from an unknown node: created it with {UNKNOWN} facts")
        if not accepted:
            self.say(f"node {req.node_id or '<empty>'} heartbeat refused: {UNKNOWN_NODE}, it must register again")
            return manager_pb2.HeartbeatResponse(success=False, message=UNKNOWN_NODE)
        return manager_pb2.HeartbeatResponse(success=True, message="heartbeat received")

    def forget_node(self, node_id: str) -> None:
        """Lose a node's row, as after a database restore: its next heartbeat re-creates it as unknown."""
        with self._lock, self._db:
            self._db.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,))
            self._registered.discard(node_id)
        self.say(f"node {node_id} forgotten")

    def report_metrics(self, req: manager_pb2.ReportMetricsRequest) -> manager_pb2.ReportMetricsResponse:
        """Store a batch of node metrics as JSON, like the real Manager (no registration needed); a type
        longer than its column or a value JSON cannot hold (NaN, infinity) fails the whole batch, as there."""
        for m in req.metrics:
            if len(m.type) > METRIC_TYPE_MAX:
                return self._refuse_metrics(req, f"type {m.type!r} is longer than {METRIC_TYPE_MAX} characters")
            bad = sorted(k for k, v in m.values.items() if not math.isfinite(v))
            if bad:
                return self._refuse_metrics(req, f"{m.type}: values are not finite numbers: {', '.join(bad)}")
        now = time.time()
        with self._lock, self._db:
            self._db.executemany(
                "INSERT INTO metrics (node_id, type, timestamp, values_json, received_at) VALUES (?, ?, ?, ?, ?)",
                [(req.node_id, m.type, m.timestamp, json.dumps(dict(m.values), sort_keys=True), now)
                 for m in req.metrics],
            )
        parts = [
            f"{m.type}{{{', '.join(f'{k}={v:g}' for k, v in sorted(m.values.items()) if not k.startswith('details['))}}}"
            for m in req.metrics
        ]
        self.say(f"node {req.node_id} metrics: {' '.join(parts) or '(none)'}")
        ov = self.overview(req.node_id)
        self.say(
            f"node {req.node_id} overview: cpu {ov['cpu_usage']:.1f}%, memory {ov['memory_usage']:.1f}% of"
            f" {ov['memory_total'] / 2**30:.1f} GiB, disk {ov['disk_usage']:.1f}% of {ov['disk_total'] / 2**30:.1f} GiB,"
            f" network rx {ov['network_rx']:.0f} B tx {ov['network_tx']:.0f} B"
        )
        return manager_pb2.ReportMetricsResponse(success=True, message=f"{len(req.metrics)} metrics saved")

    def _refuse_metrics(self, req: manager_pb2.ReportMetricsRequest, why: str) -> manager_pb2.ReportMetricsResponse:
        self.say(f"node {req.node_id} metrics refused: {why}")
        return manager_pb2.ReportMetricsResponse(success=False, message=f"failed to save metrics: {why}")

    # -- DaemonService ------------------------------------------------------------------------------

    def sync_agent_states(self, req: daemon_pb2.SyncAgentStatesRequest) -> daemon_pb2.SyncAgentStatesResponse:
        """Record every received state in the history and keep the latest per (node, agent); print changes."""
        with self._lock:
            if self._fail_sync_left > 0:
                self._fail_sync_left -= 1
                left = self._fail_sync_left
                fail = True
            else:
                fail = False
        if fail:
            self.say(f"node {req.node_id} sync of {len(req.states)} states refused on purpose"
                     f" (--fail-sync, {left} left)")
            return daemon_pb2.SyncAgentStatesResponse(success=False, message="injected failure (--fail-sync)")
        now = time.time()
        changes = []
        with self._lock, self._db:
            for st in req.states:
                new = (st.status, st.pid, st.last_heartbeat, st.type, st.version)
                old = self._db.execute(
                    "SELECT status, pid, type, version FROM agent_states WHERE node_id = ? AND agent_id = ?",
                    (req.node_id, st.agent_id),
                ).fetchone()
                self._db.execute(
                    "INSERT INTO agent_state_history (node_id, agent_id, status, pid, last_heartbeat, type, version,"
                    " received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (req.node_id, st.agent_id, *new, now),
                )
                self._db.execute(
                    "INSERT INTO agent_states VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (node_id, agent_id) DO UPDATE"
                    " SET status = excluded.status, pid = excluded.pid, last_heartbeat = excluded.last_heartbeat,"
                    " type = excluded.type, version = excluded.version, updated_at = excluded.updated_at",
                    (req.node_id, st.agent_id, *new, now),
                )
                changes.append(self._change_line(req.node_id, st, old))
        for line in changes:
            if line:
                self.say(line)
        for st in req.states:
            if st.status not in AGENT_STATUSES:
                self.say(f"{req.node_id}/{st.agent_id}: status {st.status!r} is not one the Manager can show")
        return daemon_pb2.SyncAgentStatesResponse(success=True, message=f"synced {len(req.states)} states")

    @staticmethod
    def _change_line(node_id: str, st: daemon_pb2.AgentState, old: sqlite3.Row | None) -> str | None:
        """One readable line for a new or changed agent state, None when nothing a person cares about changed."""
        if old is None:
            line = f"{node_id}/{st.agent_id}: new -> {st.status}{_pid_text(0, st.pid)}"
            extras = [f"type {st.type}"] if st.type else []
            extras += [f"version {st.version}"] if st.version else []
        else:
            if (old["status"], old["pid"], old["type"], old["version"]) == (st.status, st.pid, st.type, st.version):
                return None
            line = f"{node_id}/{st.agent_id}: {old['status']} -> {st.status}{_pid_text(old['pid'], st.pid)}"
            extras = [f"{key} {old[key] or '-'} -> {getattr(st, key) or '-'}"
                      for key in ("type", "version") if old[key] != getattr(st, key)]
        return line + (f", {', '.join(extras)}" if extras else "")

    # -- serving ------------------------------------------------------------------------------------

    def serve(self, listen: str, tls: TLSFiles | None = None) -> tuple[grpc.Server, int]:
        """Start serving on listen ("host:port", port 0 picks one); return the started server and its port."""
        # grpc enables SO_REUSEPORT by default, which would let two dev Managers share a port unnoticed.
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=[("grpc.so_reuseport", 0)])
        manager_pb2_grpc.add_ManagerServiceServicer_to_server(_ManagerServicer(self), server)
        daemon_pb2_grpc.add_DaemonServiceServicer_to_server(_DaemonServicer(self), server)
        try:
            if tls is None:
                port = server.add_insecure_port(listen)
            else:
                client_ca = Path(tls.client_ca).read_bytes() if tls.client_ca else None
                creds = grpc.ssl_server_credentials(
                    [(Path(tls.key).read_bytes(), Path(tls.cert).read_bytes())],
                    root_certificates=client_ca,
                    require_client_auth=client_ca is not None,
                )
                port = server.add_secure_port(listen, creds)
        except RuntimeError as exc:  # newer grpcio raises on a failed bind instead of returning 0
            raise OSError(f"cannot listen on {listen}: {exc}") from None
        if port == 0:
            raise OSError(f"cannot listen on {listen}")
        server.start()
        self._server = server
        return server, port

    # -- dialing the node API, as the Manager does ---------------------------------------------------

    def _daemon_stub(self, node_id: str) -> daemon_pb2_grpc.DaemonServiceStub:
        """A stub on the node's cached channel to <registered ip>:<daemon port>: plaintext, no token, keepalive."""
        rows = self._query("SELECT ip FROM nodes WHERE node_id = ?", (node_id,))
        if not rows:
            raise LookupError(f"node {node_id} is not registered")
        ip = rows[0]["ip"]
        address = f"[{ip}]:{self.daemon_port}" if ":" in ip else f"{ip}:{self.daemon_port}"
        with self._lock:
            cached = self._channels.get(node_id)
            if cached is not None and cached[0] != address:
                cached[1].close()
                cached = None
            if cached is None:
                channel = grpc.insecure_channel(address, options=[
                    ("grpc.keepalive_time_ms", int(self.keepalive * 1000)),
                    ("grpc.keepalive_timeout_ms", int(KEEPALIVE_TIMEOUT_SECONDS * 1000)),
                    ("grpc.keepalive_permit_without_calls", 1),
                    # Go's client pings on an idle connection without limit; C-core stops after 2 unless told.
                    ("grpc.http2.max_pings_without_data", 0),
                ])
                states = self._channel_states.setdefault(node_id, [])
                channel.subscribe(lambda state: states.append(state.name), try_to_connect=False)
                cached = self._channels[node_id] = (address, channel)
        return daemon_pb2_grpc.DaemonServiceStub(cached[1])

    def connection_states(self, node_id: str) -> list[str]:
        """The connectivity states the channel to the node went through (a GOAWAY shows as READY -> IDLE)."""
        return list(self._channel_states.get(node_id, []))

    def list_agents(self, node_id: str) -> list[daemon_pb2.AgentInfo]:
        """ListAgents on the node, with the Manager's 30 s deadline."""
        return list(self._daemon_stub(node_id).ListAgents(daemon_pb2.ListAgentsRequest(), timeout=LIST_TIMEOUT).agents)

    def operate_agent(self, node_id: str, agent_id: str, operation: str, timeout: float = OPERATE_TIMEOUT) -> tuple[bool, str]:
        """OperateAgent as the Manager calls it (90 s deadline); on success the agent's row gets the expected
        status at once (pid 0 after a stop), as the Manager writes it. Returns (success, message)."""
        started = time.monotonic()
        try:
            response = self._daemon_stub(node_id).OperateAgent(
                daemon_pb2.AgentOperationRequest(agent_id=agent_id, operation=operation), timeout=timeout)
        except grpc.RpcError as exc:
            message = f"{exc.code().name}: {exc.details()}"
            self.say(f"{node_id}/{agent_id}: {operation} failed: {message}")
            return False, message
        took = time.monotonic() - started
        if not response.success:
            self.say(f"{node_id}/{agent_id}: {operation} failed after {took:.1f}s: {response.error_message}")
            return False, response.error_message
        expected = EXPECTED_AFTER[operation]
        with self._lock, self._db:
            self._db.execute(
                "UPDATE agent_states SET status = ?, pid = CASE WHEN ? THEN 0 ELSE pid END, updated_at = ?"
                " WHERE node_id = ? AND agent_id = ?",
                (expected, operation == "stop", time.time(), node_id, agent_id),
            )
        self.say(f"{node_id}/{agent_id}: {operation} done in {took:.1f}s, recorded as {expected}")
        return True, ""

    def stop(self, grace: float = 2.0) -> None:
        """Stop serving (waiting up to grace seconds for calls in flight) and close the database."""
        with self._lock:
            for _address, channel in self._channels.values():
                channel.close()
            self._channels.clear()
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
        with self._lock:
            self._db.close()

    close = stop

    # -- queries ------------------------------------------------------------------------------------

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def nodes(self) -> list[dict]:
        """Every node ever registered, labels decoded."""
        rows = self._query("SELECT * FROM nodes ORDER BY node_id")
        return [dict(row, labels=json.loads(row["labels"])) for row in rows]

    def heartbeats(self, node_id: str) -> int:
        """How many heartbeats of node_id were accepted."""
        return self._query("SELECT COUNT(*) FROM node_heartbeats WHERE node_id = ? AND accepted = 1", (node_id,))[0][0]

    def overview(self, node_id: str) -> dict[str, float]:
        """The node's line of the Manager's cluster overview: fixed keys of the newest row of each type, 0 if absent."""
        latest: dict[str, dict] = {}
        for row in self._query(
            "SELECT type, values_json FROM metrics m WHERE node_id = ? AND id = (SELECT id FROM metrics WHERE"
            " node_id = m.node_id AND type = m.type ORDER BY timestamp DESC, id DESC LIMIT 1)", (node_id,)
        ):
            latest[row["type"]] = json.loads(row["values_json"])
        out = {}
        for name, (kind, key) in OVERVIEW_KEYS.items():
            value = latest.get(kind, {}).get(key)
            out[name] = float(value) if isinstance(value, (int, float)) else 0.0
        return out

    def metrics(self, node_id: str) -> list[dict]:
        """The node's metric records in arrival order: type, timestamp, values, received_at."""
        rows = self._query(
            "SELECT type, timestamp, values_json, received_at FROM metrics WHERE node_id = ? ORDER BY id", (node_id,)
        )
        return [{"type": r["type"], "timestamp": r["timestamp"], "values": json.loads(r["values_json"]),
                 "received_at": r["received_at"]} for r in rows]

    def latest_states(self, node_id: str) -> dict[str, dict]:
        """agent_id -> latest received state (status, pid, last_heartbeat, type, version, updated_at)."""
        rows = self._query("SELECT * FROM agent_states WHERE node_id = ? ORDER BY agent_id", (node_id,))
        return {r["agent_id"]: {k: r[k] for k in (*STATE_COLUMNS, "updated_at")} for r in rows}

    def state_history(self, node_id: str, agent_id: str | None = None) -> list[dict]:
        """Every received state of the node (or of one agent) in arrival order, with received_at."""
        sql = "SELECT * FROM agent_state_history WHERE node_id = ?"
        args: tuple = (node_id,)
        if agent_id is not None:
            sql, args = sql + " AND agent_id = ?", (node_id, agent_id)
        rows = self._query(sql + " ORDER BY id", args)
        return [{k: r[k] for k in ("agent_id", *STATE_COLUMNS, "received_at")} for r in rows]


class _ManagerServicer(manager_pb2_grpc.ManagerServiceServicer):
    def __init__(self, mgr: DevManager):
        self._mgr = mgr

    def RegisterNode(self, request, context):
        return self._mgr.register_node(request)

    def Heartbeat(self, request, context):
        return self._mgr.heartbeat(request)

    def ReportMetrics(self, request, context):
        return self._mgr.report_metrics(request)


class _DaemonServicer(daemon_pb2_grpc.DaemonServiceServicer):
    """Only SyncAgentStates: the generated base class answers UNIMPLEMENTED to every other method."""

    def __init__(self, mgr: DevManager):
        self._mgr = mgr

    def SyncAgentStates(self, request, context):
        # The real Manager refuses a missing node_id with INVALID_ARGUMENT, not success=false; an empty
        # agent_id would be a row nobody can name, so it gets the same answer here.
        if not request.node_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "node_id is required")
        for i, st in enumerate(request.states):
            if not st.agent_id:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"states[{i}].agent_id is required")
        return self._mgr.sync_agent_states(request)


def _call_node(opts: argparse.Namespace) -> int:
    """One call to a node's API as the Manager makes it; 0 on success, 1 on failure."""
    if not Path(opts.db).is_file():
        print(f"dev_manager: no database {opts.db}: run the Manager first, so nodes register", file=sys.stderr)
        return 1
    mgr = DevManager(opts.db, daemon_port=opts.daemon_port)
    try:
        if opts.list_agents:
            for a in mgr.list_agents(opts.list_agents):
                mgr.say(f"{a.id}\t{a.type}\t{a.status}\tpid {a.pid or '-'}\trestarts {a.restart_count}")
            return 0
        node, agent, operation = opts.operate
        ok, _message = mgr.operate_agent(node, agent, operation)
        return 0 if ok else 1
    except LookupError as exc:
        print(f"dev_manager: {exc.args[0]}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        print(f"dev_manager: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    finally:
        mgr.close()


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; exit 0 after a graceful stop, 1 when it cannot listen, 2 on bad arguments."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:50051", help="host:port; port 0 picks a free one")
    parser.add_argument("--db", default="dev-manager.db", help="SQLite file (created when missing)")
    parser.add_argument("--tls-cert", help="server certificate (PEM); serves TLS with --tls-key")
    parser.add_argument("--tls-key", help="server private key (PEM)")
    parser.add_argument("--tls-client-ca", help="require client certificates signed by this CA (PEM): mTLS")
    parser.add_argument("--fail-sync", type=int, default=0, metavar="N",
                        help="answer success=false to the first N syncs")
    parser.add_argument("--unknown-node-once", action="store_true",
                        help="forget every registration at the first heartbeat, once, and refuse it, so the daemon re-registers")
    parser.add_argument("--refuse-unknown-nodes", action="store_true",
                        help="answer success=false to heartbeats of unknown nodes (the real Manager re-creates them)")
    parser.add_argument("--daemon-port", type=int, default=DAEMON_PORT,
                        help=f"port of the nodes' DaemonService, dialed at their registered IP (default {DAEMON_PORT})")
    parser.add_argument("--list-agents", metavar="NODE",
                        help="do not serve: call ListAgents on a node recorded in --db, as the Manager would, and exit")
    parser.add_argument("--operate", nargs=3, metavar=("NODE", "AGENT", "OP"),
                        help="do not serve: OperateAgent (start|stop|restart) on a node recorded in --db, and exit")
    opts = parser.parse_args(argv)

    tls = None
    if opts.tls_cert or opts.tls_key or opts.tls_client_ca:
        if not (opts.tls_cert and opts.tls_key):
            parser.error("--tls-cert and --tls-key go together (and --tls-client-ca needs both)")
        # A configured but missing file is an error, never a silent fall-back to plaintext.
        for flag, path in (("--tls-cert", opts.tls_cert), ("--tls-key", opts.tls_key),
                           ("--tls-client-ca", opts.tls_client_ca)):
            if path and not Path(path).is_file():
                parser.error(f"{flag}: no such file: {path}")
        tls = TLSFiles(opts.tls_cert, opts.tls_key, opts.tls_client_ca)
    if opts.fail_sync < 0:
        parser.error("--fail-sync must be 0 or more")
    if opts.operate and opts.operate[2] not in EXPECTED_AFTER:
        parser.error(f"--operate: OP must be one of {', '.join(EXPECTED_AFTER)}")
    if opts.list_agents or opts.operate:
        return _call_node(opts)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    mgr = DevManager(opts.db, fail_sync=opts.fail_sync, unknown_node_once=opts.unknown_node_once,
                     refuse_unknown=opts.refuse_unknown_nodes, daemon_port=opts.daemon_port)
    try:
        _, port = mgr.serve(opts.listen, tls)
    except OSError as exc:
        print(f"dev_manager: {exc}", file=sys.stderr)
        mgr.close()
        return 1
    host = opts.listen.rpartition(":")[0]
    mgr.say(f"LISTENING {host}:{port}")
    mode = "plaintext" if tls is None else ("mTLS" if tls.client_ca else "TLS")
    mgr.say(f"dev manager serving {mode}, recording to {opts.db}")
    # A timed wait keeps the main thread returning to the interpreter, where the signal handlers run.
    while not stop.wait(0.5):
        pass
    mgr.say("stopping")
    mgr.stop(grace=2.0)
    mgr.say("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
