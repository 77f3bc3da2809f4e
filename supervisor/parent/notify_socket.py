"""sd_notify for agents: one datagram NOTIFY_SOCKET per agent, read on the parent's loop.

Programs written for systemd send `READY=1`, `WATCHDOG=1`, `STATUS=...` and friends to
$NOTIFY_SOCKET. agentd gives each agent a socket of its own in `<run_dir>/notify/`, receives with
SO_PASSCRED so the kernel vouches for the sender's pid and uid, and hands each message to the daemon,
which checks that the sender belongs to the agent (docs/decisions.md, "sd_notify in the parent").
"""

from __future__ import annotations

import array
import asyncio
import logging
import os
import socket
import stat
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from supervisor.common.listen_sockets import close_socket_file

log = logging.getLogger(__name__)

MAX_DATAGRAM = 4096  # systemd's own limit for a notification is larger, but nothing useful needs more
MAX_FDS = 16  # fds sent along (sd_notify_barrier's pipe, FDSTORE=1) are closed at once
MAX_PER_WAKE = 64  # datagrams read per readiness callback: a flooding agent cannot hold the loop
MAX_STATUS = 512
_UCRED = struct.Struct("iII")
_ANC_SPACE = socket.CMSG_SPACE(_UCRED.size) + socket.CMSG_SPACE(MAX_FDS * 4)


@dataclass
class NotifyMessage:
    """The assignments agentd understands from one sd_notify datagram; unknown ones are ignored, as systemd does."""

    ready: bool = False
    reloading: bool = False
    stopping: bool = False
    watchdog: bool = False
    watchdog_trigger: bool = False
    status: str | None = None
    mainpid: int | None = None
    extend_timeout_usec: int | None = None
    errno: int | None = None
    problems: tuple[str, ...] = ()

    def empty(self) -> bool:
        return not (self.ready or self.reloading or self.stopping or self.watchdog or self.watchdog_trigger
                    or self.status is not None or self.mainpid is not None or self.extend_timeout_usec is not None)


def _positive_int(value: str) -> int | None:
    return int(value) if value.isdigit() and int(value) > 0 else None


def parse_notify(data: bytes) -> NotifyMessage:
    """Parse newline-separated KEY=VALUE assignments (sd_notify(3)); bad values are noted, never raised."""
    msg = NotifyMessage()
    problems: list[str] = []
    text = data.decode("utf-8", errors="replace")
    for line in text.split("\n"):
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            problems.append(f"not an assignment: {line[:40]!r}")
            continue
        if key == "READY":
            msg.ready = msg.ready or value == "1"
        elif key == "RELOADING":
            msg.reloading = msg.reloading or value == "1"
        elif key == "STOPPING":
            msg.stopping = msg.stopping or value == "1"
        elif key == "WATCHDOG":
            if value == "1":
                msg.watchdog = True
            elif value == "trigger":
                msg.watchdog_trigger = True
        elif key == "STATUS":
            msg.status = "".join(c if c.isprintable() else " " for c in value[:MAX_STATUS])
        elif key == "MAINPID":
            msg.mainpid = _positive_int(value)
            if msg.mainpid is None:
                problems.append(f"MAINPID={value[:20]!r} is not a pid")
        elif key == "EXTEND_TIMEOUT_USEC":
            msg.extend_timeout_usec = int(value) if value.isdigit() else None
            if msg.extend_timeout_usec is None:
                problems.append(f"EXTEND_TIMEOUT_USEC={value[:20]!r} is not a number")
        elif key == "ERRNO":
            msg.errno = int(value) if value.isdigit() else None
    msg.problems = tuple(problems)
    return msg


@dataclass(frozen=True)
class Sender:
    """Who sent a datagram, as the kernel reports it (SCM_CREDENTIALS)."""

    pid: int
    uid: int
    gid: int


NotifyHandler = Callable[[str, "Sender | None", bytes], None]


