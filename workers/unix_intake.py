"""The Unix-socket heartbeat intake: JSON lines, sender known by SO_PEERCRED, fair capacity per uid and
agent (docs/heartbeat-api.md, docs/threat-model.md). The worker process around it is workers/heartbeat_unix.py.

There is no reply channel: anything refused or dropped (back-pressure included) is counted and logged, never answered.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time

from supervisor.config.daemon_sections import UnixIntake
from supervisor.common.rate_limited_log import RateLimitedLog
from workers.accept_loop import AcceptLoop, PeerLimits
from workers.agent_directory import AgentDirectory, report_bad_timestamps
from workers.heartbeat_rules import HeartbeatRejected, decode_json
from workers.link import WorkerLink

log = logging.getLogger("workers.heartbeat_unix")  # the worker's logger: its log lines read as before

UNKNOWN_SENDER_GRACE = 1.0  # an agent may connect before its state update reaches us
_CRED = struct.Struct("3i")
ACCEPT_BATCH = 16  # connections accepted per wake-up
# Fair capacity (issue 8): a connection from a process in no agent's tree must deliver a valid heartbeat
# within unverified_timeout; at most max_unverified_per_peer of them per uid and 1/UNVERIFIED_SHARE of
# max_connections in all are open at once; one agent's tree holds at most MAX_PER_AGENT.
UNVERIFIED_SHARE = 8
MAX_PER_AGENT = 64
READ_SIZE = 256 * 1024  # at most this much buffered input is taken per read (the stream buffers up to 2 × max_line)


class _SenderUnknown(Exception):
    """A heartbeat whose sender is in no agent's tree yet; handled after a short wait for a state update."""

    def __init__(self, obj: object, received_at: float) -> None:
        super().__init__()
        self.obj = obj
        self.received_at = received_at


class _IdleWatch:
    """Ends the `asyncio.timeout()` block it guards once no line has come for `timeout` seconds.

    A line only stores the time; the one timer re-arms itself when it fires early. (Rescheduling an asyncio
    timeout for every line cost more than validating the heartbeat: each reschedule pushes a timer handle
    onto the loop's heap and leaves the cancelled one behind.)"""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, guard: asyncio.Timeout) -> None:
        self.loop = loop
        self.timeout = timeout
        self.guard = guard
        self.last = loop.time()
        self._handle: asyncio.TimerHandle | None = loop.call_at(self.last + timeout, self._check)

    def _check(self) -> None:
        due = self.last + self.timeout
        now = self.loop.time()
        if now >= due:
            self._handle = None
            self.guard.reschedule(now)  # expires at once: the guarded block ends with TimeoutError
        else:
            self._handle = self.loop.call_at(due, self._check)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) that connected this Unix socket (pid 0 when unknown, e.g. from another pid namespace)."""
    pid, uid, _gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    return pid, uid


class _Peer:
    """One connection's sender, by peer credentials, and the capacity bucket it counts against."""

    __slots__ = ("pid", "uid", "key", "verified")

    def __init__(self, pid: int, uid: int, key: str, verified: bool) -> None:
        self.pid = pid
        self.uid = uid
        self.key = key  # "agent:<id>" once known to be an agent's, else "uid:<uid>"
        self.verified = verified


