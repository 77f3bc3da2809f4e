"""How both heartbeat intakes take connections: their own accept loop on the shared listening socket, and
fair capacity counted per peer (docs/threat-model.md).

Not loop.create_server/start_unix_server: asyncio's server would call listen(100) on the socket the parent
shares with every worker (shrinking its backlog), accept up to 100 connections per wake-up (so with
`processes: N` one worker took a whole burst and the others sat idle), and log every failed accept.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections import Counter
from typing import Callable

from supervisor.common.rate_limited_log import RateLimitedLog

RETRY_DELAY = 1.0  # out of fds or memory: stop accepting this long (as asyncio's own server does)
# Errors Linux keeps reporting on every wake-up while the socket stays readable: accepting pauses.
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class AcceptLoop:
    """Accepts up to `batch` connections per wake-up and hands each, non-blocking, to `on_accept`.

    Every worker on a shared socket is woken, and each takes its share. Accept errors are counted per errno
    (`accept_errors_<ERRNO>`) and logged once per cause and period; out of fds or memory it pauses for
    RETRY_DELAY instead of spinning. It never closes the socket: its owner does."""

    def __init__(self, sock: socket.socket, on_accept: Callable[[socket.socket], None], *, batch: int,
                 counters: Counter, limited: RateLimitedLog) -> None:
        self.sock: socket.socket | None = sock
        self.on_accept = on_accept
        self.batch = batch
        self.counters = counters
        self.limited = limited

    def start(self) -> None:
        assert self.sock is not None
        self.sock.setblocking(False)
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._accept)

    def stop(self) -> None:
        """Accept no more; the socket stays open for its owner to close."""
        if self.sock is not None and self.sock.fileno() >= 0:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock = None

    def _accept(self) -> None:
        sock = self.sock
        if sock is None:
            return
        for _ in range(self.batch):
            try:
                conn, _addr = sock.accept()
                conn.setblocking(False)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # another worker was quicker, or nothing left
            except OSError as exc:
                self._failed(sock, exc)
                return
            self.on_accept(conn)

    def _failed(self, sock: socket.socket, exc: OSError) -> None:
        cause = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        self.counters[f"accept_errors_{cause}"] += 1
        if exc.errno not in _OUT_OF_RESOURCES:
            self.limited.warning(f"accept:{cause}", "accept failed: %s", exc)  # e.g. EPROTO: that one connection is lost
            return
        # Logged once per cause, not once a second: a local user holding every fd would otherwise write our log full.
        self.limited.warning(f"accept:{cause}", "cannot accept connections for now (%s); retrying every %g s",
                             exc.strerror, RETRY_DELAY)
        loop = asyncio.get_running_loop()
        loop.remove_reader(sock.fileno())
        loop.call_later(RETRY_DELAY, self._resume)

    def _resume(self) -> None:
        if self.sock is not None and self.sock.fileno() >= 0:
            asyncio.get_running_loop().add_reader(self.sock.fileno(), self._accept)


class PeerLimits:
    """Open connections counted per peer key; those that have not delivered a valid heartbeat yet
    ("unverified") limited per peer and in all, so most slots stay for agents (docs/threat-model.md)."""

    def __init__(self, max_unverified_per_peer: int, max_unverified: int) -> None:
        self.max_unverified_per_peer = max_unverified_per_peer
        self.max_unverified = max_unverified
        self.open: Counter[str] = Counter()
        self.unverified = 0  # open unverified connections in all

    def admit(self, key: str, *, verified: bool = False, limit: int | None = None) -> str | None:
        """Count a new connection against `key`; the refusal's sentence instead when it has no room.

        An unverified one meets max_unverified_per_peer and max_unverified; a verified one only `limit`, if any."""
        held = self.open[key]
        if not verified:
            if held >= self.max_unverified_per_peer:
                return f"{key} already has {held} open connections that sent no valid heartbeat"
            if self.unverified >= self.max_unverified:
                return f"{self.unverified} connections that sent no valid heartbeat are open; the rest is kept for agents"
            self.unverified += 1
        elif limit is not None and held >= limit:
            return f"{key} already has {held} open connections"
        self.open[key] += 1
        return None

    def release(self, key: str, *, verified: bool = False) -> None:
        """A connection admitted under `key` closed (or stopped counting there)."""
        self.open[key] -= 1
        if self.open[key] <= 0:
            del self.open[key]
        if not verified:
            self.unverified -= 1
