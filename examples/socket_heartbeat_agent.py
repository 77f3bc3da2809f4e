#!/usr/bin/env python3
"""A well-behaved agent that heartbeats over the Unix socket: JSON lines on one persistent connection.

It connects to AGENTD_HEARTBEAT_SOCKET, reconnects when the socket is absent or the connection was closed,
and exits 0 on SIGTERM. agentd identifies it by the connection's peer credentials.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket

from agentkit import STOP_SIGNALS, FailureLog, ProcStats, SignalWaiter, heartbeat, log, run_every, signal_name


class SocketHeartbeat:
    """Writes heartbeats to one stream connection, opened lazily and reopened after any failure."""

    def __init__(self, path: str, agent_id: str) -> None:
        self.path = path
        self.agent_id = agent_id
        self.stats = ProcStats()
        self.failures = FailureLog(f"heartbeat over {path}")
        self.sock: socket.socket | None = None
        self.sent = 0
        self.connects = 0

    def _closed_by_peer(self) -> bool:
        """agentd never writes to us, so a readable connection means it was closed (or is sending garbage)."""
        return bool(select.select([self.sock], [], [], 0)[0])

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(2)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def beat(self) -> None:
        """Sends one heartbeat; any failure is logged (rate-limited) and the next beat reconnects."""
        if self.sock is not None and self._closed_by_peer():
            # Found out now rather than by losing this heartbeat into a dead connection. An idle timeout
            # closes connections routinely, so this is no failure; the log line below counts connections.
            self.close()
        line = (json.dumps(heartbeat(self.agent_id, self.stats)) + "\n").encode()
        try:
            if self.sock is None:
                self.sock = self._connect()
                self.connects += 1
                if self.connects == 1:
                    log(f"connected to {self.path}")
            self.sock.sendall(line)
        except OSError as exc:
            self.close()
            self.failures.failed(exc.strerror or str(exc))
            return
        self.sent += 1
        self.failures.succeeded()
        log(f"heartbeat #{self.sent} written (connection #{self.connects})")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between heartbeats (default 5)")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    waiter = SignalWaiter(STOP_SIGNALS)
    path = os.environ.get("AGENTD_HEARTBEAT_SOCKET")
    log(f"started pid={os.getpid()} interval={args.interval:g}s socket={path}")
    agent_id = os.environ.get("AGENTD_AGENT_ID", "socket-heartbeat-agent")
    sender = SocketHeartbeat(path, agent_id) if path else None
    if sender is None:
        log("AGENTD_HEARTBEAT_SOCKET is not set; running without heartbeats")
    signo = run_every(waiter, args.interval, sender.beat if sender else lambda: None)
    if sender is not None:
        sender.close()
    log(f"got {signal_name(signo)}, exiting cleanly")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
