"""Send a heartbeat from a script or program that agentd supervises (used by `agentctl heartbeat`).

Reads AGENTD_AGENT_ID, AGENTD_HEARTBEAT_SOCKET and AGENTD_HEARTBEAT_URL from the environment that
agentd gives every agent. The Unix socket is preferred: no token, identity from peer credentials.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import urllib.error
import urllib.request
from typing import Any


class HeartbeatError(Exception):
    """The heartbeat was not accepted; the message says why."""


def _payload(agent_id: str | None, fields: dict[str, Any]) -> dict[str, Any]:
    doc = {k: v for k, v in fields.items() if v is not None}
    if agent_id:
        doc["agent_id"] = agent_id
    doc.setdefault("pid", os.getpid())  # we run inside the agent's tree, so our pid qualifies
    doc.setdefault("timestamp", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"))
    return doc


def send_heartbeat(
    agent_id: str | None = None,
    *,
    socket_path: str | None = None,
    url: str | None = None,
    token: str | None = None,
    timeout: float = 5.0,
    **fields: Any,
) -> str:
    """Send one heartbeat over the socket or HTTP; returns how it went, raises HeartbeatError on refusal."""
    agent_id = agent_id or os.environ.get("AGENTD_AGENT_ID")
    socket_path = socket_path if socket_path is not None else (None if url else os.environ.get("AGENTD_HEARTBEAT_SOCKET"))
    url = url or os.environ.get("AGENTD_HEARTBEAT_URL")
    doc = _payload(agent_id, fields)
    if socket_path:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(socket_path)
                sock.sendall(json.dumps(doc).encode() + b"\n")
        except OSError as exc:
            raise HeartbeatError(f"cannot send to {socket_path}: {exc.strerror or exc}") from None
        return f"sent to {socket_path} (the socket does not answer; see agentctl status)"
    if not url:
        raise HeartbeatError("no AGENTD_HEARTBEAT_SOCKET or AGENTD_HEARTBEAT_URL in the environment; pass --socket or --url")
    if not agent_id:
        raise HeartbeatError("an agent id is required over HTTP (AGENTD_AGENT_ID is not set)")
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        request = urllib.request.Request(url, data=json.dumps(doc).encode(), headers=headers, method="POST")
    except ValueError:
        raise HeartbeatError(f"not a heartbeat URL: {url!r} (expected http://HOST:PORT/heartbeat)") from None
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return json.loads(resp.read() or b"{}").get("message", "accepted")
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("message", exc.reason)
        except ValueError:
            message = exc.reason
        raise HeartbeatError(f"HTTP {exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise HeartbeatError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None