class UnixIntakeServer:
    """Serves heartbeat connections on an already listening socket and hands heartbeats to the link.

    Capacity is shared fairly (issue 8, docs/threat-model.md): a connection from a process in no agent's
    tree is "unverified" until it delivers a valid heartbeat; such connections are limited per uid and
    in all (so most slots stay for agents), and closed after heartbeat.unix.unverified_timeout. Each agent's tree has
    its own limit too, so one agent cannot take the slots of the others."""

    def __init__(self, link: WorkerLink, settings: UnixIntake, directory: AgentDirectory | None = None) -> None:
        self.link = link
        self.settings = settings
        self.directory = directory or AgentDirectory(lambda: link.agents)
        self.counters = link.counters
        self.limited = RateLimitedLog(log)
        report_bad_timestamps(self.directory, self.counters, self.limited)
        self._acceptor: AcceptLoop | None = None
        self._open: dict[asyncio.StreamWriter, asyncio.Task] = {}
        self._starting: set[asyncio.Task] = set()  # accepted, stream not yet set up
        self.peers = PeerLimits(settings.max_unverified_per_peer, max(1, settings.max_connections // UNVERIFIED_SHARE))
        self._changed = asyncio.Event()
        link.on_change.append(self._on_change)
        for key in ("received", "accepted", "dropped", "connections", "connections_open", "connections_unverified"):
            self.counters[key] += 0  # reported from the first beat, so a zero is visible as a zero

    def _on_change(self) -> None:
        self.directory.invalidate()
        self._changed.set()

    async def start(self, sock: socket.socket) -> None:
        # Credentials are read and limits applied before a stream is set up.
        self._acceptor = AcceptLoop(sock, self._accepted, batch=ACCEPT_BATCH, counters=self.counters, limited=self.limited)
        self._acceptor.start()

    async def close(self) -> None:
        """Stop accepting, close every open connection and wait for their handlers."""
        if self._acceptor is not None:
            self._acceptor.stop()  # the caller closes the socket itself
        tasks = [*self._open.values(), *self._starting]
        for writer in list(self._open):
            writer.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _accepted(self, conn: socket.socket) -> None:
        self.counters["connections"] += 1
        peer = self._admit(conn)
        if peer is None:
            conn.close()
            return
        self._starting.add(asyncio.get_running_loop().create_task(self._connection(conn, peer)))

    def _refuse(self, reason: str, message: str) -> None:
        self.counters[f"rejected_{reason}"] += 1
        self.limited.warning(reason, message)

    def _admit(self, conn: socket.socket) -> _Peer | None:
        """The connection's sender if there is room for it, else None (counted, logged once per cause)."""
        try:
            pid, uid = peer_credentials(conn)
        except (OSError, struct.error) as exc:
            self._refuse("unknown_agent", f"closed a connection: cannot read its peer credentials ({exc})")
            return None
        if pid <= 0:
            self._refuse("unknown_agent", "closed a connection from a process outside our pid namespace")
            return None
        if len(self._open) + len(self._starting) >= self.settings.max_connections:
            self._refuse("too_many_connections", f"refused a connection from pid {pid}: {self.settings.max_connections} already open (max_connections)")
            return None
        # Resolved now, while the sender surely lives: a script that writes one line and exits may be gone
        # by the time the line is read, and the directory's cache then still knows whose it was.
        agent = self.directory.agent_for_pid(pid)
        if agent is not None:
            peer = _Peer(pid, uid, f"agent:{agent.id}", True)
            refusal = self.peers.admit(peer.key, verified=True, limit=MAX_PER_AGENT)
        else:
            peer = _Peer(pid, uid, f"uid:{uid}", False)
            refusal = self.peers.admit(peer.key)
        if refusal is not None:
            self._refuse("too_many_connections" if peer.verified else "too_many_unverified",
                         f"refused a connection from pid {pid} (uid {uid}): {refusal}")
            return None
        return peer

    def _release(self, peer: _Peer) -> None:
        self.peers.release(peer.key, verified=peer.verified)

    def _verified(self, peer: _Peer, agent_id: str) -> None:
        """The connection delivered a valid heartbeat: it now counts against its agent, not its uid."""
        self._release(peer)
        peer.verified, peer.key = True, f"agent:{agent_id}"
        self.peers.admit(peer.key, verified=True)  # no limit: it is one of the agent's connections already

    async def _connection(self, conn: socket.socket, peer: _Peer) -> None:
        task = asyncio.current_task()
        assert task is not None
        writer = None
        deadline = None
        try:
            reader, writer = await asyncio.open_unix_connection(sock=conn, limit=self.settings.max_line + 1)
            self._starting.discard(task)
            self._open[writer] = task
            self.counters["connections_open"] = len(self._open)
            self.counters["connections_unverified"] = self.peers.unverified
            if not peer.verified:
                deadline = asyncio.get_running_loop().call_later(self.settings.unverified_timeout, self._unverified_expired, peer, writer)
            await self._serve(reader, peer)
        except asyncio.CancelledError:
            pass
        except Exception:  # one bad connection must not take the worker down
            self.limited.exception("connection_failed", "heartbeat connection failed")
        finally:
            if deadline is not None:
                deadline.cancel()
            self._starting.discard(task)
            self._release(peer)
            if writer is not None:
                self._open.pop(writer, None)
                writer.close()
            else:
                conn.close()
            self.counters["connections_open"] = len(self._open)
            self.counters["connections_unverified"] = self.peers.unverified

    def _unverified_expired(self, peer: _Peer, writer: asyncio.StreamWriter) -> None:
        if not peer.verified:
            self.counters["closed_unverified"] += 1
            self.limited.warning("closed_unverified", f"closed the connection of pid {peer.pid} (uid {peer.uid}): "
                                 f"no valid heartbeat within {self.settings.unverified_timeout:g} s")
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, peer: _Peer) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(None) as idle:
                watch = _IdleWatch(loop, self.settings.idle_timeout, idle)
                try:
                    await self._read_lines(reader, peer, watch)
                finally:
                    watch.cancel()
        except TimeoutError:
            self.counters["closed_idle"] += 1

    async def _read_lines(self, reader: asyncio.StreamReader, peer: _Peer, watch: _IdleWatch) -> None:
        """Read whatever has arrived, handle its complete lines in order, keep the unfinished one for later.

        Reading in chunks rather than a line at a time: at tens of thousands of lines a second the per-line
        await and buffer bookkeeping of `readuntil` cost as much as the heartbeat itself."""
        max_line = self.settings.max_line
        unfinished: list[bytes] = []  # pieces of a line still waiting for its newline
        unfinished_len = 0
        while True:
            data = await reader.read(READ_SIZE)
            if not data:  # end of stream: a last heartbeat without its newline still counts
                last = b"".join(unfinished)
                if last.strip():
                    await self._lines((last,), peer)
                return
            end = data.rfind(b"\n")
            if end < 0:  # no line completed: keep the piece (joined once its newline comes, never re-copied)
                unfinished.append(data)
                unfinished_len += len(data)
                if unfinished_len > max_line:
                    self._too_long(peer)
                    return
                continue
            if unfinished:
                unfinished.append(data[: end + 1])
                head = b"".join(unfinished)
            else:
                head = data[: end + 1] if end + 1 < len(data) else data
            rest = data[end + 1 :]
            unfinished = [rest] if rest else []
            unfinished_len = len(rest)
            watch.last = watch.loop.time()  # a complete line is activity; a trickle of bytes without one is not
            lines = head.split(b"\n")
            lines.pop()  # the empty piece after the last newline
            if not await self._lines(lines, peer):
                return
            if unfinished_len > max_line:
                self._too_long(peer)
                return

    async def _lines(self, lines: list[bytes] | tuple[bytes, ...], peer: _Peer) -> bool:
        """Handle complete lines in order; False when the connection should be closed."""
        max_line = self.settings.max_line
        handle = self._line
        for line in lines:
            if len(line) > max_line:
                self._too_long(peer)
                return False
            if not line.strip():
                continue
            try:
                if not handle(line, peer):
                    return False
            except _SenderUnknown as unknown:
                if not await self._line_after_grace(unknown, peer):
                    return False
        return True

    def _line(self, line: bytes, peer: _Peer) -> bool:
        """Handle one heartbeat line; False when the connection should be closed.

        Raises _SenderUnknown when pid is in no agent's tree (yet): the caller waits for a state update."""
        received_at = time.time()
        self.counters["received"] += 1
        try:
            obj = decode_json(line, "line")
        except HeartbeatRejected as exc:
            self.counters["rejected_invalid"] += 1
            self.limited.warning("garbage", f"closed the connection of pid {peer.pid}: {exc.message}")
            return False
        try:
            heartbeat = self._check(obj, peer, received_at)
        except HeartbeatRejected as exc:
            if exc.reason != "unknown_agent":
                return self._rejected(exc, peer)
            raise _SenderUnknown(obj, received_at) from None
        return self._submit(heartbeat)

    async def _line_after_grace(self, unknown: _SenderUnknown, peer: _Peer) -> bool:
        # The agent may have connected before its state update reached us: wait for one change.
        log.debug("pid %d is in no agent's tree yet; waiting up to %g s for a state update", peer.pid, UNKNOWN_SENDER_GRACE)
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), UNKNOWN_SENDER_GRACE)
        except TimeoutError:
            pass
        try:
            heartbeat = self._check(unknown.obj, peer, unknown.received_at)
        except HeartbeatRejected as exc:
            return self._rejected(exc, peer)
        return self._submit(heartbeat)

    def _submit(self, heartbeat: dict) -> bool:
        if self.link.submit(heartbeat):
            self.counters["accepted"] += 1
        else:
            self.counters["dropped"] += 1
            self.limited.warning("dropped", "dropped a heartbeat: the parent is not keeping up (back-pressure)")
        return True

    def _check(self, obj: object, peer: _Peer, received_at: float) -> dict:
        heartbeat = self.directory.check(obj, agent_id_required=False, token=None, peer_pid=peer.pid, received_at=received_at)
        if not peer.verified:
            self._verified(peer, heartbeat["agent_id"])
        return heartbeat

    def _rejected(self, exc: HeartbeatRejected, peer: _Peer) -> bool:
        """Count and log a refused heartbeat; False (close) when the sender belongs to no agent."""
        self.counters[f"rejected_{exc.reason}"] += 1
        if exc.reason == "unknown_agent":
            self.limited.warning(exc.reason, f"closed the connection of pid {peer.pid}: {exc.message}")
            return False
        self.limited.warning(exc.reason, f"rejected a heartbeat from pid {peer.pid}: {exc.message}")
        return True

    def _too_long(self, peer: _Peer) -> None:
        self.counters["received"] += 1
        self.counters["rejected_too_long"] += 1
        self.limited.warning("too_long", f"closed the connection of pid {peer.pid}: a line is longer than {self.settings.max_line} bytes")
