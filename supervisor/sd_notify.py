"""systemd's sd_notify over its datagram socket, without a dependency: READY=1, STOPPING=1, STATUS=."""

from __future__ import annotations

import os
import socket


def sd_notify(message: str) -> bool:
    """Send `message` to $NOTIFY_SOCKET if systemd gave us one; returns whether it was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError:
        return False
