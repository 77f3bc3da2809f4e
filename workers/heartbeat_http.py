"""The HTTP heartbeat intake worker: `python -m workers.heartbeat_http` (docs/heartbeat-api.md, docs/configuration.md).

A small asyncio.Protocol around httptools' HTTP/1.1 parser (see docs/decisions.md for why not a framework).
The parent owns the listening socket and passes it down (`--listen-fd`), so several workers can share it
and a respawned worker inherits the backlog. Every request is bounded: header bytes, body bytes
(`max_body`, checked before the body is read), time (`request_timeout`) and open connections.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import hmac
import json
import logging
import os
import socket
import sys
import time
from collections import Counter
from http import HTTPStatus
from pathlib import Path
from typing import Callable

import httptools
import psutil

from supervisor.config.daemon_sections import HttpIntake
from supervisor.config.fields import split_listen
from supervisor.common.prometheus import CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE, Exposition
from supervisor.wire.states import AgentState
from supervisor.common.rate_limited_log import RateLimitedLog
from supervisor.wire.verbs import metrics as metrics_verb
from supervisor.common.listen_sockets import ListenError, bind_tcp
from workers.peer_socket import FdHints, PeerSocket, SockDiag, SocketOwners, is_loopback, socket_in_tree
from workers.agent_directory import AgentDirectory, report_bad_timestamps
from workers.heartbeat_rules import HeartbeatRejected, decode_json
from workers.link import WorkerLink
from workers.runner import FD_HEADROOM, begin_process, load_worker_settings, raise_fd_limit, serve_intake, worker_arg_parser

log = logging.getLogger("workers.heartbeat_http")

MAX_HEADER_BYTES = 16 * 1024  # request line + headers; httptools itself sets no limit
MAX_CONNECTIONS = 1024
LINGER = 2.0  # after refusing a request we read and discard for this long, so the client sees our reply
SWEEP_INTERVAL = 0.25
MAX_REPORTED = 100  # rejected items listed in a batch reply; the count is always complete
# A scrape fetches the parent's metrics text (agents' health, cpu, rss, restarts) and answers once it has it;
# nothing is fetched between scrapes (issue 11: idle cost). Scrapes this close together share one fetch.
PARENT_METRICS_FRESH = 1.0
PARENT_METRICS_WAIT = 3.0  # a parent that does not answer by then: the scrape gets the last copy
ACCEPT_BATCH = 4  # connections accepted per wake-up; small, so that workers sharing the socket share a burst
ACCEPT_RETRY_DELAY = 1.0  # out of fds or memory: stop accepting this long (as asyncio's own server does)
UNVERIFIED_SHARE = 4  # at most 1/4 of max_connections may be connections that delivered no valid heartbeat yet
REJECT_REASONS = ("invalid", "unknown_agent", "unauthorized", "pid_not_in_tree", "agent_not_running", "too_large",
                  "sender_not_agent", "sender_unproven")
JSON_TYPE = b"application/json"
METRICS_TYPE = PROMETHEUS_CONTENT_TYPE.encode()
ROUTES: dict[bytes, tuple[bytes, ...]] = {
    b"/heartbeat": (b"POST",),
    b"/heartbeats": (b"POST",),
    b"/heartbeat/stats": (b"GET", b"HEAD"),
    b"/metrics": (b"GET", b"HEAD"),
}
_PHRASES = {s.value: s.phrase.encode() for s in HTTPStatus}
_STATUS_KEYS = {s.value: f"http_{s.value}" for s in HTTPStatus}


_second_cache: list = [-1, ""]  # [whole second, its "YYYY-MM-DDTHH:MM:SS"]: strftime once a second, not per reply


def rfc3339(t: float | None = None) -> str:
    """UTC wall-clock time as RFC 3339 with milliseconds, e.g. 2024-05-01T12:00:00.123Z."""
    t = time.time() if t is None else t
    ms = int(t * 1000)
    second = ms // 1000
    if second != _second_cache[0]:
        _second_cache[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return f"{_second_cache[1]}.{ms % 1000:03d}Z"


def json_reply(success: bool, message: str, **extra: object) -> bytes:
    """The reply body every JSON endpoint uses: success, message, timestamp, then endpoint fields."""
    return json.dumps({"success": success, "message": message, "timestamp": rfc3339(), **extra}).encode()


def fixed_reply(success: bool, message: str) -> Callable[[], bytes]:
    """json_reply for a constant message, pre-encoded: the hot path skips json.dumps."""
    head = json.dumps({"success": success, "message": message, "timestamp": ""})[:-3].encode()  # cut the empty "" and the closing brace
    return lambda: b'%s"%s"}' % (head, rfc3339().encode())


def render(status: int, body: bytes, *, content_type: bytes = JSON_TYPE, close: bool = False,
           headers: tuple[tuple[bytes, bytes], ...] = (), head_only: bool = False) -> bytes:
    """One complete HTTP/1.1 response."""
    extra = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    if close:
        extra += b"Connection: close\r\n"
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status, _PHRASES.get(status, b"Unknown"), content_type, len(body), extra, b"" if head_only else body)


class _Accepted:
    """The 200 reply to one heartbeat. Its body, and the whole keep-alive response around it, are built once per
    millisecond (the resolution of the timestamp in it) instead of once per request."""

    def __init__(self) -> None:
        self._body = fixed_reply(True, "heartbeat accepted")
        self.ms = -1
        self.body = b""
        self.response = b""  # render(200, self.body): what a keep-alive POST gets

    def __call__(self) -> bytes:
        ms = int(time.time() * 1000)
        if ms != self.ms:
            body = self._body()
            self.ms, self.body, self.response = ms, body, render(200, body)
        return self.body


ACCEPTED = _Accepted()
BUSY = fixed_reply(False, "the daemon is not keeping up; retry shortly")


# ----------------------------------------------------------------------------------------------- metrics


# One writer for every /metrics family, the parent's and this worker's (supervisor/common/prometheus.py).


# ----------------------------------------------------------------------------------------------- the server


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
        self.connections: set[_Connection] = set()
        # Fair capacity (docs/threat-model.md): connections that have not delivered a valid heartbeat yet,
        # per peer ("uid:N" on loopback, from the kernel; else "addr:HOST") and in all.
        self.unverified: Counter[str] = Counter()
        self.unverified_total = 0
        self.max_unverified = max(1, max_connections // UNVERIFIED_SHARE)
        self._fd_hints = FdHints()
        self._owners = SocketOwners()
        try:
            self._diag: SockDiag | None = SockDiag()
        except OSError as exc:  # no sock_diag (a container without it): peers are told apart by address only
            log.warning("sock_diag netlink unavailable (%s): loopback peers are limited by address, not by user", exc)
            self._diag = None
        self.has_connections = asyncio.Event()  # set when a connection opens; wakes the sweeper
        self._sock: socket.socket | None = None
        self._accepting: dict[asyncio.Task, socket.socket] = {}  # accepted, transport not yet set up
        self._sweeper: asyncio.Task | None = None
        self._parent_metrics_task: asyncio.Task | None = None  # the fetch in flight, shared by concurrent scrapes
        self.parent_metrics = b""  # the parent's Prometheus text (agents' health, cpu, rss, restarts; workers)
        self.parent_metrics_at: float | None = None  # loop time of the fetch that gave it
        self.answering: set[asyncio.Task] = set()  # scrapes waiting for the parent's text
        self._process = psutil.Process()
        for key in ("received", "accepted", "dropped", "connections", "connections_open", "timeouts"):
            self.counters[key] += 0  # present from the first beat, so a zero shows as a zero
        for reason in REJECT_REASONS:
            self.counters[f"rejected_{reason}"] += 0

    async def start(self, sock: socket.socket) -> None:
        # Our own accept loop instead of loop.create_server: asyncio's server would call listen(100) on the shared
        # socket (shrinking the parent's backlog) and accept up to 100 connections per wake-up, so with
        # `processes: N` one worker took a whole burst of new connections and the others sat idle.
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        self._sock = sock
        loop.add_reader(sock.fileno(), self._accept)
        self._sweeper = asyncio.create_task(self._sweep(), name="sweep")

    def _accept(self) -> None:
        """A few connections per wake-up: every worker on the socket is woken, and each takes its share."""
        sock = self._sock
        if sock is None:
            return
        loop = asyncio.get_running_loop()
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _addr = sock.accept()
                conn.setblocking(False)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # another worker was quicker, or nothing left
            except OSError as exc:
                cause = errno.errorcode.get(exc.errno or 0, str(exc.errno))
                self.counters[f"accept_errors_{cause}"] += 1
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.limited.warning(f"accept:{cause}", "accept failed: %s", exc)  # e.g. ECONNABORTED, EPROTO
                    return
                # Linux keeps reporting the socket readable: pause, or we would spin. Logged once per cause, not
                # once a second: a local user holding every fd would otherwise write our log full.
                self.limited.warning(f"accept:{cause}", "cannot accept connections for now (%s); retrying every %g s",
                                     exc.strerror, ACCEPT_RETRY_DELAY)
                loop.remove_reader(sock.fileno())
                loop.call_later(ACCEPT_RETRY_DELAY, self._resume_accepting)
                return
            task = loop.create_task(loop.connect_accepted_socket(lambda: _Connection(self), conn))
            self._accepting[task] = conn
            task.add_done_callback(self._accepted)

    def _accepted(self, task: asyncio.Task) -> None:
        conn = self._accepting.pop(task, None)
        if (task.cancelled() or task.exception() is not None) and conn is not None:
            conn.close()

    def _resume_accepting(self) -> None:
        if self._sock is not None and self._sock.fileno() >= 0:
            asyncio.get_running_loop().add_reader(self._sock.fileno(), self._accept)

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
        if self._sock is not None:
            if self._sock.fileno() >= 0:
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        for task in list(self._accepting):
            task.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._parent_metrics_task is not None:
            self._parent_metrics_task.cancel()
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

    def prove_sender(self, conn: "_Connection | None", fields: dict, token: str | None) -> None:
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

    def _orphan_of_agents_user(self, conn: "_Connection", agent_pid: int | None) -> bool:
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

    def admit_unverified(self, key: str) -> str | None:
        """Count a new connection against its peer; the refusal's sentence when it has no room."""
        if self.unverified[key] >= self.settings.max_unverified_per_peer:
            return f"{key} already has {self.unverified[key]} open connections that sent no valid heartbeat"
        if self.unverified_total >= self.max_unverified:
            return f"{self.unverified_total} connections that sent no valid heartbeat are open; the rest is kept for agents"
        self.unverified[key] += 1
        self.unverified_total += 1
        return None

    def release_unverified(self, key: str) -> None:
        self.unverified[key] -= 1
        if self.unverified[key] <= 0:
            del self.unverified[key]
        self.unverified_total -= 1

    # ------------------------------------------------------------------------------------------ requests

    def handle(self, method: bytes, path: bytes, token: str | None, body: bytes | bytearray, conn: "_Connection | None" = None) -> tuple[int, bytes, bytes, tuple]:
        """Answer one complete request: (status, body, content type, extra headers)."""
        allowed = ROUTES.get(path)
        if allowed is None:
            return 404, json_reply(False, f"no such path: {path.decode('latin-1')}"), JSON_TYPE, ()
        if method not in allowed:
            allow = b", ".join(allowed)
            message = f"method {method.decode('latin-1')} not allowed on {path.decode()}; use {allow.decode()}"
            return 405, json_reply(False, message), JSON_TYPE, ((b"Allow", allow),)
        if path == b"/metrics":
            return 200, self.metrics(), METRICS_TYPE, ()
        if path == b"/heartbeat/stats":
            return 200, json_reply(True, "heartbeat intake counters", **self.stats()), JSON_TYPE, ()
        return self._heartbeats(body, token, batch=path == b"/heartbeats", conn=conn)

    def _heartbeats(self, body: bytes | bytearray, token: str | None, *, batch: bool, conn: "_Connection | None" = None) -> tuple[int, bytes, bytes, tuple]:
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

    def _one(self, doc: object, token: str | None, received_at: float, conn: "_Connection | None" = None) -> tuple[int, bytes, bytes, tuple]:
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
        return 200, ACCEPTED(), JSON_TYPE, ()

    def _batch(self, items: list, token: str | None, received_at: float, conn: "_Connection | None" = None) -> tuple[int, bytes, bytes, tuple]:
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

    # ------------------------------------------------------------------------------------------ reports

    def stats(self) -> dict:
        """Counters for `GET /heartbeat/stats`."""
        c = self.counters
        rejected = {key.removeprefix("rejected_"): value for key, value in c.items() if key.startswith("rejected_")}
        responses = {key.removeprefix("http_"): value for key, value in c.items() if key.startswith("http_")}
        return {
            "worker": self.link.name,
            "received": c["received"],
            "accepted": c["accepted"],
            "rejected": rejected,
            "dropped": c["dropped"],
            "queue_depth": self.link.queue_depth,
            "forwarded": c["forwarded"],
            "connections_open": len(self.connections),
            "responses": responses,
            "timestamp_replaced": c["timestamp_replaced"],
            # The original daemon's fields, under its names and units, for its dashboards and scripts.
            "total_received": c["received"],
            "total_processed": c["accepted"],
            "total_errors": sum(rejected.values()) + c["dropped"],
            "last_received_time": _go_time(self.last_received_at),
            "average_latency": self.latency_ns // c["accepted"] if c["accepted"] else 0,  # ns, as Go's Duration
        }

    def metrics(self) -> bytes:
        """Prometheus text for `GET /metrics`: this worker's counters and every agent's state."""
        c, w, out = self.counters, {"worker": self.link.name}, Exposition()
        prefix = "agentd_heartbeat_http_"
        out.counter(prefix + "heartbeats_received_total", "Heartbeats received by this HTTP intake worker.", c["received"], **w)
        out.counter(prefix + "heartbeats_accepted_total", "Heartbeats accepted and queued for the daemon.", c["accepted"], **w)
        for r in sorted({*REJECT_REASONS, *(k.removeprefix("rejected_") for k in c if k.startswith("rejected_"))}):
            out.counter(prefix + "heartbeats_rejected_total", "Heartbeats refused, by reason.", c[f"rejected_{r}"], **w, reason=r)
        out.counter(prefix + "heartbeats_dropped_total", "Heartbeats refused with 503 because the daemon was not keeping up.", c["dropped"], **w)
        out.counter(prefix + "heartbeats_forwarded_total", "Heartbeats sent on to the daemon.", c["forwarded"], **w)
        out.declare("counter", prefix + "responses_total", "HTTP responses sent, by status code.", "worker", "code")
        for code in sorted(k.removeprefix("http_") for k in c if k.startswith("http_")):
            out.counter(prefix + "responses_total", "HTTP responses sent, by status code.", c[f"http_{code}"], **w, code=code)
        out.counter(prefix + "timeouts_total", "Connections cut off by request_timeout.", c["timeouts"], **w)
        out.gauge(prefix + "queue_depth", "Heartbeats waiting to be sent to the daemon.", self.link.queue_depth, **w)
        out.gauge(prefix + "connections_open", "Open client connections.", len(self.connections), **w)
        out.gauge(prefix + "resident_memory_bytes", "Resident memory of this worker process.", self._process.memory_info().rss, **w)
        agents = sorted(self.link.agents.values(), key=lambda a: a.id)
        # No state label: that would start a new series on every state change (agentd_agent_state has the state).
        out.declare("gauge", "agentd_agent_up", "1 while the agent is running, else 0.", "agent", "type")
        for a in agents:
            out.gauge("agentd_agent_up", "1 while the agent is running, else 0.", int(a.state == AgentState.RUNNING), agent=a.id, type=a.type)
        beats = self.link.last_heartbeat
        out.declare("gauge", "agentd_agent_last_heartbeat_timestamp_seconds", "Wall-clock time of the agent's last accepted heartbeat.", "agent")
        for a in agents:
            out.gauge("agentd_agent_last_heartbeat_timestamp_seconds", "Wall-clock time of the agent's last accepted heartbeat.", beats.get(a.id), agent=a.id)
        return out.text() + self.parent_metrics


