"""The agentctl side of `control.ipc`: one DEALER request, one reply, and errors that tell
"not running", "not answering" and "failed" apart.

It imports neither pydantic nor the protocol models, so that `agentctl status` starts fast
(supervisor/ctl/agentctl_main.py): it writes the `Request` envelope of supervisor/wire/protocol.py as JSON and
reads the `Reply` fields it needs. The daemon validates every request against `Request`, and every
daemon test talks to it through this client, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import zmq

from supervisor.wire.version import PROTOCOL_VERSION
from supervisor.common.pidfile import PidFile
from supervisor.common.proc_stat import pid_alive


class ClientError(Exception):
    """Base for agentctl failures; `exit_code` is what agentctl exits with."""

    exit_code = 1


class DaemonUnavailable(ClientError):
    """agentd is not running (no socket, stale socket) or we may not talk to it."""

    exit_code = 3


class DaemonTimeout(ClientError):
    """agentd is there but did not answer in time (it may still be working)."""

    exit_code = 4


class RemoteError(ClientError):
    """agentd answered with a typed error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _listening(path: Path) -> bool | None:
    """Whether anything accepts connections on the Unix socket at path (None: cannot tell, e.g. EACCES)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
        return True
    except ConnectionRefusedError:
        return False
    except OSError:
        return None
    finally:
        probe.close()


class ControlClient:
    """Sends requests to the agentd whose run_dir is given."""

    def __init__(self, run_dir: Path, timeout: float = 10.0) -> None:
        self.run_dir = Path(run_dir)
        self.socket_path = self.run_dir / "control.ipc"
        self.timeout = timeout

    def check_reachable(self) -> None:
        """Fail fast, with the reason, when there is evidently no daemon to talk to."""
        path = self.socket_path
        if not path.exists():
            raise DaemonUnavailable(f"agentd is not running: no socket at {path}")
        pid = PidFile.read_pid(self.run_dir / "agentd.pid")
        if pid is None or not pid_alive(pid):
            what = f"pid {pid} from agentd.pid is gone" if pid else "no pid file"
            raise DaemonUnavailable(f"agentd is not running: stale socket at {path} ({what})")
        if not os.access(path, os.W_OK):
            raise DaemonUnavailable(
                f"permission denied on {path}: only its owner (or the control.group) may talk to agentd; try sudo"
            )
        if _listening(path) is False:
            # The moment after a kill -9: the pid may not be reaped yet, but nothing listens any more.
            raise DaemonUnavailable(f"agentd is not running: stale socket at {path} (nothing listens on it)")

    def call(self, verb: str, args: Any = None, timeout: float | None = None) -> dict[str, Any]:
        """Send one request and return the reply's result; raises a ClientError subclass on failure.

        `args` is a verb's `Args` model (sent without its defaults) or a plain dict.
        """
        self.check_reachable()
        if hasattr(args, "model_dump"):
            args = args.model_dump(mode="json", exclude_defaults=True)
        request_id = os.urandom(8).hex()  # not uuid: it imports platform, ~5 ms of every agentctl call
        request = {"v": PROTOCOL_VERSION, "id": request_id, "verb": verb, "args": args or {}}
        wait = self.timeout if timeout is None else timeout
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(f"ipc://{self.socket_path}")
            sock.send(json.dumps(request).encode())
            deadline_ms = int(wait * 1000)
            while True:
                if not sock.poll(deadline_ms, zmq.POLLIN):
                    raise DaemonTimeout(
                        f"agentd did not answer '{verb}' within {wait:g}s; it may still be working (see agentctl status, or raise --timeout)"
                    )
                reply = _read_reply(sock.recv())
                if reply.get("id") == request_id:
                    break
        finally:
            sock.close(linger=0)
        if not reply["ok"]:
            err = reply.get("error") or {}
            raise RemoteError(err.get("code") or "failed", err.get("message") or "unknown error")
        return reply.get("result") or {}


def _read_reply(raw: bytes) -> dict[str, Any]:
    """The reply as a dict with the `Reply` fields checked that the client uses."""
    try:
        reply = json.loads(raw)
    except ValueError as exc:
        raise ClientError(f"agentd sent an unreadable reply: {exc}") from None
    ok = reply.get("ok") if isinstance(reply, dict) else None
    result, error = (reply.get("result"), reply.get("error")) if isinstance(reply, dict) else (None, None)
    if (
        not isinstance(ok, bool)
        or not isinstance(reply.get("id"), (str, type(None)))
        or not isinstance(result, (dict, type(None)))
        or not (error is None or (isinstance(error, dict) and isinstance(error.get("code"), str) and isinstance(error.get("message"), str)))
    ):
        raise ClientError(f"agentd sent an unreadable reply: {str(raw[:200])}")
    return reply