def _remove_stale_socket(path: Path) -> None:
    """Unlink a socket left at path; anything else there (a file, a symlink) is refused, never removed."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(f"{path} exists and is not a socket; not replacing it")
    path.unlink()


class NotifySocket:
    """One agent's bound datagram socket, registered with the loop's reader."""

    def __init__(self, loop: asyncio.AbstractEventLoop, agent_id: str, path: Path, uid: int | None, handler: NotifyHandler, counters: Counter) -> None:
        self.loop = loop
        self.agent_id = agent_id
        self.path = path
        self.handler = handler
        self.counters = counters
        self.uid = uid if uid is not None else os.geteuid()  # who may send besides root
        _remove_stale_socket(path)  # left by a previous agentd: re-adopted agents send to the same path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            old = os.umask(0o177)
            try:
                self.sock.bind(str(path))
            finally:
                os.umask(old)
            if uid is not None and uid != os.geteuid():
                os.chown(path, uid, -1)  # the agent's user may send; nobody else but root
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        except OSError:
            self.sock.close()
            raise
        loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        for _ in range(MAX_PER_WAKE):
            try:
                data, anc, flags, _ = self.sock.recvmsg(MAX_DATAGRAM, _ANC_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.counters["receive_errors"] += 1
                log.debug("%s: notify socket receive failed: %s", self.agent_id, exc)
                return
            sender = None
            for level, kind, payload in anc:
                if level != socket.SOL_SOCKET:
                    continue
                if kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED.size:
                    sender = Sender(*_UCRED.unpack(payload[: _UCRED.size]))
                elif kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                    for fd in fds:  # closing sd_notify_barrier's pipe is its answer
                        try:
                            os.close(fd)
                        except OSError:
                            pass
            if flags & socket.MSG_TRUNC:
                self.counters["truncated"] += 1
                continue
            self.counters["received"] += 1
            try:
                self.handler(self.agent_id, sender, data)
            except Exception:
                log.exception("%s: handling an sd_notify message failed", self.agent_id)
        # More may be queued: the reader stays registered, so the loop calls back after other work.

    def close(self) -> None:
        try:
            self.loop.remove_reader(self.sock.fileno())
        except (ValueError, OSError):
            pass
        close_socket_file(self.sock, self.path)


class NotifyHub:
    """Every agent's notify socket, in `<run_dir>/notify/<id>`; opened when the agent is added."""

    def __init__(self, loop: asyncio.AbstractEventLoop, directory: Path, handler: NotifyHandler) -> None:
        self.loop = loop
        self.directory = directory
        self.handler = handler
        self.counters: Counter[str] = Counter()
        self.sockets: dict[str, NotifySocket] = {}
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o755)

    def uid(self, agent_id: str) -> int | None:
        sock = self.sockets.get(agent_id)
        return sock.uid if sock is not None else None

    def path(self, agent_id: str) -> Path | None:
        """The NOTIFY_SOCKET to give the agent, or None when its socket could not be opened."""
        sock = self.sockets.get(agent_id)
        return sock.path if sock is not None else None

    def open(self, agent_id: str, uid: int | None) -> None:
        if agent_id in self.sockets:
            return
        path = self.directory / agent_id
        try:
            self.sockets[agent_id] = NotifySocket(self.loop, agent_id, path, uid, self.handler, self.counters)
        except OSError as exc:
            # The agent still runs, only without NOTIFY_SOCKET; `ready: notify` agents then time out visibly.
            log.error("%s: cannot open its notify socket %s: %s", agent_id, path, exc)

    def drain(self, agent_id: str) -> None:
        """Handle what is queued now: an agent's MAINPID= sent just before its old main process
        exited must be seen before that exit is judged."""
        sock = self.sockets.get(agent_id)
        if sock is not None:
            sock._readable()

    def close(self, agent_id: str) -> None:
        sock = self.sockets.pop(agent_id, None)
        if sock is not None:
            sock.close()

    def close_all(self) -> None:
        for agent_id in list(self.sockets):
            self.close(agent_id)
