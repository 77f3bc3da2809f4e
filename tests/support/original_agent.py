#!/usr/bin/env python3
"""Stand-in for the original daemon's sample agent (its agent/cmd/agent): `-config FILE`, heartbeats on a Unix socket.

It behaves as that agent does towards its daemon: it takes the socket path and interval from its own
YAML config (heartbeat.socket_path, heartbeat.interval), knows nothing of agentd's AGENTD_* variables,
and sends one JSON line per beat with pid, a Go RFC 3339 timestamp with nanoseconds and a zone offset,
version, status, cpu and memory. Stdlib only (plus the YAML subset it needs), so it starts fast.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import sys
import time


def read_config(path: str) -> dict[str, str]:
    """The two keys it needs from its YAML config, read line by line (`socket_path: "..."`, `interval: 1s`)."""
    found: dict[str, str] = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.split("#", 1)[0].strip().partition(":")
            if key in ("socket_path", "interval", "version"):
                found[key] = value.strip().strip('"')
    return found


def go_timestamp() -> str:
    """time.Now() as Go's encoding/json writes it: nanoseconds and a numeric offset."""
    now = datetime.datetime.now(datetime.timezone(datetime.timedelta(hours=8)))
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond:06d}123+08:00"


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "-config":
        print(f"usage: original_agent.py -config FILE (got {argv})", file=sys.stderr)
        return 2
    config = read_config(argv[1])
    interval = float(config.get("interval", "1s").rstrip("s"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"agent started pid={os.getpid()} config={argv[1]} socket={config['socket_path']}", flush=True)
    sock = None
    while True:
        beat = {
            "pid": os.getpid(), "timestamp": go_timestamp(), "version": config.get("version", "1.0.0"),
            "status": "running", "cpu": 0.5, "memory": 12345678,
        }
        try:
            if sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(config["socket_path"])
            sock.sendall((json.dumps(beat) + "\n").encode())
        except OSError as exc:
            print(f"heartbeat failed: {exc}", flush=True)
            if sock is not None:
                sock.close()
            sock = None
        time.sleep(interval)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