# ----------------------------------------------------------------------------------------------- one connection


def _go_time(epoch: float | None) -> str:
    """RFC 3339 UTC with nanoseconds, as Go writes a time.Time (its zero time when there is none)."""
    if epoch is None:
        return "0001-01-01T00:00:00Z"
    seconds = int(epoch)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((epoch - seconds) * 1e9):09d}Z"


class _Connection(asyncio.Protocol):
    """One client connection: feeds httptools, enforces the limits, writes replies in request order."""

    def __init__(self, server: HeartbeatHttpServer) -> None:
        self.server = server
        self.settings = server.settings
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.deadline = self.loop.time() + min(self.settings.request_timeout, self.settings.unverified_timeout)
        self.peer_key: str | None = None  # set while this connection counts as unverified
        self.peer: PeerSocket | None = None  # the client socket's owner and inode (loopback), for the sender check
        self.peer_host = "?"
        self.proven: set[tuple[str, int]] = set()  # (agent id, generation) this connection has proven to be
        self.holder: tuple[int, str] | None = None  # (pid, fd) that holds the client end, once proven by the tree
        self.discarding = False  # a refusal was sent: read and drop until the client or LINGER ends it
        self.closed = False
        self.in_request = False
        self.headers_done = False
        self.head_received = 0  # bytes fed while the current request's headers are incomplete
        self.body = bytearray()
        # While a scrape waits for the parent's metrics, requests after it on this connection wait too, so
        # that replies go out in request order: (method, path, token, body, keep_alive) of each.
        self.held: list[tuple[bytes, bytes, str | None, bytes, bool]] | None = None
        self._reset()

    def _reset(self) -> None:
        self.url = b""  # nearly always one on_url call, and b"" + url is url itself: no copy
        self.token: str | None = None
        self.expect_continue = False
        self.body.clear()
        self.length: int | None = None
        self.keep_alive = True

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        server = self.server
        server.counters["connections"] += 1
        if len(server.connections) >= server.max_connections:
            server.counters["connections_refused"] += 1
            server.counters["http_503"] += 1
            body = json_reply(False, "too many open connections; retry shortly")
            self.transport.write(render(503, body, close=True, headers=((b"Retry-After", b"1"),)))
            self.closed = True
            self.transport.close()
            return
        key, self.peer, self.peer_host = server.peer_of(transport)
        refusal = server.admit_unverified(key)
        if refusal is not None:
            server.counters["rejected_too_many_unverified"] += 1
            server.counters["http_503"] += 1
            server.limited.warning("too_many_unverified", "refused a connection: %s", refusal)
            self.transport.write(render(503, json_reply(False, f"too many connections: {refusal}; retry shortly"), close=True,
                                        headers=((b"Retry-After", b"1"),)))
            self.closed = True
            self.transport.close()
            return
        self.peer_key = key
        server.connections.add(self)
        server.has_connections.set()
        server.counters["connections_open"] = len(server.connections)

    def verified(self) -> None:
        """A heartbeat on this connection was accepted: it no longer counts against its peer's unverified share."""
        if self.peer_key is not None:
            self.server.release_unverified(self.peer_key)
            self.peer_key = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.holder is not None:  # its descriptor is about to be free: the client's next socket likely gets it
            self.server._fd_hints.freed(*self.holder)
        if self.peer is not None:
            self.server._owners.forget(self.peer.inode)
        if self.peer_key is not None:
            self.server.release_unverified(self.peer_key)
            self.peer_key = None
        self.server.connections.discard(self)
        self.server.counters["connections_open"] = len(self.server.connections)

    def data_received(self, data: bytes) -> None:
        if self.closed or self.discarding:
            return
        try:
            if self.headers_done or self.head_received + len(data) <= MAX_HEADER_BYTES:
                if not self.headers_done:
                    self.head_received += len(data)
                self.parser.feed_data(data)
            else:
                self._feed_limited(memoryview(data))
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._refuse(400, f"malformed HTTP request: {exc}")

    def _feed_limited(self, view: memoryview) -> None:
        # httptools buffers an unfinished header line itself, so header bytes are metered before it sees them.
        while view and not (self.closed or self.discarding):
            if self.headers_done:
                self.parser.feed_data(view)
                return
            room = MAX_HEADER_BYTES - self.head_received
            if room <= 0:
                self._refuse(431, f"request line and headers are over {MAX_HEADER_BYTES} bytes")
                return
            self.head_received += min(room, len(view))
            self.parser.feed_data(view[:room])
            view = view[room:]

    def eof_received(self) -> bool:
        return False  # close our side too

    def pause_writing(self) -> None:
        # A client that sends requests but does not read replies stops being read: memory stays bounded.
        assert self.transport is not None
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.transport is not None
        if not self.closed:
            self.transport.resume_reading()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._reset()
        self.in_request = True
        self.deadline = self.loop.time() + self._timeout()

    def _timeout(self) -> float:
        # Until it has delivered a valid heartbeat, a connection gets the short deadline: slow headers or an
        # idle keep-alive from someone who is not (yet) an agent must not hold a slot for long.
        if self.peer_key is None:
            return self.settings.request_timeout
        return min(self.settings.request_timeout, self.settings.unverified_timeout)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) not in (6, 13, 14):  # none of ours: Host, Content-Type, User-Agent, ... skip the lower()
            return
        name = name.lower()
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
            self.token = credentials.strip() if scheme.lower() == "bearer" else None
        elif name == b"content-length":
            # httptools does not expose it but has validated it (digits only, no conflicting duplicates).
            self.length = int(value) if value.strip().isdigit() else None
        elif name == b"expect":
            self.expect_continue = value.strip().lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.head_received = 0
        if self.discarding:
            return
        self.keep_alive = self.parser.should_keep_alive()
        # Content-Length is known now: refuse an oversized body before a byte of it is read.
        if self.length is not None and self.length > self.settings.max_body:
            self._too_large()
        elif self.expect_continue and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, chunk: bytes) -> None:
        if self.discarding:
            return
        if len(self.body) + len(chunk) > self.settings.max_body:  # chunked bodies stop here
            self._too_large()
            return
        self.body += chunk

    def on_message_complete(self) -> None:
        self.headers_done = False
        if self.discarding or self.closed:
            return
        self.in_request = False
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        if self.held is not None:
            self.held.append((method, path, self.token, bytes(self.body), self.keep_alive))
            self.body.clear()
            return
        if path == b"/metrics" and method in ROUTES[path] and not self.server.parent_metrics_fresh():
            self._hold_for_metrics(method)
            return
        self._answer(method, path, self.token, self.body, self.keep_alive)

    def _hold_for_metrics(self, method: bytes) -> None:
        """Answer this scrape once the parent's metrics text is in; read nothing more meanwhile."""
        assert self.transport is not None
        self.held = []
        keep_alive = self.keep_alive
        self.body.clear()
        self.transport.pause_reading()
        self.deadline = self.loop.time() + PARENT_METRICS_WAIT + self._timeout()  # the fetch is not the client's delay
        task = self.loop.create_task(self._answer_held(method, keep_alive))
        self.server.answering.add(task)
        task.add_done_callback(self.server.answering.discard)

    async def _answer_held(self, method: bytes, keep_alive: bool) -> None:
        await self.server.refresh_parent_metrics()
        held, self.held = self.held or [], None
        for request in [(method, b"/metrics", None, b"", keep_alive), *held]:
            if self.closed:
                return
            self._answer(*request)
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def _answer(self, method: bytes, path: bytes, token: str | None, body: bytes | bytearray, keep_alive: bool) -> None:
        try:
            if path == b"/heartbeat" and method == b"POST":  # the hot path, without the routing
                status, reply, content_type, headers = self.server._heartbeats(body, token, batch=False, conn=self)
            else:
                status, reply, content_type, headers = self.server.handle(method, path, token, body, conn=self)
        except Exception:  # a bug must cost one request, not the worker; the traceback stays in our log, rate-limited
            self.server.limited.exception("internal", "request %s %s failed", method.decode("latin-1"), path[:200].decode("latin-1"))
            status, reply, content_type, headers = 500, json_reply(False, "internal error"), JSON_TYPE, ()
        self.body.clear()  # an idle keep-alive connection holds no request body
        if status == 200 and self.peer_key is not None and path in (b"/heartbeat", b"/heartbeats"):
            self.verified()
        self.server.counters[_STATUS_KEYS.get(status) or f"http_{status}"] += 1
        if reply is ACCEPTED.body and keep_alive and not headers and method != b"HEAD":
            self.write(ACCEPTED.response)  # the common case, rendered once per millisecond
        else:
            self.write(render(status, reply, content_type=content_type, close=not keep_alive,
                              headers=headers, head_only=method == b"HEAD"))
        if not keep_alive:
            self.close()
        else:
            self.deadline = self.loop.time() + self._timeout()

    # limits

    def _too_large(self) -> None:
        self.server.counters["received"] += 1
        self.server.counters["rejected_too_large"] += 1
        self._refuse(413, f"body: over the {self.settings.max_body}-byte limit (heartbeat.http.max_body)")

    def _refuse(self, status: int, message: str) -> None:
        """Answer, then read and discard briefly before closing, so the client reads the reply, not a reset."""
        if self.closed or self.discarding:
            return
        self.server.counters[f"http_{status}"] += 1
        self.discarding = True
        self.in_request = False
        self.body.clear()
        self.write(render(status, json_reply(False, message), close=True))
        assert self.transport is not None
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.deadline = self.loop.time() + LINGER

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def expired(self) -> None:
        """The deadline passed: cut off a slow request (408), end a linger, or close an idle keep-alive."""
        if self.in_request and not self.discarding:
            self.server.counters["timeouts"] += 1
            self.server.counters["http_408"] += 1
            self.write(render(408, json_reply(False, f"request not completed within {self._timeout():g} s"), close=True))
            log.debug("cut off a request that took over %.1f s", self._timeout())
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()


