"""The HTTP intake's server: accepting connections within the per-peer limits, proving senders, applying
heartbeats and answering the four routes (docs/heartbeat-api.md, docs/threat-model.md)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import socket
import time

import psutil

from supervisor.config.daemon_sections import HttpIntake
from supervisor.common.rate_limited_log import RateLimitedLog
from supervisor.wire.verbs import metrics as metrics_verb
from supervisor.config.fields import is_loopback
from workers.peer_socket import PeerSocket, SockDiag
from workers.socket_owners import SocketOwners
from workers.tree_proof import FdHints, socket_in_tree
from workers.accept_loop import AcceptLoop, PeerLimits
from workers.agent_directory import AgentDirectory, report_bad_timestamps
from workers.heartbeat_rules import HeartbeatRejected, decode_json
from workers.link import WorkerLink
from workers.http_connection import HttpConnection
from workers.http_reports import intake_metrics, intake_stats
from workers.http_replies import ACCEPTED, ACCEPT_BATCH, BUSY, JSON_TYPE, MAX_CONNECTIONS, MAX_REPORTED, METRICS_TYPE, PARENT_METRICS_FRESH, PARENT_METRICS_WAIT, REJECT_REASONS, ROUTES, SWEEP_INTERVAL, UNVERIFIED_SHARE, json_reply

log = logging.getLogger("workers.heartbeat_http")  # one logger name for the whole intake


class HeartbeatHttpServer:
    """Routes requests, validates heartbeats and hands them to the link; owns the open connections."""

    def __init__(self, link: WorkerLink, settings: HttpIntake, *, max_connections: int = MAX_CONNECTIONS) -> None:
        self.link = link
        self.settings = settings
        self.max_connections = max_connections
        self.directory = AgentDirectory(lambda: link.agents)
        link.on_change.append(self.directory.invalidate)
        self.counters = link.counters
        self.limited = RateLimitedLog(log)
        report_bad_timestamps(self.directory, self.counters, self.limited)
        # For the original daemon's /heartbeat/stats fields: last receipt, and time spent per accepted heartbeat.
        self.last_received_at: float | None = None
        self.latency_ns = 0
        self.connections: set[HttpConnection] = set()
        # Fair capacity (docs/threat-model.md): connections that have not delivered a valid heartbeat yet,
        # per peer ("uid:N" on loopback, from the kernel; else "addr:HOST") and in all.
        self.peers = PeerLimits(settings.max_unverified_per_peer, max(1, max_connections // UNVERIFIED_SHARE))
        self._fd_hints = FdHints()
        self._owners = SocketOwners()
        try:
            self._diag: SockDiag | None = SockDiag()
        except OSError as exc:  # no sock_diag (a container without it): peers are told apart by address only
            log.warning("sock_diag netlink unavailable (%s): loopback peers are limited by address, not by user", exc)
            self._diag = None
        self.has_connections = asyncio.Event()  # set when a connection opens; wakes the sweeper
        self._sock: socket.socket | None = None
        self._acceptor: AcceptLoop | None = None
        self._accepting: dict[asyncio.Task, socket.socket] = {}  # accepted, transport not yet set up
        self._sweeper: asyncio.Task | None = None
        self._parent_metrics_task: asyncio.Task | None = None  # the fetch in flight, shared by concurrent scrapes
        self.parent_metrics = b""  # the parent's Prometheus text (agents' health, cpu, rss, restarts; workers)
        self.parent_metrics_at: float | None = None  # loop time of the fetch that gave it
        self.answering: set[asyncio.Task] = set()  # scrapes waiting for the parent's text
        self._unsent: list[HttpConnection] = []  # connections with replies held for the end of this loop pass
        self._process = psutil.Process()
        for key in ("received", "accepted", "dropped", "connections", "connections_open", "timeouts"):
            self.counters[key] += 0  # present from the first beat, so a zero shows as a zero
        for reason in REJECT_REASONS:
            self.counters[f"rejected_{reason}"] += 0

    async def start(self, sock: socket.socket) -> None:
        # Few connections per wake-up (ACCEPT_BATCH): with `processes: N`, workers sharing the socket share a burst.
        self._sock = sock
        self._acceptor = AcceptLoop(sock, self._accepted_socket, batch=ACCEPT_BATCH, counters=self.counters, limited=self.limited)
        self._acceptor.start()
        self._sweeper = asyncio.create_task(self._sweep(), name="sweep")

    def _accepted_socket(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.connect_accepted_socket(lambda: HttpConnection(self), conn))
        self._accepting[task] = conn
        task.add_done_callback(self._accepted)

    def _accepted(self, task: asyncio.Task) -> None:
        conn = self._accepting.pop(task, None)
        if (task.cancelled() or task.exception() is not None) and conn is not None:
            conn.close()

    def write_soon(self, conn: HttpConnection) -> None:
        """Hold conn's reply until every connection ready in this loop pass has been read, then send them all.

        Sent one by one, each reply woke the sleeping client again, a cross-CPU wake-up per request (15 % of
        this worker's CPU under wrk on a KVM guest, 4 % after); sent back to back, most find it still awake.
        Measured in docs/performance.md, "One HTTP worker and the 1.5× target"."""
        if not self._unsent:
            asyncio.get_running_loop().call_soon(self._flush_unsent)
        self._unsent.append(conn)

    def _flush_unsent(self) -> None:
        conns, self._unsent = self._unsent, []
        for conn in conns:
            conn.flush()

    def parent_metrics_fresh(self) -> bool:
        at = self.parent_metrics_at
        return at is not None and asyncio.get_running_loop().time() - at < PARENT_METRICS_FRESH

    async def refresh_parent_metrics(self) -> None:
        """Fetch the parent's metrics text for a scrape; never raises (a busy or restarting parent: the last copy stays)."""
        if self._parent_metrics_task is None:
            self._parent_metrics_task = asyncio.create_task(self._fetch_parent_metrics(), name="parent-metrics")
        await asyncio.shield(self._parent_metrics_task)

    async def _fetch_parent_metrics(self) -> None:
        try:
            self.parent_metrics = (await self.link.call(metrics_verb, timeout=PARENT_METRICS_WAIT)).text.encode()
            self.parent_metrics_at = asyncio.get_running_loop().time()
        except Exception as exc:
            log.debug("parent metrics not refreshed: %s", exc)
        finally:
            self._parent_metrics_task = None

    async def close(self) -> None:
        """Stop accepting (only our copy of the socket closes; the parent's keeps the backlog) and drop connections."""
        if self._acceptor is not None:
            self._acceptor.stop()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for task in list(self._accepting):
            task.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._parent_metrics_task is not None:
            self._parent_metrics_task.cancel()
        self._flush_unsent()
        for conn in list(self.connections):
            conn.close()
        # Await the cancelled tasks too: one still inside a control request holds a socket open,
        # and the link's context shutdown would wait for it (the worker then missed its stop deadline).
        for task in self.answering:
            task.cancel()
        background = [t for t in (self._sweeper, self._parent_metrics_task) if t is not None]
        await asyncio.gather(*self._accepting, *self.answering, *background, return_exceptions=True)

    async def _sweep(self) -> None:
        # One timer for all connections: cheaper than a call_later per request, precise enough for timeouts.
        # With no connection open it sleeps until one arrives: an idle intake has no timer running.
        loop = asyncio.get_running_loop()
        while True:
            if not self.connections:
                self.has_connections.clear()
                await self.has_connections.wait()
            await asyncio.sleep(SWEEP_INTERVAL)
            now = loop.time()
            for conn in list(self.connections):
                if conn.deadline <= now:
                    conn.expired()

    # ------------------------------------------------------------------------------------------ peers

    def peer_of(self, transport: asyncio.BaseTransport) -> tuple[str, PeerSocket | None, str]:
        """Whom a new connection counts against (its owner's uid on loopback, else its address), the client
        socket's owner uid and inode when the kernel could tell (loopback only), and the address for messages."""
        peer = transport.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) and peer else "?"
        if self._diag is not None and is_loopback(host):
            sock = transport.get_extra_info("socket")
            try:
                found = self._diag.peer_of(sock) if sock is not None else None
            except OSError as exc:
                self.limited.warning("sock_diag", "sock_diag lookup failed: %s", exc)
                found = None
            if found is not None:
                return f"uid:{found.uid}", found, host
        return f"addr:{host}", None, host

    def prove_sender(self, conn: "HttpConnection | None", fields: dict, token: str | None) -> None:
        """HTTP sender identity (docs/decisions.md): the heartbeat's agent must be the connection's own.

        Proof is the agent's secret (or configured token) as Bearer, or, on loopback, the client socket
        found among the open files of the agent's process tree (checked once per connection and agent
        generation, then kept for keep-alive). Raises HeartbeatRejected 401/403 otherwise."""
        if conn is None or not self.settings.verify_sender:
            return
        agent = self.link.agents.get(fields["agent_id"])
        if agent is None:
            return  # directory.check has just found it; a removal in between is handled by the parent
        proof = (agent.id, agent.generation)
        if proof in conn.proven:
            return
        if token is not None and agent.secret and hmac.compare_digest(token.encode("utf-8", "surrogateescape"), agent.secret.encode()):
            conn.proven.add(proof)
            return
        if conn.peer is None:
            self.counters["sender_checks_failed"] += 1
            raise HeartbeatRejected(401, "sender_unproven", f"agent {agent.id!r}: a heartbeat from {conn.peer_host} must carry the "
                                    f"agent's token (Authorization: Bearer $AGENTD_HEARTBEAT_TOKEN)")
        self.counters["sender_checks"] += 1
        first = [fields["pid"], agent.pid or 0]
        # Another connection of a process whose descriptors a proof read moments ago: a lookup, not a second read.
        holder = self._owners.holder(conn.peer.inode, conn.peer.uid, first, agent.pid or 0)
        if holder is not None:
            self.counters["sender_checks_recalled"] += 1
        else:
            links = self._owners.links_read
            holder = socket_in_tree(conn.peer.inode, first, agent.pid or 0, hints=self._fd_hints, owners=self._owners)
            self.counters["sender_fd_links_read"] += self._owners.links_read - links
        if holder is not None:
            self._fd_hints.taken(*holder)
            conn.holder = holder
        elif self._orphan_of_agents_user(conn, agent.pid):
            # The client closed its end before we got to its request (it waited in the backlog while this worker
            # started): no process holds the socket any more, but the kernel still knows its owner's uid. Only
            # the agent's own user can pass this, and that user can read the agent's secret anyway.
            self.counters["sender_proved_by_uid"] += 1
        else:
            self.counters["sender_checks_failed"] += 1
            raise HeartbeatRejected(403, "sender_not_agent", f"this connection is not held by agent {agent.id!r}'s processes; send "
                                    f"from the agent itself, or with its token (Authorization: Bearer $AGENTD_HEARTBEAT_TOKEN)")
        conn.proven.add(proof)

    def _orphan_of_agents_user(self, conn: "HttpConnection", agent_pid: int | None) -> bool:
        """The connection's client socket is closed (inode 0 now) and was owned by the agent's uid."""
        sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
        if self._diag is None or sock is None or agent_pid is None:
            return False
        try:
            now = self._diag.peer_of(sock)
            owner = os.stat(f"/proc/{agent_pid}").st_uid
        except OSError:
            return False
        return now is not None and now.inode == 0 and now.uid == owner

    # ------------------------------------------------------------------------------------------ requests

    def handle(self, method: bytes, path: bytes, token: str | None, body: bytes | bytearray, conn: "HttpConnection | None" = None) -> tuple[int, bytes, bytes, tuple]:
        """Answer one complete request: (status, body, content type, extra headers)."""
        allowed = ROUTES.get(path)
        if allowed is None:
            return 404, json_reply(False, f"no such path: {path.decode('latin-1')}"), JSON_TYPE, ()
        if method not in allowed:
            allow = b", ".join(allowed)
            message = f"method {method.decode('latin-1')} not allowed on {path.decode()}; use {allow.decode()}"
            return 405, json_reply(False, message), JSON_TYPE, ((b"Allow", allow),)
        if path == b"/metrics":
            return 200, intake_metrics(self), METRICS_TYPE, ()
        if path == b"/heartbeat/stats":
            return 200, json_reply(True, "heartbeat intake counters", **intake_stats(self)), JSON_TYPE, ()
        return self._heartbeats(body, token, batch=path == b"/heartbeats", conn=conn)

    def _heartbeats(self, body: bytes | bytearray, token: str | None, *, batch: bool, conn: "HttpConnection | None" = None) -> tuple[int, bytes, bytes, tuple]:
        received_at = time.time()
        try:
            doc = decode_json(body)
        except HeartbeatRejected as exc:
            return self._invalid(exc.message)
        if not batch:
            return self._one(doc, token, received_at, conn)
        if not isinstance(doc, list):
            return self._invalid("body: expected a JSON array of heartbeat objects")
        if not doc:
            return self._invalid("body: the batch is empty")
        return self._batch(doc, token, received_at, conn)

    def _invalid(self, message: str) -> tuple[int, bytes, bytes, tuple]:
        self.counters["received"] += 1
        self.counters["rejected_invalid"] += 1
        return 400, json_reply(False, message), JSON_TYPE, ()

    def _busy(self, n: int) -> tuple[int, bytes, bytes, tuple]:
        self.counters["dropped"] += n
        if self.link.broken_reason is not None:  # this worker is about to exit; a fresh one takes the socket
            return 503, json_reply(False, "this intake worker cannot forward heartbeats; retry shortly"), JSON_TYPE, ((b"Retry-After", b"1"),)
        return 503, BUSY(), JSON_TYPE, ((b"Retry-After", b"1"),)

    def _one(self, doc: object, token: str | None, received_at: float, conn: "HttpConnection | None" = None) -> tuple[int, bytes, bytes, tuple]:
        self.counters["received"] += 1
        self.last_received_at = received_at
        # Refuse before validating: under overload the cheapest answer is the right one.
        if not self.link.has_room(1):
            return self._busy(1)
        started = time.perf_counter_ns()
        try:
            heartbeat = self.directory.check(doc, agent_id_required=True, token=token, received_at=received_at)
            self.prove_sender(conn, heartbeat, token)
        except HeartbeatRejected as exc:
            self.counters[f"rejected_{exc.reason}"] += 1
            return exc.status, json_reply(False, exc.message), JSON_TYPE, ()
        if not self.link.submit(heartbeat):
            return self._busy(1)
        self.latency_ns += time.perf_counter_ns() - started
        self.counters["accepted"] += 1
        return 200, ACCEPTED(received_at), JSON_TYPE, ()

    def _batch(self, items: list, token: str | None, received_at: float, conn: "HttpConnection | None" = None) -> tuple[int, bytes, bytes, tuple]:
        n = len(items)
        self.counters["received"] += n
        self.last_received_at = received_at
        if not self.link.has_room(n):
            return self._busy(n)
        started = time.perf_counter_ns()
        accepted = 0
        rejected: list[dict] = []
        rejected_count = 0
        for index, item in enumerate(items):
            try:
                heartbeat = self.directory.check(item, agent_id_required=True, token=token, received_at=received_at)
                self.prove_sender(conn, heartbeat, token)
            except HeartbeatRejected as exc:
                self.counters[f"rejected_{exc.reason}"] += 1
                status, reason, message = exc.status, exc.reason, exc.message
            else:
                if self.link.submit(heartbeat):
                    accepted += 1
                    continue
                self.counters["dropped"] += 1
                status, reason, message = 503, "dropped", "the daemon is not keeping up; retry shortly"
            rejected_count += 1
            if len(rejected) < MAX_REPORTED:
                rejected.append({"index": index, "status": status, "reason": reason, "message": message})
        self.counters["accepted"] += accepted
        self.latency_ns += time.perf_counter_ns() - started
        message = f"{accepted} of {n} heartbeats accepted"
        if rejected_count > len(rejected):
            message += f"; the first {len(rejected)} of {rejected_count} rejections are listed"
        body = json_reply(accepted > 0, message, accepted=accepted, rejected=rejected, rejected_count=rejected_count)
        # 200 when anything got through (items say what did not); 400 when nothing did.
        return (200 if accepted else 400), body, JSON_TYPE, ()
