"""The Unix-socket heartbeat intake worker, `python -m workers.heartbeat_unix`: JSON lines, sender known by SO_PEERCRED.

There is no reply channel: anything refused or dropped (back-pressure included) is counted and logged, never answered.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import stat
import struct
import sys
import time
from pathlib import Path


from supervisor.config import UnixIntake
from supervisor.rate_limited_log import RateLimitedLog
from workers.heartbeat_rules import AgentDirectory, HeartbeatRejected, decode_json
from workers.link import WorkerLink
from workers.runner import StartupError, begin_process, load_worker_settings, serve_intake, worker_arg_parser

log = logging.getLogger("workers.heartbeat_unix")

UNKNOWN_SENDER_GRACE = 1.0  # an agent may connect before its state update reaches us
_CRED = struct.Struct("3i")
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


def peer_pid(sock: socket.socket) -> int:
    """The pid that connected this Unix socket (0 when unknown, e.g. from another pid namespace)."""
    pid, _uid, _gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    return pid


class UnixIntakeServer:
    """Serves heartbeat connections on an already listening socket and hands heartbeats to the link."""

    def __init__(self, link: WorkerLink, settings: UnixIntake, directory: AgentDirectory | None = None) -> None:
        self.link = link
        self.settings = settings
        self.directory = directory or AgentDirectory(lambda: link.agents)
        self.counters = link.counters
        self.limited = RateLimitedLog(log)
        self._server: asyncio.AbstractServer | None = None
        self._open: dict[asyncio.StreamWriter, asyncio.Task] = {}
        self._changed = asyncio.Event()
        link.on_change.append(self._on_change)
        for key in ("received", "accepted", "dropped", "connections", "connections_open"):
            self.counters[key] += 0  # reported from the first beat, so a zero is visible as a zero

    def _on_change(self) -> None:
        self.directory.invalidate()
        self._changed.set()

    async def start(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_unix_server(self._connected, sock=sock, limit=self.settings.max_line + 1)

    async def close(self) -> None:
        """Stop accepting, close every open connection and wait for their handlers."""
        if self._server is not None:
            self._server.close()
        tasks = list(self._open.values())
        for writer in list(self._open):
            writer.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counters["connections"] += 1
        if len(self._open) >= self.settings.max_connections:
            self.counters["rejected_too_many_connections"] += 1
            self.limited.warning("too_many_connections", f"refused a connection: {len(self._open)} already open (max_connections)")
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._open[writer] = task
        self.counters["connections_open"] = len(self._open)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            pass
        except Exception:  # one bad connection must not take the worker down
            self.limited.exception("connection_failed", "heartbeat connection failed")
        finally:
            del self._open[writer]
            self.counters["connections_open"] = len(self._open)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            pid = peer_pid(writer.get_extra_info("socket"))
        except (OSError, AttributeError, struct.error) as exc:
            self.counters["rejected_unknown_agent"] += 1
            self.limited.warning("peer_credentials", f"closed a connection: cannot read its peer credentials ({exc})")
            return
        if pid <= 0:
            self.counters["rejected_unknown_agent"] += 1
            self.limited.warning("unknown_agent", "closed a connection from a process outside our pid namespace")
            return
        # Resolve the sender now, while it surely lives: a script that writes one line and exits may be
        # gone by the time the line is read, and the directory's cache then still knows whose it was.
        self.directory.agent_for_pid(pid)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(None) as idle:
                watch = _IdleWatch(loop, self.settings.idle_timeout, idle)
                try:
                    await self._read_lines(reader, pid, watch)
                finally:
                    watch.cancel()
        except TimeoutError:
            self.counters["closed_idle"] += 1

    async def _read_lines(self, reader: asyncio.StreamReader, pid: int, watch: _IdleWatch) -> None:
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
                    await self._lines((last,), pid)
                return
            end = data.rfind(b"\n")
            if end < 0:  # no line completed: keep the piece (joined once its newline comes, never re-copied)
                unfinished.append(data)
                unfinished_len += len(data)
                if unfinished_len > max_line:
                    self._too_long(pid)
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
            if not await self._lines(lines, pid):
                return
            if unfinished_len > max_line:
                self._too_long(pid)
                return

    async def _lines(self, lines: list[bytes] | tuple[bytes, ...], pid: int) -> bool:
        """Handle complete lines in order; False when the connection should be closed."""
        max_line = self.settings.max_line
        handle = self._line
        for line in lines:
            if len(line) > max_line:
                self._too_long(pid)
                return False
            if not line.strip():
                continue
            try:
                if not handle(line, pid):
                    return False
            except _SenderUnknown as unknown:
                if not await self._line_after_grace(unknown, pid):
                    return False
        return True

    def _line(self, line: bytes, pid: int) -> bool:
        """Handle one heartbeat line; False when the connection should be closed.

        Raises _SenderUnknown when pid is in no agent's tree (yet): the caller waits for a state update."""
        received_at = time.time()
        self.counters["received"] += 1
        try:
            obj = decode_json(line, "line")
        except HeartbeatRejected as exc:
            self.counters["rejected_invalid"] += 1
            self.limited.warning("garbage", f"closed the connection of pid {pid}: {exc.message}")
            return False
        try:
            heartbeat = self._check(obj, pid, received_at)
        except HeartbeatRejected as exc:
            if exc.reason != "unknown_agent":
                return self._rejected(exc, pid)
            raise _SenderUnknown(obj, received_at) from None
        return self._submit(heartbeat)

    async def _line_after_grace(self, unknown: _SenderUnknown, pid: int) -> bool:
        # The agent may have connected before its state update reached us: wait for one change.
        log.debug("pid %d is in no agent's tree yet; waiting up to %g s for a state update", pid, UNKNOWN_SENDER_GRACE)
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), UNKNOWN_SENDER_GRACE)
        except TimeoutError:
            pass
        try:
            heartbeat = self._check(unknown.obj, pid, unknown.received_at)
        except HeartbeatRejected as exc:
            return self._rejected(exc, pid)
        return self._submit(heartbeat)

    def _submit(self, heartbeat: dict) -> bool:
        if self.link.submit(heartbeat):
            self.counters["accepted"] += 1
        else:
            self.counters["dropped"] += 1
            self.limited.warning("dropped", "dropped a heartbeat: the parent is not keeping up (back-pressure)")
        return True

    def _check(self, obj: object, pid: int, received_at: float) -> dict:
        return self.directory.check(obj, agent_id_required=False, token=None, peer_pid=pid, received_at=received_at)

    def _rejected(self, exc: HeartbeatRejected, pid: int) -> bool:
        """Count and log a refused heartbeat; False (close) when the sender belongs to no agent."""
        self.counters[f"rejected_{exc.reason}"] += 1
        if exc.reason == "unknown_agent":
            self.limited.warning(exc.reason, f"closed the connection of pid {pid}: {exc.message}")
            return False
        self.limited.warning(exc.reason, f"rejected a heartbeat from pid {pid}: {exc.message}")
        return True

    def _too_long(self, pid: int) -> None:
        self.counters["received"] += 1
        self.counters["rejected_too_long"] += 1
        self.limited.warning("too_long", f"closed the connection of pid {pid}: a line is longer than {self.settings.max_line} bytes")


