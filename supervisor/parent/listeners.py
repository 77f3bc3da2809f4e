"""The heartbeat HTTP port agentd remembers across restarts; the sockets themselves are bound by
supervisor/common/listen_sockets.py (shared with the intake workers)."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from supervisor.common.listen_sockets import ListenError, bind_tcp, bound_address, close_socket_file, unix_listener
from supervisor.config.fields import split_listen

__all__ = ["HTTP_PORT_FILE", "ListenError", "bound_address", "close_socket_file", "read_port", "remember_port", "tcp_listener", "unix_listener"]

log = logging.getLogger(__name__)


def tcp_listener(listen: str, remembered_port: int | None = None) -> socket.socket:
    """Bind heartbeat.http.listen (host:port, port 0 = any free port), trying `remembered_port` first for port 0."""
    return bind_tcp(listen, *split_listen(listen), remembered_port=remembered_port)


HTTP_PORT_FILE = "heartbeat_http.port"  # in data_dir: the port a `:0` listen got, for the next agentd


def read_port(path: Path) -> int | None:
    """The port remembered in path, or None (absent, unreadable or not a port)."""
    try:
        value = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return value if 0 < value < 65536 else None


def remember_port(path: Path, port: int) -> None:
    """Write the bound port for the next agentd; a failure costs only that convenience."""
    try:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(f"{port}\n")
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot remember the heartbeat HTTP port in %s: %s", path, exc.strerror)
