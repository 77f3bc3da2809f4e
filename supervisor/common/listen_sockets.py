"""The one set of rules for binding the heartbeat listening sockets, used by the parent and by an intake
worker run standalone: TCP from host:port (port 0 = any free port), the Unix socket 0666 replacing a stale
file but never a live listener or a non-socket, and close-and-unlink. See docs/architecture.md.

The parent owns the sockets it hands to workers so that port 0 resolves before agents get their
AGENTD_HEARTBEAT_URL, a bad or busy address is a clear start-up error, and a respawned worker inherits the
same socket: connections queue in the backlog instead of being refused while the worker restarts.
"""

from __future__ import annotations

import logging
import os
import stat
import socket
import struct
from pathlib import Path

from supervisor.common.proc_stat import pid_alive

log = logging.getLogger("supervisor.parent.listeners")  # only the parent remembers a port: its warning keeps its logger

BACKLOG = 4096


class ListenError(Exception):
    """A listening socket could not be created; the message names the setting."""


def bind_tcp(listen: str, host: str, port: int, remembered_port: int | None = None) -> socket.socket:
    """Bind heartbeat.http.listen, already split into host and port (port 0 = any free port); `listen`
    names it in errors. (Splitting is config's: supervisor/config/fields.split_listen.)

    With port 0, `remembered_port` (the one the previous agentd got) is tried first: agents re-adopted
    after an agentd restart keep the AGENTD_HEARTBEAT_URL they were started with.
    """
    if port == 0 and remembered_port:
        try:
            return _bind_tcp_once(listen, host, remembered_port)
        except ListenError as exc:
            log.warning("heartbeat.http.listen %s: the previous port %d is taken (%s); agents started before this "
                        "agentd send to it until they restart", listen, remembered_port, exc)
    return _bind_tcp_once(listen, host, port)


def _bind_tcp_once(listen: str, host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"heartbeat.http.listen {listen}: cannot resolve {host!r}: {exc.strerror}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise ListenError(f"heartbeat.http.listen {listen}: {exc.strerror}") from None
    return sock


def _clear_stale_socket(path: Path) -> None:
    """Remove a socket left by a killed daemon; refuse a live one (another agentd's) or a non-socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenError(f"heartbeat.unix.path {path}: exists and is not a socket; agentd does not remove it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    listener = None
    try:
        probe.connect(str(path))
        # The pid that called listen(): a dead one means the socket is held on only by the dying workers of
        # a killed agentd (they inherited it), not by a live daemon.
        listener = struct.unpack("3i", probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[0]
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # nobody listens: stale
    except OSError:
        listener = -1  # a full backlog or a timeout: somebody is listening
    finally:
        probe.close()
    if listener is not None and (listener <= 0 or pid_alive(listener)):
        who = f" (pid {listener})" if listener > 0 else ""
        raise ListenError(f"heartbeat.unix.path {path}: another process{who} is listening on it (another agentd?); not removing it")
    path.unlink(missing_ok=True)



def unix_listener(path: Path) -> socket.socket:
    """Bind the heartbeat socket 0666: identity comes from peer credentials, not file permissions."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        raise ListenError(f"heartbeat.unix.path {path}: is a directory")
    _clear_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o666)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise ListenError(f"heartbeat.unix.path {path}: {exc.strerror}") from None
    finally:
        os.umask(old)
    return sock


def bound_address(sock: socket.socket) -> str:
    """host:port as bound (port 0 resolved)."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def close_socket_file(sock: socket.socket, path: str | os.PathLike) -> None:
    """Close a bound Unix socket (a listener or a datagram socket) and remove its file, so no stale file is left."""
    sock.close()
    Path(path).unlink(missing_ok=True)