# ----------------------------------------------------------------------------------------------- process


def _listening_socket(fd: int) -> socket.socket:
    """The listening socket the parent passed us; it keeps its own copy, so agents never see it missing."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise StartupError(f"--listen-fd {fd}: {exc.strerror or exc}") from None
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise StartupError(f"--listen-fd {fd}: not a Unix stream socket")
    return sock


def bind_socket(path: Path) -> socket.socket:
    """Bind and listen on path with mode 0666, replacing a stale socket file but never a live one."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None:
        if not stat.S_ISSOCK(mode):
            raise StartupError(f"{path}: exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)  # nobody listens: left over from a crash
        else:
            raise StartupError(f"{path}: another process is already serving heartbeats there")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        # Identity comes from peer credentials, so any local user may connect (agents run as other users).
        os.chmod(path, 0o666)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise StartupError(f"{path}: cannot listen: {exc.strerror or exc}") from None
    return sock


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    return worker_arg_parser("heartbeat_unix", __doc__, "heartbeat-unix", "the heartbeat.unix settings as JSON",
                             config_help="standalone: read the config and bind heartbeat.unix.path",
                             listen_fd_help="an inherited listening AF_UNIX stream socket").parse_args(argv)


async def _run(run_dir: Path, name: str, settings: UnixIntake, sock: socket.socket) -> int:
    link = WorkerLink(run_dir, name, want_state=True)
    link.info["listen"] = str(sock.getsockname() or f"fd {sock.fileno()}")
    return await serve_intake(link, UnixIntakeServer(link, settings), sock, link.info["listen"])


def main(argv: list[str] | None = None) -> int:
    """Run the worker until SIGTERM or SIGINT; 0 on a clean stop."""
    args = _parse_args(argv)
    begin_process(args)
    loaded = load_worker_settings(args, UnixIntake, lambda c: c.heartbeat.unix)
    if loaded is None:
        return 2
    run_dir, settings = loaded
    try:
        if args.listen_fd is not None:
            sock = _listening_socket(args.listen_fd)
        elif settings.path is None:
            raise StartupError("--settings: path is required with --config")
        else:
            sock = bind_socket(settings.path)
    except StartupError as exc:
        log.error("%s", exc)
        return 2
    try:
        code = asyncio.run(_run(run_dir, args.name, settings, sock))
    finally:
        sock.close()
        if args.listen_fd is None and settings.path is not None:
            try:
                os.unlink(settings.path)
            except FileNotFoundError:
                pass
    return code


if __name__ == "__main__":
    sys.exit(main())