# ----------------------------------------------------------------------------------------------- process


def format_address(sock: socket.socket) -> str:
    """The bound address as host:port, IPv6 in brackets."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"


def listening_socket(fd: int) -> socket.socket:
    """The TCP socket the parent bound and passed us; the parent keeps its copy, so the backlog outlives us."""
    sock = socket.socket(fileno=fd)
    ok = sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM
    if not ok or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise SystemExit(f"--listen-fd {fd}: not a listening TCP socket")
    return sock


def bind_socket(listen: str) -> socket.socket:
    """Standalone mode: bind host:port by the parent's own rules (supervisor/common/listen_sockets.py)."""
    return bind_tcp(listen, *split_listen(listen))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = worker_arg_parser("heartbeat_http", __doc__, "heartbeat-http-0", "the heartbeat.http settings as JSON (overrides --config's)",
                               config_help="standalone: read the config and bind heartbeat.http.listen",
                               listen_fd_help="an inherited bound and listening TCP socket")
    parser.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS, help="open connections per worker")
    return parser.parse_args(argv)


async def _run(run_dir: Path, name: str, settings: HttpIntake, sock: socket.socket, max_connections: int) -> int:
    link = WorkerLink(run_dir, name, want_state=True)
    link.info["listen"] = format_address(sock)
    return await serve_intake(link, HeartbeatHttpServer(link, settings, max_connections=max_connections), sock, f"http://{link.info['listen']}")


def main(argv: list[str] | None = None) -> int:
    """Run the worker until SIGTERM or SIGINT; 0 on a clean stop, 2 on bad arguments or config."""
    args = _parse_args(argv)
    begin_process(args)
    loaded = load_worker_settings(args, HttpIntake, lambda c: c.heartbeat.http)
    if loaded is None:
        return 2
    run_dir, settings = loaded
    if args.max_connections < 1:
        log.error("--max-connections must be at least 1")
        return 2
    raise_fd_limit(args.max_connections + FD_HEADROOM)
    try:
        sock = listening_socket(args.listen_fd) if args.listen_fd is not None else bind_socket(settings.listen)
    except ListenError as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:
        log.error("cannot listen on %s: %s", settings.listen, exc)
        return 2
    try:
        code = asyncio.run(_run(run_dir, args.name, settings, sock, args.max_connections))
    finally:
        sock.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
