"""The HTTP heartbeat intake worker: `python -m workers.heartbeat_http` (docs/heartbeat-api.md, docs/configuration.md).

A small asyncio.Protocol around httptools' HTTP/1.1 parser, run on uvloop (see docs/decisions.md for why not a
framework, and why uvloop).
The process is here; the server is workers/http_intake.py, one connection workers/http_connection.py, the
replies workers/http_replies.py and the reports workers/http_reports.py. The parent owns the listening
socket and passes it down (`--listen-fd`), so several workers can share it
and a respawned worker inherits the backlog. Every request is bounded: header bytes, body bytes
(`max_body`, checked before the body is read), time (`request_timeout`) and open connections.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path

import uvloop

from supervisor.config.daemon_sections import HttpIntake
from supervisor.config.fields import split_listen
from supervisor.common.listen_sockets import ListenError, bind_tcp
from workers.link import WorkerLink
from workers.runner import FD_HEADROOM, StartupError, begin_process, inherited_listener, load_worker_settings, raise_fd_limit, serve_intake, worker_arg_parser
from workers.http_intake import HeartbeatHttpServer
from workers.http_replies import MAX_CONNECTIONS

log = logging.getLogger("workers.heartbeat_http")


def format_address(sock: socket.socket) -> str:
    """The bound address as host:port, IPv6 in brackets."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"


def bind_socket(listen: str) -> socket.socket:
    """Standalone mode: bind host:port by the parent's own rules (supervisor/common/listen_sockets.py)."""
    return bind_tcp(listen, *split_listen(listen))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = worker_arg_parser("heartbeat_http", __doc__, "heartbeat-http-0", "the heartbeat.http settings as JSON (overrides --config's)",
                               config_help="standalone: read the config and bind heartbeat.http.listen",
                               listen_fd_help="an inherited bound and listening TCP socket")
    parser.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS, help="open connections per worker")
    return parser.parse_args(argv)


async def _run(run_dir: Path, name: str, settings: HttpIntake, sock: socket.socket, max_connections: int) -> int:
    link = WorkerLink(run_dir, name, want_state=True)
    link.info["listen"] = format_address(sock)
    return await serve_intake(link, HeartbeatHttpServer(link, settings, max_connections=max_connections), sock, f"http://{link.info['listen']}")


def main(argv: list[str] | None = None) -> int:
    """Run the worker until SIGTERM or SIGINT; 0 on a clean stop, 2 on bad arguments or config."""
    args = _parse_args(argv)
    begin_process(args)
    loaded = load_worker_settings(args, HttpIntake, lambda c: c.heartbeat.http)
    if loaded is None:
        return 2
    run_dir, settings = loaded
    if args.max_connections < 1:
        log.error("--max-connections must be at least 1")
        return 2
    raise_fd_limit(args.max_connections + FD_HEADROOM)
    try:
        if args.listen_fd is not None:
            sock = inherited_listener(args.listen_fd, (socket.AF_INET, socket.AF_INET6), "TCP")
        else:
            sock = bind_socket(settings.listen)
    except (ListenError, StartupError) as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:
        log.error("cannot listen on %s: %s", settings.listen, exc)
        return 2
    try:
        # uvloop, not asyncio's selector loop: per request the loop and the transport are most of what is not
        # our own code, and uvloop's cost ~3 µs less (docs/decisions.md, "uvloop for the HTTP intake").
        code = uvloop.run(_run(run_dir, args.name, settings, sock, args.max_connections))
    finally:
        sock.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
