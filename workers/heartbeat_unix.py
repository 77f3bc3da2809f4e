"""The Unix-socket heartbeat intake worker, `python -m workers.heartbeat_unix`: JSON lines, sender known by SO_PEERCRED.

The process: settings, the listening socket (inherited, or bound standalone) and the link to the parent;
the intake itself is workers/unix_intake.py.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
from pathlib import Path

from supervisor.common.listen_sockets import ListenError, close_socket_file, unix_listener
from supervisor.config.daemon_sections import UnixIntake
from workers.link import WorkerLink
from workers.runner import FD_HEADROOM, StartupError, begin_process, inherited_listener, load_worker_settings, raise_fd_limit, serve_intake, worker_arg_parser
from workers.unix_intake import UnixIntakeServer

log = logging.getLogger("workers.heartbeat_unix")


def bind_socket(path: Path) -> socket.socket:
    """Standalone: bind path by the parent's own rules (supervisor/common/listen_sockets.py)."""
    try:
        return unix_listener(path)
    except ListenError as exc:
        raise StartupError(str(exc)) from None


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    return worker_arg_parser("heartbeat_unix", __doc__, "heartbeat-unix", "the heartbeat.unix settings as JSON",
                             config_help="standalone: read the config and bind heartbeat.unix.path",
                             listen_fd_help="an inherited listening AF_UNIX stream socket").parse_args(argv)


async def _run(run_dir: Path, name: str, settings: UnixIntake, sock: socket.socket) -> int:
    link = WorkerLink(run_dir, name, want_state=True)
    link.info["listen"] = str(sock.getsockname() or f"fd {sock.fileno()}")
    return await serve_intake(link, UnixIntakeServer(link, settings), sock, link.info["listen"])


def main(argv: list[str] | None = None) -> int:
    """Run the worker until SIGTERM or SIGINT; 0 on a clean stop."""
    args = _parse_args(argv)
    begin_process(args)
    loaded = load_worker_settings(args, UnixIntake, lambda c: c.heartbeat.unix)
    if loaded is None:
        return 2
    run_dir, settings = loaded
    raise_fd_limit(settings.max_connections + FD_HEADROOM)
    try:
        if args.listen_fd is not None:
            sock = inherited_listener(args.listen_fd, (socket.AF_UNIX,), "Unix stream")
        elif settings.path is None:
            raise StartupError("--settings: path is required with --config")
        else:
            sock = bind_socket(settings.path)
    except StartupError as exc:
        log.error("%s", exc)
        return 2
    try:
        code = asyncio.run(_run(run_dir, args.name, settings, sock))
    finally:
        if args.listen_fd is None and settings.path is not None:
            close_socket_file(sock, settings.path)
        else:
            sock.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
