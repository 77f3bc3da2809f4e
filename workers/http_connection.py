"""One HTTP client connection of the intake: httptools feeding, the limits, replies in request order
(docs/heartbeat-api.md)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import httptools

from workers.peer_socket import PeerSocket
from workers.http_replies import ACCEPTED, JSON_TYPE, LINGER, MAX_HEADER_BYTES, PARENT_METRICS_WAIT, ROUTES, _STATUS_KEYS, json_reply, render

if TYPE_CHECKING:
    from workers.http_intake import HeartbeatHttpServer

log = logging.getLogger("workers.heartbeat_http")  # one logger name for the whole intake


def bearer_token(value: bytes) -> str | None:
    """The credentials of an Authorization header value with the Bearer scheme (any case), else None."""
    scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


class HttpConnection(asyncio.Protocol):
    """One client connection: feeds httptools, enforces the limits, writes replies in request order."""

    def __init__(self, server: "HeartbeatHttpServer") -> None:
        self.server = server
        self.settings = server.settings
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        # Until it has delivered a valid heartbeat, a connection gets the short deadline: slow headers or an
        # idle keep-alive from someone who is not (yet) an agent must not hold a slot for long.
        # Indexed by `self.peer_key is None` (verified), looked up per request rather than computed.
        self.timeouts = (min(self.settings.request_timeout, self.settings.unverified_timeout), self.settings.request_timeout)
        self.deadline = self.loop.time() + self.timeouts[0]
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
        self.unsent = b""  # 200s waiting for the end of this loop pass (HeartbeatHttpServer.write_soon), sent by flush()
        # While a scrape waits for the parent's metrics, requests after it on this connection wait too, so
        # that replies go out in request order: (method, path, token, body, keep_alive) of each.
        self.held: list[tuple[bytes, bytes, str | None, bytes, bool]] | None = None
        self.url = b""
        self.token: str | None = None
        self.expect_continue = False
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
        refusal = server.peers.admit(key)
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
            self.server.peers.release(self.peer_key)
            self.peer_key = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.unsent = b""
        if self.holder is not None:  # its descriptor is about to be free: the client's next socket likely gets it
            self.server._fd_hints.freed(*self.holder, self.peer.inode)
        if self.peer is not None:
            self.server._owners.forget(self.peer.inode)
        if self.peer_key is not None:
            self.server.peers.release(self.peer_key)
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
        # Inline, not a reset method: this runs per request, and a Python call costs ~0.1 µs of the ~11 µs budget.
        self.url = b""  # nearly always one on_url call, and b"" + url is url itself: no copy
        self.token = None
        self.expect_continue = False
        self.body.clear()
        self.length = None
        self.keep_alive = True
        self.in_request = True
        self.deadline = self.loop.time() + self.timeouts[self.peer_key is None]

    def _timeout(self) -> float:
        return self.timeouts[self.peer_key is None]

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # Dispatch on the length first: Host, Content-Type, User-Agent, ... are none of ours and skip the lower().
        size = len(name)
        if size == 13:
            if name.lower() == b"authorization":
                # What agents send, without the general parse; the property test holds the two to one answer.
                self.token = value[7:].decode("latin-1").strip() if value[:7] == b"Bearer " else bearer_token(value)
        elif size == 14:
            if name.lower() == b"content-length":
                # httptools does not expose it but has validated it (digits only, no conflicting duplicates).
                self.length = int(value) if value.strip().isdigit() else None
        elif size == 6:
            if name.lower() == b"expect":
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
        elif self.expect_continue:
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

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
        path = self.url
        if b"?" in path:
            path = path.split(b"?", 1)[0]
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
        if reply is ACCEPTED.body and keep_alive and not headers and method != b"HEAD":
            # The common case: its response rendered once per millisecond, held to the end of this loop pass
            # (HeartbeatHttpServer.write_soon) and sent back to back with the pass's other replies.
            self.server.counters["http_200"] += 1
            if not self.unsent:
                self.server.write_soon(self)
            self.unsent += ACCEPTED.response
            self.deadline = self.loop.time() + self.timeouts[self.peer_key is None]
            return
        self.server.counters[_STATUS_KEYS.get(status) or f"http_{status}"] += 1
        self.write(render(status, reply, content_type=content_type, close=not keep_alive,
                          headers=headers, head_only=method == b"HEAD"))
        if not keep_alive:
            self.close()
        else:
            self.deadline = self.loop.time() + self.timeouts[self.peer_key is None]

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
            if self.unsent:  # replies go out in request order
                data, self.unsent = self.unsent + data, b""
            self.transport.write(data)

    def flush(self) -> None:
        if self.unsent:
            data, self.unsent = self.unsent, b""
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
            self.flush()
            self.closed = True
            self.transport.close()
