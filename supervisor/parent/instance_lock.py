"""One agentd per node, whatever happens to run_dir: locks that live outside the file system.

`agentd.pid` in run_dir is a fine lock until someone runs `rm -rf run_dir`: the next agentd then
creates a fresh file, locks it and supervises the same agents as the first. So agentd also binds one
abstract Unix socket (Linux; no file, gone with the process however it dies) for each of its run_dir,
data_dir and log_dir, named after the directory's real path. A second agentd that finds any of them
bound asks the kernel who bound it (SO_PEERCRED) and refuses, naming that pid.

Abstract sockets belong to a network namespace: two agentd in different namespaces sharing a
data_dir are not caught here (docs/operations.md).
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import struct
from pathlib import Path

PREFIX = "agentd-instance:"


class InstanceLocked(Exception):
    """Another agentd holds one of our directories."""

    def __init__(self, what: str, path: str, pid: int | None) -> None:
        self.pid = pid
        who = f"pid {pid}" if pid else "pid unknown"
        super().__init__(f"agentd is already running ({who}) with {what} {path}; stop it first (its run_dir may have been removed)")


def lock_name(path: str | Path) -> str:
    """The abstract socket name for one directory (a digest: names are limited to 107 bytes)."""
    real = os.path.realpath(path)
    return PREFIX + hashlib.sha256(real.encode()).hexdigest()[:40]


def _peer_pid(name: str) -> int | None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
        s.settimeout(2.0)
        try:
            s.connect("\0" + name)
            creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except OSError:
            return None
        pid, _uid, _gid = struct.unpack("3i", creds)
        return pid or None


class InstanceLock:
    """Holds the abstract sockets for a set of directories; `acquire` once at start, keep until exit."""

    def __init__(self, dirs: dict[str, str | Path]) -> None:
        self.dirs = dict(dirs)  # what ("run_dir") -> path
        self.socks: list[socket.socket] = []

    def acquire(self) -> None:
        """Bind every lock, or release what was taken and raise InstanceLocked."""
        seen: set[str] = set()
        try:
            for what, path in self.dirs.items():
                name = lock_name(path)
                if name in seen:
                    continue  # data_dir may be run_dir
                seen.add(name)
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
                try:
                    sock.bind("\0" + name)
                except OSError as exc:
                    sock.close()
                    if exc.errno == errno.EADDRINUSE:
                        raise InstanceLocked(what, os.path.realpath(path), _peer_pid(name)) from None
                    raise
                sock.listen(16)
                self.socks.append(sock)
        except BaseException:
            self.release()
            raise

    def serve(self, loop) -> None:
        """Accept and drop the connections of agentd that come asking, so the backlog never fills."""
        for sock in self.socks:
            loop.add_reader(sock.fileno(), self._drain, sock)

    @staticmethod
    def _drain(sock: socket.socket) -> None:
        try:
            while True:
                conn, _ = sock.accept()
                conn.close()
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            pass

    def release(self, loop=None) -> None:
        for sock in self.socks:
            if loop is not None:
                try:
                    loop.remove_reader(sock.fileno())
                except (ValueError, OSError):
                    pass
            sock.close()
        self.socks = []
