"""A stand-in worker for tests/system/test_zygote.py: the zygote runs its main(argv) as it runs a
worker's, and it writes down what it was given (environment, descriptors, parent) as JSON."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """argv: OUT MEMFD SOCKFD [EXIT_CODE]; waits for one message on the socket, echoes it, exits EXIT_CODE."""
    out, memfd, sockfd, *rest = argv if argv is not None else sys.argv[1:]
    sock = socket.socket(fileno=int(sockfd))
    message = sock.recv(100).decode()
    sock.sendall(b"echo:" + message.encode())
    Path(out).write_text(json.dumps({
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "env": dict(os.environ),
        "settings": os.pread(int(memfd), 100, 0).decode(),
        "message": message,
        "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
        "comm": Path("/proc/self/comm").read_text().strip(),
        "argv": sys.argv,
    }))
    return int(rest[0]) if rest else 0
